"""``tersor::gemm_w4`` (fp32 activations) and ``tersor::gemm_w4a8`` (dynamic int8 activations):
y = x W^T + b with int4 group-wise weights in the kernel layout of formats/int4.py.

Layout of every family module: ops/_common.py.
"""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops import gpu
from tersor.ops._common import (
    IO_CODE,
    NATIVE,
    check,
    eager,
    empty_rows,
    no_row_amax,
    out_2d,
    ptr,
    rows_view,
    rows_window,
    takes_half,
)
from tersor.ops.dense_path import DENSE_MIN_ROWS, linear_w4_dense

_num_threads = torch.get_num_threads
_BF16, _F32 = torch.bfloat16, torch.float32


def bf16_dot_kind(info: Optional[dict] = None) -> Optional[str]:
    """Which bf16 dot products beat the fp32 register kernels on this CPU (info:
    _C.cpu_info(), this machine's by default): "amx" where AMX-BF16 is in CPUID and the OS
    grants the tile state (os_amx), "vdpbf16ps" where AVX512-BF16 runs on an AMD core (Zen 4
    / 5), else None: bf16 rows then take the fp32 kernels, widened exactly. Intel cores issue
    vdpbf16ps at one per 2 cycles with 8 of latency, half an fp32 FMA's rate (family 6 model
    167), so without usable tiles (Cooper Lake; a Sapphire Rapids whose OS keeps the tile state)
    the vdpbf16ps kernels lose to the fp32 ones: measured there under the avx512 path, 2
    threads, bf16 rows of W4 g32 / g128, vdpbf16ps time / fp32 register kernel time at 8 / 32 /
    128 rows 1.68-1.77 / 1.67-1.79 / 1.52-1.90 (4096x4096, 384x1536)."""
    info = _C.cpu_info() if info is None else info
    features = info["features"]
    if features.get("amx_bf16") and features.get("os_amx"):
        return "amx"
    if features.get("avx512bf16") and info.get("vendor") == "AuthenticAMD":
        return "vdpbf16ps"
    return None


def _tiles_min_rows(kind: Optional[str]) -> Optional[dict]:
    """Rows from which bf16 rows take the scaled form of the bf16 kernels (gemm_w4.h: the
    scales go into weights widened to bf16, so the weights are rounded too, relative 2^-9, and
    no group closes the fp32 sums), per family; None on CPUs without bf16 dot products.
    - AMX-BF16 CPUs: the tiles (csrc/common/bf16_tiles.h). W4 (gemm_w4_amx.cpp): taken by the
      native call only where the active path is amx and the group size a multiple of 32. W8
      (gemm_w8_amx.cpp): exact codes, the scale in the epilogue. Measured on a Sapphire Rapids
      class Xeon (2 threads, 2048x8192 / 4096x4096 / 2048x2048): W4 g128 tiles 0.82-0.91x the
      fp32 register kernel's time at 12 rows, 0.48-0.62x at 16, 0.25-0.36x at 32 (1.3-1.5x
      torch's bf16 GEMM on the uncompressed weight at 32-64 rows, 0.73-0.93x at 512); W8
      0.71-1.10x at 16 rows, about 2x faster from 32. W4 from 8 rows since the tiles skip the
      products of a row block that holds no row (bf16_tiles.h step; family 6 model 167, 2
      threads, g128, register kernel time / tiles at 6 / 8 / 10 rows on 1536x384, 384x1536,
      2048x512, 2048x2048, 4096x4096, 2048x8192: 0.97-1.16 / 1.08-1.27 / 1.38-1.60; g32 on
      1536x384, 2048x2048, 4096x4096: 1.03-1.15 / 1.09-1.33 / 1.44-1.64); W8 from 12 (1536x384,
      2048x2048, 4096x4096 at 8 / 12 / 16 rows: 0.98-1.12 / 1.45-1.65 / 1.71-1.93).
      Since the group form runs on the tiles too (up to 16 rows: _bf16_min_rows), W4 takes
      the scaled form from 17 rows ("w4"), group sizes that are not multiples of 32 from 8
      ("w4_odd": the group form's tiles need whole 32-k steps): scaled form time / group form's
      at 8 / 12 / 16 rows (family 6 model 167, 2 threads, 384x1536, 2048x2048, 4096x4096):
      g128 2.07-2.51 / 1.77-2.02 / 1.61-1.72, g32 1.51-1.64 / 1.33-1.40 / 1.08-1.30 (the scaled
      form costs the same from 8 rows to 32: the widening of the whole weight).
    - AVX512-BF16 without AMX (Zen 4 / 5): W4 only, one vdpbf16ps chain per output over L1
      slabs of scaled pairs (gemm_w4_avx512bf16.cpp), the C ref of the same sums under lower
      paths. Zen 5, 2 threads, 2048x2048 .. 4096x11008, against the group form: g32 1.01-1.04x
      at 16 rows, 1.11-1.16x at 24-32, 1.18-1.25x at 64-128; g128 0.94x at 16 rows, 0.98-1.00x
      at 24, 1.00-1.04x at 32, 1.06-1.10x at 64-128 (the widening with scales costs 3x the
      plain pairs', paid over fewer rows). Hence "w4_g32": the rows for group size 32."""
    if kind == "amx":
        return {"w4": 17, "w4_odd": 8, "w8": 12}
    return {"w4": 32, "w4_g32": 16} if kind == "vdpbf16ps" else None


