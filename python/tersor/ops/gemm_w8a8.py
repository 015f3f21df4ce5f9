"""``tersor::gemm_w8a8``: y = x W^T + b with dynamic per-row int8 activations, int8 weights in
the kernel form of formats/int8.py (the same tensors on every device)."""

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
    empty_rows,
    no_row_amax,
    out_2d,
    ptr,
    rows_view,
    takes_half,
)

_num_threads = torch.get_num_threads


def gemm_w8a8_cpu(
    x, packed, colsum, scale, bias, n: int, x_scale=None, row_amax=None, narrow_w=False
) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = x2.new_empty(m, n)
    if m:
        _C.gemm_w8a8(
            x2.data_ptr(),
            m,
            k,
            x2.stride(0),
            packed.data_ptr(),
            colsum.data_ptr(),
            scale.data_ptr(),
            n,
            ptr(bias),
            y.data_ptr(),
            n,
            _num_threads(),
            0,
            ptr(x_scale),
            ptr(row_amax),
            narrow_w,
        )
    return out_2d(x, y, n)


def cpu_runner_w8a8(packed, colsum, scale, n: int, k: int, x_scale=None, narrow_w=False):
    """The eager CPU call of one packed weight, for the layers' fast path (contiguous float32,
    bfloat16 or float16 [..., K] input of the layer's width, else None; the output [..., N] in
    x's dtype): the weight's data pointers are bound into the kernel once here
    (_C.int_partial; run.tensors keeps the tensors alive, and formats replace their tensors
    rather than resize them), which saves ~0.5 us per call of a small layer. x_scale: the
    layer's input scale (fp32 [K]) or None. narrow_w: every |w| <= 64 (a speed hint:
    formats/int8.py)."""
    kernel = _C.int_partial(  # called with x, M, bias, y, threads, io
        _C.gemm_w8a8,
        K=k,
        ldx=k,
        w=packed.data_ptr(),
        colsum=colsum.data_ptr(),
        w_scale=scale.data_ptr(),
        N=n,
        ldy=n,
        x_scale=ptr(x_scale),
        narrow_w=narrow_w,
    )

    @takes_half
    def run(x, bias):
        """None when x is not a contiguous [..., K] (the layer then checks and takes the op)."""
        s = x.shape  # read once: 2-D rows (the common case) without dim() / numel() calls
        if len(s) == 2:
            if s[1] != k or not x.is_contiguous():
                return None
            m = s[0]
            y = x.new_empty(m, n)
        else:
            if not s or s[-1] != k or not x.is_contiguous():
                return None
            m = x.numel() // k
            y = empty_rows(x, n)  # [..., N] at once: no view per call
        if m:
            b = 0 if bias is None else bias.data_ptr()
            kernel(x.data_ptr(), m, b, y.data_ptr(), _num_threads(), IO_CODE[x.dtype])
        return y

    run.tensors = (packed, colsum, scale, x_scale)  # what the bound addresses point into
    return run


def linear_w8a8(
    x,
    packed,
    colsum,
    scale,
    bias,
    n: int,
    kernel_pref: str = "auto",
    x_scale=None,
    row_amax=None,
    narrow_w=False,
) -> torch.Tensor:
    """x_scale: the layer's input scale (fp32 [K]), multiplied into x inside the native call,
    or by one torch multiply before the op. row_amax: fp32 [M] floors under the rows' amax
    (tensor-parallel shards, distributed/), native CPU kernel only. narrow_w: every |w| <= 64
    (formats/int8.py), a speed hint for the AVX2 kernel."""
    if eager(x, kernel_pref):
        return gemm_w8a8_cpu(x, packed, colsum, scale, bias, n, x_scale, row_amax, narrow_w)
    no_row_amax(row_amax, "tersor::gemm_w8a8")
    if x_scale is not None:
        x = x * x_scale.to(x.dtype)
    return gemm_w8a8(x, packed, colsum, scale, bias, n, kernel_pref, narrow_w)


@torch.library.custom_op("tersor::gemm_w8a8", mutates_args=())
def gemm_w8a8(
    x: torch.Tensor,
    packed: torch.Tensor,
    colsum: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    kernel_pref: str = "auto",
    narrow_w: bool = False,
) -> torch.Tensor:
    """Any device: the device path (CUDA extension -> Triton -> torch reference)."""
    check_packed_int8("tersor::gemm_w8a8", x, packed, colsum, scale, bias, out_features)
    return gpu.int8_linear(x, packed, scale, bias, out_features, kernel_pref, act_int8=True)


@gemm_w8a8.register_kernel("cpu")
def _(x, packed, colsum, scale, bias, out_features, kernel_pref="auto", narrow_w=False):
    check_packed_int8("tersor::gemm_w8a8", x, packed, colsum, scale, bias, out_features)
    if kernel_pref in NATIVE:
        return gemm_w8a8_cpu(x, packed, colsum, scale, bias, out_features, narrow_w=narrow_w)
    return gpu.int8_linear(x, packed, scale, bias, out_features, kernel_pref, act_int8=True)


@gemm_w8a8.register_fake
def _(x, packed, colsum, scale, bias, out_features, kernel_pref="auto", narrow_w=False):
    return x.new_empty((*x.shape[:-1], out_features))
