"""``tersor::conv_w8a8``: W8A8 Conv2d on an NHWC input: the input is quantized once (one scale
per image) into a zero-padded int8 copy that the GEMM reads its patches from (csrc/conv).
Returns NHWC [B, H_out, W_out, C_out]."""
from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import check, ptr


def _out_hw(h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
            (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def conv_w8a8_cpu(xh, packed, colsum, scale, bias, n: int, kh: int, kw: int, sh: int, sw: int,
                  ph: int, pw: int, dh: int, dw: int, emulate_implicit: bool = False
                  ) -> torch.Tensor:
    """emulate_implicit (tests): run the AMX implicit GEMM over scalar tiles, on any CPU."""
    b, h, w, c = xh.shape
    ho, wo = _out_hw(h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    y = torch.empty(b, ho, wo, n)
    fn = _C.conv_w8a8_implicit_emulated if emulate_implicit else _C.conv_w8a8
    fn(xh.data_ptr(), b, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, packed.data_ptr(),
       colsum.data_ptr(), scale.data_ptr(), n, ptr(bias), y.data_ptr(), torch.get_num_threads())
    return y


@torch.library.custom_op("tersor::conv_w8a8", mutates_args=())
def conv_w8a8(xh: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, scale: torch.Tensor,
              bias: Optional[torch.Tensor], out_channels: int, kh: int, kw: int, sh: int, sw: int,
              ph: int, pw: int, dh: int, dw: int) -> torch.Tensor:
    check(xh.dtype == torch.float32 and xh.dim() == 4 and xh.is_contiguous()
          and xh.device.type == "cpu",
          f"tersor::conv_w8a8: xh must be a contiguous float32 NHWC CPU tensor, got {xh.dtype} "
          f"{tuple(xh.shape)} on {xh.device}")
    check(packed.shape[1] * 4 >= kh * kw * xh.shape[3] > packed.shape[1] * 4 - 4,
          "tersor::conv_w8a8: packed weight K does not match kh * kw * C")
    ho, wo = _out_hw(xh.shape[1], xh.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    check(ho > 0 and wo > 0, "tersor::conv_w8a8: input smaller than the receptive field")
    return conv_w8a8_cpu(xh, packed, colsum, scale, bias, out_channels, kh, kw, sh, sw, ph, pw,
                         dh, dw)


@conv_w8a8.register_fake
def _(xh, packed, colsum, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw):
    ho, wo = _out_hw(xh.shape[1], xh.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    return xh.new_empty((xh.shape[0], ho, wo, out_channels))