TILES_MIN_ROWS = _tiles_min_rows(bf16_dot_kind())


def _w4_key(table: Optional[dict], group_size: int) -> str:
    """The key of a W4 weight of this group size in a table of rows ("w4" unless the table
    has "w4_odd" for sizes that are not multiples of 32, or "w4_g32" for 32)."""
    table = table or {}
    if group_size % 32 and "w4_odd" in table:
        return "w4_odd"
    return "w4_g32" if group_size == 32 and "w4_g32" in table else "w4"


def w4_tiles(m: int, group_size: int) -> bool:
    """Whether m bf16 rows of a W4 weight take the scaled form (_C.gemm_w4_bf16_tiles)."""
    return TILES_MIN_ROWS is not None and m >= TILES_MIN_ROWS[_w4_key(TILES_MIN_ROWS, group_size)]


def _bf16_min_rows(kind: Optional[str]) -> Optional[dict]:
    """Rows from which bf16 activations take a bf16 dot-product kernel, per family (kind:
    bf16_dot_kind()): on AMX-BF16 CPUs the tiles' rows (W4's group form from 2 rows, below the
    scaled form's: see the end), else the vdpbf16ps kernels (_C.gemm_w4_bf16 /
    gemm_w8_bf16) on AMD CPUs with AVX512-BF16, W4 from one row and W8 from 8; None elsewhere.
    bf16 activations enter those kernels exactly, so the results are those of the fp32 path up
    to the order of the fp32 additions (and W4's weight rounding in the scaled form); fp32
    activations take them only when torch's float32 matmul precision allows bf16
    (bf16_allowed). Chosen by the
    hardware, not by the forced ISA path: under a lower path the same arithmetic runs in the C
    ref, so every path of one machine gives the same bits (the AMX tiles aside). Measured: on
    Zen 4 (2 threads, 2048x2048 / 2048x8192 / 8192x2048, g128) vdpbf16ps is 1.2-1.6x the fp32
    register kernel at 8 rows, 2.0-2.3x from 64; on Sapphire Rapids it is 0.65-0.9x the
    register kernel at 4-32 rows, so there the tiles' rows decide, and below them the register
    kernel runs. W4 from one row on Zen 5 (2 threads, g32 / g128, weights from DRAM at
    2048x8192 / 8192x2048, L3-resident at 2048x2048): 1.01-1.42x the fp32 register kernel at
    M = 1 (one row runs four column blocks side by side), 0.96-1.53x at 2-7 rows (0.96-1.00x
    in 4 of 12 cells).
    AMX-BF16 CPUs: W4 from 2 rows ("w4"; group size 32 from 3, "w4_g32"), where the group form
    runs on the tiles (_C.gemm_w4_bf16_on_tiles: A and C tiles of the call's rows, each group
    closed in fp32; gemm_w4_amx.cpp run_amx_bf16_rows) up to the scaled form's rows (17);
    group sizes that are not multiples of 32 from the scaled form's rows ("w4_odd": the tiles
    need whole 32-k steps in a group). Family 6 model 167, 2 threads, bf16 rows, 32 rotated
    weight copies, register kernel time / tiles at 1 / 2 / 3 / 4 / 7 rows: g128 on 384x1536,
    1536x384, 2048x512, 2048x2048, 4096x4096 0.85-0.98 / 1.00-1.36 / 1.25-1.56 / 1.30-1.76 /
    1.88-2.90; g32 on 384x1536, 2048x2048, 4096x4096 0.70-0.74 / 0.78-0.92 / - / 1.09-1.26 /
    2.01 (g32 closes a group every tile step); g32 at 2 / 3 / 4 rows, 4096x4096 L3-resident
    0.96 / 1.01 / 1.11, 28672x8192 from DRAM 1.08 / 1.17 / 1.19 (ninth session, after the
    tiles' weights took T0 prefetches). Keys: bf16_key."""
    if kind == "amx":
        return {**_tiles_min_rows(kind), "w4": 2, "w4_g32": 3}
    return {"w4": 1, "w8": 8} if kind == "vdpbf16ps" else None


