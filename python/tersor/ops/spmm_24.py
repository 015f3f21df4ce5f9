"""``tersor::spmm_24``: y = x W^T + b with a 2:4 sparse fp32 weight (formats/sparse24.py)."""
from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import check, ptr, rows_view


def spmm_24_cpu(x, values, meta, bias, n: int) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        _C.spmm_24(x2.data_ptr(), m, k, x2.stride(0), values.data_ptr(), meta.data_ptr(), n,
                   ptr(bias), y.data_ptr(), n, torch.get_num_threads())
    return y.view(*x.shape[:-1], n)


@torch.library.custom_op("tersor::spmm_24", mutates_args=())
def spmm_24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
            bias: Optional[torch.Tensor], out_features: int) -> torch.Tensor:
    k = x.shape[-1]
    check(x.dtype == torch.float32, f"tersor::spmm_24: x must be float32, got {x.dtype}")
    check(values.dtype == torch.float32 and values.dim() == 4 and values.shape[2:] == (2, 16)
          and values.shape[1] == (k + 3) // 4,
          f"tersor::spmm_24: values must be float32 [Np/16, {(k + 3) // 4}, 2, 16], got "
          f"{values.dtype} {tuple(values.shape)}")
    check(meta.dtype == torch.uint8 and meta.shape[0] == values.shape[0]
          and meta.shape[1] == ((k + 3) // 4 + 3) // 4 * 4,
          f"tersor::spmm_24: meta does not match values, got {tuple(meta.shape)}")
    check(values.shape[0] * 16 >= out_features > values.shape[0] * 16 - 16,
          f"tersor::spmm_24: out_features={out_features} does not match the packed weight")
    if bias is not None:
        check(bias.dtype == torch.float32 and tuple(bias.shape) == (out_features,),
              f"tersor::spmm_24: bias must be float32 [{out_features}]")
    if x.device.type != "cpu":
        from tersor.formats.sparse24 import decompress_24, unpack_24

        v, m = unpack_24(values, meta, out_features, k)
        return torch.nn.functional.linear(x, decompress_24(v, m, k).to(x.device), bias)
    return spmm_24_cpu(x, values, meta, bias, out_features)


@spmm_24.register_fake
def _(x, values, meta, bias, out_features):
    return x.new_empty((*x.shape[:-1], out_features))
