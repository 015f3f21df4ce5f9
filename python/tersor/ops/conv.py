"""``tersor::conv_w8a8``: W8A8 Conv2d on a zero-padded NHWC input, patches gathered and
quantized inside the kernel (csrc/conv/conv_w8a8.h). Returns NHWC [B, H_out, W_out, C_out]."""
from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import check, ptr

MAX_TAPS = 64  # kh * kw the native gather supports


def _out_hw(hp, wp, kh, kw, sh, sw, dh, dw):
    return (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1


def conv_w8a8_cpu(xp, packed, colsum, scale, bias, n: int, kh: int, kw: int, sh: int, sw: int,
                  dh: int, dw: int) -> torch.Tensor:
    b, hp, wp, c = xp.shape
    ho, wo = _out_hw(hp, wp, kh, kw, sh, sw, dh, dw)
    y = torch.empty(b, ho, wo, n)
    _C.conv_w8a8(xp.data_ptr(), b, hp, wp, c, kh, kw, sh, sw, dh, dw, ho, wo, packed.data_ptr(),
                 colsum.data_ptr(), scale.data_ptr(), n, ptr(bias), y.data_ptr(),
                 torch.get_num_threads())
    return y


@torch.library.custom_op("tersor::conv_w8a8", mutates_args=())
def conv_w8a8(xp: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, scale: torch.Tensor,
              bias: Optional[torch.Tensor], out_channels: int, kh: int, kw: int, sh: int, sw: int,
              dh: int, dw: int) -> torch.Tensor:
    check(xp.dtype == torch.float32 and xp.dim() == 4 and xp.is_contiguous()
          and xp.device.type == "cpu",
          f"tersor::conv_w8a8: xp must be a contiguous float32 NHWC CPU tensor, got {xp.dtype} "
          f"{tuple(xp.shape)} on {xp.device}")
    check(kh * kw <= MAX_TAPS, f"tersor::conv_w8a8: kernel {kh}x{kw} has more than {MAX_TAPS} taps")
    check(packed.shape[1] * 4 >= kh * kw * xp.shape[3] > packed.shape[1] * 4 - 4,
          "tersor::conv_w8a8: packed weight K does not match kh * kw * C")
    return conv_w8a8_cpu(xp, packed, colsum, scale, bias, out_channels, kh, kw, sh, sw, dh, dw)


@conv_w8a8.register_fake
def _(xp, packed, colsum, scale, bias, out_channels, kh, kw, sh, sw, dh, dw):
    ho, wo = _out_hw(xp.shape[1], xp.shape[2], kh, kw, sh, sw, dh, dw)
    return xp.new_empty((xp.shape[0], ho, wo, out_channels))
