"""quantize_ / sparsify_: swap a model's nn.Linear / nn.Conv2d layers for tersor layers, all or
nothing, and report.

Each config type has a handler (``register_handler``, as torchao's
``register_quantize_module_handler``): which modules it takes, why it cannot serve one, and
how it builds the layer. quantize_, sparsify_ and every ``from_float`` go through the same
handlers, so a new scheme is a format object + a config + a handler, with no change here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from tersor import _C, pruning
from tersor._heap import release_freed_memory
from tersor.configs import (
    DENSE_FALLBACK_ROWS,
    LARGE_M_BREAK_EVEN,
    Config,
    Sparse24Config,
    SparseConfig,
    W4A8Config,
    W4Config,
    W8A8Config,
    W8Config,
    _QuantConfig,
)
from tersor.formats import BlockFormat, CsrFormat, Int4Format, Int8Format, Sparse24Format
from tersor.formats.base import dense_of_rows
from tersor.formats.int4 import GROUP_SIZES, dequantize_int4, effective_group_size, quantize_int4
from tersor.formats.int8 import quantize_per_channel_int8, weight_qmax
from tersor.formats.sparse_block import check_block
from tersor.formats.sparse_csr import csr_from_rows, from_csr
from tersor.nn.fused import fuse_projections as fuse
from tersor.nn.linear import PackedLinear
from tersor.nn.qconv import QConv2d

# ---- report -------------------------------------------------------------------------------------

CONVERTED, DENSE, KEPT = "converted", "dense", "already compressed"


@dataclass
class LayerReport:
    fqn: str
    shape: tuple  # Linear (out_features, in_features); Conv2d (C_out, C_in, kh, kw)
    scheme: str  # the scheme applied (or kept), or "dense"
    bytes_before: int
    bytes_after: int
    reason: str = ""  # why the layer was left dense or kept, or notes on the conversion
    status: str = CONVERTED  # CONVERTED, DENSE or KEPT (compressed before this call)


@dataclass
class Report:
    """Per-layer outcome of a conversion, in model order; ``print(report)`` gives a table."""

    scheme: str
    layers: list = field(default_factory=list)
    seconds: float = 0.0  # the whole call
    calibration_seconds: float = 0.0  # of which calibration (method="gptq")

    @property
    def converted(self) -> list:
        return [r for r in self.layers if r.status == CONVERTED]

    @property
    def skipped(self) -> list:
        return [r for r in self.layers if r.status == DENSE]

    @property
    def kept(self) -> list:
        return [r for r in self.layers if r.status == KEPT]

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    def __str__(self) -> str:
        rows = [("layer", "shape", "scheme", "MiB before", "MiB after", "note")]
        for r in self.layers:
            rows.append(
                (
                    r.fqn,
                    "x".join(map(str, r.shape)),
                    r.scheme,
                    f"{r.bytes_before / 2**20:.3f}",
                    f"{r.bytes_after / 2**20:.3f}",
                    r.reason,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        kept = f", {len(self.kept)} already compressed (kept)" if self.kept else ""
        lines.append(
            f"{len(self.converted)} converted to {self.scheme}{kept}, "
            f"{len(self.skipped)} left dense; weights {self.bytes_before / 2**20:.2f} "
            f"MiB -> {self.bytes_after / 2**20:.2f} MiB in {self.seconds:.1f} s"
            + (
                f" ({self.calibration_seconds:.1f} s calibrating)"
                if self.calibration_seconds
                else ""
            )
        )
        return "\n".join(lines)


# ---- handlers -----------------------------------------------------------------------------------


class KeepDense(Exception):
    """A handler's answer that the layer stays an nn.Linear (with this pruned weight)."""

    def __init__(self, weight, reason):
        super().__init__(reason)
        self.weight, self.reason = weight, reason


@dataclass
class Context:
    """What a conversion call knows beyond the layer: Wanda input norms (calibration), a
    global pruning threshold."""

    norms: Optional[dict] = None
    threshold: Optional[float] = None
    # id(layer) -> the calibrated result: a format (quantization), a pruned weight (SparseGPT)
    solved: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # id(layer) -> a line for the report
    calibration_s: float = 0.0
    # input scales folded into the ops before the layers (calibration/smooth.py):
    # id(producer) -> (producer, t), its output channels multiplied by t when installed
    folds: dict = field(default_factory=dict)
    bias_scale: dict = field(default_factory=dict)  # id(converted producer) -> t, for its bias
    masks: dict = field(default_factory=dict)  # id(stand-in of a sparse layer) -> kept [N, K]


