"""``tersor::conv_w8a8``: W8A8 Conv2d on an NHWC input: the input is quantized once (one scale
per image) into a zero-padded int8 copy that the GEMM reads its patches from (csrc/conv).
``tersor::conv_dw_w8a8``: the depthwise one (groups = C_in), from the same copy, kh * kw
products per output (csrc/conv/conv_dw_w8a8.h). Both return NHWC [B, H_out, W_out, C_out];
kernel="ref" (and any device but the CPU) runs the torch reference of the same per-image rule
(tersor.ref.int8.conv_w8a8_ref)."""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops import device, gpu
from tersor.ops._common import NATIVE, check, eager, ptr


def _out_hw(h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def conv_w8a8_cpu(
    xh,
    packed,
    colsum,
    scale,
    bias,
    n: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int,
    dw: int,
    emulate_implicit: bool = False,
    groups: int = 1,
    narrow_w: bool = False,
) -> torch.Tensor:
    """emulate_implicit (tests): run the AMX implicit GEMM over scalar tiles, on any CPU.
    groups: a grouped convolution (n / groups a multiple of 16). narrow_w: every |w| <= 64
    (the AVX2 kernel's speed hint, formats/int8.py)."""
    b, h, w, c = xh.shape
    ho, wo = _out_hw(h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    y = torch.empty(b, ho, wo, n)
    fn = _C.conv_w8a8_implicit_emulated if emulate_implicit else _C.conv_w8a8
    fn(
        xh.data_ptr(),
        b,
        h,
        w,
        c,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        ho,
        wo,
        packed.data_ptr(),
        colsum.data_ptr(),
        scale.data_ptr(),
        n,
        ptr(bias),
        y.data_ptr(),
        torch.get_num_threads(),
        groups,
        narrow_w,
    )
    return y


def conv_nhwc_w8a8(
    xh,
    packed,
    colsum,
    scale,
    bias,
    n: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int,
    dw: int,
    kernel_pref: str = "auto",
    groups: int = 1,
    narrow_w: bool = False,
) -> torch.Tensor:
    """What a format calls: the eager CPU call, or the op (tracing, other kernels/devices;
    narrow_w, a speed hint, serves the eager call only)."""
    if eager(xh, kernel_pref):
        return conv_w8a8_cpu(
            xh, packed, colsum, scale, bias, n, kh, kw, sh, sw, ph, pw, dh, dw,
            groups=groups, narrow_w=narrow_w,
        )  # fmt: skip
    return conv_w8a8(
        xh, packed, colsum, scale, bias, n, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref, groups
    )


def _check_conv(xh, packed, kh, kw, sh, sw, ph, pw, dh, dw, n=None, groups=1):
    check(
        xh.dtype == torch.float32 and xh.dim() == 4 and xh.is_contiguous(),
        f"tersor::conv_w8a8: xh must be a contiguous float32 NHWC tensor, got {xh.dtype} "
        f"{tuple(xh.shape)}",
    )
    c = xh.shape[3]
    check(
        groups == 1
        or (groups > 1 and c % groups == 0 and n % groups == 0 and n // groups % 16 == 0),
        f"tersor::conv_w8a8: groups={groups} must divide C={c} and N={n} into groups of a "
        f"multiple of 16 outputs",
    )
    check(
        packed.shape[1] * 4 >= kh * kw * (c // groups) > packed.shape[1] * 4 - 4,
        "tersor::conv_w8a8: packed weight K does not match kh * kw * C / groups",
    )
    ho, wo = _out_hw(xh.shape[1], xh.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    check(ho > 0 and wo > 0, "tersor::conv_w8a8: input smaller than the receptive field")


def _conv_reference(
    xh, packed, scale, bias, n, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref, groups=1
):
    from tersor.formats.int8 import unpack_int8
    from tersor.ref.int8 import conv_w8a8_ref

    device.pick(kernel_pref, xh, (), "tersor::conv_w8a8")
    k = kh * kw * (xh.shape[3] // groups)
    q, s = gpu.forms(packed, lambda: unpack_int8(packed, scale, n, k))
    y = conv_w8a8_ref(
        xh.permute(0, 3, 1, 2), q, s, bias, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups
    )
    return y.permute(0, 2, 3, 1).contiguous()


@torch.library.custom_op("tersor::conv_w8a8", mutates_args=())
def conv_w8a8(
    xh: torch.Tensor,
    packed: torch.Tensor,
    colsum: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_channels: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int,
    dw: int,
    kernel_pref: str = "auto",
    groups: int = 1,
) -> torch.Tensor:
    """Any device: the torch reference (no GPU conv kernel; a layer on a GPU runs im2col GEMMs,
    a grouped one this reference)."""
    _check_conv(xh, packed, kh, kw, sh, sw, ph, pw, dh, dw, out_channels, groups)
    return _conv_reference(
        xh, packed, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref, groups
    )


@conv_w8a8.register_kernel("cpu")
def _(
    xh,
    packed,
    colsum,
    scale,
    bias,
    out_channels,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    kernel_pref="auto",
    groups=1,
):
    _check_conv(xh, packed, kh, kw, sh, sw, ph, pw, dh, dw, out_channels, groups)
    if kernel_pref in NATIVE:
        return conv_w8a8_cpu(
            xh, packed, colsum, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw,
            groups=groups,
        )  # fmt: skip
    return _conv_reference(
        xh, packed, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref, groups
    )


@conv_w8a8.register_fake
def _(
    xh,
    packed,
    colsum,
    scale,
    bias,
    out_channels,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    kernel_pref="auto",
    groups=1,
):
    ho, wo = _out_hw(xh.shape[1], xh.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    return xh.new_empty((xh.shape[0], ho, wo, out_channels))


def conv_dw_w8a8_cpu(xh, packed, scale, bias, n: int, kh, kw, sh, sw, ph, pw, dh, dw):
    b, h, w, c = xh.shape
    ho, wo = _out_hw(h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    y = torch.empty(b, ho, wo, n)
    _C.conv_dw_w8a8(
        xh.data_ptr(),
        b,
        h,
        w,
        c,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        ho,
        wo,
        packed.data_ptr(),
        0,
        scale.data_ptr(),
        n,
        ptr(bias),
        y.data_ptr(),
        torch.get_num_threads(),
    )
    return y


def conv_nhwc_dw_w8a8(
    xh, packed, scale, bias, n: int, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref: str = "auto"
) -> torch.Tensor:
    """What a format calls for a depthwise convolution (groups = C_in, C_out = mult * C_in)."""
    if eager(xh, kernel_pref):
        return conv_dw_w8a8_cpu(xh, packed, scale, bias, n, kh, kw, sh, sw, ph, pw, dh, dw)
    return conv_dw_w8a8(xh, packed, scale, bias, n, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref)


def _check_dw(xh, packed, n, kh, kw, sh, sw, ph, pw, dh, dw):
    check(
        xh.dtype == torch.float32 and xh.dim() == 4 and xh.is_contiguous(),
        f"tersor::conv_dw_w8a8: xh must be a contiguous float32 NHWC tensor, got {xh.dtype} "
        f"{tuple(xh.shape)}",
    )
    check(
        packed.shape[1] * 4 >= kh * kw > packed.shape[1] * 4 - 4 and n % xh.shape[3] == 0,
        "tersor::conv_dw_w8a8: the packed weight must have K = kh * kw and a multiple of C rows",
    )
    ho, wo = _out_hw(xh.shape[1], xh.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    check(ho > 0 and wo > 0, "tersor::conv_dw_w8a8: input smaller than the receptive field")


def _dw_reference(xh, packed, scale, bias, n, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref):
    from tersor.formats.int8 import unpack_int8
    from tersor.ref.int8 import conv_w8a8_ref

    device.pick(kernel_pref, xh, (), "tersor::conv_dw_w8a8")
    q, s = gpu.forms(packed, lambda: unpack_int8(packed, scale, n, kh * kw))
    c = xh.shape[3]
    # mult > 1: output channel n reads input channel n / mult, torch's grouped order too
    y = conv_w8a8_ref(
        xh.permute(0, 3, 1, 2), q, s, bias, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups=c
    )
    return y.permute(0, 2, 3, 1).contiguous()


@torch.library.custom_op("tersor::conv_dw_w8a8", mutates_args=())
def conv_dw_w8a8(
    xh: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_channels: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int,
    dw: int,
    kernel_pref: str = "auto",
) -> torch.Tensor:
    """Any device: the torch reference."""
    _check_dw(xh, packed, out_channels, kh, kw, sh, sw, ph, pw, dh, dw)
    return _dw_reference(
        xh, packed, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref
    )


@conv_dw_w8a8.register_kernel("cpu")
def _(xh, packed, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref="auto"):
    _check_dw(xh, packed, out_channels, kh, kw, sh, sw, ph, pw, dh, dw)
    if kernel_pref in NATIVE:
        return conv_dw_w8a8_cpu(
            xh, packed, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw
        )
    return _dw_reference(
        xh, packed, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref
    )


@conv_dw_w8a8.register_fake
def _(xh, packed, scale, bias, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, kernel_pref="auto"):
    ho, wo = _out_hw(xh.shape[1], xh.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    return xh.new_empty((xh.shape[0], ho, wo, out_channels))
