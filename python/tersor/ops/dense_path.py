"""The large-batch path of the weight-only schemes: dequantize a panel of output columns with
our kernel, then let torch's dense fp32 GEMM (oneDNN) multiply it, panel by panel.

Weight-only kernels widen every weight in registers once per row tile, which costs more than
an fp32 GEMM's FMAs once M is large; a dequantized panel is reused by all M rows instead. The
ops switch here from ``DENSE_MIN_ROWS`` rows, a threshold measured on the reference machine
(4096 x 4096, 2 threads; see the foundation and int4 closing notes). Panels keep the fp32
scratch at ~16 MiB instead of a full fp32 copy of the weight; the scratch is kept per thread
between calls, because first-touching 16 MiB of fresh pages on every call cost ~15% of a
512-row GEMM.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from tersor import _C

DENSE_MIN_ROWS = {"w8": 256, "w4": 128}
PANEL_BYTES = 16 << 20


_local = threading.local()


def _scratch(numel: int) -> torch.Tensor:
    """A float32 buffer of at least numel elements, reused by this thread's later calls."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel)
        _local.buf = buf
    return buf[:numel]


def _panel_cols(k: int) -> int:
    return max(16, (PANEL_BYTES // (4 * max(k, 1))) // 16 * 16)


def linear_w8_dense(x2, packed, scale, bias, n: int) -> torch.Tensor:
    """x2 [M, K] float32 contiguous rows; int8 packed weight (formats/int8.py)."""
    m, k = x2.shape
    y = torch.empty(m, n)
    step = _panel_cols(k)
    kp = packed.shape[1] * 4
    buf = _scratch(min(step, n) * k)
    for n0 in range(0, n, step):
        nn = min(step, n - n0)
        w = buf[:nn * k].view(nn, k)
        # block n0 / 16 starts at byte (n0 / 16) * Kp * 16 of the packed weight
        _C.dequant_w8(packed.data_ptr() + n0 * kp, scale.data_ptr() + 4 * n0, nn, k,
                      w.data_ptr(), torch.get_num_threads())
        y[:, n0:n0 + nn] = F.linear(x2, w, None if bias is None else bias[n0:n0 + nn])
    return y


def linear_w4_dense(x2, codes, scale, zero, bias, n: int, group_size: int) -> torch.Tensor:
    """x2 [M, K] float32; int4 packed weight (formats/int4.py), dequantized as W^T panels."""
    m, k = x2.shape
    y = torch.empty(m, n)
    step = _panel_cols(k)
    ngroups = scale.shape[1]
    block_bytes = codes.shape[1] * 64  # one column block of codes
    buf = _scratch(k * min(step, n))
    for n0 in range(0, n, step):
        nn = min(step, n - n0)
        wt = buf[:k * nn].view(k, nn)
        nb = n0 // 16
        _C.dequant_w4t(codes.data_ptr() + nb * block_bytes,
                       scale.data_ptr() + 2 * nb * ngroups * 16,
                       0 if zero is None else zero.data_ptr() + nb * ngroups * 16, group_size,
                       ngroups, nn, k, wt.data_ptr(), nn, torch.get_num_threads())
        y[:, n0:n0 + nn] = F.linear(x2, wt.t(), None if bias is None else bias[n0:n0 + nn])
    return y
