"""``tersor::gemm_w8``: y = x W^T + b with float activations and int8 weights widened in
registers (formats/int8.py kernel form); on AMX-BF16 CPUs from FP32_TILES_MIN_ROWS rows the
fp32 form of the bf16 tiles (ops/gemm_w4.py), elsewhere from DENSE_MIN_ROWS rows dequantized
panels into torch's fp32 GEMM (ops/dense_path.py)."""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops import gpu
from tersor.ops._common import (
    IO_CODE,
    NATIVE,
    check_packed_int8,
    eager,
    out_2d,
    ptr,
    rows_view,
    takes_half,
)
from tersor.ops.dense_path import DENSE_MIN_ROWS, linear_w8_dense
from tersor.ops.gemm_w4 import FP32_TILES_MIN_ROWS, TILES_MIN_ROWS, bf16_allowed


def w8_form(dtype: torch.dtype, m: int, x_scale, bf16=None) -> str:
    """The kernel m rows of this dtype take: "bf16" (the bf16 dot-product kernel,
    csrc/gemm_w8/gemm_w8.h), from TILES_MIN_ROWS rows "bf16_tiles" (its AMX-BF16 tile form, the
    same exact weights); else "fp32_tiles" (float rows from FP32_TILES_MIN_ROWS rows on
    AMX-BF16 CPUs), "dense" (dequantized panels into torch's GEMM from DENSE_MIN_ROWS rows) or
    "fp32" (the register kernel; half rows staged through fp32). bf16: whether the bf16
    kernels serve, None: as the int4 op chooses (ops/gemm_w4.py bf16_allowed)."""
    if bf16 is None:
        bf16 = bf16_allowed(dtype, "w8", m, x_scale)
    if bf16:
        return "bf16_tiles" if m >= (TILES_MIN_ROWS or {}).get("w8", 1 << 62) else "bf16"
    if m >= FP32_TILES_MIN_ROWS["w8"] and _C.has_amx_bf16():
        return "fp32_tiles"
    return "dense" if m >= DENSE_MIN_ROWS["w8"] else "fp32"


_W8_CALLS = {
    "bf16": _C.gemm_w8_bf16,
    "bf16_tiles": _C.gemm_w8_bf16_tiles,
    "fp32_tiles": _C.gemm_w8_fp32_tiles,
    "fp32": _C.gemm_w8,
}


def gemm_w8_cpu(x, packed, scale, bias, n: int, x_scale=None, bf16=None) -> torch.Tensor:
    """The kernel w8_form(x.dtype, rows, x_scale, bf16) names."""
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    form = w8_form(x.dtype, m, x_scale, bf16)
    if form == "dense":
        xf = x2.float() if x_scale is None else x2.float() * x_scale
        y = linear_w8_dense(xf, packed, scale, bias, n)
        return out_2d(x, y.to(x.dtype), n)
    y = torch.empty((m, n), dtype=x.dtype)  # float32, or bf16 / fp16 staged natively
    if m:
        _W8_CALLS[form](
            x2.data_ptr(),
            m,
            k,
            x2.stride(0),
            packed.data_ptr(),
            0,
            scale.data_ptr(),
            n,
            ptr(bias),
            y.data_ptr(),
            n,
            torch.get_num_threads(),
            IO_CODE[x.dtype],
            ptr(x_scale),
        )
    return out_2d(x, y, n)


def cpu_runner_w8(packed, scale, n: int, k: int, x_scale=None):
    """The eager CPU call of one packed weight (see gemm_w8a8.cpu_runner_w8a8)."""

    @takes_half
    def run(x, bias):
        if x.dim() == 0 or x.shape[-1] != k:
            return None
        return gemm_w8_cpu(x, packed, scale, bias, n, x_scale)

    return run


def linear_w8(
    x, packed, scale, bias, n: int, kernel_pref: str = "auto", x_scale=None
) -> torch.Tensor:
    if eager(x, kernel_pref):
        return gemm_w8_cpu(x, packed, scale, bias, n, x_scale)
    if x_scale is not None:  # see linear_w8a8
        x = x * x_scale.to(x.dtype)
    return gemm_w8(x, packed, scale, bias, n, kernel_pref)


@torch.library.custom_op("tersor::gemm_w8", mutates_args=())
def gemm_w8(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    kernel_pref: str = "auto",
) -> torch.Tensor:
    check_packed_int8("tersor::gemm_w8", x, packed, None, scale, bias, out_features)
    return gpu.int8_linear(x, packed, scale, bias, out_features, kernel_pref, act_int8=False)


@gemm_w8.register_kernel("cpu")
def _(x, packed, scale, bias, out_features, kernel_pref="auto"):
    check_packed_int8("tersor::gemm_w8", x, packed, None, scale, bias, out_features)
    if kernel_pref in NATIVE:
        return gemm_w8_cpu(x, packed, scale, bias, out_features)
    return gpu.int8_linear(x, packed, scale, bias, out_features, kernel_pref, act_int8=False)


@gemm_w8.register_fake
def _(x, packed, scale, bias, out_features, kernel_pref="auto"):
    return x.new_empty((*x.shape[:-1], out_features))
