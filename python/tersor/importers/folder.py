"""A Hugging Face-style model folder: ``config.json`` and safetensors weights, one file
(``model.safetensors``) or shards listed by ``model.safetensors.index.json``.

Tensors are read one at a time (safetensors maps the file, so reading one tensor costs that
tensor), and every error names the file and the tensor.
"""

from __future__ import annotations

import json
import os

from tersor.safetensors_files import SafetensorsFiles

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


class Folder(SafetensorsFiles):
    """The safetensors of a model folder, with its parsed ``config``."""

    def __init__(self, path: str):
        config = read_json(os.path.join(path, "config.json"), "the model's config")
        index = os.path.join(path, INDEX)
        if os.path.exists(index):
            weight_map = read_json(index, "the shard index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' object")
            super().__init__(path, weight_map, "the shard index")
            for name in sorted(set(weight_map.values())):
                if not os.path.exists(os.path.join(path, name)):
                    self.open(name)  # raises, naming the shard and a tensor it holds
        elif os.path.exists(os.path.join(path, SINGLE)):
            super().__init__(path, {}, SINGLE)
            self.weight_map = dict.fromkeys(self.open(SINGLE).keys(), SINGLE)
        else:
            raise FileNotFoundError(f"{path}: neither {SINGLE} nor {INDEX} found")
        self.config = config
