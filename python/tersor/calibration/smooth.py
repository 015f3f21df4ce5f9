"""Input-scale methods: AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization for
LLM Compression and Acceleration") and SmoothQuant (Xiao et al., 2022, "SmoothQuant: Accurate
and Efficient Post-Training Quantization for Large Language Models"), written from the papers.

Both rewrite a layer's product with a per-input-channel scale s > 0, which changes nothing in
exact arithmetic:

    y = x W^T = (x / s) (W diag(s))^T

and quantize W diag(s) instead of W. AWQ picks s to protect the weights that meet large
activations (s = mean|x|^alpha, alpha searched on the layer's output error); SmoothQuant moves
activation outliers into the weights so that int8 activations lose less
(s = max|x|^alpha / max|w|^(1 - alpha), alpha given).

Where x / s comes from, in order of preference:

    fold:     the op that produces x (a LayerNorm / RMSNorm weight and bias, or the output
              rows of a Linear such as v_proj -> o_proj, up_proj -> down_proj) is divided by
              s, so the model computes x / s for free. Layers that read the same x (q/k/v,
              gate/up) share one s, searched jointly.
    in-layer: no op can absorb it (the residual stream of a post-norm model feeds the norm's
              output to the residual add as well; a GELU sits in front of BERT's output
              dense): the layer keeps input_scale = 1 / s, which the kernels multiply into x
              as their row quantizer reads it (int8 activations: quant_act::a8_row) or while
              staging its rows (float activations: csrc/half_io/half_io.h).

A fold is accepted only when it is proven on the block: with the producer's output channels
multiplied by a random t in [0.5, 2] and the layers' input columns divided by t, the block's
output on the first calibration batch must not change (to float rounding). Nothing is
guessed from module names, so a norm that also feeds a residual add, or a Linear followed by
a non-linearity, is refused and the layer keeps its scale.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
from torch import nn

N_GRID = 20  # AWQ: alpha in {0, 1/20, ..., 19/20}; alpha = 0 is round-to-nearest itself
SEARCH_ROWS = 512  # AWQ: weight rows of each layer the search's error is measured on


def _fq_rows(x: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric int8 fake quantization (the W8A8 / W4A8 kernels' activation rule)."""
    s = x.abs().amax(1, keepdim=True) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(x / s).clamp_(-127, 127) * s


def awq_scale(
    weights: list,
    x: torch.Tensor,
    mean_abs: torch.Tensor,
    quantize: Callable,
    act_int8: bool = False,
) -> tuple:
    """AWQ's grid search for the layers in `weights` (float [N_i, K]) reading inputs x
    [R, K] (a sample of calibration rows) with mean |x| per channel `mean_abs`:

        s(alpha) = mean_abs^alpha / sqrt(max * min)         (normalized around 1)
        err(alpha) = sum_i || x W_i^T - q(x / s) Q(W_i diag(s))^T ||^2

    Q = `quantize` (float -> the dequantized grid of the config, round to nearest), q the
    int8 activation rule when act_int8 (else identity). Returns (s, alpha, err, err at
    alpha = 0)."""
    sample = []
    for w in weights:  # the error adds over output rows: a spread of rows measures it
        pick = torch.linspace(0, w.shape[0] - 1, min(SEARCH_ROWS, w.shape[0])).long()
        sample.append(w[pick].float())
    # with float activations the error is tr(dW H dW^T), dW = Q(W diag(s)) / s - W, H = x^T x:
    # a [K, K] product per layer instead of an [R, K] one, cheaper when K < R (MiniLM's
    # 384-wide inputs against ~1000 sampled rows: 2.7x fewer flops)
    gram = x.t() @ x if not act_int8 and x.shape[1] < x.shape[0] else None
    refs = [] if gram is not None else [x @ w.t() for w in sample]
    m = mean_abs.float().clamp(min=1e-4)
    best = None
    base = None
    for i in range(N_GRID):
        alpha = i / N_GRID
        s = m.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        if gram is not None:
            for w in sample:
                dw = quantize(w * s).div_(s).sub_(w)
                err += float((dw @ gram).mul_(dw).sum())
        else:
            xs = x / s
            if act_int8:
                xs = _fq_rows(xs)
            for w, ref in zip(sample, refs):
                err += float((xs @ quantize(w * s).t() - ref).pow(2).sum())
        if base is None:
            base = err
        if best is None or err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1], best[2], base


CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(10))  # AWQ's clip search: 1.0 .. 0.55
CLIP_ROWS = 256  # input rows the clip search measures on


