"""The modules of a converted graph (static_int8/convert.py). Between them flow plain int8
tensors of s8 codes, one scale per tensor fixed at calibration (held by the modules, zero point
0); 4-D ones are logical NCHW and channels_last in memory, so the kernels read them as NHWC
without a copy and torch's own data-movement ops (flatten, view, cat, dropout) stay correct.

Scales are buffers (state_dict round trip); the packed weight is rebuilt from the canonical
int8 weight on load. Each module checks its input's dtype and names itself in the error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tersor import _C
from tersor.formats.int8 import is_narrow, pack_int8, qmax_of_bits, quantize_per_channel_int8
from tersor.nn.qconv import QConv2d
from tersor.ops import int8_static as ops
from tersor.ops._common import QMAX, _is_compiling, eager


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """A 4-D logical NCHW tensor as contiguous NHWC (a view when it is channels_last)."""
    xh = x.permute(0, 2, 3, 1)
    return xh if xh.is_contiguous() else xh.contiguous()


def code_bounds(scale: float, act) -> tuple[float, float]:
    """The codes a value clamped to act = (low, high) (None: no clamp) can take at `scale`."""
    lo, hi = -QMAX, QMAX
    if act is not None:
        a, b = act
        if a is not None and a > -float("inf"):
            lo = max(lo, min(QMAX, round(a / scale)))
        if b is not None and b < float("inf"):
            hi = min(hi, max(-QMAX, round(b / scale)))
    return float(lo), float(hi)


# Bumped whenever a module's scales or packed weights change: a native program
# (static_int8/program.py) built before then holds stale copies and is rebuilt.
GENERATION = [0]


class _Static(nn.Module):
    """Scales as 0-dim float32 buffers, mirrored in Python floats for the calls."""

    scale_names: tuple = ()
    zero_means_none: tuple = ()  # scales that may be 0 (StaticConv: fp32 out, no residual)

    def _set_scales(self, **scales):
        for k, v in scales.items():
            self.register_buffer(k, torch.tensor(float(v), dtype=torch.float32))
        self._refresh()
        self.register_load_state_dict_post_hook(lambda m, _: m._refresh())

    def _refresh(self):
        GENERATION[0] += 1
        for k in self.scale_names:
            v = float(getattr(self, k))
            positive = k not in self.zero_means_none
            if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
                want = "> 0" if positive else ">= 0"
                raise ValueError(f"{self.label}: {k} must be a finite scale {want}, got {v}")
            setattr(self, "_" + k, v)

    def _check(self, x, what="input"):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int8:
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{self.label}: {what} must be int8 codes, got {got}")


class Quantize(_Static):
    """fp32 -> codes at the calibrated scale (where the network enters int8)."""

    scale_names = ("scale",)

    def __init__(self, scale: float, label: str = "quantize"):
        super().__init__()
        self.label = label
        self._set_scales(scale=scale)

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.label}: expected a float tensor, got {getattr(x, 'dtype', x)}")
        x = x.float()
        if x.dim() == 4:
            return ops.quantize(nhwc(x), self._scale).permute(0, 3, 1, 2)
        return ops.quantize(x.contiguous(), self._scale)

    def extra_repr(self):
        return f"scale={self._scale:.4g}"


class Dequantize(_Static):
    """codes -> fp32 (where the network leaves int8: an op the pipeline does not run), in the
    default contiguous layout: the model's own code after it may assume it (a .view)."""

    scale_names = ("scale",)

    def __init__(self, scale: float, label: str = "dequantize"):
        super().__init__()
        self.label = label
        self._set_scales(scale=scale)

    def forward(self, x):
        self._check(x)
        return x.contiguous().float() * self._scale

    def extra_repr(self):
        return f"scale={self._scale:.4g}"


