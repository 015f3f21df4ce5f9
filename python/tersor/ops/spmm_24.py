"""``tersor::spmm_24``: y = x W^T + b with a 2:4 sparse fp32 weight, and
``tersor::spmm_24_w8a8`` with a 2:4 sparse int8 weight x per-row int8 activations
(formats/sparse24.py kernel forms). Layout of every family module: ops/_common.py."""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops import gpu
from tersor.ops._common import (
    NATIVE,
    check,
    eager,
    empty_rows,
    no_row_amax,
    out_2d,
    ptr,
    rows_view,
)

_num_threads = torch.get_num_threads


def spmm_24_cpu(x, values, meta, bias, n: int) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        _C.spmm_24(
            x2.data_ptr(),
            m,
            k,
            x2.stride(0),
            values.data_ptr(),
            meta.data_ptr(),
            n,
            ptr(bias),
            y.data_ptr(),
            n,
            torch.get_num_threads(),
        )
    return out_2d(x, y, n)


def cpu_runner_24(values, meta, n: int, k: int, colsum=None, scale=None):
    """The eager CPU call of one 2:4 weight (fp32 values, or int8 with colsum / scale) for the
    layers' fast path, as gemm_w8a8.cpu_runner_w8a8: a contiguous float32 [..., K] x straight
    to the kernel with the weight's pointers read once (384x1536 int8 at one row: ~3 us less
    than the op's eager function); None for anything else (the layer then takes the op)."""
    int8 = colsum is not None
    weight = dict(K=k, ldx=k, values=values.data_ptr(), meta=meta.data_ptr(), N=n, ldy=n)
    if int8:
        weight.update(colsum=colsum.data_ptr(), w_scale=scale.data_ptr())
    # the kernel with the weight bound (_C.int_partial): called with x, M, bias, y, threads
    kernel = _C.int_partial(_C.spmm_24_w8a8 if int8 else _C.spmm_24, **weight)

    def run(x, bias):
        if x.dim() == 0 or x.shape[-1] != k or x.dtype != torch.float32 or not x.is_contiguous():
            return None
        m = x.numel() // k
        y = empty_rows(x, n)
        if m:
            b = 0 if bias is None else bias.data_ptr()
            kernel(x.data_ptr(), m, b, y.data_ptr(), _num_threads())
        return y

    run.tensors = (values, meta, colsum, scale)  # what the bound addresses point into
    return run


def linear_24(x, values, meta, bias, n: int, kernel_pref: str = "auto") -> torch.Tensor:
    if eager(x, kernel_pref):
        return spmm_24_cpu(x, values, meta, bias, n)
    return spmm_24(x, values, meta, bias, n, kernel_pref)


