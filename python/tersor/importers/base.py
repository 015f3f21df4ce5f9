"""What every checkpoint importer shares, and the driver that loads a folder into a model.

An importer reads one ``quantization_config`` (``check_config``) and, per Linear of the model,
says whether the checkpoint holds it quantized and builds its format from the checkpoint's
tensors (``layer``). The driver builds every layer first and installs them only when all have
loaded and the rest of the checkpoint matches the model, so a bad checkpoint leaves the model
as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from tersor._heap import release_freed_memory
from tersor.formats.base import WeightFormat
from tersor.importers.folder import Folder
from tersor.nn.linear import PackedLinear

ACTIVATIONS = (None, "int8", "int16", "float")


@dataclass
class Imported:
    fmt: WeightFormat
    keys: list  # the checkpoint tensors the layer took (its bias is added by the driver)
    note: str = ""
    extra_keys: list = field(default_factory=list)  # taken but unused (static input scales)


class Importer:
    """Base: ``method`` is the ``quant_method`` it serves."""

    method = ""

    def __init__(self, qc: dict, where: str, activations: Optional[str]):
        if activations not in ACTIVATIONS:
            raise ValueError(
                f"activations must be one of {ACTIVATIONS} (None: as the checkpoint says), "
                f"got {activations!r}"
            )
        self.where, self.activations = where, activations
        self.check_config(qc)

    def check_config(self, qc: dict) -> None:
        raise NotImplementedError

    def layer(self, fqn: str, module: nn.Module, folder: Folder) -> Optional[Imported]:
        raise NotImplementedError

    def require(self, qc: dict, key: str, allowed: tuple, why: str = "") -> None:
        v = qc.get(key, allowed[0])
        if v not in allowed:
            raise ValueError(
                f"{self.where}: quantization_config.{key} = {v!r} is not supported "
                f"(tersor reads {', '.join(map(repr, allowed))})" + (f": {why}" if why else "")
            )

    def act_int8(self, checkpoint_int8: bool) -> bool:
        """Whether the layer quantizes its activations: the checkpoint's scheme unless the caller
        chose (a W4A16 checkpoint may run as W4A8, the faster kernel on CPUs). "int16" keeps
        int8 weights on float activations (only int4 layers have the planes: int4_act)."""
        return checkpoint_int8 if self.activations is None else self.activations == "int8"

    def int4_act(self, checkpoint_int8: bool) -> tuple:
        """(act_int8, act_bits) of an int4 layer: "int16" runs it on the int8 kernel over two
        activation planes (W4A8Config act_bits=16)."""
        if self.activations == "int16":
            return True, 16
        return self.act_int8(checkpoint_int8), 8


def linear_shape(m: nn.Module) -> Optional[tuple]:
    """(out_features, in_features) of an nn.Linear or a transformers Conv1D, else None."""
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf"):
        return m.nf, m.weight.shape[0]
    return None


def import_folder(model: nn.Module, folder: Folder, importer: Importer, strict: bool = True):
    """Load `folder` into `model` through `importer`; returns the Report."""
    from tersor.api import CONVERTED, LayerReport, Report

    t0 = time.perf_counter()
    built, claimed, rows = {}, set(), []
    for fqn, m in model.named_modules():
        shape = linear_shape(m)
        if shape is None:
            continue
        got = importer.layer(fqn, m, folder)
        if got is None:
            continue
        fmt = got.fmt
        where = folder.file_of(got.keys[0])
        if (fmt.out_features, fmt.in_features) != shape:
            raise ValueError(
                f"{where}: layer '{fqn}' holds a {fmt.out_features}x{fmt.in_features} weight "
                f"(out x in), the model's is {shape[0]}x{shape[1]}; the model is unchanged"
            )
        bias = None
        if f"{fqn}.bias" in folder:
            bias = folder.get(f"{fqn}.bias")
            if tuple(bias.shape) != (shape[0],) or not bias.is_floating_point():
                raise ValueError(
                    f"{folder.file_of(fqn + '.bias')}: {fqn}.bias: expected a float "
                    f"({shape[0]},), got {bias.dtype} {tuple(bias.shape)}"
                )
            claimed.add(f"{fqn}.bias")
        elif getattr(m, "bias", None) is not None:
            raise KeyError(f"{folder.path}: tensor '{fqn}.bias' is missing (the model has one)")
        built[fqn] = PackedLinear.wrap(fmt, bias, name=fqn)
        claimed.update(got.keys + got.extra_keys)
        before = shape[0] * shape[1] * m.weight.element_size()
        rows.append(
            LayerReport(fqn, shape, fmt.scheme, before, built[fqn].nbytes, got.note, CONVERTED)
        )
        folder.close()  # unmap the pages read so far, as tersor checkpoints do per layer
        release_freed_memory()
    if "" in built:
        raise ValueError(f"{folder.path}: the model itself is a Linear; build the layer instead")

    state = _rest_of_model(model, folder, built, claimed, strict)
    for fqn, layer in built.items():  # installed only once everything has loaded
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    model.load_state_dict(state, strict=False, assign=True)
    return Report(f"tersor layers from {importer.method}", rows, time.perf_counter() - t0)


def _rest_of_model(model, folder, built, claimed, strict) -> dict:
    """The model's other tensors (embeddings, norms, float layers) from the folder, cast to the
    dtype the model was built with; tied tensors (lm_head = embed_tokens) get the same one."""

    def outside(key):
        return not any(key.startswith(f + ".") for f in built)

    model_sd = model.state_dict(keep_vars=True)
    groups: dict = {}  # the model's tied tensors: id -> keys
    for key, t in model_sd.items():
        if outside(key):
            groups.setdefault(id(t), []).append(key)
    state, missing = {}, []
    for keys in groups.values():
        have = [k for k in keys if k in folder]
        if not have:
            missing.extend(keys)
            continue
        want = model_sd[keys[0]]
        t = folder.get(have[0])
        if tuple(t.shape) != tuple(want.shape):
            raise ValueError(
                f"{folder.file_of(have[0])}: '{have[0]}' has shape {tuple(t.shape)}, the "
                f"model's is {tuple(want.shape)}; the model is unchanged"
            )
        if t.is_floating_point() and want.is_floating_point():
            t = t.to(want.dtype)
        for k in keys:
            state[k] = t
        claimed.update(have)
    unexpected = sorted(k for k in folder.keys if k not in claimed and k not in state)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{folder.path}: the checkpoint does not match the model (missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}); the model is unchanged"
        )
    meta = [
        k
        for k, b in model.named_buffers()
        if b is not None and b.is_meta and k not in state and outside(k)
    ]
    if meta:
        raise ValueError(
            f"{folder.path}: buffers {meta[:3]} are on the meta device and not in the "
            f"checkpoint (non-persistent buffers such as rotary inv_freq); build the model under "
            f"tersor.empty_weights(), which keeps buffers real; the model is unchanged"
        )
    return state