BF16_MIN_ROWS = _bf16_min_rows(bf16_dot_kind())


def bf16_key(group_size: int) -> str:
    """The BF16_MIN_ROWS / FP32_BF16_MIN_ROWS key of a W4 weight of this group size ("w4" holds
    the fewest rows of them all)."""
    return _w4_key(BF16_MIN_ROWS, group_size)


def _fp32_tiles_min_rows() -> dict:
    """Rows from which fp32 rows take the fp32 form of the AMX-BF16 tiles, per family (infinite
    without AMX-BF16; under torch's "medium" matmul precision the bf16 form runs instead). Each
    fp32 value enters as three exact bf16 parts (common/bf16_tiles.h) against weights that are
    exact in bf16 (W8's int8 codes, W4's integers q - z), so every product is one of fp32
    arithmetic and only the order of the fp32 additions is the tile unit's, as it is torch's own
    in its GEMM; the scales close the sums in fp32 (W8 per channel, W4 per group): the results
    stay within fp32 rounding of the exact sums (tests: below the register kernels' error
    against fp64), not bit for bit the register kernels'.
    The call takes the tiles only where the active path is amx (_C.has_amx_bf16()); it runs the
    register kernel otherwise. W8 (gemm_w8_amx.cpp run_amx_fp32), measured on a Xeon with
    AMX-BF16 (family 6 model 167), 2 threads, 384x1536 / 2048x512 / 2048x8192 / 4096x4096 /
    8192x2048, register kernel time / tiles: 0.51-0.65 at 8 rows, 0.93-1.16 at 16, 1.31-1.65 at
    24, 1.67-2.17 at 32, 3.05 / 3.25 / 2.86 at 128 / 256 / 512 (4096x4096), where the dense
    panels (ops/dense_path.py) ran at torch's fp32 GEMM rate, 0.9-1.0x the register kernel.
    W4 (gemm_w4_amx.cpp run_amx_fp32, the grouped form), 2048x512 / 1536x1536 / 4096x4096 /
    8192x2048 / 3072x8192: g128 0.57-0.83 at 8 rows, 0.94-1.26 at 16, 1.07-1.49 at 20, 1.40-1.91
    at 32, 1.06-1.48 at 40 (two row blocks); g32 (2048x512 / 4096x4096 / 3072x8192) 0.83-1.08 at
    16, 0.94-1.22 at 20, 1.18-1.58 at 32, 1.42-2.25 at 128. Since the tiles skip a row block
    that holds no row (bf16_tiles.h step), W4 g128 takes them from 14 rows: 1536x384, 384x1536,
    2048x512, 2048x2048, 4096x4096 (and 2048x8192 to 16 rows) at 12 / 14 / 16 / 17 / 19 rows
    0.99-1.48 / 1.16-1.67 / 1.06-1.60 / 0.88-1.34 / 1.00-1.49; g32 stays at 20 (1536x384,
    2048x512, 4096x4096: 0.84-1.10 at 12 rows, 1.00-1.27 at 14, 0.79-1.07 at 17): "w4_g32".
    W8 from 16 rows (1536x384, 2048x2048, 4096x4096 at 12 / 16 / 20 rows: 0.97-1.37 /
    1.11-1.55 / 1.22-1.71).
    Since the few-row kernel runs them too (up to 15 rows, three parts of 5 rows a pass in its
    A tiles: gemm_w4.h run_amx_fp32_rows), W4 takes the tiles from 2 rows, group size 32 from
    5 (family 6 model 167, 2 threads, 32 rotated copies of 384x1536 / 2048x2048, 8 of
    4096x4096, register kernel time / tiles at 1 / 2 / 3 / 4 / 5 / 8 / 13 rows: g128
    0.85-0.99 / 1.00-1.27 / 1.16-1.43 / 1.20-1.62 / 1.56-2.10 / 1.26-1.43 / 1.47-1.75; g32 - /
    0.78-0.96 / 0.90-1.05 / 0.94-1.16 / 1.22-1.56 / 0.96-1.17 / 1.13-1.23)."""
    if _C.cpu_info()["features"].get("amx_bf16"):
        return {"w8": 16, "w4": 2, "w4_g32": 5}
    return {"w8": 1 << 62, "w4": 1 << 62, "w4_g32": 1 << 62}


