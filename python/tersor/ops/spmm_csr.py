"""``tersor::spmm_csr``: y = x W^T + b with an unstructured sparse weight (formats/sparse_csr.py;
the CSR arrays and the ELL blocks travel together): fp32 values, or int8 values x per-row int8
activations when ``scale`` (the per-channel weight scales) is given."""
from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import check, ptr, rows_view


def spmm_csr_cpu(x, rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale, bias,
                 n: int) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        common = (x2.data_ptr(), m, k, x2.stride(0), n, rowptr.data_ptr(), col.data_ptr(),
                  val.data_ptr(), ell_val.data_ptr(), ell_col.data_ptr(), ell_cnt.data_ptr(),
                  ell_off.data_ptr(), perm.data_ptr())
        if scale is None:
            _C.spmm_csr(*common, ptr(bias), y.data_ptr(), n, torch.get_num_threads())
        else:
            _C.spmm_csr_w8a8(*common, scale.data_ptr(), ptr(bias), y.data_ptr(), n,
                             torch.get_num_threads())
    return y.view(*x.shape[:-1], n)


@torch.library.custom_op("tersor::spmm_csr", mutates_args=())
def spmm_csr(x: torch.Tensor, rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
             ell_val: torch.Tensor, ell_col: torch.Tensor, ell_cnt: torch.Tensor,
             ell_off: torch.Tensor, perm: torch.Tensor, scale: Optional[torch.Tensor],
             bias: Optional[torch.Tensor], out_features: int) -> torch.Tensor:
    n = out_features
    check(x.dtype == torch.float32 and x.device.type == "cpu",
          f"tersor::spmm_csr: x must be a float32 CPU tensor, got {x.dtype} on {x.device}")
    check(rowptr.dtype == torch.int64 and rowptr.shape == (n + 1,),
          f"tersor::spmm_csr: rowptr must be int64 [{n + 1}]")
    nnz = int(rowptr[-1])
    vdt = torch.float32 if scale is None else torch.int8
    check(col.dtype == torch.int32 and val.dtype == vdt and ell_val.dtype == vdt
          and col.numel() == nnz and val.numel() == nnz,
          f"tersor::spmm_csr: col/val must be int32/{vdt} [nnz]"
          + ("" if scale is None else " (int8 values when a weight scale is given)"))
    if scale is not None:
        check(scale.dtype == torch.float32 and scale.shape == (n,),
              f"tersor::spmm_csr: scale must be float32 [{n}]")
    check(nnz == 0 or int(col.max()) < x.shape[-1],
          f"tersor::spmm_csr: column indices exceed in_features={x.shape[-1]}")
    check(perm.dtype == torch.int32 and perm.numel() == (n + 15) // 16 * 16
          and ell_off.numel() == perm.numel() // 16 + 1,
          "tersor::spmm_csr: ELL blocks do not match out_features")
    if bias is not None:
        check(bias.dtype == torch.float32 and bias.shape == (n,),
              f"tersor::spmm_csr: bias must be float32 [{n}]")
    return spmm_csr_cpu(x, rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale,
                        bias, n)


@spmm_csr.register_fake
def _(x, rowptr, col, val, ell_val, ell_col, ell_cnt, ell_off, perm, scale, bias, out_features):
    return x.new_empty((*x.shape[:-1], out_features))
