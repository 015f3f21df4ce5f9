"""Reference math for the sparse families, from the canonical forms (formats/sparse24.py,
sparse_csr.py, sparse_block.py), not from the kernels: the dense product on the weight the
format describes, accumulated in fp64; int8 values run the W8A8 rule (ref/int8.py).

Shapes: x [M, K] float; bias [N] or None; int8 forms carry scale fp32 [N].
"""

from __future__ import annotations

import torch

from tersor.formats.sparse24 import decompress_24
from tersor.formats.sparse_block import unpack_block
from tersor.formats.sparse_csr import from_csr
from tersor.ref.int8 import gemm_w8a8_ref


def dense_ref(x, w, bias=None, scale=None):
    """x W^T + b on a dense weight [N, K] (int8 codes with scale: the W8A8 rule)."""
    if scale is not None:  # int8 values: exact integer sums, the W8A8 rule
        return gemm_w8a8_ref(x.float(), w.to(torch.int8), scale, bias)
    y = x.double() @ w.double().t()
    return (y if bias is None else y + bias.double()).float()


def spmm_24_ref(x, values, meta, bias=None, scale=None):
    """values [N, K/2] (fp32, or int8 with scale), meta uint8 [N, K/4]."""
    w = decompress_24(values.cpu().float(), meta.cpu(), x.shape[-1]).to(x.device)
    return dense_ref(x, w, bias, scale)


def spmm_csr_ref(x, rowptr, col, val, n: int, bias=None, scale=None):
    """CSR rowptr int64 [N + 1], col int32 [nnz], val [nnz] (fp32, or int8 with scale)."""
    w = from_csr(rowptr.cpu(), col.cpu(), val.cpu().float(), n, x.shape[-1]).to(x.device)
    return dense_ref(x, w, bias, scale)


def spmm_block_ref(x, crow, col, values, n: int, bias=None, scale=None):
    """BSR crow int64 [Np/16 + 1], col [blocks], values [blocks, 16, BK] (fp32, or int8)."""
    bk = values.shape[-1] if values.dim() == 3 else 1
    v = values.cpu().reshape(-1, 16, bk)
    w = unpack_block(crow.cpu(), col.cpu(), v if bk > 1 else v.reshape(-1, 16), n, x.shape[-1])
    return dense_ref(x, w.to(x.device), bias, scale)
