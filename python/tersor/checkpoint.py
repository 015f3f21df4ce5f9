"""tersor checkpoints: ``save_pretrained`` / ``load_pretrained``.

A checkpoint is a folder holding

    tersor.json                    the manifest: tersor version, checkpoint format version, and
                                   per compressed layer its class, scheme, format options,
                                   shape, bias, kernel preference and (Conv2d) geometry; which
                                   shard holds each tensor; non-tensor state (CSR fallbacks)
    model-0000i-of-0000n.safetensors
                                   the model's state_dict: every compressed layer in its
                                   format's canonical, hardware-neutral form (formats/*.py), the
                                   rest (embeddings, norms, dense layers) as it is

Loading rebuilds each compressed layer from the manifest (an empty format of the right shape),
reads only that layer's tensors from the shards, re-packs them for this machine, and swaps the
layer into the model, which may have been created on the meta device: the float weights of
the compressed layers are never materialized. Every layer is built before any is installed,
so a bad checkpoint leaves the model as it was, and errors name the file and the tensor.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import torch
from torch import nn

from tersor._heap import release_freed_memory
from tersor.formats import SCHEMES
from tersor.nn.fused import fuse_projections as fuse
from tersor.nn.linear import PackedLinear
from tersor.nn.qconv import QConv2d
from tersor.safetensors_files import SafetensorsFiles

MANIFEST = "tersor.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 2 << 30


def _compressed_layers(model: nn.Module) -> dict:
    """fqn -> PackedLinear or QConv2d (a QConv2d's inner gemm is part of it)."""
    out = {}
    for fqn, m in model.named_modules():
        if isinstance(m, QConv2d) or (
            isinstance(m, PackedLinear) and not any(fqn.startswith(q + ".") for q in out)
        ):
            out[fqn] = m
    return out


def _layer_entry(m: nn.Module) -> dict:
    gemm = m.gemm if isinstance(m, QConv2d) else m
    entry = {
        "class": type(m).__name__,
        "scheme": gemm.scheme,
        "options": gemm.fmt.options(),
        "in_features": gemm.in_features,
        "out_features": gemm.out_features,
        "bias": gemm.bias is not None,
        "kernel": gemm.kernel,
    }
    if isinstance(m, QConv2d):
        entry["conv"] = {
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": list(m.padding),
            "dilation": list(m.dilation),
            "groups": m.groups,
        }
    return entry


def save_pretrained(
    model: nn.Module, path: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES
) -> dict:
    """Write `model` (tersor layers in their canonical forms) to the folder `path`; returns
    the manifest."""
    from safetensors.torch import save_file

    from tersor import __version__

    os.makedirs(path, exist_ok=True)
    sd = model.state_dict()
    tensors, extra, seen = {}, {}, {}
    aliases = {}
    for key, v in sd.items():
        if not isinstance(v, torch.Tensor):
            extra[key] = v  # e.g. a CSR layer's dense-fallback setting
            continue
        v = v.detach()
        ident = (v.data_ptr(), v.dtype, tuple(v.shape), tuple(v.stride())) if v.numel() else None
        if ident is not None and ident in seen:  # tied weights: stored once
            aliases[key] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = key
        tensors[key] = v.to("cpu").contiguous()

    # non-persistent buffers (a rotary embedding's inv_freq): not in the state_dict, yet a model
    # built on the meta device has no values for them, so they travel too
    layers = _compressed_layers(model)
    non_persistent = []
    for key, buf in model.named_buffers():
        inside = any(key.startswith(f + ".") for f in layers)
        if key not in sd and not inside and buf is not None:
            tensors[key] = buf.detach().to("cpu").contiguous()
            non_persistent.append(key)

    shards, cur, size = [], {}, 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[key] = t
        size += nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))

    manifest = {
        "tersor_version": __version__,
        "format_version": FORMAT_VERSION,
        "layers": {fqn: _layer_entry(m) for fqn, m in layers.items()},
        "non_persistent": non_persistent,
        "weight_map": weight_map,
        "aliases": aliases,
        "extra_state": extra,
    }
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, default=_jsonable)
    config = getattr(model, "config", None)
    if hasattr(config, "to_json_file"):  # a transformers model: tersor.from_pretrained(path)
        config.to_json_file(os.path.join(path, "config.json"))
    return manifest


