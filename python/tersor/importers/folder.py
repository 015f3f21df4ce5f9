"""A Hugging Face-style model folder: ``config.json`` and safetensors weights, one file
(``model.safetensors``) or shards listed by ``model.safetensors.index.json``.

Tensors are read one at a time (safetensors maps the file, so reading one tensor costs that
tensor), and every error names the file and the tensor.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_json(file: str, what: str) -> dict:
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: missing ({what})")
    with open(file) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: corrupted JSON ({e})") from e


class Folder:
    """The safetensors of a model folder: ``keys``, ``file_of(key)``, ``get(key)``."""

    def __init__(self, path: str):
        self.path, self._files = path, {}
        self.config = read_json(os.path.join(path, "config.json"), "the model's config")
        index = os.path.join(path, INDEX)
        if os.path.exists(index):
            weight_map = read_json(index, "the shard index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' object")
            for name in sorted(set(weight_map.values())):
                if not os.path.exists(os.path.join(path, name)):
                    key = next(k for k, v in weight_map.items() if v == name)
                    raise FileNotFoundError(
                        f"{os.path.join(path, name)}: shard missing (the index puts '{key}' "
                        f"there); nothing was loaded"
                    )
            self.weight_map = dict(weight_map)
        elif os.path.exists(os.path.join(path, SINGLE)):
            self.weight_map = dict.fromkeys(self._open(SINGLE).keys(), SINGLE)
        else:
            raise FileNotFoundError(f"{path}: neither {SINGLE} nor {INDEX} found")

    # safe_open handles stay open for the folder's lifetime (closed by close())
    def _open(self, name: str):
        from safetensors import safe_open

        f = self._files.get(name)
        if f is not None:
            return f
        file = os.path.join(self.path, name)
        try:
            f = safe_open(file, framework="pt", device="cpu").__enter__()
        except Exception as e:
            raise ValueError(f"{file}: not a readable safetensors file ({e})") from e
        self._files[name] = f
        return f

    @property
    def keys(self):
        return self.weight_map.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def file_of(self, key: str) -> str:
        return os.path.join(self.path, self.weight_map.get(key, "?"))

    def get(self, key: str, required: bool = True) -> Optional[torch.Tensor]:
        name = self.weight_map.get(key)
        if name is None:
            if not required:
                return None
            raise KeyError(f"{self.path}: tensor '{key}' is missing from the checkpoint")
        try:
            return self._open(name).get_tensor(key)
        except KeyError as e:  # the index names a tensor its shard does not hold
            raise KeyError(f"{self.file_of(key)}: tensor '{key}' is not in this file") from e
        except Exception as e:
            raise ValueError(f"{self.file_of(key)}: cannot read '{key}' ({e})") from e

    def close(self) -> None:
        for f in self._files.values():
            f.__exit__(None, None, None)
        self._files.clear()