FP32_TILES_MIN_ROWS = _fp32_tiles_min_rows()


def fp32_tiles_rows(group_size: int) -> int:
    """Rows from which float rows of a W4 weight of this group size may take the fp32 tiles."""
    return FP32_TILES_MIN_ROWS[_w4_key(FP32_TILES_MIN_ROWS, group_size)]


def fp32_tiles_take(m: int, group_size: int) -> bool:
    """Whether m float rows (not bf16 ones) of a W4 weight take _C.gemm_w4_fp32_tiles here."""
    return m >= fp32_tiles_rows(group_size) and group_size % 32 == 0 and _C.has_amx_bf16()


# fp32 rows are rounded to bf16 first: the bf16 kernels take them from 8 rows at the least
FP32_BF16_MIN_ROWS = {
    f: max(8, r) for f, r in (BF16_MIN_ROWS or {"w4": 1 << 62, "w8": 1 << 62}).items()
}


def bf16_allowed(dtype: torch.dtype, family: str, m: int, x_scale) -> bool:
    """Whether m rows of this dtype take the bf16 kernels: from BF16_MIN_ROWS[family] rows, bf16
    activations without a kept input scale (x * s would not be bf16 any more), and fp32
    activations when ``torch.set_float32_matmul_precision("medium")`` allows bf16 arithmetic
    for fp32 matmuls, as torch's own GEMMs read it: then the rows are rounded to bf16 (relative
    2^-9) and accumulated in fp32, from FP32_BF16_MIN_ROWS rows (a decode step of an fp32
    model keeps the fp32 kernels, and with them the native decoder step). The default
    ("highest") keeps fp32 activations on the fp32 kernels, bit for bit on every ISA path."""
    if BF16_MIN_ROWS is None or m < BF16_MIN_ROWS[family]:
        return False
    if dtype == torch.bfloat16:
        return x_scale is None
    return (
        dtype == torch.float32
        and m >= FP32_BF16_MIN_ROWS[family]
        and torch.get_float32_matmul_precision() == "medium"
    )


# A layer's 16-bit activations (x_planes = 2, formats/int4.py act_bits=16) take the W4A8 kernel
# over two int8 planes up to these rows, and the float-activation W4 kernels (exact rows) above,
# where those are faster (the op itself runs the planes at any row count). Zen 3 (avx2), 2
# threads, g128, W4 fp32 time / planes' on 384x1536, 1536x384, 2048x512, 2048x8192, 8192x2048:
# 1.38-1.59x at 1 row (the larger three), 1.24-1.98x at 2, 0.93-1.43x at 4, 0.91-1.31x at 6,
# 0.85-1.04x at 8, 0.86-0.98x at 12 (the planes double the W4A8 kernel's rows).
PLANES_MAX_ROWS = 6


