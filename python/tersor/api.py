"""quantize_: swap a model's nn.Linear / nn.Conv2d layers for QLinear / QConv2d, all or
nothing, and report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from tersor import pruning
from tersor.configs import (DENSE_FALLBACK_ROWS, LARGE_M_BREAK_EVEN, Sparse24Config,
                            SparseConfig, W4A8Config, W4Config, W8A8Config, W8Config)
from tersor.formats.int4 import effective_group_size
from tersor.nn.block_linear import BlockSparseLinear
from tersor.nn.csr_linear import CsrLinear
from tersor.nn.qconv import QConv2d
from tersor.nn.qlinear import QLinear
from tersor.nn.sparse_linear import SparseLinear

_CONFIGS = (W8A8Config, W8Config, W4Config, W4A8Config)
SPARSE_FP32_SCHEMES = ("2:4", "unstructured", "block")


@dataclass
class LayerReport:
    fqn: str
    shape: tuple  # Linear (out_features, in_features); Conv2d (C_out, C_in, kh, kw)
    scheme: str  # the scheme applied, or "dense"
    bytes_before: int
    bytes_after: int
    reason: str = ""  # why the layer was left dense, or notes on the conversion


@dataclass
class Report:
    """Per-layer outcome of a conversion; ``print(report)`` gives a table."""

    scheme: str
    layers: list = field(default_factory=list)

    @property
    def converted(self) -> list:
        return [r for r in self.layers if r.scheme != "dense"]

    @property
    def skipped(self) -> list:
        return [r for r in self.layers if r.scheme == "dense"]

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    def __str__(self) -> str:
        rows = [("layer", "shape (N, K)", "scheme", "MiB before", "MiB after", "note")]
        for r in self.layers:
            rows.append((r.fqn, str(r.shape), r.scheme, f"{r.bytes_before / 2**20:.3f}",
                         f"{r.bytes_after / 2**20:.3f}", r.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"{len(self.converted)} converted to {self.scheme}, {len(self.skipped)} left "
                     f"dense; linear weights {self.bytes_before / 2**20:.2f} MiB -> "
                     f"{self.bytes_after / 2**20:.2f} MiB")
        return "\n".join(lines)


def _note(q: nn.Module) -> str:
    """What the report says about a converted layer: density reached, kernel, fallbacks."""
    inner = q.gemm if isinstance(q, QConv2d) else q
    note = getattr(inner, "describe", None)
    return note() if note else ""


def _layer_bytes(m: nn.Module) -> int:
    if _is_sparse_fp32(m):
        return m.gemm.nbytes if isinstance(m, QConv2d) else m.nbytes
    return sum(p.numel() * p.element_size() for p in (m.weight, m.bias) if p is not None)


def _layer_shape(m: nn.Module) -> tuple:
    if isinstance(m, QConv2d):
        return (m.out_channels, m.in_channels, *m.kernel_size)
    if _is_sparse_fp32(m):
        return (m.out_features, m.in_features)
    return tuple(m.weight.shape)


def _is_sparse_fp32(m: nn.Module) -> bool:
    """A layer sparsify_ produced with fp32 values: quantize_(W8A8Config()) makes it int8."""
    return hasattr(m, "quantized") and getattr(m, "scheme", "") in SPARSE_FP32_SCHEMES


def _cannot_serve(m: nn.Module, parent: Optional[nn.Module], config) -> str:
    """Why the scheme cannot run this layer, or "" if it can."""
    if _is_sparse_fp32(m):
        if not isinstance(config, W8A8Config):
            return (f"{m.scheme} sparse layer: sparsity combines with W8A8Config only, kept "
                    f"{m.scheme} fp32")
        return ""
    k = m.in_features if isinstance(m, nn.Linear) else None
    if isinstance(m, nn.Conv2d):
        why = QConv2d.unsupported(m)
        if why:
            return why
        k = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    if isinstance(parent, nn.MultiheadAttention):
        return "out_proj of nn.MultiheadAttention (its fused path reads .weight directly)"
    if m.weight.dtype != torch.float32:
        return f"weight dtype {m.weight.dtype}: the kernels take float32 layers"
    if m.weight.device.type != "cpu":
        return f"on {m.weight.device}: no native kernel for this device yet"
    if k > 65536:
        return f"K={k} > 65536 (int32 accumulator bound)"
    if k == 0 or m.weight.shape[0] == 0:
        return "empty layer"
    if isinstance(config, (W4Config, W4A8Config)):
        try:
            effective_group_size(k, config.group_size)
        except ValueError:
            return (f"K={k} is not a multiple of group_size={config.group_size} (not padded; "
                    f"group_size=-1 would serve it)")
    return ""


def sparsify_(model: nn.Module, config, filter_fn: Optional[Callable] = None,
              calibration=None) -> Report:
    """Prune (if needed) and swap layers for sparse ones; all or nothing, like quantize_.

    Sparse24Config: every eligible ``nn.Linear`` becomes a SparseLinear and ``nn.Conv2d`` a
    2:4 QConv2d (2:4 along the patch order (kh, kw, C_in)). SparseConfig: every ``nn.Linear``
    becomes a CsrLinear (block=None) or a BlockSparseLinear (block=(r, c)), except layers left
    denser than the format's break-even, which stay dense (pruned) and are reported "too dense
    to gain". Weights already sparse enough in the requested pattern are kept as they are.

    calibration: model input(s) (a tensor, a tuple of args, a dict of kwargs, or a callable
    run as calibration(model)) run once to score weights by Wanda's |w| * ||x_k|| instead
    of |w|.
    Returns a Report (per layer: scheme, bytes before / after, density and kernel notes).
    """
    if not isinstance(config, (Sparse24Config, SparseConfig)):
        raise TypeError(f"tersor.sparsify_: config must be a Sparse24Config or SparseConfig, "
                        f"got {type(config).__name__}")
    ctx = {"norms": None, "threshold": None}

    def prepare(layers):
        if calibration is not None:
            ctx["norms"] = pruning.input_norms(model, layers, calibration)
        if isinstance(config, SparseConfig) and config.scope == "global" and config.prune:
            ctx["threshold"] = pruning.global_threshold(layers, ctx["norms"], config)

    if isinstance(config, Sparse24Config):
        def build(m, fqn):
            swap = QConv2d if isinstance(m, nn.Conv2d) else SparseLinear
            return swap.from_float(m, config, name=fqn, score=pruning.score(m, ctx["norms"]))

        return _convert(model, config, filter_fn, "sparsify_",
                        lambda m: isinstance(m, (nn.Linear, nn.Conv2d)), build, prepare)

    def build_sparse(m, fqn):
        w = pruning.prune_layer(m, config, ctx["norms"], ctx["threshold"], f"layer '{fqn}'")
        sparsity = 1.0 - float((w != 0).float().mean())
        if sparsity < config.break_even:
            raise _KeepDense(w, f"kept dense: too dense to gain (sparsity {sparsity:.2f} < "
                                f"measured break-even {config.break_even:.2f})")
        if config.block is not None:
            return BlockSparseLinear.from_float(m, w, name=fqn)
        fallback = config.dense_fallback and sparsity < LARGE_M_BREAK_EVEN
        return CsrLinear.from_float(m, w, name=fqn,
                                    dense_from_rows=DENSE_FALLBACK_ROWS if fallback else None)

    return _convert(model, config, filter_fn, "sparsify_",
                    lambda m: isinstance(m, nn.Linear), build_sparse, prepare)


class _KeepDense(Exception):
    """A builder's answer that the layer stays an nn.Linear (with this pruned weight)."""

    def __init__(self, weight, reason):
        super().__init__(reason)
        self.weight, self.reason = weight, reason


