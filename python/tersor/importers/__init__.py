"""Checkpoints users already hold, straight into tersor layers, without the float model.

``tersor.load_pretrained(model, path)`` comes here when the folder is a Hugging Face one
(``config.json`` with a ``quantization_config``) rather than a tersor checkpoint. Each
``quant_method`` has an importer (base.py) that maps its tensors onto a tersor format:

    quant_method          formats read                                 module
    compressed-tensors    int-quantized (int8), pack-quantized (int4),  compressed_tensors.py
                          sparse-24-bitmask (2:4, float or int8)
    gptq                  4-bit, v1 / v2 zeros, act-order (g_idx)      gptq_awq.py
    awq                   4-bit GEMM packing                           gptq_awq.py
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

from tersor.importers.base import import_folder
from tersor.importers.compressed_tensors import CompressedTensorsImporter
from tersor.importers.folder import Folder
from tersor.importers.gptq_awq import AwqImporter, GptqImporter

IMPORTERS = {c.method: c for c in (CompressedTensorsImporter, GptqImporter, AwqImporter)}


def is_hf_folder(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json"))


def load_hf(model: nn.Module, path: str, activations: Optional[str] = None, strict: bool = True):
    """Load the quantized Hugging Face folder `path` into `model`; returns the Report."""
    folder = Folder(path)
    try:
        where = os.path.join(path, "config.json")
        qc = folder.config.get("quantization_config")
        if not isinstance(qc, dict):
            raise ValueError(
                f"{where}: no quantization_config: not a quantized checkpoint (load a float "
                f"model with transformers, then tersor.quantize_ it)"
            )
        method = str(qc.get("quant_method", "")).lower()
        if method not in IMPORTERS:
            raise ValueError(
                f"{where}: quant_method {method!r} is not supported (tersor reads "
                f"{', '.join(sorted(IMPORTERS))})"
            )
        importer = IMPORTERS[method](qc, where, activations)
        return import_folder(model, folder, importer, strict)
    finally:
        folder.close()


@contextmanager
def empty_weights():
    """Build a model without allocating its weights: parameters are created on the meta device,
    buffers stay real (a rotary embedding's computed inv_freq survives). As accelerate's
    ``init_empty_weights``."""
    original = nn.Module.register_parameter

    def register_parameter(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def from_pretrained(
    path: str,
    dtype: Optional[torch.dtype] = None,
    activations: Optional[str] = None,
    model_class=None,
    fuse_projections="auto",
):
    """A transformers model built from `path`'s config.json with empty weights, then loaded by
    ``tersor.load_pretrained`` (a tersor checkpoint or a GPTQ / AWQ / compressed-tensors one).
    dtype: the float dtype of the layers tersor does not compress (default: config's
    ``torch_dtype``, else float32). model_class: default ``AutoModelForCausalLM``."""
    import transformers

    from tersor.checkpoint import load_pretrained

    config = transformers.AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # tersor, not transformers, reads it
    if dtype is None:
        dtype = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
        dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype), None)
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    cls = model_class or transformers.AutoModelForCausalLM
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with empty_weights():
            model = cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return load_pretrained(model, path, activations=activations, fuse_projections=fuse_projections)
