"""``tersor::dequant_w8``: packed int8 weight -> fp32 [N, K]."""

from __future__ import annotations

import torch

from tersor import _C
from tersor.ops._common import check


@torch.library.custom_op("tersor::dequant_w8", mutates_args=())
def dequant_w8(
    packed: torch.Tensor, scale: torch.Tensor, out_features: int, in_features: int
) -> torch.Tensor:
    np_, kp = packed.shape[0] * 16, packed.shape[1] * 4
    check(
        packed.dtype == torch.int8 and packed.shape[2:] == (16, 4) and packed.is_contiguous(),
        f"tersor::dequant_w8: packed must be contiguous int8 [Np/16, Kp/4, 16, 4], got "
        f"{packed.dtype} {tuple(packed.shape)}",
    )
    check(
        np_ >= out_features > np_ - 16 and kp >= in_features > kp - 4,
        f"tersor::dequant_w8: ({out_features}, {in_features}) does not fit packed ({np_}, {kp})",
    )
    check(
        scale.dtype == torch.float32 and scale.shape == (np_,),
        f"tersor::dequant_w8: scale must be float32 [{np_}]",
    )
    if packed.device.type != "cpu":
        from tersor.formats.int8 import unpack_int8

        q, s = unpack_int8(packed, scale, out_features, in_features)
        return q.to(torch.float32) * s[:, None]
    out = torch.empty((out_features, in_features), dtype=torch.float32)
    _C.dequant_w8(
        packed.data_ptr(),
        scale.data_ptr(),
        out_features,
        in_features,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


@dequant_w8.register_fake
def _(packed, scale, out_features, in_features):
    return packed.new_empty((out_features, in_features), dtype=torch.float32)