def quantize_(model: nn.Module, config, filter_fn: Optional[Callable] = None) -> Report:
    """Replace every eligible ``nn.Linear`` / ``nn.Conv2d`` of ``model`` in place; returns a
    Report.

    ``filter_fn(module, fqn) -> bool`` picks layers. Layers the scheme cannot serve are left
    dense and listed with the reason. All replacements are built before any is installed, so a
    failure leaves the model exactly as it was (the error names the layer).
    """
    if not isinstance(config, _CONFIGS):
        raise TypeError(f"tersor.quantize_: config must be one of "
                        f"{[c.__name__ for c in _CONFIGS]}, got {type(config).__name__}")

    def build(m, fqn):
        if _is_sparse_fp32(m):
            return m.quantized(config)
        swap = QConv2d if isinstance(m, nn.Conv2d) else QLinear
        return swap.from_float(m, config, name=fqn)

    return _convert(model, config, filter_fn, "quantize_",
                    lambda m: isinstance(m, (nn.Linear, nn.Conv2d)) or _is_sparse_fp32(m),
                    build)


def _convert(model, config, filter_fn, verb, eligible, build, prepare=None) -> Report:
    """Shared walk of quantize_ / sparsify_: plan, prepare(planned layers) (calibration,
    global thresholds), build every replacement, then install."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"tersor.{verb}: model must be an nn.Module, got {type(model).__name__}")
    if type(model) in (nn.Linear, nn.Conv2d):
        raise ValueError(f"tersor.{verb}: the model is a bare nn.{type(model).__name__}, which "
                         f"cannot be swapped in place; wrap it (nn.Sequential(layer)) or use "
                         f"the layer class's from_float")
    report = Report(config.scheme)

    parents = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        for cname, child in parent._modules.items():  # named_children() drops repeats
            if child is not None:
                parents.setdefault(f"{pname}.{cname}" if pname else cname, (parent, cname))

    plan, seen = [], {}
    for fqn, (parent, cname) in parents.items():
        m = parent._modules[cname]
        if not eligible(m) or isinstance(parent, QConv2d):  # a QConv2d converts its own gemm
            continue
        shape = _layer_shape(m)
        size = _layer_bytes(m)
        reason = _cannot_serve(m, parent, config)
        if not reason and fqn in getattr(config, "skip_names", ()):
            reason = "listed in config.skip_names"
        if not reason and filter_fn is not None and not filter_fn(m, fqn):
            reason = "filter_fn returned False"
        if reason:
            report.layers.append(LayerReport(fqn, shape, "dense", size, size, reason))
            continue
        plan.append((fqn, parent, cname, m))

    if prepare is not None:
        try:
            prepare(list({id(m): m for *_, m in plan}.values()))
        except Exception as e:
            raise type(e)(f"tersor.{verb}: {e}; the model is unchanged") from e
    built = {}
    for fqn, parent, cname, m in plan:
        if id(m) in seen:  # a module shared under several names is converted once
            continue
        try:
            built[id(m)] = build(m, fqn)
        except _KeepDense as keep:
            built[id(m)] = keep
        except Exception as e:
            raise type(e)(f"tersor.{verb}: converting '{fqn}' failed ({e}); the model is "
                          f"unchanged") from e
        seen[id(m)] = fqn

    for fqn, parent, cname, m in plan:
        q = built[id(m)]
        if isinstance(q, _KeepDense):
            with torch.no_grad():
                m.weight.copy_(q.weight)
            size = _layer_bytes(m)
            report.layers.append(LayerReport(fqn, tuple(m.weight.shape), "dense", size, size,
                                             q.reason))
            continue
        setattr(parent, cname, q)
        nbytes = q.gemm.nbytes if isinstance(q, QConv2d) else q.nbytes
        report.layers.append(LayerReport(fqn, _layer_shape(m), q.scheme, _layer_bytes(m),
                                         nbytes, _note(q)))
    return report