def _jsonable(v):
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"tersor.save_pretrained: cannot store {type(v).__name__} in the manifest")


def _build_layer(fqn: str, entry: dict, get, path: str) -> nn.Module:
    """The compressed layer of one manifest entry, straight from its canonical tensors
    (get(key) reads one from the shards; no placeholder packed first)."""
    scheme = entry.get("scheme")
    if scheme not in SCHEMES:
        raise ValueError(
            f"{path}: layer '{fqn}': unknown scheme {scheme!r} in the manifest (this tersor "
            f"knows {sorted(SCHEMES)})"
        )
    fmt_cls, fixed = SCHEMES[scheme]
    opts = {k: v for k, v in entry.get("options", {}).items() if k not in fixed}
    prefix = (f"{fqn}." if fqn else "") + ("gemm." if "conv" in entry else "")
    n, k = entry.get("out_features"), entry.get("in_features")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, k)):
        raise ValueError(
            f"{path}: layer '{fqn}': the manifest's in_features / out_features must be positive "
            f"integers, got {k!r} / {n!r}"
        )
    optional = set(getattr(fmt_cls, "optional_state_names", ()))
    try:
        fmt = fmt_cls.from_state(
            lambda name: get(prefix + name, name in optional), prefix, n, k, **fixed, **opts
        )
    except (KeyError, FileNotFoundError):
        raise  # already name the file and the tensor
    except (ValueError, TypeError, RuntimeError) as e:  # options the format does not take, ...
        raise ValueError(f"{path}: layer '{fqn}' does not load ({e})") from e
    if isinstance(fmt, str):
        raise ValueError(f"{path}: layer '{fqn}' does not load ({fmt})")
    bias = None
    if entry["bias"]:
        bias = get(prefix + "bias", False)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"{path}: {prefix}bias: expected ({n},), got {tuple(bias.shape)}")
    try:  # the entry's other fields: the kernel, a convolution's geometry
        gemm = PackedLinear.wrap(fmt, bias, kernel=entry.get("kernel", "auto"), name=fqn)
        if "conv" not in entry:
            return gemm
        c = entry["conv"]
        geometry = nn.Conv2d(
            c["in_channels"],
            c["out_channels"],
            tuple(c["kernel_size"]),
            tuple(c["stride"]),
            tuple(c["padding"]),
            tuple(c["dilation"]),
            groups=c.get("groups", 1),
            device="meta",
        )
        _check_conv_geometry(c, gemm)
        return QConv2d.around(geometry, gemm, fqn)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path}: layer '{fqn}': the manifest's entry does not build ({e!r})"
        ) from e


