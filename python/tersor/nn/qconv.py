"""QConv2d: nn.Conv2d on tersor's GEMM kernels, by the GEMM view of convolution.

    M = batch * H_out * W_out (output pixels), K = kh * kw * C_in, N = C_out

Activations are handled channels-last inside the layer. A 1x1 / stride-1 convolution is the
GEMM itself on the NHWC view (no copy when the input is already channels_last; activations
quantized per pixel, the GEMM's per-row rule). Otherwise the format may run a native
convolution (``WeightFormat.conv_nhwc``: W8A8 on the CPU quantizes the input once with one
scale per image into a zero-padded int8 copy the GEMM reads its patches from, an implicit GEMM
with no gather at all on AMX for stride 1 and C_in % 64 == 0; kernel="ref" computes the same
per-image rule in torch). The other formats (and W8A8 on a GPU, per patch) gather a cache-sized
fp32 im2col block of output rows at a time (never the whole batch's im2col buffer) and run
their GEMM on it.

The weight lives in an inner PackedLinear (``self.gemm``, any format) whose K order is
(kh, kw, C_in), the order of an NHWC patch (so 2:4 groups run along C_in); its state_dict
entries are the format's canonical form in that order. The output has the input's memory
format (NCHW in, NCHW out; channels_last in, channels_last out).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tersor.nn.linear import PackedLinear, QLinear, SparseLinear, _StraightThrough, _wants_grad

IM2COL_BLOCK_BYTES = 4 << 20  # fp32 patch rows gathered per GEMM call
MAX_GROUP_MERGE = 4  # narrow groups run as one of 16 outputs, at most this many (kernel_groups)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class QConv2d(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        scheme: str = "w8a8",
        kernel: str = "auto",
        name: str = "",
        groups: int = 1,
        **int4,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.name, self.groups = name, groups
        kh, kw = self.kernel_size
        k = kh * kw * in_channels // groups
        if scheme.startswith("2:4"):
            self.gemm = SparseLinear(k, out_channels, bias, name=name, scheme=scheme)
        else:
            self.gemm = QLinear(
                k, out_channels, bias, scheme=scheme, kernel=kernel, name=name, **int4
            )

    @classmethod
    def around(cls, conv: nn.Conv2d, gemm: PackedLinear, name: str = "") -> "QConv2d":
        """The QConv2d of `conv`'s geometry on `gemm` (weights in (kh, kw, C_in) K order)."""
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_channels, m.out_channels = conv.in_channels, conv.out_channels
        m.kernel_size, m.stride = _pair(conv.kernel_size), _pair(conv.stride)
        m.dilation, m.name, m.groups = _pair(conv.dilation), name, cls.kernel_groups(conv)
        padding = conv.padding
        if isinstance(padding, str):
            padding = (
                (0, 0)
                if padding == "valid"
                else tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
            )
        m.padding = _pair(padding)
        m.gemm = gemm
        return m

    @staticmethod
    def kernel_groups(conv) -> int:
        """The groups the kernels run for `conv`: its own, except narrow groups of a grouped
        (not depthwise) convolution. The grouped kernel needs a multiple of 16 outputs per
        group; t = 16 / gcd(outputs per group, 16) consecutive groups (t <= MAX_GROUP_MERGE)
        then run as one, their weights placed block-diagonally (zeros between): ResNeXt's 32
        groups of 4 outputs run as 8 groups of 16, at t times the MACs, the same products."""
        g = conv.groups
        if g == 1 or g == conv.in_channels:
            return g
        t = 16 // math.gcd(conv.out_channels // g, 16)
        return g // t if 1 < t <= MAX_GROUP_MERGE and g % t == 0 else g

    @staticmethod
    def gemm_weight(conv: nn.Conv2d) -> torch.Tensor:
        """[C_out, C_in / groups, kh, kw] -> [C_out, kh * kw * C_in / kernel_groups]: the NHWC
        patch order (depthwise: the kh * kw taps of each channel; merged groups: each output's
        weights at its group's place in the merged group, zeros elsewhere)."""
        w = conv.weight.detach()
        n, cg = w.shape[:2]
        t = conv.groups // QConv2d.kernel_groups(conv)
        if t > 1:
            wide = w.new_zeros(n, t * cg, *w.shape[2:])
            place = torch.arange(n) // (n // conv.groups) % t  # the group's place among t
            for i in range(t):
                wide[place == i, i * cg : (i + 1) * cg] = w[place == i]
            w = wide
        return w.permute(0, 2, 3, 1).reshape(n, -1)

    @staticmethod
    def unsupported(conv: nn.Conv2d, scheme: str = "w8a8") -> str:
        """Why a Conv2d cannot be converted to `scheme`, or "" if it can."""
        g = conv.groups
        if g != 1:
            depthwise = g == conv.in_channels and conv.out_channels % conv.in_channels == 0
            what = "depthwise" if depthwise else "grouped"
            if scheme != "w8a8":
                return f"{what} convolution: only W8A8 has a {what} kernel, left dense"
            if not depthwise and conv.out_channels // QConv2d.kernel_groups(conv) % 16:
                return (
                    f"grouped convolution (groups={g}, {conv.out_channels // g} outputs per "
                    f"group): the grouped kernel needs a multiple of 16 outputs per group (or "
                    f"up to {MAX_GROUP_MERGE} groups merged into one), left dense"
                )
        if conv.padding_mode != "zeros":
            return f"padding_mode='{conv.padding_mode}': only zero padding is served"
        if isinstance(conv.padding, str):
            if conv.padding == "same" and any(
                d * (k - 1) % 2 for d, k in zip(conv.dilation, conv.kernel_size)
            ):
                return "padding='same' with an even receptive field needs asymmetric padding"
        return ""

    from_float = PackedLinear.from_float

    @property
    def scheme(self) -> str:
        return self.gemm.scheme

    @property
    def nbytes(self) -> int:
        return self.gemm.nbytes

    def describe(self) -> str:
        return self.gemm.describe()

    def quantized(self, config, solved=None) -> "QConv2d":
        """A sparse fp32 convolution's int8 form (sparsify_ then quantize_(W8A8Config()));
        solved: calibrated int8 values in the GEMM's patch order (PackedLinear.quantized)."""
        return QConv2d.around(self, self.gemm.quantized(config, solved), self.name)

    def to_float(self) -> nn.Conv2d:
        kh, kw = self.kernel_size
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            groups=self.groups,
            bias=self.gemm.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self._weight4d())
            if self.gemm.bias is not None:
                conv.bias.copy_(self.gemm.bias)
        return conv

    def _weight4d(self) -> torch.Tensor:
        kh, kw = self.kernel_size
        cg = self.in_channels // self.groups
        w = self.gemm.dequantized_weight().view(self.out_channels, kh, kw, cg)
        return w.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        what = f"{self.gemm._label()} ({self.scheme})"
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(
                f"{what}: expected a 4-D input [B, C, H, W], got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{what}: expected {self.in_channels} input channels, got "
                f"{x.shape[1]} (input {tuple(x.shape)})"
            )
        if x.dtype != torch.float32 and not (
            x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
        ):
            raise TypeError(
                f"{what}: expected a float32 input, got {x.dtype} (cast with "
                f"x.float(), or keep this layer dense)"
            )
        if _wants_grad(x):
            return _StraightThrough.apply(x, self)
        return self._run(x)

    def _run(self, x):
        b, c, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(
                f"{self.gemm._label()}: input {h}x{w} is smaller than the receptive field"
            )
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        xh = x.permute(0, 2, 3, 1)  # NHWC view
        g = self.gemm
        y = None
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and self.groups == 1:
            y = g(xh.reshape(-1, c)).view(b, ho, wo, self.out_channels)
        else:
            geometry = (kh, kw, sh, sw, ph, pw, dh, dw, self.groups)
            y = g.fmt.conv_nhwc(xh, g.bias, geometry, g.kernel)
            if y is None and self.groups > 1:
                raise RuntimeError(
                    f"{g._label()}: no grouped / depthwise kernel for {self.scheme} (W8A8 has them)"
                )
            if y is None:
                y = self._im2col_gemm(xh, b, ho, wo)
        y = y.permute(0, 3, 1, 2)  # logical NCHW, channels_last in memory
        return y if channels_last else y.contiguous()

    def _input_grad(self, shape, grad):
        w = self._weight4d().to(grad.device, grad.dtype)
        return torch.nn.grad.conv2d_input(
            shape, w, grad, self.stride, self.padding, self.dilation, self.groups
        )

    def _im2col_gemm(self, xh, b, ho, wo):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        c = self.in_channels
        xp = F.pad(xh, (0, 0, pw, pw, ph, ph)) if ph or pw else xh.contiguous()
        s_b, s_h, s_w, s_c = xp.stride()
        # [B, Ho, Wo, kh, kw, C] view of every patch; a block of output rows is copied out
        patches = xp.as_strided(
            (b, ho, wo, kh, kw, c), (s_b, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c)
        )
        k = kh * kw * c
        y = torch.empty(b, ho, wo, self.out_channels, dtype=xh.dtype, device=xh.device)
        rows = max(1, IM2COL_BLOCK_BYTES // (4 * k * wo))  # output rows per block
        if rows >= ho:  # small images: whole images per block
            step = rows // ho
            for b0 in range(0, b, step):
                b1 = min(b, b0 + step)
                block = patches[b0:b1].reshape(-1, k)  # the im2col block (a copy)
                y[b0:b1] = self.gemm(block).view(b1 - b0, ho, wo, self.out_channels)
            return y
        for bi in range(b):
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                block = patches[bi, r0:r1].reshape(-1, k)
                y[bi, r0:r1] = self.gemm(block).view(r1 - r0, wo, self.out_channels)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            + (f"groups={self.groups}, " if self.groups != 1 else "")
            + f"scheme={self.scheme}"
        )