def gemm_w4_cpu(
    x,
    codes,
    scale,
    zero,
    bias,
    n: int,
    group_size: int,
    act_int8: bool,
    x_scale=None,
    row_amax=None,
    bf16: Optional[bool] = None,
    x_planes: int = 1,
) -> torch.Tensor:
    """x_scale, row_amax (int8 activations only): see gemm_w8a8.linear_w8a8. bf16 (float
    activations only): the bf16 dot-product kernel, in its scaled form where w4_tiles says so;
    None chooses it (bf16_allowed). x_planes (int8 activations): 1, or 2 for 16-bit
    activations as two int8 planes (formats/int4.py act_bits)."""
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    if bf16 is None:
        bf16 = not act_int8 and bf16_allowed(x.dtype, bf16_key(group_size), m, x_scale)
    fp32_tiles = not act_int8 and not bf16 and fp32_tiles_take(m, group_size)
    if not act_int8 and not bf16 and not fp32_tiles and m >= DENSE_MIN_ROWS["w4"]:
        xf = x2.float() if x_scale is None else x2.float() * x_scale
        y = linear_w4_dense(xf, codes, scale, zero, bias, n, group_size)
        return out_2d(x, y.to(x.dtype), n)
    y = torch.empty((m, n), dtype=x.dtype)  # float32, or bf16 / fp16 staged natively
    if m:
        if act_int8:
            fn = _C.gemm_w4a8
        elif bf16:
            fn = _C.gemm_w4_bf16_tiles if w4_tiles(m, group_size) else _C.gemm_w4_bf16
        else:
            fn = _C.gemm_w4_fp32_tiles if fp32_tiles else _C.gemm_w4
        fn(
            x2.data_ptr(),
            m,
            k,
            x2.stride(0),
            codes.data_ptr(),
            scale.data_ptr(),
            ptr(zero),
            group_size,
            scale.shape[1],
            n,
            ptr(bias),
            y.data_ptr(),
            n,
            torch.get_num_threads(),
            IO_CODE[x.dtype],
            ptr(x_scale),
            *((ptr(row_amax), x_planes) if act_int8 else ()),
        )
    return out_2d(x, y, n)


def cpu_runner_w4(
    codes,
    scale,
    zero,
    n: int,
    k: int,
    group_size: int,
    act_int8: bool,
    x_scale,
    x_planes=1,
    rows_choice=True,
):
    """The eager CPU call of one packed int4 weight for the layers' fast path (see
    gemm_w8a8.cpu_runner_w8a8): a contiguous [..., K] float32 / bf16 / fp16 x of fewer rows than
    the dense panels and the scaled bf16 form take goes straight to its kernel (the register
    kernel, the bf16 group form where bf16_allowed says so, or the fp32 tiles where
    fp32_tiles_take does) with the weight's pointers read once, ~10 us less per call than
    gemm_w4_cpu's general path (measured on 384x384 at M = 1); anything else takes
    gemm_w4_cpu. x_planes=2 (int8 activations): the planes up to PLANES_MAX_ROWS rows, float
    rows on the W4 kernels above (rows_choice=False: the planes at any row count)."""
    if act_int8 and x_planes == 2 and rows_choice:  # planes to PLANES_MAX_ROWS, then floats
        planes = cpu_runner_w4(codes, scale, zero, n, k, group_size, True, x_scale, 2, False)
        rows = cpu_runner_w4(codes, scale, zero, n, k, group_size, False, x_scale)
        return takes_half(rows_window(rows, planes, k, 0, PLANES_MAX_ROWS + 1))
    # the kernels with the weight bound (_C.int_partial): called with x, M, bias, y, threads, io
    weight = dict(K=k, ldx=k, w=codes.data_ptr(), scale=scale.data_ptr(), zero=ptr(zero))
    weight.update(group_size=group_size, ngroups=scale.shape[1], N=n, ldy=n, x_scale=ptr(x_scale))
    planes = dict(x_planes=x_planes) if act_int8 else {}
    kernel = _C.int_partial(_C.gemm_w4a8 if act_int8 else _C.gemm_w4, **weight, **planes)
    group_form = None if act_int8 else _C.int_partial(_C.gemm_w4_bf16, **weight)
    # float rows from fp32_tiles_rows on AMX-BF16 CPUs (fp32_tiles_take)
    fp32_tiles_from, tiles_form = 1 << 62, None
    if not act_int8 and group_size % 32 == 0 and fp32_tiles_rows(group_size) < 1 << 62:
        fp32_tiles_from = fp32_tiles_rows(group_size)
        tiles_form = _C.int_partial(_C.gemm_w4_fp32_tiles, **weight)
    lean_rows = 1 << 62
    bf16_rows = 1 << 62  # from these rows bf16 x may take the bf16 kernels (bf16_allowed)
    key = bf16_key(group_size)
    if not act_int8:
        lean_rows = DENSE_MIN_ROWS["w4"]
        if BF16_MIN_ROWS is not None:
            bf16_rows = BF16_MIN_ROWS[key]
    fp32_bf16_rows = FP32_BF16_MIN_ROWS[key]

    @takes_half
    def run(x, bias):
        s = x.shape  # read once: 2-D rows (the common case) without dim() / numel() calls
        if len(s) == 2:
            if s[1] != k:
                return None
            m = s[0]
        else:
            if not s or s[-1] != k:
                return None
            m = x.numel() // k
        fn = kernel
        dt = x.dtype
        # (an fp32 decode row asks nothing more: fp32 rows go no lower than FP32_BF16_MIN_ROWS)
        if m >= bf16_rows and (dt is _BF16 or (dt is _F32 and m >= fp32_bf16_rows)):
            if bf16_allowed(dt, key, m, x_scale):
                if w4_tiles(m, group_size):
                    return gemm_w4_cpu(
                        x, codes, scale, zero, bias, n, group_size, act_int8, x_scale
                    )
                fn = group_form  # the bf16 group form, as gemm_w4_cpu would call it
        if fn is kernel and m >= fp32_tiles_from and _C.has_amx_bf16():
            fn = tiles_form
        if m >= lean_rows or not x.is_contiguous():  # the dense panels, or strided rows
            return gemm_w4_cpu(
                x, codes, scale, zero, bias, n, group_size, act_int8, x_scale, x_planes=x_planes
            )
        y = x.new_empty(m, n) if len(s) == 2 else empty_rows(x, n)  # [..., N] at once
        if m:
            b = 0 if bias is None else bias.data_ptr()
            fn(x.data_ptr(), m, b, y.data_ptr(), _num_threads(), IO_CODE[dt])
        return y

    return run