def _check_conv_geometry(c: dict, gemm) -> None:
    """A convolution's manifest geometry: pairs of integers (kernel, stride, dilation >= 1,
    padding >= 0) that make the packed GEMM's shape, K = kh * kw * C_in / groups and
    N = C_out."""

    def pair(key, lo):
        v = c[key]
        return isinstance(v, list) and len(v) == 2 and all(type(e) is int and e >= lo for e in v)

    ok = all(pair(key, 1) for key in ("kernel_size", "stride", "dilation")) and pair("padding", 0)
    if ok:
        (kh, kw), groups = c["kernel_size"], c.get("groups", 1)
        ok = c["in_channels"] % groups == 0 and (
            kh * kw * (c["in_channels"] // groups),
            c["out_channels"],
        ) == (gemm.in_features, gemm.out_features)
    if not ok:
        raise ValueError(
            f"convolution {c} does not make its packed weight "
            f"[{gemm.out_features}, {gemm.in_features}]"
        )


def load_pretrained(
    model: nn.Module,
    path: str,
    strict: bool = True,
    activations: Optional[str] = None,
    report: bool = False,
    fuse_projections="auto",
):
    """Load a checkpoint folder into `model` (the same architecture, float, possibly on the meta
    device or built under ``tersor.empty_weights()``); returns the model, or (model, Report)
    with report=True.

    - A folder written by ``save_pretrained``: each compressed layer is rebuilt from its
      canonical tensors and swapped in, everything else is loaded (assigned) from the shards.
    - A Hugging Face folder whose config.json has a ``quantization_config`` (compressed-tensors,
      GPTQ, AWQ; tersor/importers/): its quantized layers become tersor layers directly, the
      rest is loaded in the dtype the model was built with. activations: None runs each layer
      as the checkpoint says, "int8" quantizes activations (W4A16 -> W4A8, the faster CPU
      kernel), "int16" runs int4 layers on that kernel over two int8 planes per row (within
      amax / 64516 of the float row: W4A8Config act_bits=16) and the others on float
      activations, "float" keeps them float.

    fuse_projections: as in ``quantize_`` (one packed call for q/k/v where measured faster).
    """
    from tersor import importers

    file = os.path.join(path, MANIFEST)
    if not os.path.exists(file) and importers.is_hf_folder(path):
        from tersor.api import _note_fused

        rep = importers.load_hf(model, path, activations, strict)
        _note_fused(rep, fuse(model, fuse_projections))
        return (model, rep) if report else model
    if not os.path.exists(file):
        raise FileNotFoundError(
            f"{file}: not a tersor checkpoint (no manifest) nor a Hugging Face folder (no "
            f"config.json)"
        )
    if activations is not None:
        raise ValueError(
            f"{path}: activations= applies to imported checkpoints; a tersor checkpoint keeps "
            f"the schemes it was saved with"
        )
    t0 = time.perf_counter()
    load_into(model, path, read_manifest(path), strict)
    notes = fuse(model, fuse_projections)
    if not report:
        return model
    from tersor.api import CONVERTED, LayerReport, Report, _layer_shape

    rows = [
        LayerReport(fqn, _layer_shape(m), m.scheme, 0, m.nbytes, notes.get(fqn, ""), CONVERTED)
        for fqn, m in _compressed_layers(model).items()
    ]
    return model, Report("tersor layers from a tersor checkpoint", rows, time.perf_counter() - t0)


def _check_manifest(file: str, manifest) -> None:
    """The manifest's tables have the types the loader reads them as: a byte changed in the
    file otherwise surfaced as a bare KeyError naming neither the file nor the table."""

    def corrupted(what: str):
        raise ValueError(f"{file}: corrupted manifest ({what})")

    def names(table) -> bool:  # str -> str
        return all(isinstance(k, str) and isinstance(v, str) for k, v in table.items())

    if not isinstance(manifest, dict):
        corrupted("not a table")
    for key, required in (("layers", 1), ("weight_map", 1), ("aliases", 0), ("extra_state", 0)):
        if not isinstance(manifest.get(key, None if required else {}), dict):
            corrupted(f"no '{key}' table")
    if not names(manifest["weight_map"]) or not names(manifest.get("aliases", {})):
        corrupted("'weight_map' / 'aliases' must map tensor names to names")
    non_persistent = manifest.get("non_persistent", [])
    if not isinstance(non_persistent, list) or not all(isinstance(k, str) for k in non_persistent):
        corrupted("'non_persistent' must be a list of names")
    if type(manifest.get("format_version", 0)) is not int:
        corrupted("'format_version' is not an integer")
    for fqn, entry in manifest["layers"].items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("bias"), bool)
            or not isinstance(entry.get("options", {}), dict)
        ):
            corrupted(f"layer '{fqn}': expected a table with 'bias' (true / false) and 'options'")


def read_manifest(path: str) -> dict:
    """The manifest of the tersor checkpoint folder `path` (errors name the file)."""
    file = os.path.join(path, MANIFEST)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: not a tersor checkpoint (no manifest)")
    with open(file, "rb") as f:
        try:
            manifest = json.loads(f.read().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: corrupted manifest ({e})") from e
    _check_manifest(file, manifest)
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{file}: checkpoint format {manifest['format_version']} is newer "
            f"than this tersor's ({FORMAT_VERSION}); upgrade tersor"
        )
    return manifest


