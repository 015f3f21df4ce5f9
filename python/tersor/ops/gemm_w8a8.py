"""``tersor::gemm_w8a8``: y = x W^T + b with dynamic per-row int8 activations, int8 weights in
the kernel form of formats/int8.py (the same tensors on every device)."""
from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops import gpu
from tersor.ops._common import NATIVE, check_packed_int8, eager, out_2d, ptr, rows_view


def gemm_w8a8_cpu(x, packed, colsum, scale, bias, n: int) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        _C.gemm_w8a8(x2.data_ptr(), m, k, x2.stride(0), packed.data_ptr(), colsum.data_ptr(),
                     scale.data_ptr(), n, ptr(bias), y.data_ptr(), n, torch.get_num_threads())
    return out_2d(x, y, n)


def linear_w8a8(x, packed, colsum, scale, bias, n: int, kernel_pref: str = "auto") -> torch.Tensor:
    if eager(x, kernel_pref):
        return gemm_w8a8_cpu(x, packed, colsum, scale, bias, n)
    return gemm_w8a8(x, packed, colsum, scale, bias, n, kernel_pref)


@torch.library.custom_op("tersor::gemm_w8a8", mutates_args=())
def gemm_w8a8(x: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, scale: torch.Tensor,
              bias: Optional[torch.Tensor], out_features: int,
              kernel_pref: str = "auto") -> torch.Tensor:
    """Any device: the device path (CUDA extension -> Triton -> torch reference)."""
    check_packed_int8("tersor::gemm_w8a8", x, packed, colsum, scale, bias, out_features)
    return gpu.int8_linear(x, packed, scale, bias, out_features, kernel_pref, act_int8=True)


@gemm_w8a8.register_kernel("cpu")
def _(x, packed, colsum, scale, bias, out_features, kernel_pref="auto"):
    check_packed_int8("tersor::gemm_w8a8", x, packed, colsum, scale, bias, out_features)
    if kernel_pref in NATIVE:
        return gemm_w8a8_cpu(x, packed, colsum, scale, bias, out_features)
    return gpu.int8_linear(x, packed, scale, bias, out_features, kernel_pref, act_int8=True)


@gemm_w8a8.register_fake
def _(x, packed, colsum, scale, bias, out_features, kernel_pref="auto"):
    return x.new_empty((*x.shape[:-1], out_features))