def awq_clip(w: torch.Tensor, x: torch.Tensor, group: int, quantize: Callable) -> torch.Tensor:
    """AWQ's clipping search: for every row and group of `group` input columns of w [N, K]
    (already scaled), the range [lo, hi] of the group shrunk by the ratio in CLIP_RATIOS that
    minimizes the group's share of the output error on x [R, K],
    || x_g (w_g - Q(clamp(w_g, r lo, r hi)))^T ||^2 (the first ratio wins a tie); returns w
    clamped to the chosen ranges, which round-to-nearest then turns into the clipped grids
    (Q = `quantize` on [rows, group]). Every ratio of a group is one quantize call and one
    batched product, over chunks of rows that keep the temporaries near 64 MiB."""
    if x.shape[0] > CLIP_ROWS:
        x = x[torch.linspace(0, x.shape[0] - 1, CLIP_ROWS).long()]
    n_ratios = len(CLIP_RATIOS)
    ratios = torch.tensor(CLIP_RATIOS)[:, None, None]
    rows = max(1, (16 << 20) // (n_ratios * max(group, x.shape[0])))
    out = w.clone()
    for g0 in range(0, w.shape[1], group):
        xg = x[:, g0 : g0 + group]
        for r0 in range(0, w.shape[0], rows):
            wg = w[r0 : r0 + rows, g0 : g0 + group]
            lo = wg.amin(1, keepdim=True).clamp(max=0.0)
            hi = wg.amax(1, keepdim=True).clamp(min=0.0)
            wc = torch.maximum(torch.minimum(wg, hi * ratios), lo * ratios)  # [C, rows, g]
            deq = quantize(wc.reshape(-1, wg.shape[1])).view(wc.shape)
            err = (xg @ deq.transpose(1, 2) - xg @ wg.t()).pow_(2).sum(1)  # [C, rows]
            best = err.argmin(0)
            out[r0 : r0 + rows, g0 : g0 + group] = wc[best, torch.arange(wg.shape[0])]
    return out


def smooth_scale(weights: list, x_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_k = max|x_k|^alpha / max_i |W_i[:, k]|^(1 - alpha) (the max over every
    layer reading x), clamped to [1e-5, 1e5]; channels never active keep s = 1."""
    w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).float().clamp(min=1e-5)
    s = x_max.float().clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)
    s = torch.where(x_max > 0, s, torch.ones_like(s))
    return s.clamp(1e-5, 1e5)


# ---- folds ---------------------------------------------------------------------------------


def _is_conv1d(m: nn.Module) -> bool:  # transformers' Conv1D: weight [in, out]
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def out_channels(m: nn.Module) -> Optional[int]:
    """How many output channels a producer candidate scales, or None when it is not one: a
    norm (1-D weight, its output channel k scaled with weight[k] and bias[k]), an nn.Linear or
    a transformers Conv1D (output rows)."""
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    if isinstance(m, nn.Linear):
        return m.out_features
    if _is_conv1d(m):
        return w.shape[1]
    if w.dim() == 1 and not isinstance(m, (nn.Embedding, nn.Conv2d, nn.BatchNorm2d)):
        return w.shape[0]
    return None


@torch.no_grad()
def scale_outputs(p: nn.Module, t: torch.Tensor) -> None:
    """Multiply producer p's output channels by t (in place)."""
    w = p.weight
    if _is_conv1d(p):
        w.mul_(t.to(w.dtype)[None, :])
    elif w.dim() == 2:
        w.mul_(t.to(w.dtype)[:, None])
    else:
        w.mul_(t.to(w.dtype))
    b = getattr(p, "bias", None)
    if isinstance(b, torch.Tensor):
        b.mul_(t.to(b.dtype))


@torch.no_grad()
def scale_inputs(m: nn.Module, t: torch.Tensor) -> None:
    """Multiply layer m's input columns by t (in place)."""
    w = m.weight
    if _is_conv1d(m):
        w.mul_(t.to(w.dtype)[:, None])
    else:
        w.mul_(t.to(w.dtype)[None, :])


@contextmanager
def _saved(modules: list):
    keep = [
        (p, p.data.clone())
        for m in modules
        for p in (m.weight, getattr(m, "bias", None))
        if isinstance(p, torch.Tensor)
    ]
    try:
        yield
    finally:
        for p, v in keep:
            p.data.copy_(v)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


FOLD_TRIES = 2  # producers tried per group, nearest first: each try is a forward of the block


def find_fold(block: nn.Module, group: list, args: tuple, kwargs: dict) -> Optional[nn.Module]:
    """The module of `block` whose output channels can absorb the group's input scale (see the
    module doc: proven on block(*args, **kwargs)), or None.

    Only a module that finishes before the group's first layer starts can produce its input:
    one forward (the reference output too) records when each candidate last finished, and the
    FOLD_TRIES nearest are tried, the nearest first (the norm before q/k/v or gate/up, v_proj
    before o_proj, up_proj before down_proj). Trying every candidate cost up to 8 forwards of
    the block per group."""
    k = group[0].weight.shape[0] if _is_conv1d(group[0]) else group[0].weight.shape[1]
    members = {id(m) for m in group}
    cands = [p for p in block.modules() if id(p) not in members and out_channels(p) == k]
    if not cands:
        return None
    half = any(m.weight.dtype != torch.float32 for m in group)
    tol = 3e-2 if half else 1e-3
    t = torch.empty(k).uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(k))
    finished, clock, started = {}, [0], []

    def finish(m, a, out):
        clock[0] += 1
        if not started:
            finished[id(m)] = clock[0]

    def start(m, a):
        started.append(True)

    hooks = [p.register_forward_hook(finish) for p in cands]
    hooks += [m.register_forward_pre_hook(start) for m in group]
    with torch.no_grad():
        try:
            base = _first(block(*args, **kwargs)).float()
        finally:
            for h in hooks:
                h.remove()
        scale = base.abs().max().clamp(min=1e-12)
        near = sorted((p for p in cands if id(p) in finished), key=lambda p: -finished[id(p)])
        for p in near[:FOLD_TRIES]:
            with _saved([p, *group]):
                scale_outputs(p, t)
                for m in group:
                    scale_inputs(m, 1.0 / t)
                out = _first(block(*args, **kwargs)).float()
            if out.shape == base.shape and float((out - base).abs().max() / scale) < tol:
                return p
    return None


def input_groups(layers: list, hessians) -> list:
    """`layers` grouped by their input (equal Hessians: q / k / v, gate / up), in order."""
    groups: list = []
    for m in layers:
        h = hessians.h[id(m)]
        for g in groups:
            h0 = hessians.h[id(g[0])]
            if h0.shape == h.shape and torch.equal(h0, h):
                g.append(m)
                break
        else:
            groups.append([m])
    return groups