class StaticConv(_Static):
    """A Conv2d (dense, grouped or depthwise) or Linear from codes at input_scale to codes at
    output_scale, with its bias, the activation clamp and a residual add (forward's `res`,
    codes at residual_scale) fused in the kernel's epilogue. output_scale 0: fp32 out (where
    the network leaves int8), the residual and clamp then applied in torch after the kernel."""

    scale_names = ("input_scale", "output_scale", "residual_scale")
    zero_means_none = ("output_scale", "residual_scale")
    _narrow_w = False  # set from the codes by _pack (a pickle from before it: False)

    def __init__(self, layer: nn.Module, label: str, input_scale: float, output_scale: float,
                 act=None, residual_scale: float = 0.0, weight_bits: int = 8):  # fmt: skip
        super().__init__()
        self.label = label
        self.linear = isinstance(layer, nn.Linear)
        self.pad_channels = 0
        w = layer.weight.detach().float()
        if self.linear:
            self.geometry = [1, 1, 1, 1, 0, 0, 1, 1]
            self.groups = 1
            self.in_channels = layer.in_features
            w2 = w
        else:
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            (ph, pw), (dh, dw) = layer.padding, layer.dilation
            self.geometry = [kh, kw, sh, sw, ph, pw, dh, dw]
            self.groups = QConv2d.kernel_groups(layer)  # narrow groups merged (block-diagonal)
            self.in_channels = layer.in_channels
            run = kw * self.in_channels if dw == 1 else self.in_channels
            # The AVX2 kernel reads patches in place when a patch row is whole 4-code groups;
            # a 3-channel stem gets a zero 4th channel (weights here, codes in the kernel's
            # padded copy of the input) instead of a gather
            if self.groups == 1 and run % 4:
                self.pad_channels = -self.in_channels % 4
                w = F.pad(w, (0, 0, 0, 0, 0, self.pad_channels))
                w2 = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (kh, kw, C) patch order
            else:
                w2 = QConv2d.gemm_weight(layer).float()
        self.out_channels = w.shape[0]
        q, s = quantize_per_channel_int8(w2, label, qmax_of_bits(weight_bits))
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", s)
        b = layer.bias.detach().float().clone() if layer.bias is not None else None
        self.register_buffer("bias", b)
        self.act = act
        self._set_scales(
            input_scale=input_scale, output_scale=output_scale, residual_scale=residual_scale
        )
        self.register_load_state_dict_post_hook(lambda m, _: m._pack())
        self._pack()

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def __getstate__(self):  # copies and pickles rebuild the plan (it holds addresses)
        state = super().__getstate__()
        state["_plan"] = None
        return state

    def _apply(self, fn, *args, **kw):  # .to() / .float() may replace the bias
        self._plan = None
        GENERATION[0] += 1
        return super()._apply(fn, *args, **kw)

    def _refresh(self):
        super()._refresh()
        self._plan = None
        self._calls = {}  # input shape -> _eager_call's answer
        self._lo, self._hi = (
            code_bounds(self._output_scale, self.act) if self._output_scale > 0 else (0.0, 0.0)
        )

    def _pack(self):
        p = pack_int8(self.weight_int8, self.weight_scale)
        self._packed, self._colsum, self._w_scale = p.packed, p.colsum, p.scale
        # every |w| <= 64 (weight_bits=7): the AVX2 kernel's speed hint, found from the codes
        self._narrow_w = is_narrow(self.weight_int8)
        self._plan = None  # the eager CPU call's fixed arguments, built at the first call
        GENERATION[0] += 1

    def _eager_plan(self):
        """_C.StaticConvPlan over this layer's tensors (it holds their addresses: rebuilt
        whenever _pack or a state_dict load replaces them)."""
        out = self._output_scale
        self._plan = _C.StaticConvPlan(
            self._input_scale, self.in_channels, self.in_channels + self.pad_channels,
            *self.geometry, self._packed.data_ptr(), self._colsum.data_ptr(),
            self._w_scale.data_ptr(), self.out_channels,
            0 if self.bias is None else self.bias.data_ptr(), self.groups,
            1.0 / out if out > 0 else 0.0, self._lo, self._hi, self._residual_scale,
            self._narrow_w,
        )  # fmt: skip
        return self._plan

    def forward(self, x, res=None):
        # The eager CPU call on the codes a previous layer wrote (int8, channels_last, output
        # codes): a few attribute checks and one cached shape lookup, about 4 us, where the
        # general path below costs 15-20 us a layer (a MobileNetV2 has 52).
        if (
            type(x) is torch.Tensor
            and x.dtype == torch.int8
            and self._output_scale > 0
            and x.is_cpu
            and x.is_contiguous(memory_format=torch.channels_last)
            and (res is None or type(res) is torch.Tensor and res.dtype == torch.int8
                 and res.is_contiguous(memory_format=torch.channels_last))
            and not _is_compiling()
        ):  # fmt: skip
            call = self._calls.get(x.shape)
            if call is None:
                call = self._eager_call(x.shape)
            if call is not None:
                out_shape, out_stride, args = call
                if res is not None and res.shape != out_shape:
                    raise ValueError(f"{self.label}: residual {tuple(res.shape)} is not the "
                                     f"output's {tuple(out_shape)}")  # fmt: skip
                # channels_last by its strides: 1.7 us where memory_format= takes 2.9
                y = torch.empty_strided(out_shape, out_stride, dtype=torch.int8)
                plan = self._plan if self._plan is not None else self._eager_plan()
                plan.run(x.data_ptr(), *args, y.data_ptr(),
                         0 if res is None else res.data_ptr(), torch.get_num_threads())  # fmt: skip
                return y
        self._check(x)
        if res is not None:
            self._check(res, "residual")
        if self.linear:
            if x.shape[-1] != self.in_channels:
                raise ValueError(f"{self.label}: expected {self.in_channels} input features, "
                                 f"got {tuple(x.shape)}")  # fmt: skip
            lead = x.shape[:-1]
            xs = x.reshape(-1, 1, 1, self.in_channels).contiguous()
            rs = None if res is None else res.reshape(-1, 1, 1, self.out_channels).contiguous()
        else:
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(f"{self.label}: expected [B, {self.in_channels}, H, W], got "
                                 f"{tuple(x.shape)}")  # fmt: skip
            xs, rs = nhwc(x), None if res is None else nhwc(res)
        if eager(xs, "auto") and (rs is None or rs.is_contiguous()):
            y = self._run_eager(xs, rs)
        else:
            y = ops.conv_w8a8_static(
                xs, self._input_scale, self._packed, self._colsum, self._w_scale, self.bias,
                self.out_channels, self.geometry, self.groups, self._output_scale, self._lo,
                self._hi, rs, self._residual_scale, self.in_channels + self.pad_channels,
            )  # fmt: skip
        if self._output_scale == 0:  # fp32 out (the network leaves int8): the rest in torch
            if rs is not None:
                y = y + rs.float() * self._residual_scale
            if self.act is not None:
                y = y.clamp(*self.act)
        if self.linear:
            return y.view(*lead, self.out_channels)
        return y.permute(0, 3, 1, 2)

    def _eager_call(self, shape):
        """(output shape, plan.run's size arguments) for a 4-D input of `shape` (cached), or
        None where the general path serves it (a linear layer, a wrong shape: its error)."""
        if self.linear or len(shape) != 4 or shape[1] != self.in_channels:
            return None
        b, _, h, w = shape
        ho, wo = self._out_size(h, w)
        if ho <= 0 or wo <= 0:
            return None
        n = self.out_channels
        out_stride = (ho * wo * n, 1, wo * n, n)  # channels_last
        self._calls[shape] = call = (torch.Size((b, n, ho, wo)), out_stride, (b, h, w, ho, wo))
        return call

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        kh, kw, sh, sw, ph, pw, dh, dw = self.geometry
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (
            w + 2 * pw - dw * (kw - 1) - 1
        ) // sw + 1

    def _run_eager(self, xs, rs):
        plan = self._plan if self._plan is not None else self._eager_plan()
        b, h, w, _ = xs.shape
        ho, wo = self._out_size(h, w)
        if ho <= 0 or wo <= 0:
            raise ValueError(f"{self.label}: input {h}x{w} is smaller than the receptive field")
        if rs is not None and rs.shape != (b, ho, wo, self.out_channels):
            raise ValueError(f"{self.label}: residual {tuple(rs.shape)} (NHWC) is not the "
                             f"output's {(b, ho, wo, self.out_channels)}")  # fmt: skip
        dtype = torch.int8 if self._output_scale > 0 else torch.float32
        y = torch.empty(b, ho, wo, self.out_channels, dtype=dtype)
        plan.run(xs.data_ptr(), b, h, w, ho, wo, y.data_ptr(), 0 if rs is None else rs.data_ptr(),
                 torch.get_num_threads())  # fmt: skip
        return y

    def extra_repr(self):
        kind = "linear" if self.linear else ("depthwise " if self.depthwise else "") + "conv"
        kind += f", groups={self.groups}" if self.groups > 1 and not self.depthwise else ""
        out = f"{self._output_scale:.4g}" if self._output_scale > 0 else "fp32"
        extra = f", act={self.act}" if self.act else ""
        extra += ", residual" if self._residual_scale > 0 else ""
        return (f"{kind} {self.in_channels}->{self.out_channels}, geometry={self.geometry}, "
                f"in={self._input_scale:.4g}, out={out}{extra}")  # fmt: skip