def _check_24(x, values, meta, bias, out_features):
    k = x.shape[-1]
    check(
        x.dtype == torch.float32 or (not x.is_cpu and x.is_floating_point()),
        f"tersor::spmm_24: x must be float32 (float16 also on a GPU), got {x.dtype}",
    )
    check(
        values.dtype == torch.float32
        and values.dim() == 4
        and values.shape[2:] == (2, 16)
        and values.shape[1] == (k + 3) // 4,
        f"tersor::spmm_24: values must be float32 [Np/16, {(k + 3) // 4}, 2, 16], got "
        f"{values.dtype} {tuple(values.shape)}",
    )
    check(
        meta.dtype == torch.uint8
        and meta.shape[0] == values.shape[0]
        and meta.shape[1] == ((k + 3) // 4 + 3) // 4 * 4,
        f"tersor::spmm_24: meta does not match values, got {tuple(meta.shape)}",
    )
    check(
        values.shape[0] * 16 >= out_features > values.shape[0] * 16 - 16,
        f"tersor::spmm_24: out_features={out_features} does not match the packed weight",
    )
    if bias is not None:
        check(
            bias.dtype == torch.float32 and tuple(bias.shape) == (out_features,),
            f"tersor::spmm_24: bias must be float32 [{out_features}]",
        )


@torch.library.custom_op("tersor::spmm_24", mutates_args=())
def spmm_24(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    kernel_pref: str = "auto",
) -> torch.Tensor:
    """Any device: CUDA mma.sp for fp16, else the dense product on the decompressed weight."""
    _check_24(x, values, meta, bias, out_features)
    return gpu.sparse24_linear(x, values, meta, bias, out_features, kernel_pref)


@spmm_24.register_kernel("cpu")
def _(x, values, meta, bias, out_features, kernel_pref="auto"):
    _check_24(x, values, meta, bias, out_features)
    if kernel_pref in NATIVE:
        return spmm_24_cpu(x, values, meta, bias, out_features)
    return gpu.sparse24_linear(x, values, meta, bias, out_features, kernel_pref)


@spmm_24.register_fake
def _(x, values, meta, bias, out_features, kernel_pref="auto"):
    return x.new_empty((*x.shape[:-1], out_features))


def spmm_24_w8a8_cpu(x, values, meta, colsum, scale, bias, n: int, row_amax=None) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        _C.spmm_24_w8a8(
            x2.data_ptr(),
            m,
            k,
            x2.stride(0),
            values.data_ptr(),
            meta.data_ptr(),
            colsum.data_ptr(),
            scale.data_ptr(),
            n,
            ptr(bias),
            y.data_ptr(),
            n,
            torch.get_num_threads(),
            ptr(row_amax),
        )
    return out_2d(x, y, n)


def linear_24_w8a8(
    x, values, meta, colsum, scale, bias, n: int, kernel_pref: str = "auto", row_amax=None
) -> torch.Tensor:
    if eager(x, kernel_pref):
        return spmm_24_w8a8_cpu(x, values, meta, colsum, scale, bias, n, row_amax)
    no_row_amax(row_amax, "tersor::spmm_24_w8a8")
    return spmm_24_w8a8(x, values, meta, colsum, scale, bias, n, kernel_pref)


def _check_24_w8a8(x, values, meta, colsum, scale, bias, out_features):
    k, op = x.shape[-1], "tersor::spmm_24_w8a8"
    k8 = (k + 7) // 8
    check(
        x.dtype == torch.float32 or (not x.is_cpu and x.is_floating_point()),
        f"{op}: x must be float32, got {x.dtype}",
    )
    check(k <= 65536, f"{op}: K={k} > 65536 (int32 accumulator bound)")
    check(
        values.dtype == torch.int8 and values.dim() == 4 and values.shape[1:] == (k8, 16, 4),
        f"{op}: values must be int8 [Np/16, {k8}, 16, 4], got {values.dtype} {tuple(values.shape)}",
    )
    np_ = values.shape[0] * 16
    check(
        meta.dtype == torch.uint8 and tuple(meta.shape) == (values.shape[0], k8, 16),
        f"{op}: meta must be uint8 [{values.shape[0]}, {k8}, 16], got {tuple(meta.shape)}",
    )
    check(
        colsum.dtype == torch.int32
        and scale.dtype == torch.float32
        and colsum.shape == (np_,)
        and scale.shape == (np_,),
        f"{op}: colsum/scale must be int32/float32 [{np_}]",
    )
    check(
        np_ >= out_features > np_ - 16,
        f"{op}: out_features={out_features} does not match the packed weight",
    )
    if bias is not None:
        check(
            bias.dtype == torch.float32 and tuple(bias.shape) == (out_features,),
            f"{op}: bias must be float32 [{out_features}]",
        )


def _24_w8a8_device(x, values, meta, scale, bias, out_features, kernel_pref):
    from tersor.formats.sparse24 import decompress_24, unpack_24_int8

    k = x.shape[-1]

    def dense():
        v, m, s = unpack_24_int8(values, meta, scale, out_features, k)
        return decompress_24(v.to(torch.float32), m, k).to(torch.int8), s

    q, s = gpu.forms(values, dense)
    return gpu.reference_linear(
        x, lambda: q, bias, out_features, kernel_pref, "tersor::spmm_24_w8a8", int8_scale=s
    )


@torch.library.custom_op("tersor::spmm_24_w8a8", mutates_args=())
def spmm_24_w8a8(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    colsum: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    kernel_pref: str = "auto",
) -> torch.Tensor:
    """Any device: the W8A8 reference on the decompressed int8 weight (no GPU kernel_pref)."""
    _check_24_w8a8(x, values, meta, colsum, scale, bias, out_features)
    return _24_w8a8_device(x, values, meta, scale, bias, out_features, kernel_pref)


@spmm_24_w8a8.register_kernel("cpu")
def _(x, values, meta, colsum, scale, bias, out_features, kernel_pref="auto"):
    _check_24_w8a8(x, values, meta, colsum, scale, bias, out_features)
    if kernel_pref in NATIVE:
        return spmm_24_w8a8_cpu(x, values, meta, colsum, scale, bias, out_features)
    return _24_w8a8_device(x, values, meta, scale, bias, out_features, kernel_pref)


@spmm_24_w8a8.register_fake
def _(x, values, meta, colsum, scale, bias, out_features, kernel_pref="auto"):
    return x.new_empty((*x.shape[:-1], out_features))
