"""``tersor.distill_``: knowledge distillation of a compressed model from its float teacher,
with the compression kept.

Each tersor layer of the student gets a float *shadow* weight (its dequantized weight) for the
time of the training; the forward runs it through the layer's own constraints, with a
straight-through gradient (the gradient of the projected weight goes to the shadow):

    int8 (per channel)      round to the layer's fixed scale grid, clamp to [-127, 127]
    int4 (group-wise)       round to the layer's fixed group grid (scales / zero points,
                            input permutation kept), clamp to [0, 15]
    sparse (2:4, CSR, block) the layer's fixed mask; int8 values round per row to a scale
                            taken from the current weights, as packing would
    A8 schemes              activations rounded per row (per image for a convolution) to
                            int8, as the kernels do, also straight-through

The grids and masks are the ones the layer already has (from round-to-nearest, GPTQ or
SparseGPT): training moves weights between grid points, it does not move the grid. At the end
every layer is re-packed from its trained shadow into the same format and runs on the kernels.

Losses: "kl" on logits (outputs with ``.logits``, the default there), "mse" or "cosine" on an
output tensor (embeddings; "mse" the default); block_loss > 0 adds each block's output MSE
against the teacher's (the blocks calibration uses: the children of the ModuleList holding
the tersor layers), relative to the teacher's mean square there, times block_loss. Time is
bounded by ``steps`` and ``max_seconds``.
"""

from __future__ import annotations

import itertools
import time
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tersor.calibration import data as calib_data
from tersor.configs import W8A8Config
from tersor.formats import BlockFormat, CsrFormat, Int4Format, Int8Format, Sparse24Format
from tersor.formats.int4 import dequantize_int4
from tersor.formats.sparse24 import compress_24
from tersor.nn.fused import fuse_projections
from tersor.nn.linear import PackedLinear
from tersor.nn.qconv import QConv2d


