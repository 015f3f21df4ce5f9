"""``tersor::gemm_w8``: y = x W^T + b with fp32 activations and int8 weights widened in registers."""
from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import check_packed_int8, ptr, rows_view
from tersor.ops.dense_path import DENSE_MIN_ROWS, linear_w8_dense
from tersor.ref.int8 import gemm_w8_ref


def gemm_w8_cpu(x, packed, scale, bias, n: int) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    if m >= DENSE_MIN_ROWS["w8"]:
        return linear_w8_dense(x2, packed, scale, bias, n).view(*x.shape[:-1], n)
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        _C.gemm_w8(x2.data_ptr(), m, k, x2.stride(0), packed.data_ptr(), 0, scale.data_ptr(), n,
                   ptr(bias), y.data_ptr(), n, torch.get_num_threads())
    return y.view(*x.shape[:-1], n)


@torch.library.custom_op("tersor::gemm_w8", mutates_args=())
def gemm_w8(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
            bias: Optional[torch.Tensor], out_features: int) -> torch.Tensor:
    check_packed_int8("tersor::gemm_w8", x, packed, None, scale, bias, out_features)
    if x.device.type == "cpu":
        return gemm_w8_cpu(x, packed, scale, bias, out_features)
    from tersor.formats.int8 import unpack_int8

    q, s = unpack_int8(packed, scale, out_features, x.shape[-1])
    y = gemm_w8_ref(x.reshape(-1, x.shape[-1]), q, s, bias)
    return y.view(*x.shape[:-1], out_features)


@gemm_w8.register_fake
def _(x, packed, scale, bias, out_features):
    return x.new_empty((*x.shape[:-1], out_features))
