"""``tersor::spmm_csr``: y = x W^T + b with an unstructured sparse weight (formats/sparse_csr.py;
the CSR arrays and the ELL blocks travel together): fp32 values, or int8 values x per-row int8
activations when ``scale`` (the per-channel weight scales) is given. Layout of every family
module: ops/_common.py."""

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


def spmm_csr_cpu(
    x,
    rowptr,
    col,
    val,
    ell_val,
    ell_col,
    ell_cnt,
    ell_off,
    perm,
    scale,
    bias,
    n: int,
    row_amax=None,
) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        fn = _C.spmm_csr if scale is None else _C.spmm_csr_w8a8
        fn(
            x2.data_ptr(),
            m,
            k,
            x2.stride(0),
            n,
            rowptr.data_ptr(),
            col.data_ptr(),
            val.data_ptr(),
            ell_val.data_ptr(),
            ell_col.data_ptr(),
            ell_cnt.data_ptr(),
            ell_off.data_ptr(),
            perm.data_ptr(),
            ptr(scale),
            ptr(bias),
            y.data_ptr(),
            n,
            torch.get_num_threads(),
            ptr(row_amax),
        )
    return out_2d(x, y, n)


_num_threads = torch.get_num_threads


def cpu_runner_csr(arrays, n: int, k: int, dense_from_rows, fallback, scale=None):
    """The eager CPU call of one sparse weight (fp32 values, or int8 ones with `scale`: the
    per-channel weight scales) for the layers' fast path (as
    gemm_w4.cpu_runner_w4): a contiguous float32 [..., K] x of fewer than dense_from_rows rows
    goes straight to the kernel with the weight's pointers read once (Zen 2, 384x1536 at one
    row: ~10 us less per call than spmm_csr_cpu, which views, allocates with a dtype keyword and
    reads 13 pointers); anything else takes fallback(x, bias). arrays: the format's rowptr,
    col, val, ell_val, ell_col, ell_cnt, ell_off, perm."""
    names = ("rowptr", "col", "val", "ell_val", "ell_col", "ell_cnt", "ell_off", "perm")
    weight = {name: t.data_ptr() for name, t in zip(names, arrays)}
    weight.update(K=k, ldx=k, N=n, ldy=n, w_scale=0 if scale is None else scale.data_ptr())
    lean_rows = dense_from_rows if dense_from_rows is not None else 1 << 62
    # the kernel with the weight bound (_C.int_partial): called with x, M, bias, y, threads
    kernel = _C.int_partial(_C.spmm_csr if scale is None else _C.spmm_csr_w8a8, **weight)

    def run(x, bias):
        if x.dim() == 0 or x.shape[-1] != k:
            return None
        m = x.numel() // k
        if m >= lean_rows or not x.is_contiguous():
            return fallback(x, bias)
        y = empty_rows(x, n)
        if m:
            b = 0 if bias is None else bias.data_ptr()
            kernel(x.data_ptr(), m, b, y.data_ptr(), _num_threads())
        return y

    run.tensors = (*arrays, scale)  # what the bound addresses point into
    return run


def linear_csr(
    x,
    rowptr,
    col,
    val,
    ell_val,
    ell_col,
    ell_cnt,
    ell_off,
    perm,
    scale,
    bias,
    n: int,
    kernel_pref: str = "auto",
    row_amax=None,
) -> torch.Tensor:
    if eager(x, kernel_pref):
        return spmm_csr_cpu(
            x, rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale, bias, n, row_amax
        )
    no_row_amax(row_amax, "tersor::spmm_csr")
    return spmm_csr(
        x, rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale, bias, n, kernel_pref
    )


def _check_csr(x, rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale, bias, n):
    check(
        x.dtype == torch.float32 or (not x.is_cpu and x.is_floating_point()),
        f"tersor::spmm_csr: x must be float32, got {x.dtype}",
    )
    check(
        rowptr.dtype == torch.int64 and rowptr.shape == (n + 1,),
        f"tersor::spmm_csr: rowptr must be int64 [{n + 1}]",
    )
    nnz = int(rowptr[-1])
    vdt = torch.float32 if scale is None else torch.int8
    check(
        col.dtype == torch.int32
        and val.dtype == vdt
        and ell_val.dtype == vdt
        and col.numel() == nnz
        and val.numel() == nnz,
        f"tersor::spmm_csr: col/val must be int32/{vdt} [nnz]"
        + ("" if scale is None else " (int8 values when a weight scale is given)"),
    )
    if scale is not None:
        check(
            scale.dtype == torch.float32 and scale.shape == (n,),
            f"tersor::spmm_csr: scale must be float32 [{n}]",
        )
    check(
        nnz == 0 or int(col.max()) < x.shape[-1],
        f"tersor::spmm_csr: column indices exceed in_features={x.shape[-1]}",
    )
    check(
        perm.dtype == torch.int32
        and perm.numel() == (n + 15) // 16 * 16
        and ell_off.numel() == perm.numel() // 16 + 1,
        "tersor::spmm_csr: ELL blocks do not match out_features",
    )
    if bias is not None:
        check(
            bias.dtype == torch.float32 and bias.shape == (n,),
            f"tersor::spmm_csr: bias must be float32 [{n}]",
        )


def _csr_device(x, rowptr, col, val, scale, bias, n, kernel_pref):
    from tersor.formats.sparse_csr import from_csr

    def dense():
        w = from_csr(rowptr.cpu(), col.cpu(), val.cpu().to(torch.float32), n, x.shape[-1])
        return w.to(x.device, torch.int8 if scale is not None else torch.float32)

    return gpu.reference_linear(
        x, lambda: gpu.forms(val, dense), bias, n, kernel_pref, "tersor::spmm_csr", int8_scale=scale
    )


@torch.library.custom_op("tersor::spmm_csr", mutates_args=())
def spmm_csr(
    x: torch.Tensor,
    rowptr: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    ell_val: torch.Tensor,
    ell_col: torch.Tensor,
    ell_cnt: torch.Tensor,
    ell_off: torch.Tensor,
    perm: torch.Tensor,
    scale: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    out_features: int,
    kernel_pref: str = "auto",
) -> torch.Tensor:
    """Any device: the torch reference on the dense weight (no GPU kernel_pref)."""
    args = (rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale, bias)
    _check_csr(x, *args, out_features)
    return _csr_device(x, rowptr, col, val, scale, bias, out_features, kernel_pref)


@spmm_csr.register_kernel("cpu")
def _(
    x,
    rowptr,
    col,
    val,
    ell_val,
    ell_col,
    ell_cnt,
    ell_off,
    perm,
    scale,
    bias,
    out_features,
    kernel_pref="auto",
):
    args = (rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale, bias)
    _check_csr(x, *args, out_features)
    if kernel_pref in NATIVE:
        return spmm_csr_cpu(x, *args, out_features)
    return _csr_device(x, rowptr, col, val, scale, bias, out_features, kernel_pref)


@spmm_csr.register_fake
def _(
    x,
    rowptr,
    col,
    val,
    ell_val,
    ell_col,
    ell_cnt,
    ell_off,
    perm,
    scale,
    bias,
    out_features,
    kernel_pref="auto",
):
    return x.new_empty((*x.shape[:-1], out_features))