def _ste(w: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """projected in the forward, identity in the backward."""
    return w + (projected - w).detach()


def _fq_rows_int8(x: torch.Tensor, dims) -> torch.Tensor:
    """Symmetric int8 rounding with one scale per row (amax over `dims`), straight-through."""
    with torch.no_grad():
        s = x.abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / 127.0
        q = torch.round(x / s).clamp(-127, 127) * s
    return _ste(x, q)


class _Shadow(nn.Module):
    """The trainable stand-in of one tersor layer (a PackedLinear, or a QConv2d's GEMM run as
    a convolution)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        gemm = layer.gemm if isinstance(layer, QConv2d) else layer
        self.fmt = fmt = gemm.fmt
        # [N, K], original K order; with an input scale (AWQ / SmoothQuant) the weight the
        # format stores, and x * input_scale goes in, as in the kernels
        self.xs = fmt.input_scale
        w = fmt.dequantize()
        self.weight = nn.Parameter(w.clone() if self.xs is None else w / self.xs)
        b = gemm.bias
        self.bias = None if b is None else nn.Parameter(b.detach().clone())
        # (16-bit activations, act_bits=16, train as float ones: within amax / 64516 of them)
        self.act_int8 = ("w8a8" in fmt.scheme or fmt.scheme == "w4a8") and getattr(
            fmt, "act_bits", 8
        ) == 8
        self.mask = None
        if isinstance(fmt, Int8Format):
            self.grid = fmt.canonical()[1]  # scale [N]
        elif isinstance(fmt, Int4Format):
            _, scale, zero = fmt.canonical()
            self.grid = (scale.float(), None if zero is None else zero.float())
            self.unperm = None if fmt.perm is None else torch.argsort(fmt.perm)
        elif isinstance(fmt, (Sparse24Format, CsrFormat, BlockFormat)):
            self.mask = self.weight.detach() != 0
        else:
            raise TypeError(f"distill_: {type(fmt).__name__} layers cannot be trained yet")

    # -- the format's constraint --------------------------------------------------------------
    def _project(self, w: torch.Tensor) -> torch.Tensor:
        fmt = self.fmt
        if isinstance(fmt, Int8Format):
            s = self.grid[:, None]
            return torch.round(w / s).clamp(-127, 127) * s
        if isinstance(fmt, Int4Format):
            scale, zero = self.grid
            wp = w if fmt.perm is None else w[:, fmt.perm]
            q = self._int4_codes(wp)
            deq = dequantize_int4(q, scale, zero, fmt.G)
            return deq if fmt.perm is None else deq[:, self.unperm]
        w = w * self.mask
        if fmt.int8:
            s = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0
            w = torch.round(w / s).clamp(-127, 127) * s
        return w

    def _int4_codes(self, wp: torch.Tensor) -> torch.Tensor:
        scale, zero = self.grid
        g = self.fmt.G
        idx = torch.arange(wp.shape[1]) // g
        s = scale[:, idx]
        z = 8.0 if zero is None else zero[:, idx]
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return (torch.round(wp / safe) + z).clamp(0, 15)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            projected = self._project(self.weight)
        w = _ste(self.weight, projected)
        if isinstance(self.layer, QConv2d):
            c = self.layer
            kh, kw = c.kernel_size
            if self.act_int8:
                x = _fq_rows_int8(x, (1, 2, 3))
            w4 = w.view(c.out_channels, kh, kw, c.in_channels).permute(0, 3, 1, 2)
            return F.conv2d(x, w4, self.bias, c.stride, c.padding, c.dilation)
        if self.xs is not None:
            x = x * self.xs.to(x.dtype)
        if self.act_int8:
            x = _fq_rows_int8(x, -1)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    # -- back to the kernels ------------------------------------------------------------------
    @torch.no_grad()
    def repacked(self) -> nn.Module:
        fmt, w = self.fmt, self.weight.detach().float()
        if isinstance(fmt, Int8Format):
            s = self.grid
            q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
            new = Int8Format(q, s, act_int8=fmt.act_int8)
        elif isinstance(fmt, Int4Format):
            scale, zero = fmt.canonical()[1:]
            wp = w if fmt.perm is None else w[:, fmt.perm]
            q = self._int4_codes(wp).to(torch.uint8)
            new = Int4Format(
                q,
                scale,
                zero,
                fmt.group_size,
                fmt.act_int8,
                fmt.symmetric,
                fmt.perm,
                act_bits=fmt.act_bits,
            )
        else:
            wm = w * self.mask
            if isinstance(fmt, Sparse24Format):
                new = Sparse24Format(*compress_24(wm), fmt.in_features)
            elif isinstance(fmt, CsrFormat):
                new = CsrFormat.from_float(wm, dense_from_rows=fmt.dense_from_rows)
            else:
                new = BlockFormat.from_float(wm)
            if fmt.int8:
                new = new.with_int8_values(W8A8Config())
        new = new.with_input_scale(self.xs) if self.xs is not None else new
        gemm = self.layer.gemm if isinstance(self.layer, QConv2d) else self.layer
        layer = PackedLinear.wrap(new, self.bias, kernel=gemm.kernel, name=gemm.name)
        if isinstance(self.layer, QConv2d):
            return QConv2d.around(self.layer, layer, self.layer.name)
        return layer


def _loss_fn(kind: str, temperature: float) -> Callable:
    def logits(out):
        return out.logits if hasattr(out, "logits") else out

    if kind == "kl":

        def kl(s, t):
            ls, lt = logits(s).float() / temperature, logits(t).float() / temperature
            ls, lt = ls.reshape(-1, ls.shape[-1]), lt.reshape(-1, lt.shape[-1])
            return (
                F.kl_div(
                    F.log_softmax(ls, -1),
                    F.log_softmax(lt, -1),
                    log_target=True,
                    reduction="batchmean",
                )
                * temperature**2
            )

        return kl
    if kind == "mse":
        return lambda s, t: F.mse_loss(logits(s).float(), logits(t).float())
    if kind == "cosine":
        return lambda s, t: (
            1 - F.cosine_similarity(logits(s).float().flatten(1), logits(t).float().flatten(1))
        ).mean()
    raise ValueError(f"distill_: loss must be 'auto', 'kl', 'mse' or 'cosine', got {kind!r}")


def distill_(
    student: nn.Module,
    teacher: nn.Module,
    data,
    *,
    steps: int = 100,
    lr: float = 3e-3,
    loss: str = "auto",
    temperature: float = 1.0,
    forward: Optional[Callable] = None,
    max_seconds: Optional[float] = None,
    progress: Optional[bool] = None,
    block_loss: float = 0.0,
) -> list:
    """Train the compressed `student` to match the float `teacher` on `data` (the batch forms
    of ``calibration=``: a tensor, a tuple / dict of arguments, a list of batches, a
    DataLoader), in place; returns the loss of every step. lr is relative: each layer's
    weights move by about lr x their RMS per step. The last eighth of the batches (when there
    are 4 or more) is held out: when their loss is not lower at the end, the student keeps its
    layers and a warning says so.

    forward(model, batch) -> output, for models called otherwise (a sentence-transformers
    wrapper: ``lambda m, b: m(b)["sentence_embedding"]``). loss: "auto" is "kl" when the
    output has ``.logits``, else "mse". block_loss: the weight of the per-block MSE (see the
    module doc; 0: off). Stops after `steps` steps or `max_seconds`. Only the tersor layers
    learn (their shadow weights and biases); the rest of the student is frozen.
    """
    from tersor.api import _progress

    if steps < 1:
        raise ValueError(f"distill_: steps must be >= 1, got {steps}")
    convs = [n for n, m in student.named_modules() if isinstance(m, QConv2d)]
    tersor_layers = {  # a QConv2d trains as one (its GEMM inside is not a layer of its own)
        name: m
        for name, m in student.named_modules()
        if isinstance(m, (PackedLinear, QConv2d))
        and not any(name.startswith(c + ".") for c in convs)
    }
    if not tersor_layers:
        raise ValueError("distill_: the student has no tersor layers (run quantize_ first)")
    if forward is None:
        runs, _ = calib_data.calls(data)
    else:
        one = isinstance(data, (torch.Tensor, dict, tuple))
        batches = [data] if one else list(data)
        runs = [(lambda b: lambda m: forward(m, b))(b) for b in batches]
    taps = _BlockTaps(student, teacher, list(tersor_layers.values())) if block_loss else None
    shadows = {name: _Shadow(m) for name, m in tersor_layers.items()}  # may refuse a format
    fused = any(getattr(m, "_fused", None) is not None for m in tersor_layers.values())
    fuse_projections(student, False)  # the groups' hooks would hold the old layers
    frozen = [p for p in student.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    swapped = _swap(student, shadows)
    # lr is relative: a layer's weights move by ~lr x their RMS per step (Adam's steps are
    # ~lr in size whatever the gradient's scale, and layers' weights differ in scale by 10x+)
    groups = []
    for s in shadows.values():
        rms = float(s.weight.detach().square().mean().sqrt().clamp(min=1e-8))
        groups.append({"params": [p for p in (s.weight, s.bias) if p is not None], "lr": lr * rms})
    opt = torch.optim.Adam(groups)
    # both in eval mode: the student learns the teacher's deterministic outputs (no dropout
    # noise), and batch norms keep their statistics
    was_training = student.training
    student.eval()
    teacher.eval()
    losses, t0 = [], time.perf_counter()
    # the loss on held-out batches (the last eighth, when there are 4+) decides whether
    # training helped: the training batches' own loss falls even when the student over-fits
    held = max(1, len(runs) // 8) if len(runs) >= 4 else 0
    monitor = runs[len(runs) - held :] if held else runs
    runs = runs[: len(runs) - held] if held else runs

    def monitored() -> float:
        with torch.no_grad():
            return sum(float(fn(run(student), run(teacher))) for run in monitor)

    try:
        with torch.no_grad():
            first = runs[0](teacher)
        kind = ("kl" if hasattr(first, "logits") else "mse") if loss == "auto" else loss
        fn = _loss_fn(kind, temperature)
        start = monitored()
        for _, run in zip(_progress(range(steps), "distill_", progress), itertools.cycle(runs)):
            with torch.no_grad():
                target = run(teacher)
            value = fn(run(student), target)
            if taps is not None:
                value = value + block_loss * taps.loss()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
        end = monitored()
    finally:
        if taps is not None:
            taps.close()
        _swap(student, swapped)  # the original layers back, whatever happened
        student.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
        if fused:
            fuse_projections(student, "auto")
    if end < start:
        _swap(student, {name: s.repacked() for name, s in shadows.items()})
        if fused:
            fuse_projections(student, "auto")  # the new layers' groups
    else:
        warnings.warn(
            f"distill_: training did not lower the loss on {len(monitor)} "
            f"{'held-out' if held else 'training'} batch(es) "
            f"({start:.4g} -> {end:.4g}); the student keeps its layers as they were (a lower "
            f"lr or more steps may help)",
            stacklevel=2,
        )
    return losses


class _BlockTaps:
    """Forward hooks keeping the last output of each block of the student and of the same-named
    module of the teacher (block_loss)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, layers: list):
        from tersor.calibration.blocks import find_blocks

        found = {id(b) for b in find_blocks(student, layers)}
        names = [n for n, m in student.named_modules() if id(m) in found]
        if not names:
            raise ValueError(
                "distill_: block_loss needs a model whose tersor layers sit in a ModuleList of "
                "blocks (a transformer's layers); this one has none"
            )
        try:
            pairs = [(student.get_submodule(n), teacher.get_submodule(n)) for n in names]
        except AttributeError:
            raise ValueError(
                "distill_: block_loss needs the teacher to have the student's blocks under the "
                f"same names ({names[0]}, ...)"
            ) from None
        self.out = {}
        self.hooks = [
            m.register_forward_hook(self._keep(side, i))
            for i, pair in enumerate(pairs)
            for side, m in enumerate(pair)
        ]

    def _keep(self, side: int, i: int):
        def hook(module, args, out):
            self.out[(side, i)] = out[0] if isinstance(out, (tuple, list)) else out

        return hook

    def loss(self) -> torch.Tensor:
        total, n = 0.0, 0
        for (side, i), s in list(self.out.items()):
            if side == 0 and (1, i) in self.out:
                t = self.out[(1, i)].detach().float()
                total = total + F.mse_loss(s.float(), t) / t.square().mean().clamp(min=1e-12)
                n += 1
        self.out.clear()
        return total / max(n, 1)

    def close(self):
        for h in self.hooks:
            h.remove()


def _swap(model: nn.Module, new: dict) -> dict:
    """Install new[name] at each name; returns the modules that were there."""
    old = {}
    for name, m in new.items():
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        old[name] = getattr(holder, child)
        setattr(holder, child, m)
    return old