@dataclass(frozen=True)
class Handler:
    verb: str  # "quantize_" or "sparsify_": the entry point that takes the config
    convert: Callable  # (module, config, ctx, name) -> nn.Module, or raise KeepDense
    kinds: tuple = (nn.Linear, nn.Conv2d)  # float modules it converts
    hf_conv1d: bool = False  # also transformers' Conv1D (GPT-2's projections, weight [in, out])
    cannot_serve: Optional[Callable] = None  # (module, config) -> reason or ""
    prepare: Optional[Callable] = None  # (model, layers, config, calibration, ctx, progress)

    def accepts(self, m: nn.Module) -> bool:
        return isinstance(m, self.kinds) or (self.hf_conv1d and _is_hf_conv1d(m))


_HANDLERS: dict = {}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _is_hf_conv1d(m: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D (y = x @ W + b, W [in, out]), known by its shape so
    that transformers need not be imported."""
    return (
        type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None
    )


def register_handler(config_type: type, verb: str, **kw):
    """Decorator: fn(module, config, ctx, name) builds the layer for config_type."""

    def deco(fn):
        _HANDLERS[config_type] = Handler(verb, fn, **kw)
        return fn

    return deco


def _handler(config, verb: str) -> Handler:
    h = _HANDLERS.get(type(config))
    if h is None or h.verb != verb:
        names = sorted(t.__name__ for t, h in _HANDLERS.items() if h.verb == verb)
        raise TypeError(
            f"tersor.{verb}: config must be one of {names}, got {type(config).__name__}"
        )
    return h


def _label(name: str) -> str:
    return f"layer '{name}'" if name else "layer"


def _gemm_weight(m: nn.Module, widen: bool = True) -> torch.Tensor:
    """The float32 [N, K] weight a module's GEMM multiplies (convolutions in NHWC patch order,
    a transformers Conv1D's [in, out] weight transposed; bf16 / fp16 weights widened, unless
    widen=False: for the formats whose from_float widens a row block at a time, so a bf16
    model's conversion never holds an fp32 copy of a whole weight)."""
    if isinstance(m, nn.Conv2d):
        w = QConv2d.gemm_weight(m)
    else:
        w = m.weight.detach()
        w = w.t() if _is_hf_conv1d(m) else w
    return w.to(torch.float32) if widen else w


def _gemm_shape(m: nn.Module) -> tuple:
    """(N, K) of _gemm_weight(m), without building it."""
    w = m.weight
    if isinstance(m, nn.Conv2d):  # merged narrow groups: QConv2d.kernel_groups
        return w.shape[0], w[0].numel() * (m.groups // QConv2d.kernel_groups(m))
    return tuple(w.shape[::-1]) if _is_hf_conv1d(m) else tuple(w.shape)


def _layer_layout(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """A GEMM weight [N, K] (_gemm_weight's layout) in the module's own weight layout."""
    if isinstance(m, nn.Conv2d):  # [C_out, C_in / groups, kh, kw] from the NHWC patch order
        kh, kw = m.kernel_size
        return w.view(w.shape[0], kh, kw, -1).permute(0, 3, 1, 2)
    return w.t() if _is_hf_conv1d(m) else w


def _build(m: nn.Module, fmt, config, name: str, bias_scale=None) -> nn.Module:
    """The layer of `fmt` in m's place (bias_scale: a consumer's input scale folded into this
    layer's output rows, calibration/smooth.py)."""
    kernel = getattr(config, "kernel", "auto")
    bias = m.bias
    if bias is not None and bias_scale is not None:
        bias = bias.detach().float() * bias_scale
    gemm = PackedLinear.wrap(fmt, bias, kernel=kernel, name=name)
    return QConv2d.around(m, gemm, name) if isinstance(m, nn.Conv2d) else gemm


def _cannot_serve_int4(m, config) -> str:
    k = _gemm_shape(m)[1]
    try:
        effective_group_size(k, config.group_size)
    except ValueError:
        return (
            f"K={k} is not a multiple of group_size={config.group_size} (not padded; "
            f"group_size=-1 would serve it)"
        )
    return ""


def _solved_format(solved, config):
    """The format of a GPTQ result: the same formats round-to-nearest builds."""
    if isinstance(config, (W4Config, W4A8Config)):
        return Int4Format(
            solved.q,
            solved.scale,
            solved.zero,
            config.group_size,
            config.scheme == "w4a8",
            config.symmetric,
            solved.perm,
            act_bits=getattr(config, "act_bits", 8),
        )
    return Int8Format(solved.q, solved.scale, act_int8=config.scheme == "w8a8")


def quantize_with(fmt_cls) -> Callable:
    """The handler of a quantization config whose layers hold `fmt_cls` formats built from
    the float weight by ``fmt_cls.from_float(weight, config)``, or from the GPTQ result the
    calibration left in ctx.solved."""

    def convert(m, config, ctx, name):
        fmt = ctx.solved.get(id(m))
        if fmt is None:
            w = _gemm_weight(m, widen=not fmt_cls.widens_by_rows)
            fmt = fmt_cls.from_float(w, config, what=_label(name))
        return _build(m, fmt, config, name, ctx.bias_scale.get(id(m)))

    return convert


def _rtn_dequantized(w: torch.Tensor, config, group_size=None) -> torch.Tensor:
    """Round-to-nearest of float [N, K] on the config's grid (int4: groups of group_size,
    default the config's), dequantized (the rules of the formats' from_float, unpacked)."""
    if isinstance(config, (W4Config, W4A8Config)):
        g = config.group_size if group_size is None else group_size
        g = g if g in GROUP_SIZES else -1
        if w.is_cpu and w.dtype == torch.float32 and w.dim() == 2:  # one native pass
            n, k = w.shape
            w = w.contiguous()
            out = torch.empty_like(w)
            g = effective_group_size(k, g)
            _C.rtn_int4(
                w.data_ptr(), n, k, g, config.symmetric, out.data_ptr(), torch.get_num_threads()
            )
            return out
        q, s, z, g = quantize_int4(w, g, config.symmetric)
        return dequantize_int4(q, s, z, g)
    q, s = quantize_per_channel_int8(w, qmax=weight_qmax(config))
    return q.float() * s[:, None]


def _calibrate(model, layers, config, calibration, ctx, progress=None):
    """Calibrated quantization, block by block (tersor/calibration): method="gptq" (error
    feedback), method="awq" or smooth=alpha (input scales, folded into the op before the
    layers where the block proves it exact, else kept by the layer; calibration/smooth.py),
    method="awq+gptq" (AWQ's scales, then GPTQ on the scaled weights)."""
    if config.method == "rtn" and config.smooth is None:
        return
    if calibration is None:
        what = f"method={config.method!r}" if config.smooth is None else "smooth="
        raise ValueError(f"{what} needs calibration= (inputs of the model)")
    # grouped / depthwise convolutions: each group of outputs has inputs of its own, not the
    # shared input GPTQ and the input-scale methods solve for; they are rounded to nearest
    for m in [m for m in layers if isinstance(m, nn.Conv2d) and m.groups > 1]:
        what = "depthwise" if m.groups == m.in_channels else "grouped"
        ctx.notes[id(m)] = f"{what}: round to nearest (no shared input to calibrate on)"
    layers = [m for m in layers if not (isinstance(m, nn.Conv2d) and m.groups > 1)]
    awq = config.method in ("awq", "awq+gptq")
    use_gptq = config.method in ("gptq", "awq+gptq")
    if awq and hasattr(calibration, "reduce_hessians"):
        raise ValueError(
            f"method={config.method!r} searches on the calibration rows themselves; it cannot run "
            "data-parallel (tersor.distributed.DataParallel): use method='gptq' or smooth="
        )
    from tersor.calibration import blocks, gptq, smooth

    int4 = isinstance(config, (W4Config, W4A8Config))
    fmt_cls = Int4Format if int4 else Int8Format
    act_int8 = config.scheme in ("w8a8", "w4a8")
    scaled = awq or config.smooth is not None
    names = {id(m): n for n, m in model.named_modules()} if scaled else {}
    in_scale, row_scale, kept = {}, {}, set()  # id -> s (x / s), producer rows, in-layer
    samples = {}  # id -> sampled input rows (AWQ's clip search), one block's at a time

    def scales(block, mine, hs, inputs):
        samples.clear()
        # convolutions are solved without input scales (round to nearest, or gptq)
        mine = [m for m in mine if not isinstance(m, nn.Conv2d)]
        for group in smooth.input_groups(mine, hs):
            ws = [_gemm_weight(m) for m in group]
            mean_abs, max_abs, sample = hs.input_stats(group[0])
            if awq:  # the search measures round to nearest, also ahead of GPTQ
                s, alpha, err, base = smooth.awq_scale(
                    ws, sample, mean_abs, lambda w: _rtn_dequantized(w, config), act_int8
                )
                how = f"alpha {alpha:.2f} (search error {err / max(base, 1e-30):.2f}x rtn's)"
            else:
                s = smooth.smooth_scale(ws, max_abs, config.smooth)
                how = f"alpha {config.smooth:g}"
            p = None if block is None else smooth.find_fold(block, group, *inputs[0])
            if p is not None:
                ctx.folds[id(p)] = (p, 1.0 / s)
                if id(p) in ctx_targets:
                    row_scale[id(p)] = 1.0 / s
                where = f"input scale folded into '{names.get(id(p), type(p).__name__)}'"
            else:
                kept.update(id(m) for m in group)
                where = "input scale kept by the layer (no op before it can absorb it)"
            for m in group:
                in_scale[id(m)] = s
                ctx.notes[id(m)] = f"{how}; {where}"
                if config.method == "awq":  # the clip search (GPTQ picks its own grids)
                    samples[id(m)] = sample / s

    ctx_targets = {id(m) for m in layers}
    shared = []  # (hessian, Prepared): q / k / v read the same input, one Cholesky serves

    def solve(m, hessian, rows):
        w0 = _gemm_weight(m)
        w, h = w0, hessian
        s, r = in_scale.get(id(m)), row_scale.get(id(m))
        if r is not None:  # a consumer's scale folded into this layer's output rows
            w = w * r[:, None]
        if s is not None:  # x / s meets W diag(s); the Hessian of x / s
            w = w * s[None, :]
            h = hessian / s[:, None] / s[None, :]
        if use_gptq:
            g = effective_group_size(w.shape[1], config.group_size) if int4 else None
            grid = (
                gptq.Int4Grid(g, config.symmetric) if int4 else gptq.Int8Grid(weight_qmax(config))
            )
            prep = next((p for hh, p in shared if hh.shape == h.shape and torch.equal(hh, h)), None)
            if prep is None:
                prep = gptq.prepare(h, config.damp, config.act_order)
                shared[:] = [(h, prep)]  # siblings are solved one after another
            mask = ctx.masks.get(id(m))
            got = gptq.gptq(w, prep, grid, mask=mask, measure=False)
            deq = got.dequantized
            # a sparse layer takes int8 values (nn/linear.py quantized), the others a format
            fmt = (got.q, got.scale) if mask is not None else _solved_format(got, config)
        else:
            if id(m) in samples:  # awq: the clipped ranges, then round to nearest
                g = effective_group_size(w.shape[1], config.group_size) if int4 else w.shape[1]
                w = smooth.awq_clip(
                    w, samples[id(m)], g, lambda wc: _rtn_dequantized(wc, config, g)
                )
            fmt = fmt_cls.from_float(w, config)
            deq = fmt.dequantize()
        if id(m) in kept:
            fmt = fmt.with_input_scale(1.0 / s)
        # the weight standing in for the layer in the rest of the pass, in the model's terms
        eff = deq if s is None else deq / s[None, :]
        eff = eff if r is None else eff / r[:, None]
        ctx.solved[id(m)] = fmt
        if r is not None:
            ctx.bias_scale[id(m)] = r
        # round to nearest of the rows the error is measured on (the grids are per row)
        pick = gptq.error_rows(*w0.shape)
        w_rows = w0 if pick is None else w0[pick]
        energy = gptq.output_energy(w_rows, hessian)
        err = gptq.output_error(eff - w0, w0, hessian, energy)
        rtn_err = gptq.output_error(
            _rtn_dequantized(w_rows, config) - w_rows, w_rows, hessian, energy
        )
        how = {"rtn": "round to nearest"}.get(config.method, config.method)
        if config.smooth is not None:
            how = f"smoothquant + {how}"
        scale_note = ctx.notes.get(id(m), "")
        ctx.notes[id(m)] = f"{how} over {rows} calibration rows: output error {err:.2e} " + (
            f"(round to nearest {rtn_err:.2e})" + (f"; {scale_note}" if scale_note else "")
        )
        return _layer_layout(m, eff)

    ctx.calibration_s = blocks.calibrate(
        model, layers, calibration, solve, progress, scales if scaled else None
    )


for _cfg, _fmt, _why in [
    (W8A8Config, Int8Format, None),
    (W8Config, Int8Format, None),
    (W4Config, Int4Format, _cannot_serve_int4),
    (W4A8Config, Int4Format, _cannot_serve_int4),
]:
    register_handler(_cfg, "quantize_", cannot_serve=_why, hf_conv1d=True, prepare=_calibrate)(
        quantize_with(_fmt)
    )


def _wanda(model, layers, config, calibration, ctx, progress=None):
    """Scores from calibration: Wanda's input norms (prune=True or "wanda"), or SparseGPT's
    pruned and updated weights in ctx.solved (prune="sparsegpt", block by block)."""
    if config.prune in ("wanda", "sparsegpt") and calibration is None:
        raise ValueError(f"prune={config.prune!r} needs calibration= (inputs of the model)")
    if config.prune == "sparsegpt":
        _sparsegpt(model, layers, config, calibration, ctx, progress)
    elif calibration is not None and config.prune in (True, "wanda"):
        if hasattr(calibration, "reduce_hessians"):
            raise ValueError(
                "Wanda's scores come from this process's calibration rows; data-parallel "
                "calibration (tersor.distributed.DataParallel) serves prune='sparsegpt'"
            )
        ctx.norms = pruning.input_norms(model, layers, calibration)


def _sparsegpt(model, layers, config, calibration, ctx, progress):
    from tersor.calibration import blocks, gptq, sparsegpt

    n_of_4 = isinstance(config, Sparse24Config)
    if not n_of_4 and (config.block is not None or config.scope != "layer"):
        raise ValueError("prune='sparsegpt' makes 2:4 or unstructured layer-scope sparsity")

    def solve(m, hessian, rows):
        w = _gemm_weight(m)
        prep = gptq.prepare(hessian)
        got = sparsegpt.sparsegpt(w, prep, n_of_4=n_of_4, sparsity=getattr(config, "sparsity", 0.5))
        ctx.solved[id(m)] = got
        err = gptq.output_error(got - w, w, hessian)
        ctx.notes[id(m)] = f"sparsegpt over {rows} calibration rows: output error {err:.2e}"
        return _layer_layout(m, got)

    ctx.calibration_s = blocks.calibrate(model, layers, calibration, solve, progress)


def _score(m, ctx):
    s = pruning.score(m, ctx.norms)
    if s is not None and s.dim() == 4:  # the 2:4 groups run along the GEMM's K order too
        s = s.permute(0, 2, 3, 1).reshape(s.shape[0], -1)
    return s


@register_handler(Sparse24Config, "sparsify_", prepare=_wanda)
def _sparsify_24(m, config, ctx, name):
    w = ctx.solved.get(id(m))  # SparseGPT's weight: 2:4 already
    w = _gemm_weight(m, widen=False) if w is None else w
    fmt = Sparse24Format.from_float(w, config, what=_label(name), score=_score(m, ctx))
    return _build(m, fmt, config, name)


def _cannot_serve_sparse(m, config) -> str:
    if config.block is not None:
        try:
            check_block(config.block, *m.weight.shape)
        except ValueError as e:
            return f"{e}: left dense"
    return ""


def _prepare_sparse(model, layers, config, calibration, ctx, progress=None):
    _wanda(model, layers, config, calibration, ctx, progress)
    if config.scope == "global" and config.prune:
        ctx.threshold = pruning.global_threshold(layers, ctx.norms, config)


@register_handler(
    SparseConfig,
    "sparsify_",
    kinds=(nn.Linear,),
    cannot_serve=_cannot_serve_sparse,
    prepare=_prepare_sparse,
)
def _sparsify(m, config, ctx, name):
    """Pruned and packed a row block at a time (formats/sparse_csr.py, sparse_block.py): the
    pruned weight is never built whole."""
    what = _label(name)
    n, k = m.weight.shape
    w = ctx.solved.get(id(m))  # SparseGPT's weight, pruned already
    if w is not None:
        rows = lambda r0, r1: w[r0:r1]  # noqa: E731
    elif config.block is not None:
        rows = pruning.prune_blocks(m, config, ctx.norms, ctx.threshold, what)[2]
    else:
        rows = pruning.unstructured_rows(m, config, ctx.norms, ctx.threshold, what)
    if config.block is not None:
        nnz = pruning.count_nonzero(n, k, rows)
        _keep_dense_below_break_even(n * k, nnz, config, lambda: dense_of_rows(n, k, rows))
        return _build(m, BlockFormat.from_float((n, k, rows), what=what), config, name)
    csr = csr_from_rows(n, k, rows)
    sparsity = _keep_dense_below_break_even(
        n * k, len(csr[1]), config, lambda: from_csr(*csr, n, k)
    )
    fallback = config.dense_fallback and sparsity < LARGE_M_BREAK_EVEN
    fmt = CsrFormat(*csr, n, k, dense_from_rows=DENSE_FALLBACK_ROWS if fallback else None)
    return _build(m, fmt, config, name)


def _keep_dense_below_break_even(numel: int, nnz: int, config, dense) -> float:
    """The layer's sparsity, or KeepDense(dense()) below the config's measured break-even."""
    sparsity = 1.0 - nnz / max(numel, 1)
    if sparsity < config.break_even:
        raise KeepDense(
            dense(),
            f"kept dense: too dense to gain (sparsity {sparsity:.2f} < measured "
            f"break-even {config.break_even:.2f})",
        )
    return sparsity


# ---- the walk -----------------------------------------------------------------------------------


def _compressed(m: nn.Module) -> bool:
    return isinstance(m, (PackedLinear, QConv2d))


def _sparse_standins(plan: list, config, calibration) -> list:
    """[(parent, name, sparse layer, float stand-in)] for the sparse fp32 layers that
    quantize_(W8A8Config(method="gptq"), calibration=...) gives GPTQ-chosen int8 values, the
    sparsity pattern held (ctx.masks)."""
    if (
        calibration is None
        or not isinstance(config, W8A8Config)
        or config.method != "gptq"
        or config.smooth is not None
    ):
        return []
    out = []
    for _fqn, parent, cname, m in plan:
        if _compressed(m) and m.scheme in ("2:4", "unstructured", "block"):
            out.append((parent, cname, m, m.to_float()))
    return out


def _layer_bytes(m: nn.Module) -> int:
    if _compressed(m):
        return m.nbytes
    return sum(p.numel() * p.element_size() for p in (m.weight, m.bias) if p is not None)


def _layer_shape(m: nn.Module) -> tuple:
    if isinstance(m, QConv2d):
        return (m.out_channels, m.in_channels, *m.kernel_size)
    if isinstance(m, PackedLinear):
        return (m.out_features, m.in_features)
    return tuple(m.weight.shape[::-1]) if _is_hf_conv1d(m) else tuple(m.weight.shape)


def _cannot_serve(m: nn.Module, parent: Optional[nn.Module], config, handler) -> str:
    """Why the config cannot convert this float layer, or "" if it can (handler None: only the
    checks every scheme shares; from_float lets the format raise its own, fuller error)."""
    if isinstance(m, nn.Conv2d):
        why = QConv2d.unsupported(m, getattr(config, "scheme", "w8a8"))
        if why:
            return why
    if isinstance(parent, nn.MultiheadAttention):
        return "out_proj of nn.MultiheadAttention (its fused path reads .weight directly)"
    if m.weight.dtype not in _FLOATS:
        return f"weight dtype {m.weight.dtype}: the kernels take float32 / bf16 / fp16 layers"
    if m.weight.device.type != "cpu":
        return f"on {m.weight.device}: no native kernel for this device yet"
    n, k = _gemm_shape(m)
    if k > 65536:
        return f"K={k} > 65536 (int32 accumulator bound)"
    if k == 0 or n == 0:
        return "empty layer"
    return handler.cannot_serve(m, config) if handler and handler.cannot_serve else ""


def _upgrade(m: nn.Module, config) -> str:
    """Why an already compressed layer stays as it is under `config` ("" when it changes:
    a sparse fp32 layer given W8A8Config gets int8 values)."""
    if isinstance(config, W8A8Config) and m.scheme in ("2:4", "unstructured", "block"):
        if config.weight_bits != 8:
            return (
                f"{m.scheme} sparse layer: its int8 values are 8-bit only "
                f"(weight_bits={config.weight_bits} serves dense layers), kept {m.scheme} fp32"
            )
        return ""
    if m.scheme in ("2:4", "unstructured", "block") and isinstance(config, _QuantConfig):
        return (
            f"{m.scheme} sparse layer: sparsity combines with W8A8Config only, kept {m.scheme} fp32"
        )
    return f"already {m.scheme}; left as it is (convert from the float model to change it)"


def sparsify_(
    model: nn.Module,
    config,
    filter_fn: Optional[Callable] = None,
    calibration=None,
    progress: Optional[bool] = None,
) -> Report:
    """Prune (if needed) and swap layers for sparse ones; all or nothing, like quantize_.

    Sparse24Config: every eligible ``nn.Linear`` / ``nn.Conv2d`` gets a 2:4 weight (2:4 along
    the patch order (kh, kw, C_in) for a convolution). SparseConfig: every ``nn.Linear``
    becomes unstructured (block=None) or block-sparse (block=(r, c)), except layers left
    denser than the format's break-even, which stay dense (pruned) and are reported "too dense
    to gain", and layers the block does not divide (left dense, reported). Weights already
    sparse enough in the requested pattern are kept as they are.

    calibration: model input(s) (a tensor, a tuple of args, a dict of kwargs, or a callable
    run as calibration(model)) run once to score weights by Wanda's |w| * ||x_k|| instead
    of |w|. Returns a Report (per layer: scheme, bytes before / after, density and kernel).
    """
    report = _convert(model, config, filter_fn, "sparsify_", calibration, progress)
    t0 = time.perf_counter()
    release_freed_memory()  # the pruning's temporaries (tersor/_heap.py)
    report.seconds += time.perf_counter() - t0
    return report


def quantize_(
    model: nn.Module,
    config,
    filter_fn: Optional[Callable] = None,
    progress: Optional[bool] = None,
    fuse_projections="auto",
    calibration=None,
) -> Report:
    """Replace every eligible ``nn.Linear`` / ``nn.Conv2d`` of ``model`` in place; returns a
    Report.

    ``filter_fn(module, fqn) -> bool`` picks layers. Layers the scheme cannot serve are left
    dense and listed with the reason. Layers sparsify_ made (fp32 values) get int8 values with
    W8A8Config; other compressed layers are listed as already compressed and left as they are.
    All replacements are built before any is installed, so a failure leaves the model exactly
    as it was (the error names the layer). Hugging Face models convert in one call: their
    ``Conv1D`` projections (GPT-2) too, bf16 / fp16 layers too (the layers then take and
    return bf16 / fp16 activations), lm_head included unless ``filter_fn`` says otherwise.
    progress: a progress bar over the layers (tqdm); None shows it when stderr is a terminal.
    fuse_projections: sibling projections that read the same input (q/k/v, gate/up,
    query/key/value) run as one packed call where that was measured faster ("auto": groups of
    small layers), for every group (True) or never (False); the module tree stays the
    model's, numbers do not change (tersor/nn/fused.py).
    calibration: inputs of the model for config.method="gptq" (a tensor, a tuple / dict of
    arguments, a list of batches, a DataLoader, or a callable run as calibration(model);
    tersor/calibration/data.py), run block by block; the time is in report.seconds and each
    layer's output error against round-to-nearest in its reason.
    """
    report = _convert(model, config, filter_fn, "quantize_", calibration, progress)
    t0 = time.perf_counter()
    _note_fused(report, fuse(model, fuse_projections))
    release_freed_memory()  # the per-layer temporaries (tersor/_heap.py)
    report.seconds += time.perf_counter() - t0
    return report


def _note_fused(report: Report, notes: dict) -> None:
    for r in report.layers:
        if r.fqn in notes and r.status == CONVERTED:
            r.reason = "; ".join(x for x in (r.reason, notes[r.fqn]) if x)


def convert_module(module: nn.Module, config, *, name: str = "", calibration=None) -> nn.Module:
    """One layer through its config's handler (the layers' ``from_float``)."""
    if not isinstance(config, Config) or type(config) not in _HANDLERS:
        raise TypeError(
            f"from_float: config must be one of "
            f"{sorted(t.__name__ for t in _HANDLERS)}, got {type(config).__name__}"
        )
    handler = _HANDLERS[type(config)]
    ctx = Context()
    if _compressed(module):
        why = _upgrade(module, config)
        if why:
            raise ValueError(f"{_label(name)}: {why}")
        return module.quantized(config)
    if not handler.accepts(module):
        raise TypeError(
            f"{_label(name)}: {type(config).__name__} converts "
            f"{[k.__name__ for k in handler.kinds]}, got {type(module).__name__}"
        )
    why = _cannot_serve(module, None, config, None)
    if why:
        raise ValueError(f"{_label(name)}: {why}")
    if handler.prepare is not None:
        # the layer is its own model: calibration holds its inputs [..., in_features]
        handler.prepare(module, [module], config, calibration, ctx)
    try:
        return handler.convert(module, config, ctx, name)
    except KeepDense as keep:
        raise ValueError(f"{_label(name)}: {keep.reason}") from None


def _progress(items: list, verb: str, enabled: Optional[bool]):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=f"tersor.{verb}", unit="layer", leave=False)


def _convert(model, config, filter_fn, verb, calibration=None, progress=None) -> Report:
    """Shared walk of quantize_ / sparsify_: plan, prepare (calibration, global thresholds),
    build every replacement, then install."""
    handler = _handler(config, verb)
    if not isinstance(model, nn.Module):
        raise TypeError(f"tersor.{verb}: model must be an nn.Module, got {type(model).__name__}")
    if type(model) in (nn.Linear, nn.Conv2d):
        raise ValueError(
            f"tersor.{verb}: the model is a bare nn.{type(model).__name__}, which "
            f"cannot be swapped in place; wrap it (nn.Sequential(layer)) or use "
            f"the layer class's from_float"
        )
    t0 = time.perf_counter()
    report = Report(config.scheme)

    parents = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        if _compressed(parent):  # a QConv2d's gemm is reported as the QConv2d
            continue
        for cname, child in parent._modules.items():  # named_children() drops repeats
            if child is not None:
                parents.setdefault(f"{pname}.{cname}" if pname else cname, (parent, cname))

    rows, plan = {}, []  # rows: fqn -> LayerReport, filled in model order below
    for fqn, (parent, cname) in parents.items():
        m = parent._modules[cname]
        if _compressed(m):
            why = (
                _upgrade(m, config) if verb == "quantize_" else f"already {m.scheme}; left as it is"
            )
            if not why and filter_fn is not None and not filter_fn(m, fqn):
                why = f"filter_fn returned False; kept {m.scheme}"
            if why:
                size = _layer_bytes(m)
                rows[fqn] = LayerReport(fqn, _layer_shape(m), m.scheme, size, size, why, KEPT)
                continue
        elif not handler.accepts(m):
            continue
        else:
            why = _cannot_serve(m, parent, config, handler)
            if not why and fqn in getattr(config, "skip_names", ()):
                why = "listed in config.skip_names"
            if not why and filter_fn is not None and not filter_fn(m, fqn):
                why = "filter_fn returned False"
            if why:
                size = _layer_bytes(m)
                rows[fqn] = LayerReport(fqn, _layer_shape(m), "dense", size, size, why, DENSE)
                continue
        rows[fqn] = None
        plan.append((fqn, parent, cname, m))

    ctx = Context()
    if handler.prepare is not None:
        floats = [m for *_, m in plan if not _compressed(m)]
        # sparse fp32 layers GPTQ gives int8 values: float stand-ins for the calibration pass
        standins = _sparse_standins(plan, config, calibration)
        try:
            for parent, cname, _, lin in standins:
                setattr(parent, cname, lin)
            floats += [lin for *_, lin in standins]
            floats = list({id(m): m for m in floats}.values())
            for *_, lin in standins:
                ctx.masks[id(lin)] = _gemm_weight(lin) != 0
            handler.prepare(model, floats, config, calibration, ctx, progress)
        except Exception as e:
            raise type(e)(f"tersor.{verb}: {e}; the model is unchanged") from e
        finally:
            for parent, cname, m, _ in standins:
                setattr(parent, cname, m)
        for _, _, m, lin in standins:  # the results belong to the sparse layers
            for d in (ctx.solved, ctx.notes):
                if id(lin) in d:
                    d[id(m)] = d.pop(id(lin))

    built = {}
    for fqn, _parent, _cname, m in _progress(plan, verb, progress):
        if id(m) in built:  # a module shared under several names is converted once
            continue
        try:
            built[id(m)] = (
                m.quantized(config, ctx.solved.get(id(m)))
                if _compressed(m)
                else handler.convert(m, config, ctx, fqn)
            )
        except KeepDense as keep:
            built[id(m)] = keep
        except Exception as e:
            raise type(e)(
                f"tersor.{verb}: converting '{fqn}' failed ({e}); the model is unchanged"
            ) from e

    for fqn, parent, cname, m in plan:
        q = built[id(m)]
        if isinstance(q, KeepDense):
            with torch.no_grad():
                m.weight.copy_(q.weight)
            size = _layer_bytes(m)
            rows[fqn] = LayerReport(
                fqn, tuple(m.weight.shape), "dense", size, size, q.reason, DENSE
            )
            continue
        setattr(parent, cname, q)
        why = "; ".join(x for x in (q.describe(), ctx.notes.get(id(m), "")) if x)
        rows[fqn] = LayerReport(fqn, _layer_shape(m), q.scheme, _layer_bytes(m), q.nbytes, why)
    if ctx.folds:  # the ops that absorb input scales; converted producers hold theirs already
        from tersor.calibration.smooth import scale_outputs

        for p, t in ctx.folds.values():
            if id(p) not in built:
                scale_outputs(p, t)
    report.layers = [r for r in rows.values() if r is not None]
    report.seconds = time.perf_counter() - t0
    report.calibration_seconds = ctx.calibration_s
    return report


__all__ = [
    "Context",
    "Handler",
    "KeepDense",
    "LayerReport",
    "Report",
    "convert_module",
    "quantize_",
    "quantize_with",
    "register_handler",
    "sparsify_",
]
