"""QConv2d: nn.Conv2d on tersor's GEMM kernels, by the GEMM view of convolution.

    M = batch * H_out * W_out (output pixels), K = kh * kw * C_in, N = C_out

Activations are handled channels-last inside the layer. A 1x1 / stride-1 convolution is the
GEMM itself on the NHWC view (no copy when the input is already channels_last; activations
quantized per pixel, the GEMM's per-row rule). Other W8A8 convolutions run the native conv
kernel (csrc/conv): the input is quantized once with one scale per image into a zero-padded int8
copy, and the GEMM reads its patches from there (an implicit GEMM with no gather at all on AMX
for stride 1 and C_in % 64 == 0). kernel="ref" computes the same per-image rule in torch
(tersor.ref.int8.conv_w8a8_ref).
The other schemes (and W8A8 on a GPU, per patch) gather a cache-sized fp32 im2col block of
output rows at a time (never the whole batch's im2col buffer) and run their GEMM on it.

The weight lives in an inner QLinear or SparseLinear (``self.gemm``) whose K order is
(kh, kw, C_in), the order of an NHWC patch (so 2:4 groups run along C_in); its state_dict
entries are the scheme's canonical form in that order.
The output has the input's memory format (NCHW in, NCHW out; channels_last in, channels_last
out).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tersor.nn.qlinear import QLinear
from tersor.nn.sparse_linear import SparseLinear
from tersor.ops.conv import conv_w8a8, conv_w8a8_cpu
from tersor.ref import int8 as int8_ref

IM2COL_BLOCK_BYTES = 4 << 20  # fp32 patch rows gathered per GEMM call


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class QConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, scheme: str = "w8a8", kernel: str = "auto",
                 name: str = "", **int4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.scheme, self.name = scheme, name
        kh, kw = self.kernel_size
        k = kh * kw * in_channels
        if scheme.startswith("2:4"):
            self.gemm = SparseLinear(k, out_channels, bias, name=name, scheme=scheme)
        else:
            self.gemm = QLinear(k, out_channels, bias, scheme=scheme, kernel=kernel, name=name,
                                **int4)

    @staticmethod
    def unsupported(conv: nn.Conv2d) -> str:
        """Why a Conv2d cannot be converted, or "" if it can."""
        if conv.groups != 1:
            kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
            return (f"{kind} convolution (groups={conv.groups}): no grouped int8 kernel yet, "
                    f"left dense")
        if conv.padding_mode != "zeros":
            return f"padding_mode='{conv.padding_mode}': only zero padding is served"
        if isinstance(conv.padding, str):
            if conv.padding == "same" and any(d * (k - 1) % 2
                                               for d, k in zip(conv.dilation, conv.kernel_size)):
                return "padding='same' with an even receptive field needs asymmetric padding"
        return ""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config, name: str = "", score=None) -> "QConv2d":
        label = f"layer '{name}'" if name else "QConv2d"
        why = cls.unsupported(conv)
        if why:
            raise ValueError(f"{label}: {why}")
        padding = conv.padding
        if isinstance(padding, str):
            padding = (0, 0) if padding == "valid" else tuple(
                d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
        int4 = {}
        if config.scheme in ("w4", "w4a8"):
            int4 = dict(group_size=config.group_size, symmetric=config.symmetric)
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                conv.dilation, conv.bias is not None, config.scheme,
                getattr(config, "kernel", "auto"), name, **int4)
        # [C_out, C_in, kh, kw] -> [C_out, kh * kw * C_in]: the NHWC patch order
        w2 = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        lin = nn.Linear(w2.shape[1], conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w2)
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        if config.scheme == "2:4":
            if score is not None:  # the 2:4 groups run along the GEMM's K order too
                score = score.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
            m.gemm = SparseLinear.from_float(lin, config, name=name, score=score)
        else:
            m.gemm = QLinear.from_float(lin, config, name=name)
        return m

    def quantized(self, config) -> "QConv2d":
        """A 2:4 fp32 convolution's "2:4+w8a8" form (sparsify_ then quantize_(W8A8Config()))."""
        m = QConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                    self.padding, self.dilation, self.gemm.bias is not None, "2:4+w8a8",
                    name=self.name)
        m.gemm = self.gemm.quantized(config)
        return m

    def to_float(self) -> nn.Conv2d:
        kh, kw = self.kernel_size
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, bias=self.gemm.bias is not None)
        with torch.no_grad():
            w = self.gemm.dequantized_weight().view(self.out_channels, kh, kw, self.in_channels)
            conv.weight.copy_(w.permute(0, 3, 1, 2))
            if self.gemm.bias is not None:
                conv.bias.copy_(self.gemm.bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        what = f"layer '{self.name}'" if self.name else "QConv2d"
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{what} ({self.scheme}): expected a 4-D input [B, C, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{what} ({self.scheme}): expected {self.in_channels} input "
                             f"channels, got {x.shape[1]} (input {tuple(x.shape)})")
        if x.dtype != torch.float32:
            raise TypeError(f"{what} ({self.scheme}): expected a float32 input, got {x.dtype}")
        channels_last = (x.is_contiguous(memory_format=torch.channels_last)
                         and not x.is_contiguous())
        b, c, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"{what}: input {h}x{w} is smaller than the receptive field")
        xh = x.permute(0, 2, 3, 1)  # NHWC view
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
            y = self.gemm(xh.reshape(-1, c)).view(b, ho, wo, self.out_channels)
        elif self._native_conv():
            y = self._fused_conv(xh)
        elif self.gemm.scheme == "w8a8" and self.gemm.kernel == "ref":
            g = self.gemm
            y = int8_ref.conv_w8a8_ref(x, *g.canonical_weight(), g.bias, self.kernel_size,
                                       self.stride, self.padding, self.dilation)
            y = y.permute(0, 2, 3, 1)
        else:
            y = self._im2col_gemm(xh, b, ho, wo)
        y = y.permute(0, 3, 1, 2)  # logical NCHW, channels_last in memory
        return y if channels_last else y.contiguous()

    def _native_conv(self) -> bool:
        """W8A8 on the CPU: the input is quantized and its patches read inside the kernel."""
        g = self.gemm
        return (g.scheme == "w8a8" and g.kernel in ("auto", "native")
                and g.packed.device.type == "cpu")

    def _fused_conv(self, xh):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        g = self.gemm
        fn = conv_w8a8 if torch.compiler.is_compiling() else conv_w8a8_cpu
        # channels_last input: the NHWC view is already contiguous, no copy at all
        return fn(xh.contiguous(), g.packed, g.colsum, g.scale, g.bias, self.out_channels, kh,
                  kw, sh, sw, ph, pw, dh, dw)

    def _im2col_gemm(self, xh, b, ho, wo):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        c = self.in_channels
        xp = F.pad(xh, (0, 0, pw, pw, ph, ph)) if ph or pw else xh.contiguous()
        s_b, s_h, s_w, s_c = xp.stride()
        # [B, Ho, Wo, kh, kw, C] view of every patch; a block of output rows is copied out
        patches = xp.as_strided((b, ho, wo, kh, kw, c),
                                (s_b, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c))
        k = kh * kw * c
        y = torch.empty(b, ho, wo, self.out_channels)
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
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"scheme={self.scheme}")