class Pool(nn.Module):
    """Max / average / adaptive-average pooling of codes (the scale is kept)."""

    def __init__(self, kind: int, params: tuple, label: str):
        super().__init__()
        self.kind, self.params, self.label = kind, list(params), label

    def forward(self, x):
        if x.dtype != torch.int8 or x.dim() != 4:
            raise TypeError(
                f"{self.label}: expected 4-D int8 codes, got {x.dtype} {tuple(x.shape)}"
            )
        xs = nhwc(x)
        y = ops.pool_s8_cpu(xs, self.kind, tuple(self.params)) if eager(xs, "auto") else (
            ops.pool_s8(xs, self.kind, self.params))  # fmt: skip
        return y.permute(0, 3, 1, 2)

    def extra_repr(self):
        return f"{['max', 'avg', 'adaptive_avg'][self.kind]}, {self.params}"


class Add(_Static):
    """a + b of two code tensors (or one rescaled: b None) at output_scale, clamped to act."""

    scale_names = ("a_scale", "b_scale", "output_scale")
    zero_means_none = ("b_scale",)  # a rescale of a alone

    def __init__(self, a_scale, b_scale, output_scale, act=None, label="add"):
        super().__init__()
        self.label, self.act = label, act
        self._set_scales(a_scale=a_scale, b_scale=b_scale, output_scale=output_scale)

    def forward(self, a, b=None):
        self._check(a)
        if b is not None:
            self._check(b)
            if a.shape != b.shape:
                raise ValueError(f"{self.label}: shapes {tuple(a.shape)} and {tuple(b.shape)} "
                                 "differ (broadcasting is not served in int8)")  # fmt: skip
        lo, hi = code_bounds(self._output_scale, self.act)
        four = a.dim() == 4
        a2 = nhwc(a) if four else a.contiguous()
        b2 = None if b is None else (nhwc(b) if four else b.contiguous())
        args = (a2, self._a_scale, b2, self._b_scale, self._output_scale, lo, hi)
        y = ops.add_s8_cpu(*args) if eager(a2, "auto") else ops.add_s8(*args)
        return y.permute(0, 3, 1, 2) if four else y


class Cat(nn.Module):
    """torch.cat of code tensors, each rescaled to the output scale first where it differs."""

    def __init__(self, rescales: list, dim: int, label: str):
        super().__init__()
        self.rescales = nn.ModuleList(r if r is not None else nn.Identity() for r in rescales)
        self.dim, self.label = dim, label

    def forward(self, *xs):
        return torch.cat([r(x) for r, x in zip(self.rescales, xs)], self.dim)


class Clamp(nn.Module):
    """A standalone ReLU / ReLU6 / hardtanh on codes (the conv before it could not absorb it)."""

    def __init__(self, lo: float, hi: float, label: str):
        super().__init__()
        self.lo, self.hi, self.label = int(lo), int(hi), label

    def forward(self, x):
        if x.dtype != torch.int8:
            raise TypeError(f"{self.label}: expected int8 codes, got {x.dtype}")
        return x.clamp(self.lo, self.hi)
