"""Lazy readers of safetensors shards (tersor checkpoints and Hugging Face folders alike): one
tensor at a time, every error naming the file and the tensor."""

from __future__ import annotations

import os
from typing import Optional

import torch


class SafetensorsFiles:
    """``weight_map`` (tensor name -> file name in ``path``): ``keys``, ``in``, ``file_of``,
    ``get``; files open on first use and stay open until ``close()`` (which also unmaps the
    pages read so far)."""

    def __init__(self, path: str, weight_map: dict, what: str = "the index"):
        self.path, self.weight_map, self.what, self._files = path, dict(weight_map), what, {}
        for key, name in self.weight_map.items():  # shards are files of this folder only
            if (
                not isinstance(name, str)
                or not name
                or os.path.isabs(name)
                or os.pardir in name.replace("\\", "/").split("/")
            ):
                raise ValueError(
                    f"{path}: {what} puts '{key}' in {name!r}, not a file of this folder"
                )

    @property
    def keys(self):
        return self.weight_map.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def file_of(self, key: str) -> str:
        return os.path.join(self.path, self.weight_map.get(key, "?"))

    def open(self, name: str):
        from safetensors import safe_open

        f = self._files.get(name)
        if f is None:
            file = os.path.join(self.path, name)
            if not os.path.exists(file):
                key = next((k for k, v in self.weight_map.items() if v == name), "?")
                raise FileNotFoundError(f"{file}: shard missing ({self.what} puts '{key}' there)")
            try:
                f = safe_open(file, framework="pt", device="cpu").__enter__()
            except Exception as e:
                raise ValueError(f"{file}: not a readable safetensors file ({e})") from e
            self._files[name] = f
        return f

    def get(self, key: str, required: bool = True) -> Optional[torch.Tensor]:
        name = self.weight_map.get(key)
        if name is None:
            if not required:
                return None
            raise KeyError(f"{self.path}: tensor '{key}' is missing ({self.what} lists none)")
        f = self.open(name)
        try:
            return f.get_tensor(key)
        except Exception as e:
            raise ValueError(f"{self.file_of(key)}: cannot read '{key}' ({e})") from e

    def get_slice(self, key: str):
        """A lazy safetensors slice of `key` (``[a:b]`` / ``[:, a:b]`` read only that part)."""
        name = self.weight_map.get(key)
        if name is None:
            raise KeyError(f"{self.path}: tensor '{key}' is missing ({self.what} lists none)")
        try:
            return self.open(name).get_slice(key)
        except Exception as e:
            raise ValueError(f"{self.file_of(key)}: cannot read '{key}' ({e})") from e

    def close(self) -> None:
        for f in self._files.values():
            f.__exit__(None, None, None)
        self._files.clear()
