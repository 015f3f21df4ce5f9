"""Reference math for the int8 family, written from the rules, not from the kernels.

Shapes: x [M, K] float32, q [N, K] int8 (canonical), w_scale [N] float32, bias [N] or None.
"""

from __future__ import annotations

import torch


def _scaled_rows(x: torch.Tensor, row_amax=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t = x * inv per row, the rows' scale amax / 127) by the rules of
    csrc/quant_act/quant_act.h: t zero on rows at amax 0 or holding NaN / Inf, whose scale is
    0 / NaN (row_amax: fp32 [M] floors under the rows' amax)."""
    x = x.to(torch.float32)
    amax = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    if row_amax is not None:
        amax = torch.fmax(amax, row_amax)
    finite = torch.isfinite(x).all(dim=1)
    # one fp32 division: torch's `127.0 / amax` is reciprocal(amax) * 127, two roundings, and
    # its last bit differs now and then (one code in ~300K moved across a half)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    inv = torch.where(finite, inv, torch.zeros_like(inv))
    t = torch.where(finite[:, None], x, torch.zeros_like(x)) * inv[:, None]
    return t, torch.where(finite, amax / 127.0, torch.full_like(amax, float("nan")))


def quantize_rows_ref(x: torch.Tensor, row_amax=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: the exact rules of csrc/quant_act/quant_act.h (row_amax: fp32
    [M] floors under the rows' amax)."""
    t, scale = _scaled_rows(x, row_amax)
    return torch.round(t).clamp_(-127, 127).to(torch.int8), scale  # half to even


def quantize_planes_ref(x: torch.Tensor, row_amax=None):
    """Two int8 planes per row (csrc/quant_act/quant_act.h "Two planes"): (high codes, scale,
    low codes, low scale), x ~ scale * high + low_scale * low within amax / 64516."""
    t, scale = _scaled_rows(x, row_amax)
    hi = torch.round(t).clamp_(-127, 127)
    lo = torch.round((t - hi) * 254.0)  # (t - hi: exact)
    return hi.to(torch.int8), scale, lo.to(torch.int8), scale / 254.0


def gemm_w8a8_ref(x, q, w_scale, bias=None):
    """Dynamic int8 activations x int8 weights; integer products summed exactly (fp64)."""
    qx, sx = quantize_rows_ref(x)
    acc = qx.to(torch.float64) @ q.to(torch.float64).t()  # |acc| < 2^53: exact
    y = acc * (sx[:, None].to(torch.float64) * w_scale[None, :].to(torch.float64))
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32)


def conv_w8a8_ref(x, q, w_scale, bias, kernel_size, stride, padding, dilation, groups=1):
    """W8A8 Conv2d: x [B, C, H, W] quantized with one scale per image (the row rules applied to
    the whole image), q [N, kh * kw * C / groups] in (kh, kw, C / groups) order; integer sums
    exact (fp64)."""
    b, c = x.shape[:2]
    qx, sx = quantize_rows_ref(x.reshape(b, -1))
    kh, kw = kernel_size
    wq = q.view(q.shape[0], kh, kw, c // groups).permute(0, 3, 1, 2).to(torch.float64)
    acc = torch.nn.functional.conv2d(
        qx.view(x.shape).to(torch.float64), wq, None, stride, padding, dilation, groups
    )
    y = acc * (
        sx.to(torch.float64)[:, None, None, None] * w_scale.to(torch.float64)[None, :, None, None]
    )
    if bias is not None:
        y = y + bias.to(torch.float64)[None, :, None, None]
    return y.to(torch.float32)


def gemm_w8_ref(x, q, w_scale, bias=None):
    """fp32 activations x dequantized int8 weights, accumulated in fp64."""
    w = q.to(torch.float64) * w_scale.to(torch.float64)[:, None]
    y = x.to(torch.float64) @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32)


def dequant_w8_ref(q, w_scale):
    return q.to(torch.float32) * w_scale[:, None]
