"""The kernels of the static int8 pipeline (``tersor.static_int8``), on s8 codes with one fixed
scale per tensor (zero point 0), channels-last:

``tersor::conv_w8a8_static``  a W8A8 convolution (dense, grouped or depthwise; a Linear is its
                              1x1 case) from codes, to codes at the next scale (bias, ReLU /
                              clamp and a residual add fused, csrc/conv/requant.h) or to fp32
``tersor::pool_s8``           max / average / adaptive-average pooling of codes (the scale is
                              kept: csrc/int8_ops/int8_ops.h)
``tersor::add_s8``            the sum of two code tensors at a third scale (or a rescale)
``tersor::quantize_s8``       fp32 -> codes at a fixed scale

Each has the direct ``_C`` call for eager CPU use and a custom op (+ fake) so torch.compile
traces the converted graph; off the CPU the ops run their torch references (``*_ref``), which
follow the same rules (the convolution's fp32 epilogue is computed in fp64 there, so its codes
may differ from the kernels' by one where a value lies within an fp32 rounding of a .5).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import NATIVE, QMAX, check, eager, ptr
from tersor.ops.conv import _out_hw


def _requant_ref(v: torch.Tensor, inv_scale: float, lo: float, hi: float) -> torch.Tensor:
    t = (v.to(torch.float32) * inv_scale).nan_to_num(0.0, posinf=hi, neginf=lo)
    return t.clamp(lo, hi).round().to(torch.int8)  # round: half to even


# -- quantize -----------------------------------------------------------------------------------


def quantize_s8_cpu(x: torch.Tensor, scale: float, lo: float, hi: float) -> torch.Tensor:
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8)
    _C.quantize_static(
        x.data_ptr(), x.numel(), 1.0 / scale, lo, hi, q.data_ptr(), torch.get_num_threads()
    )
    return q


@torch.library.custom_op("tersor::quantize_s8", mutates_args=())
def quantize_s8(x: torch.Tensor, scale: float, lo: float, hi: float) -> torch.Tensor:
    """fp32 -> s8 codes: nearbyint(clamp(x / scale, lo, hi)), NaN -> 0 (same shape, contiguous)."""
    return _requant_ref(x.contiguous(), 1.0 / scale, lo, hi)


@quantize_s8.register_kernel("cpu")
def _(x, scale, lo, hi):
    check(x.dtype == torch.float32, f"tersor::quantize_s8: x must be float32, got {x.dtype}")
    return quantize_s8_cpu(x, scale, lo, hi)


@quantize_s8.register_fake
def _(x, scale, lo, hi):
    return torch.empty(x.shape, dtype=torch.int8, device=x.device)


def quantize(x: torch.Tensor, scale: float, lo: float = -QMAX, hi: float = QMAX) -> torch.Tensor:
    if eager(x, "auto") and x.dtype == torch.float32:
        return quantize_s8_cpu(x, scale, lo, hi)
    return quantize_s8(x, scale, lo, hi)


# -- convolution --------------------------------------------------------------------------------


def conv_static_cpu(
    xs, xs_scale, packed, colsum, w_scale, bias, n, geometry, groups,
    out_scale, lo, hi, res, res_scale, emulate_implicit=False, channels=0, narrow_w=False,
):  # fmt: skip
    """xs: s8 NHWC [B, H, W, C'] contiguous, read as `channels` >= C' (zero codes after C';
    0: C'); groups: 1, a grouped convolution, or C (depthwise); out_scale 0: fp32 output, else
    codes; narrow_w: every |w| <= 64 (the kernels' speed hint)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    b, h, w, xc = xs.shape
    c = max(channels, xc)
    ho, wo = _out_hw(h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    codes = out_scale > 0
    y = torch.empty(b, ho, wo, n, dtype=torch.int8 if codes else torch.float32)
    _C.conv_w8a8_static(
        xs.data_ptr(), xs_scale, xc, b, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
        packed.data_ptr(), colsum.data_ptr(), w_scale.data_ptr(), n, ptr(bias), groups,
        0 if codes else y.data_ptr(), y.data_ptr() if codes else 0,
        1.0 / out_scale if codes else 0.0, lo, hi, ptr(res), res_scale,
        1 if emulate_implicit else 0, torch.get_num_threads(), narrow_w,
    )  # fmt: skip
    return y


def conv_static_ref(
    xs, xs_scale, q, w_scale, bias, geometry, groups, out_scale, lo, hi, res, res_scale
):
    """The rule in torch (csrc/conv/requant.h): integer sums exact (fp64); fp32 output
    y = acc * (sx * sw) + bias; codes: the output scale folded into fp32 per-column factors
    m = (sx * sw) / s_out, c = bias / s_out, then y = acc * m + c, the residual's
    res * (s_res / s_out) added, each step rounded to fp32 once (fp64 inside)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    wq = q.view(q.shape[0], kh, kw, -1).permute(0, 3, 1, 2).to(torch.float64)
    acc = torch.nn.functional.conv2d(
        xs.permute(0, 3, 1, 2).to(torch.float64), wq, None, (sh, sw), (ph, pw), (dh, dw), groups
    ).permute(0, 2, 3, 1)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    s = f32(xs_scale) * w_scale.cpu().float()
    b = bias.cpu().float() if bias is not None else torch.zeros_like(s)
    if out_scale > 0:
        inv = f32(1.0 / out_scale)
        s, b = s * inv, b * inv
    y = (acc * s.to(torch.float64).to(acc.device) + b.to(torch.float64).to(acc.device)).float()
    if out_scale <= 0:
        return y.contiguous()
    if res is not None:
        r = (f32(res_scale) * f32(1.0 / out_scale)).double()
        y = (res.to(torch.float64) * r + y.to(torch.float64)).to(torch.float32)
    return _requant_ref(y, 1.0, lo, hi).contiguous()


@torch.library.custom_op("tersor::conv_w8a8_static", mutates_args=())
def conv_w8a8_static(
    xs: torch.Tensor,
    xs_scale: float,
    packed: torch.Tensor,
    colsum: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_channels: int,
    geometry: list[int],
    groups: int,
    out_scale: float,
    lo: float,
    hi: float,
    res: Optional[torch.Tensor],
    res_scale: float,
    channels: int = 0,
    kernel_pref: str = "auto",
) -> torch.Tensor:
    """Any device: the torch reference (conv_static_ref). channels, groups: as
    conv_static_cpu."""
    _check_static(xs, packed, w_scale, bias, out_channels, geometry, groups, res, channels)
    return _conv_ref_call(
        xs, xs_scale, packed, w_scale, bias, out_channels, geometry, groups, out_scale, lo,
        hi, res, res_scale, channels,
    )  # fmt: skip


def _check_static(xs, packed, w_scale, bias, n, geometry, groups, res, channels):
    """What the native kernel trusts, checked (the op is public: a direct caller's sizes)."""
    op = "tersor::conv_w8a8_static"
    check(len(geometry) == 8, f"{op}: geometry must be [kh, kw, sh, sw, ph, pw, dh, dw]")
    check(xs.dtype == torch.int8 and xs.dim() == 4, f"{op}: xs must be int8 NHWC codes, got "
          f"{xs.dtype} {tuple(xs.shape)}")  # fmt: skip
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    c = max(channels, xs.shape[3])
    depthwise = groups > 1 and groups == c
    check(groups == 1 or depthwise or (c % groups == 0 and n % groups == 0
                                       and n // groups % 16 == 0),
          f"{op}: groups={groups} must be 1, C={c} (depthwise) or divide C and N={n} into "
          f"groups of a multiple of 16 outputs")  # fmt: skip
    k = kh * kw * (c // groups)
    check(packed.dtype == torch.int8 and packed.dim() == 4
          and packed.shape[1] * 4 >= k > packed.shape[1] * 4 - 4
          and packed.shape[0] * 16 >= n > packed.shape[0] * 16 - 16,
          f"{op}: packed weight {tuple(packed.shape)} does not hold {n} x {k}")  # fmt: skip
    check(w_scale.numel() >= packed.shape[0] * 16, f"{op}: w_scale shorter than the packing")
    check(bias is None or bias.numel() == n, f"{op}: bias must have {n} values")
    check(not depthwise or n % c == 0, f"{op}: depthwise N must be a multiple of C")
    ho, wo = _out_hw(xs.shape[1], xs.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    check(ho > 0 and wo > 0, f"{op}: input smaller than the receptive field")
    check(res is None or (res.dtype == torch.int8 and tuple(res.shape) == (xs.shape[0], ho, wo, n)),
          f"{op}: res must be int8 {(xs.shape[0], ho, wo, n)}")  # fmt: skip


@conv_w8a8_static.register_kernel("cpu")
def _(xs, xs_scale, packed, colsum, w_scale, bias, out_channels, geometry, groups,
      out_scale, lo, hi, res, res_scale, channels=0, kernel_pref="auto"):  # fmt: skip
    _check_static(xs, packed, w_scale, bias, out_channels, geometry, groups, res, channels)
    if kernel_pref not in NATIVE:
        return _conv_ref_call(
            xs, xs_scale, packed, w_scale, bias, out_channels, geometry, groups,
            out_scale, lo, hi, res, res_scale, channels,
        )  # fmt: skip
    return conv_static_cpu(
        xs.contiguous(), xs_scale, packed, colsum, w_scale, bias, out_channels, geometry,
        groups, out_scale, lo, hi, None if res is None else res.contiguous(), res_scale,
        channels=channels,
    )  # fmt: skip


def _conv_ref_call(xs, xs_scale, packed, w_scale, bias, n, geometry, groups, out_scale, lo,
                   hi, res, res_scale, channels=0):  # fmt: skip
    from tersor.formats.int8 import unpack_int8

    if channels > xs.shape[3]:
        xs = torch.nn.functional.pad(xs, (0, channels - xs.shape[3]))
    kh, kw = geometry[0], geometry[1]
    k = kh * kw * (xs.shape[3] // groups)
    q, _ = unpack_int8(packed.cpu(), w_scale.cpu(), n, k)
    return conv_static_ref(
        xs, xs_scale, q.to(xs.device), w_scale[:n], bias, geometry, groups, out_scale, lo, hi,
        res, res_scale,
    )  # fmt: skip


@conv_w8a8_static.register_fake
def _(xs, xs_scale, packed, colsum, w_scale, bias, out_channels, geometry, groups,
      out_scale, lo, hi, res, res_scale, channels=0, kernel_pref="auto"):  # fmt: skip
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    ho, wo = _out_hw(xs.shape[1], xs.shape[2], kh, kw, sh, sw, ph, pw, dh, dw)
    dtype = torch.int8 if out_scale > 0 else torch.float32
    return torch.empty(xs.shape[0], ho, wo, out_channels, dtype=dtype, device=xs.device)


# -- pooling ------------------------------------------------------------------------------------

MAX, AVG, ADAPTIVE_AVG = 0, 1, 2


@functools.lru_cache(maxsize=256)
def pool_windows(kind: int, h: int, w: int, params: tuple) -> tuple:
    """(ho, wo, h0, h1, w0, w1, div_h, div_w): each output row's / column's window (clipped to
    the image) and divisor, torch's rules. params: (kh, kw, sh, sw, ph, pw, count_include_pad)
    for MAX / AVG, (out_h, out_w) for ADAPTIVE_AVG."""

    def axis(size, k, s, p, include_pad):
        out = (size + 2 * p - k) // s + 1
        lo, hi, div = [], [], []
        for o in range(out):
            start, end = o * s - p, min(o * s - p + k, size + p)
            padded = end - start
            start, end = max(start, 0), min(end, size)
            lo.append(start), hi.append(end), div.append(padded if include_pad else end - start)
        return out, lo, hi, div

    def adaptive(size, out):
        lo = [o * size // out for o in range(out)]
        hi = [-(-(o + 1) * size // out) for o in range(out)]
        return out, lo, hi, [b - a for a, b in zip(lo, hi)]

    if kind == ADAPTIVE_AVG:
        ho, h0, h1, dvh = adaptive(h, params[0])
        wo, w0, w1, dvw = adaptive(w, params[1])
    else:
        kh, kw, sh, sw, ph, pw, include_pad = params
        ho, h0, h1, dvh = axis(h, kh, sh, ph, include_pad)
        wo, w0, w1, dvw = axis(w, kw, sw, pw, include_pad)
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return ho, wo, t(h0), t(h1), t(w0), t(w1), t(dvh), t(dvw)


def pool_s8_cpu(xs: torch.Tensor, kind: int, params: tuple) -> torch.Tensor:
    b, h, w, c = xs.shape
    ho, wo, h0, h1, w0, w1, dvh, dvw = pool_windows(kind, h, w, tuple(params))
    y = torch.empty(b, ho, wo, c, dtype=torch.int8)
    fn = _C.max_pool_s8 if kind == MAX else _C.avg_pool_s8
    fn(
        xs.data_ptr(), b, h, w, c, ho, wo, h0.data_ptr(), h1.data_ptr(), w0.data_ptr(),
        w1.data_ptr(), dvh.data_ptr(), dvw.data_ptr(), y.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return y


def pool_s8_ref(xs: torch.Tensor, kind: int, params: tuple) -> torch.Tensor:
    b, h, w, c = xs.shape
    ho, wo, h0, h1, w0, w1, dvh, dvw = pool_windows(kind, h, w, tuple(params))
    y = torch.empty(b, ho, wo, c, dtype=torch.int8, device=xs.device)
    x = xs.to(torch.int32)
    for i in range(ho):
        for j in range(wo):
            win = x[:, h0[i] : h1[i], w0[j] : w1[j], :]
            if kind == MAX:
                y[:, i, j] = win.amax(dim=(1, 2)).to(torch.int8)
            else:
                s = win.sum(dim=(1, 2)).to(torch.float64) / float(dvh[i] * dvw[j])
                y[:, i, j] = s.round().to(torch.int8)
    return y


@torch.library.custom_op("tersor::pool_s8", mutates_args=())
def pool_s8(xs: torch.Tensor, kind: int, params: list[int]) -> torch.Tensor:
    """s8 NHWC codes pooled (kind MAX / AVG / ADAPTIVE_AVG, pool_windows); the scale is kept."""
    return pool_s8_ref(xs, kind, tuple(params))


@pool_s8.register_kernel("cpu")
def _(xs, kind, params):
    check(xs.dtype == torch.int8 and xs.dim() == 4, "tersor::pool_s8: xs must be int8 NHWC")
    check(kind in (MAX, AVG, ADAPTIVE_AVG), f"tersor::pool_s8: unknown kind {kind}")
    ho, wo = pool_windows(kind, xs.shape[1], xs.shape[2], tuple(params))[:2]
    check(ho > 0 and wo > 0 and min(params[:2]) > 0, "tersor::pool_s8: empty pooling window")
    return pool_s8_cpu(xs.contiguous(), kind, tuple(params))


@pool_s8.register_fake
def _(xs, kind, params):
    b, h, w, c = xs.shape
    if kind == ADAPTIVE_AVG:
        ho, wo = params
    else:
        kh, kw, sh, sw, ph, pw, _ = params
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return torch.empty(b, ho, wo, c, dtype=torch.int8, device=xs.device)


# -- add ----------------------------------------------------------------------------------------


def add_s8_cpu(a, sa, b, sb, out_scale, lo, hi):
    a = a.contiguous()
    y = torch.empty(a.shape, dtype=torch.int8)
    if b is not None:
        b = b.contiguous()
    _C.add_s8(
        a.data_ptr(), sa, ptr(b), sb, a.numel(), 1.0 / out_scale, lo, hi, y.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return y


@torch.library.custom_op("tersor::add_s8", mutates_args=())
def add_s8(
    a: torch.Tensor, sa: float, b: Optional[torch.Tensor], sb: float, out_scale: float,
    lo: float, hi: float,
) -> torch.Tensor:  # fmt: skip
    """Codes a * sa (+ b * sb) requantized to out_scale (same shape, contiguous)."""
    v = a.to(torch.float32) * sa
    if b is not None:
        v = (b.to(torch.float64) * sb + v.to(torch.float64)).to(torch.float32)
    return _requant_ref(v.contiguous(), 1.0 / out_scale, lo, hi)


@add_s8.register_kernel("cpu")
def _(a, sa, b, sb, out_scale, lo, hi):
    check(a.dtype == torch.int8 and (b is None or (b.dtype == torch.int8 and b.shape == a.shape)),
          "tersor::add_s8: a and b must be int8 codes of one shape")  # fmt: skip
    check(out_scale > 0, "tersor::add_s8: out_scale must be > 0")
    return add_s8_cpu(a, sa, b, sb, out_scale, lo, hi)


@add_s8.register_fake
def _(a, sa, b, sb, out_scale, lo, hi):
    return torch.empty(a.shape, dtype=torch.int8, device=a.device)
