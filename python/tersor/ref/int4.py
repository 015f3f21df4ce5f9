"""Reference math for the int4 family, from the rules (python/tersor/formats/int4.py and
csrc/gemm_w4a8/gemm_w4a8.h), not from the kernels.

Shapes: x [M, K] float32; canonical q [N, K] uint8, scale fp16 [N, ngroups], zero uint8
[N, ngroups] or None (symmetric, z = 8); G the effective group size.
"""

from __future__ import annotations

import torch

from tersor.formats.int4 import dequantize_int4
from tersor.ref.int8 import quantize_planes_ref, quantize_rows_ref


def gemm_w4_ref(x, q, scale, zero, group_size, bias=None):
    """fp32 activations x exactly dequantized int4 weights, accumulated in fp64."""
    w = dequantize_int4(q, scale, zero, group_size).to(torch.float64)
    y = x.to(torch.float64) @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32)


def gemm_w4a8_ref(x, q, scale, zero, group_size, bias=None, x_planes=1):
    """Dynamic int8 activations x int4 weights: exact integer group sums, fp64 combination.
    x_planes=2: 16-bit activations as two int8 planes, y = (y_high + y_low) + bias."""
    if x_planes == 2:
        hi, s_hi, lo, s_lo = quantize_planes_ref(x)
        y = _w4a8_rows(hi, s_hi, q, scale, zero, group_size) + _w4a8_rows(
            lo, s_lo, q, scale, zero, group_size
        )
    else:
        y = _w4a8_rows(*quantize_rows_ref(x), q, scale, zero, group_size)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32)


def _w4a8_rows(qx, sx, q, scale, zero, group_size):
    """fp64 [M, N]: rows of int8 codes qx with scales sx against the int4 weight."""
    m, k = qx.shape
    n, ngroups = scale.shape
    kp = ngroups * group_size
    xq = torch.zeros(m, kp, dtype=torch.float64, device=qx.device)
    xq[:, :k] = qx.to(torch.float64)
    qq = torch.zeros(n, kp, dtype=torch.float64, device=qx.device)
    qq[:, :k] = q.to(torch.float64)
    z = (
        zero.to(torch.float64)
        if zero is not None
        else torch.full((n, ngroups), 8.0, dtype=torch.float64, device=qx.device)
    )
    dots = torch.einsum(
        "mgk,ngk->mng", xq.view(m, ngroups, group_size), qq.view(n, ngroups, group_size)
    )  # exact integers
    sums = xq.view(m, ngroups, group_size).sum(-1)  # [m, g]
    t = dots - z[None] * sums[:, None, :]
    return (t * scale.to(torch.float64)[None]).sum(-1) * sx.to(torch.float64)[:, None]