def load_into(model: nn.Module, path: str, manifest: dict, strict: bool = True, build=None):
    """Load the checkpoint `path` (its `manifest`) into `model`. build(fqn, entry, get,
    slice_of): the module to install for a compressed layer instead of rebuilding it whole, or
    None (tensor-parallel shards, distributed/: slice_of(key, optional) gives a safetensors
    slice, so only the part asked for is read); such a layer claims every tensor under it."""
    shards = SafetensorsFiles(path, manifest["weight_map"], "the manifest")
    try:
        _load(model, path, manifest, shards, strict, build)
    finally:
        shards.close()


def _load(model, path, manifest, shards, strict, build=None):
    aliases, extra = manifest.get("aliases", {}), manifest.get("extra_state", {})
    weight_map = manifest["weight_map"]

    def get(key, optional=False):
        if key in extra:
            return extra[key]
        if optional and aliases.get(key, key) not in weight_map:
            return None
        return shards.get(aliases.get(key, key))

    def slice_of(key, optional=False):
        if key in extra:
            return extra[key]
        if optional and aliases.get(key, key) not in weight_map:
            return None
        return shards.get_slice(aliases.get(key, key))

    built, custom = {}, set()
    for fqn, entry in manifest["layers"].items():
        layer = None if build is None else build(fqn, entry, get, slice_of)
        if layer is not None:
            custom.add(fqn)
        built[fqn] = _build_layer(fqn, entry, get, path) if layer is None else layer
        # unmapped after each layer: the shard's pages read so far would otherwise stay in the
        # process's resident set until the end (the reopening costs one header parse)
        shards.close()
        release_freed_memory()
    # every tensor under a layer must be one it took
    claimed = set()
    for fqn, layer in built.items():
        if fqn in custom:
            claimed.update(k for k in list(weight_map) + list(extra) if k.startswith(f"{fqn}."))
            continue
        gemm = layer.gemm if isinstance(layer, QConv2d) else layer
        prefix = (f"{fqn}." if fqn else "") + ("gemm." if isinstance(layer, QConv2d) else "")
        names = gemm._state_names() + list(getattr(gemm.fmt, "optional_state_names", ()))
        claimed.update(prefix + n for n in names)
        stray = [
            key
            for key in list(weight_map) + list(extra)
            if key.startswith(f"{fqn}.") and key not in claimed
        ]
        if stray:
            raise ValueError(f"{path}: layer '{fqn}' has tensors it does not take: {stray[:5]}")

    # everything else: the model's own parameters and buffers, assigned from the shards (tied
    # weights stay tied: an alias gets the very tensor its target got)
    def outside(key):
        return not any(key.startswith(f + ".") for f in built)

    non_persistent = set(manifest.get("non_persistent", ()))
    buffers = {k: shards.get(k) for k in non_persistent}
    loaded, rest = {}, {}
    for key in list(weight_map) + list(aliases):
        if key not in claimed and key not in non_persistent and outside(key):
            target = aliases.get(key, key)
            if target not in loaded:
                loaded[target] = shards.get(target)
            rest[key] = loaded[target]
    wanted = {k for k in model.state_dict() if outside(k) and k not in built}
    missing, unexpected = sorted(wanted - set(rest)), sorted(set(rest) - wanted)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path}: the checkpoint does not match the model (missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}); the model is "
            f"unchanged"
        )
    if "" in built:
        raise ValueError(f"{path}: the model itself is a compressed layer; use load_state_dict")
    for fqn, layer in built.items():  # swapped in only once every layer has loaded
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    model.load_state_dict(rest, strict=False, assign=True)
    for key, t in buffers.items():  # stays non-persistent: only the value is set
        owner, _, name = key.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if name in module._buffers:
            module._buffers[name] = t