def linear_w4(
    x,
    codes,
    scale,
    zero,
    bias,
    n: int,
    group_size: int,
    act_int8: bool,
    kernel_pref: str = "auto",
    x_scale=None,
    row_amax=None,
    x_planes: int = 1,
) -> torch.Tensor:
    if eager(x, kernel_pref):
        if x_planes == 2 and x.numel() > PLANES_MAX_ROWS * x.shape[-1]:
            act_int8, x_planes = False, 1  # exact float rows: faster than the planes here
        return gemm_w4_cpu(
            x,
            codes,
            scale,
            zero,
            bias,
            n,
            group_size,
            act_int8,
            x_scale,
            row_amax,
            x_planes=x_planes,
        )
    no_row_amax(row_amax, "tersor::gemm_w4a8")
    if x_scale is not None:
        x = x * x_scale.to(x.dtype)
    if act_int8:
        return gemm_w4a8(x, codes, scale, zero, bias, n, group_size, kernel_pref, x_planes)
    return gemm_w4(x, codes, scale, zero, bias, n, group_size, kernel_pref)


def check_packed_int4(op: str, x, codes, scale, zero, bias, n: int, group_size: int) -> None:
    check(
        (x.dtype == torch.float32 or (not x.is_cpu and x.is_floating_point())) and x.dim() >= 1,
        f"{op}: x must be float32 (float16 / bfloat16 also on a GPU), got {x.dtype}",
    )
    k = x.shape[-1]
    check(
        codes.dtype == torch.uint8 and codes.dim() == 4 and codes.shape[2:] == (16, 4),
        f"{op}: codes must be uint8 [Np/16, Kp/8, 16, 4], got {codes.dtype} {tuple(codes.shape)}",
    )
    np_, kp = codes.shape[0] * 16, codes.shape[1] * 8
    check(
        group_size % 8 == 0 and group_size > 0,
        f"{op}: group_size {group_size} must be a positive multiple of 8",
    )
    ngroups = kp // group_size
    # one group: K padded up to a multiple of 8; several groups: K is exactly ngroups * G
    fits = (kp >= k > kp - 8) if ngroups == 1 else (k == kp)
    check(
        ngroups * group_size == kp and fits,
        f"{op}: packed K={kp} (group {group_size}) does not fit x with K={k}",
    )
    check(np_ >= n > np_ - 16, f"{op}: out_features={n} does not match the packed weight ({np_})")
    check(
        scale.dtype == torch.float16 and tuple(scale.shape) == (np_ // 16, ngroups, 16),
        f"{op}: scale must be float16 [{np_ // 16}, {ngroups}, 16], got {scale.dtype} "
        f"{tuple(scale.shape)}",
    )
    if zero is not None:
        check(
            zero.dtype == torch.uint8 and zero.shape == scale.shape,
            f"{op}: zero must be uint8 {tuple(scale.shape)}, got {zero.dtype} {tuple(zero.shape)}",
        )
    if bias is not None:
        check(
            bias.dtype == torch.float32 and tuple(bias.shape) == (n,),
            f"{op}: bias must be float32 [{n}], got {bias.dtype} {tuple(bias.shape)}",
        )
    for t in (codes, scale, zero, bias):
        if t is not None:
            check(t.is_contiguous(), f"{op}: weight tensors must be contiguous")
            check(t.device == x.device, f"{op}: all tensors must be on {x.device}")


def _ops(name: str, act_int8: bool):
    """tersor::gemm_w4 / tersor::gemm_w4a8: the native kernel registered for "cpu", the device
    path (ops/gpu.py) for any other device and for kernel_pref="cuda" | "triton" | "ref".
    x_planes: gemm_w4a8's activation planes (1, or 2 for 16-bit activations); gemm_w4: 1."""

    def check_planes(x_planes):
        ok = x_planes in (1, 2) if act_int8 else x_planes == 1
        check(ok, f"{name}: x_planes must be {'1 or 2' if act_int8 else '1'}, got {x_planes}")

    def device_path(
        x, codes, scale, zero, bias, out_features, group_size, kernel_pref="auto", x_planes=1
    ):
        check_packed_int4(name, x, codes, scale, zero, bias, out_features, group_size)
        check_planes(x_planes)
        return gpu.int4_linear(
            x, codes, scale, zero, bias, out_features, group_size, kernel_pref, act_int8, x_planes
        )

    def cpu(x, codes, scale, zero, bias, out_features, group_size, kernel_pref="auto", x_planes=1):
        if kernel_pref not in NATIVE:
            return device_path(
                x, codes, scale, zero, bias, out_features, group_size, kernel_pref, x_planes
            )
        check_packed_int4(name, x, codes, scale, zero, bias, out_features, group_size)
        check_planes(x_planes)
        return gemm_w4_cpu(
            x, codes, scale, zero, bias, out_features, group_size, act_int8, x_planes=x_planes
        )

    def fake(x, codes, scale, zero, bias, out_features, group_size, kernel_pref="auto", x_planes=1):
        return x.new_empty((*x.shape[:-1], out_features))

    def schema_of(
        x: torch.Tensor,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        out_features: int,
        group_size: int,
        kernel_pref: str = "auto",
        x_planes: int = 1,
    ) -> torch.Tensor:
        return device_path(
            x, codes, scale, zero, bias, out_features, group_size, kernel_pref, x_planes
        )

    op = torch.library.custom_op(name, schema_of, mutates_args=())
    op.register_kernel("cpu")(cpu)
    op.register_fake(fake)
    return op


gemm_w4 = _ops("tersor::gemm_w4", act_int8=False)
gemm_w4a8 = _ops("tersor::gemm_w4a8", act_int8=True)


@torch.library.custom_op("tersor::dequant_w4t", mutates_args=())
def dequant_w4t(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: Optional[torch.Tensor],
    out_features: int,
    in_features: int,
    group_size: int,
) -> torch.Tensor:
    """Packed int4 -> fp32 W^T [in_features, out_features] (exactly (q - z) * s)."""
    check_packed_int4(
        "tersor::dequant_w4t",
        torch.empty(0, in_features, device=codes.device),
        codes,
        scale,
        zero,
        None,
        out_features,
        group_size,
    )
    if codes.device.type != "cpu":
        from tersor.formats.int4 import dequantize_int4, unpack_int4

        q, s, z = unpack_int4(codes, scale, zero, out_features, in_features)
        return dequantize_int4(q, s, z, group_size).t().contiguous()
    out = torch.empty((in_features, out_features), dtype=torch.float32)
    _C.dequant_w4t(
        codes.data_ptr(),
        scale.data_ptr(),
        ptr(zero),
        group_size,
        scale.shape[1],
        out_features,
        in_features,
        out.data_ptr(),
        out_features,
        torch.get_num_threads(),
    )
    return out


@dequant_w4t.register_fake
def _(codes, scale, zero, out_features, in_features, group_size):
    return codes.new_empty((in_features, out_features), dtype=torch.float32)
