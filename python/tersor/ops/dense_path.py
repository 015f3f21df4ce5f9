"""The large-batch path of the weight-only schemes: dequantize a panel of output columns with
our kernel, then let torch's dense fp32 GEMM (oneDNN) multiply it, panel by panel.

Weight-only kernels widen every weight in registers once per row tile, which costs more than
an fp32 GEMM's FMAs once M is large; a dequantized panel is reused by all M rows instead. The
ops switch here from ``DENSE_MIN_ROWS`` rows, thresholds measured on the reference machines
(2 threads; the foundation, int4 and Conv2d closing notes), except where the weight-only
kernels' fp32 tiles take those rows first (CPUs with AMX-BF16: ops/gemm_w4.py
``FP32_TILES_MIN_ROWS``, 1.7-3.2x this path at 256-512 rows). The 2:4 fp32 kernels beat a
dense GEMM at every batch on every CPU measured (their own files), so they have no such path.
Panels keep the fp32 scratch at ~16 MiB instead of a full fp32 copy of the weight; the scratch
is kept per thread between calls, because first-touching 16 MiB of fresh pages on every call
cost ~15% of a 512-row GEMM.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from tersor import _C


def _dense_min_rows() -> dict:
    """Rows from which the dense path wins, measured at 2 threads. It depends on the hardware
    (not on the forced ISA path, so that every path of one machine switches at the same M and
    stays bit-identical to the others).

    With AVX-512 the weight-only kernels widen in registers once per row tile. W4 from 384
    rows: on a Sapphire Rapids class Xeon (2026-12-02, g128, 4096x4096 and 2048x8192) the
    kernel took 30 / 46 / 52 / 92 ms at 128 / 192 / 256 / 384 rows against the dense path's
    48 / 60 / 64-72 / 91-93 ms, and the Emerald Rapids figures of the int4 notes agree.

    With AVX2 alone the kernels widen slabs of the weight once into L1 and run every row over
    them in a 6 x 16 fp32 tile (from 7 rows for W4, 16 for W8), at or above torch's own GEMM
    speed, so the dense path, which adds the widening to that GEMM, wins late or never
    (2026-12-03, Zen 2, 2048x2048 / 2048x8192 / 8192x2048; kernel / dense path time):
      W4 g128: 0.57-0.64 at 128 rows, 0.84-0.96 at 512, 0.89-0.99 at 1024, 0.96-1.04 at 2048;
      with the dequantized slabs (csrc/gemm_w4/gemm_w4.h, 2026-12-04, Zen 3, 2048x2048 /
      2048x8192 / 8192x2048; 81-87 GMAC/s): 0.86-1.00 at 512, 0.88-1.01 at 2048, 0.94-1.07 at
      4096, so 4096;
      W8: 0.57-0.58 at 128 rows, 0.73-0.79 at 512, 0.78-0.86 at 2048, 0.81-0.85 at 4096
      (slabs 84-90 GMAC/s against torch's 61-68), so 8192, twice the largest size measured.

    AMD's AVX-512 (Zen 4 and 5) is another case: torch's fp32 GEMM runs there at ~40% of the
    FMA peak (106 GMAC/s on 2 Zen 5 cores), so the kernels keep their lead at every M measured
    (2026-12-05, Zen 5, 2 threads; kernel time / this path's):
      W4 g128 and W8, 2048x8192 / 4096x4096: 0.36-0.41 at 384 rows, 0.41-0.51 at 1024, 0.53-0.63
      at 4096, so 8192 (twice the largest size measured)."""
    info = _C.cpu_info()
    if not info["features"].get("avx512f"):
        return {"w8": 8192, "w4": 4096}
    if info["vendor"] == "AuthenticAMD":
        return {"w8": 8192, "w4": 8192}
    return {"w8": 256, "w4": 384}


DENSE_MIN_ROWS = _dense_min_rows()
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


def _by_panels(x2, bias, n: int, fill, transposed: bool = False) -> torch.Tensor:
    """y = x2 W^T + bias with W made a panel of output columns at a time: fill(n0, nn, out)
    writes W[n0:n0+nn] as [nn, K] rows (transposed: W^T[:, n0:n0+nn] as [K, nn]) into out. One
    panel covering every column is multiplied straight into the result (no copy)."""
    m, k = x2.shape
    step = _panel_cols(k)
    buf = _scratch(min(step, n) * k)
    if step >= n:
        w = buf.view(k, n) if transposed else buf.view(n, k)
        fill(0, n, w)
        return F.linear(x2, w.t() if transposed else w, bias)
    y = torch.empty(m, n)
    for n0 in range(0, n, step):
        nn = min(step, n - n0)
        w = buf[: nn * k].view(k, nn) if transposed else buf[: nn * k].view(nn, k)
        fill(n0, nn, w)
        y[:, n0 : n0 + nn] = F.linear(
            x2, w.t() if transposed else w, None if bias is None else bias[n0 : n0 + nn]
        )
    return y


def linear_w8_dense(x2, packed, scale, bias, n: int) -> torch.Tensor:
    """x2 [M, K] float32 contiguous rows; int8 packed weight (formats/int8.py)."""
    k = x2.shape[1]
    kp = packed.shape[1] * 4

    def fill(n0, nn, w):  # block n0 / 16 starts at byte (n0 / 16) * Kp * 16 of the packed weight
        _C.dequant_w8(
            packed.data_ptr() + n0 * kp,
            scale.data_ptr() + 4 * n0,
            nn,
            k,
            w.data_ptr(),
            torch.get_num_threads(),
        )

    return _by_panels(x2, bias, n, fill)


def linear_w4_dense(x2, codes, scale, zero, bias, n: int, group_size: int) -> torch.Tensor:
    """x2 [M, K] float32; int4 packed weight (formats/int4.py), dequantized as W^T panels."""
    k = x2.shape[1]
    ngroups = scale.shape[1]
    block_bytes = codes.shape[1] * 64  # one column block of codes

    def fill(n0, nn, wt):
        nb = n0 // 16
        _C.dequant_w4t(
            codes.data_ptr() + nb * block_bytes,
            scale.data_ptr() + 2 * nb * ngroups * 16,
            0 if zero is None else zero.data_ptr() + nb * ngroups * 16,
            group_size,
            ngroups,
            nn,
            k,
            wt.data_ptr(),
            nn,
            torch.get_num_threads(),
        )

    return _by_panels(x2, bias, n, fill, transposed=True)
