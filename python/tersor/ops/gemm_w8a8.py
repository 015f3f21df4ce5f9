"""``tersor::gemm_w8a8``: y = x W^T + b with dynamic per-row int8 activations, int8 weights.

Eager callers that have already validated their tensors (QLinear) call ``gemm_w8a8_cpu``
directly: a custom op costs 10+ us per call in eager mode, a pybind call ~1 us. Under
torch.compile the custom op (with its fake) is what gets traced.
"""
from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import check_packed_int8, ptr, rows_view
from tersor.ref.int8 import gemm_w8a8_ref


def gemm_w8a8_cpu(x, packed, colsum, scale, bias, n: int) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        _C.gemm_w8a8(x2.data_ptr(), m, k, x2.stride(0), packed.data_ptr(), colsum.data_ptr(),
                     scale.data_ptr(), n, ptr(bias), y.data_ptr(), n, torch.get_num_threads())
    return y.view(*x.shape[:-1], n)


@torch.library.custom_op("tersor::gemm_w8a8", mutates_args=())
def gemm_w8a8(x: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, scale: torch.Tensor,
              bias: Optional[torch.Tensor], out_features: int) -> torch.Tensor:
    check_packed_int8("tersor::gemm_w8a8", x, packed, colsum, scale, bias, out_features)
    if x.device.type == "cpu":
        return gemm_w8a8_cpu(x, packed, colsum, scale, bias, out_features)
    # No native kernel for this device yet: the torch reference is the fallback.
    from tersor.formats.int8 import unpack_int8

    q, s = unpack_int8(packed, scale, out_features, x.shape[-1])
    y = gemm_w8a8_ref(x.reshape(-1, x.shape[-1]), q, s, bias)
    return y.view(*x.shape[:-1], out_features)


@gemm_w8a8.register_fake
def _(x, packed, colsum, scale, bias, out_features):
    return x.new_empty((*x.shape[:-1], out_features))
