"""PackedLinear: one nn.Linear replacement for every weight format.

A PackedLinear holds one format object (formats/base.py: the packed weight and everything that
depends on the scheme) plus the bias, and does what every scheme shares: input checks that name
the layer, N-D and strided inputs, the canonical state_dict (the format's keys + "bias"),
``repr``, ``nbytes``, ``to_float``, ``.to()``. The walk to a kernel is

    PackedLinear.forward -> format.linear -> ops/<family> (a direct _C call in eager mode on the
    CPU, else the custom op, which serves every device and kernel= choice) -> the kernel

The public classes QLinear (int8 / int4), SparseLinear (2:4), CsrLinear (unstructured) and
BlockSparseLinear (block) are PackedLinear with the constructors they always had, so existing
code, isinstance checks and checkpoints keep working; ``from_float`` on any of them builds
whatever layer the config describes.

Quantized layers are inference layers: the weights are frozen (not parameters). A gradient
w.r.t. the input does flow (straight-through: dy/dx = the dequantized weight), so a model
with tersor layers can still sit under a loss, e.g. to train layers in front of it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _module

from tersor.configs import KERNELS
from tersor.formats import (
    SCHEMES,
    BlockFormat,
    CsrFormat,
    Int4Format,
    Int8Format,
    Sparse24Format,
    WeightFormat,
)
from tersor.formats import int4 as f4
from tersor.ops._common import NATIVE

_F32 = torch.float32
_is_compiling = torch.compiler.is_compiling
_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16)
_HALF_INPUTS = (torch.bfloat16, torch.float16)
_MODULE_CALL = nn.Module.__call__
_jit_tracing = torch._C._get_tracing_state
# torch registers global module hooks into these dicts in place
_G_FWD, _G_FWD_PRE = _module._global_forward_hooks, _module._global_forward_pre_hooks
_G_BWD, _G_BWD_PRE = _module._global_backward_hooks, _module._global_backward_pre_hooks


class _StraightThrough(torch.autograd.Function):
    """Runs a tersor layer; backward gives dL/dx through the dequantized weight (weights are
    frozen). Used only when x requires a gradient."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer, ctx.shape = layer, x.shape
        with torch.no_grad():
            return layer._run(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.layer._input_grad(ctx.shape, grad), None


def _wants_grad(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()


class PackedLinear(nn.Module):
    """y = x W^T + b with W held by a format object.

    x: [..., in_features], float32, bfloat16 or float16 (on the CPU widened to float32 for the
    kernels, the output rounded back once), any strides; returns [..., out_features] in x's
    dtype.
    """

    _layer_class: dict = {}  # format class -> the public class that shows it (QLinear, ...)
    _fused = None  # the FusedGroup (nn/fused.py) this layer runs with, if any

    def __init_subclass__(cls, formats: tuple = (), **kw):
        super().__init_subclass__(**kw)
        for f in formats:
            PackedLinear._layer_class[f] = cls

    def __init__(
        self,
        fmt: WeightFormat,
        bias: Optional[torch.Tensor] = None,
        *,
        kernel: str = "auto",
        name: str = "",
    ):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(
                f"{type(self).__name__}: kernel must be one of {KERNELS}, got {kernel!r}"
            )
        self.fmt = fmt  # a plain attribute: read without nn.Module.__getattr__
        self.in_features, self.out_features = fmt.in_features, fmt.out_features
        self.kernel, self.name = kernel, name
        if bias is not None:
            bias = bias.detach().to(torch.float32, copy=True).contiguous()
        self.register_buffer("bias", bias)

    @staticmethod
    def wrap(fmt: WeightFormat, bias=None, *, kernel="auto", name="") -> "PackedLinear":
        """The layer of the public class that serves this format."""
        cls = PackedLinear._layer_class.get(type(fmt), PackedLinear)
        layer = PackedLinear.__new__(cls)
        PackedLinear.__init__(layer, fmt, bias, kernel=kernel, name=name)
        return layer

    @classmethod
    def from_float(
        cls, module: nn.Module, config, *, name: str = "", calibration=None
    ) -> nn.Module:
        """The layer `config` makes of `module` (an nn.Linear, or an nn.Conv2d for QConv2d), as
        tersor.quantize_ / sparsify_ would build it. calibration: inputs of this layer
        ([..., in_features]) to score weights by (Wanda's |w| * ||x_k|| for pruning)."""
        from tersor.api import convert_module

        return convert_module(module, config, name=name, calibration=calibration)

    # ---- what the format gives ------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return self.fmt.scheme

    @property
    def nbytes(self) -> int:
        b = self._buffers["bias"]
        return self.fmt.nbytes + (0 if b is None else b.numel() * b.element_size())

    def canonical_weight(self) -> tuple:
        """The format's canonical weight tensors (see its module), without the bias."""
        return self.fmt.canonical()

    def dequantized_weight(self) -> torch.Tensor:
        """float32 [out_features, in_features] in the original input order."""
        return self.fmt.dequantize()

    dense_weight = dequantized_weight

    def to_float(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def quantized(self, config, solved=None) -> "PackedLinear":
        """The int8-valued layer of a sparse fp32 one (sparsify_ then quantize_(W8A8Config()));
        solved: the int8 values calibration chose (formats/base.py with_int8_values)."""
        fmt = self.fmt.with_int8_values(config, solved)
        if fmt is None:
            raise ValueError(f"{self._label()}: a {self.scheme} layer has no int8 form")
        return PackedLinear.wrap(fmt, self.bias, kernel=self.kernel, name=self.name)

    def describe(self) -> str:
        return self.fmt.describe()

    # ---- forward --------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """nn.Module.__call__ without its two frames (1.05 -> ~0.6 us a call, of a small
        layer's ~6.5 us) while nothing would see the difference: no hooks on this layer or
        global ones, no module.compile(), no torch.jit tracing, and nn.Module.__call__ not
        patched (torch.fx's tracer patches it to record module calls). Else torch's own."""
        if (
            self._forward_hooks
            or self._forward_pre_hooks
            or self._backward_hooks
            or self._backward_pre_hooks
            or _G_FWD
            or _G_FWD_PRE
            or _G_BWD
            or _G_BWD_PRE
            or self._compiled_call_impl is not None
            or nn.Module.__call__ is not _MODULE_CALL
            or _jit_tracing()
        ):
            return nn.Module.__call__(self, *args, **kwargs)  # as patched, if it is
        return self.forward(*args, **kwargs)

    # Eager budget: ~5 us above the kernel (DESIGN decision 2). The one eager-or-op choice: a
    # float32 CPU input of the right width, a native kernel, no gradient, no tracing -> the
    # format's prepared _C call (ops/<family>.py cpu_runner_*); anything else -> checks with the
    # layer's name, then the format's op (which every device and torch.compile go through).
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self._fused
        if group is not None and group.enabled:
            y = group(self, x)
            if y is not None:
                return y
        run = self.fmt.cpu_call
        if (
            run is not None
            and x.is_cpu
            and not x.requires_grad
            and self.kernel in NATIVE
            and not _is_compiling()
        ):
            # [..., K] as it is (HF's [B, S, K] too: the runners allocate [..., N] at once);
            # bf16 / fp16 rows go in as they are where the kernel stages them itself (the dense
            # int8 / int4 families), else widened exactly here and the output rounded back
            # once: what _checked would do, less its ~5-40 us of checks
            dt = x.dtype
            if dt is _F32 or (dt in _HALF_INPUTS and self.fmt.cpu_half):
                y = run(x, self._buffers["bias"])  # None: not a layout the runner takes
                if y is not None:
                    return y
            elif dt in _HALF_INPUTS:
                y = run(x.float(), self._buffers["bias"])
                if y is not None:
                    return y.to(dt)
        return self._checked(x)

    def _label(self) -> str:
        return f"layer '{self.name}'" if self.name else type(self).__name__

    def _what(self) -> str:
        return f"{self._label()} ({self.scheme}, in_features={self.in_features})"

    def _checked(self, x):
        """Validation with messages that name the layer; then the same call (or the
        straight-through wrapper when x needs a gradient)."""
        what = self._what()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: expected a torch.Tensor input, got {type(x).__name__}")
        device_path = not x.is_cpu or self.kernel in ("cuda", "triton")
        if x.dtype not in _FLOAT_INPUTS:
            raise TypeError(
                f"{what}: expected a float32 input, got {x.dtype} (bfloat16 and float16 are "
                f"taken too; cast with x.float(), or keep this layer dense)"
            )
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{what}: expected input [..., {self.in_features}], got {tuple(x.shape)}"
            )
        if x.device != self.fmt.device:
            raise ValueError(
                f"{what}: input is on {x.device} but the layer's weights are on {self.fmt.device}"
            )
        if x.dtype is not _F32 and not device_path:
            # bf16 / fp16 on the CPU: the kernels take fp32 rows, so the input is widened
            # (exact) and the fp32-accumulated output rounded back to x's dtype once
            return self.forward(x.float()).to(x.dtype)
        if self.kernel == "native" and not x.is_cpu:
            raise RuntimeError(
                f"{what}: no native kernel for device {x.device} (kernel='native' was requested)"
            )
        try:
            if _wants_grad(x):
                return _StraightThrough.apply(x, self)
            return self._run(x)
        except (RuntimeError, ValueError, TypeError) as e:
            if str(e).startswith(what):
                raise
            raise type(e)(f"{what}: {e}") from e

    def _run(self, x):
        return self.fmt.linear(x, self._buffers["bias"], self.kernel)

    def _input_grad(self, shape, grad):
        w = self.dequantized_weight().to(grad.device, grad.dtype)
        return (grad.reshape(-1, self.out_features) @ w).view(shape)

    # ---- module plumbing ------------------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / model.half() move the packed tensors and the bias, but never cast
        # them: the kernels read fp32 biases and the format's own dtypes
        if self._fused is not None:  # members moved one by one no longer share storage
            self._fused.dissolve()
        b = self._buffers.pop("bias")
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers["bias"] = b
        if b is not None:
            moved = fn(b)
            self._buffers["bias"] = moved if moved.dtype == b.dtype else b.to(moved.device)
        self.fmt._apply(fn)
        return self

    def _state_names(self) -> list:
        return self.fmt.state_names() + (["bias"] if self.bias is not None else [])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, t in self.fmt.state_dict().items():
            destination[prefix + key] = t
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        names = self._state_names()
        optional = getattr(self.fmt, "optional_state_names", ())
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        for key in state_dict:
            rest = key[len(prefix) :]
            if (
                key.startswith(prefix)
                and "." not in rest
                and rest not in names
                and rest not in optional
            ):
                unexpected_keys.append(key)
        if missing:
            return
        if self._fused is not None:  # new weights for one member: the group's call is stale
            self._fused.dissolve()
        err = self.fmt.load_state(lambda n: state_dict.get(prefix + n), prefix)
        if err:
            error_msgs.append(err)
            return
        if self.bias is not None:
            b = state_dict[prefix + "bias"]
            if tuple(b.shape) != (self.out_features,):
                error_msgs.append(
                    f"{prefix}bias: expected ({self.out_features},), got {tuple(b.shape)}"
                )
                return
            self.bias.copy_(b)

    def extra_repr(self) -> str:
        fp32 = 4 * self.out_features * (self.in_features + (self.bias is not None))
        opts = "".join(
            f", {k}={v}" for k, v in self.fmt.options().items() if k not in ("act_int8", "int8")
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scheme={self.scheme}{opts}, "
            f"{self.nbytes / 2**20:.2f} MiB vs {fp32 / 2**20:.2f} MiB fp32"
        )


def _empty(scheme: str, n: int, k: int, cls_name: str, **options) -> WeightFormat:
    if scheme not in SCHEMES:
        raise ValueError(f"{cls_name}: scheme must be one of {tuple(SCHEMES)}, got {scheme!r}")
    fmt_cls, fixed = SCHEMES[scheme]
    return fmt_cls.empty(n, k, **fixed, **options)


def _bias(flag: bool, n: int) -> Optional[torch.Tensor]:
    return torch.zeros(n) if flag else None


class QLinear(PackedLinear, formats=(Int8Format, Int4Format)):
    """int8 per-channel ("w8a8", "w8") or int4 group-wise ("w4a8", "w4") weights."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        scheme: str = "w8a8",
        kernel: str = "auto",
        name: str = "",
        group_size: int = 128,
        symmetric: bool = False,
        act_order: bool = False,
    ):
        opts = {}
        if SCHEMES.get(scheme, (None,))[0] is Int4Format:
            opts = dict(group_size=group_size, symmetric=symmetric, act_order=act_order)
        fmt = _empty(scheme, out_features, in_features, "QLinear", **opts)
        super().__init__(fmt, _bias(bias, out_features), kernel=kernel, name=name)

    @classmethod
    def from_gptq(
        cls,
        qweight,
        qzeros,
        scales,
        g_idx=None,
        bias=None,
        *,
        version: int = 1,
        scheme: str = "w4",
        kernel: str = "auto",
        name: str = "",
    ) -> "QLinear":
        """A QLinear from GPTQ 4-bit tensors (formats/int4.py ``from_gptq``); act-order
        (a permuted g_idx) is served by permuting the input features once per call."""
        what = f"GPTQ layer '{name}'" if name else "GPTQ"
        q, s, z, g, perm = f4.from_gptq(qweight, qzeros, scales, g_idx, version=version, what=what)
        fmt = Int4Format(
            q, s, z, g if g < q.shape[1] else -1, scheme == "w4a8", perm=perm, what=what
        )
        return PackedLinear.wrap(fmt, bias, kernel=kernel, name=name)

    @classmethod
    def from_awq(
        cls,
        qweight,
        qzeros,
        scales,
        group_size: int = 128,
        bias=None,
        *,
        scheme: str = "w4",
        kernel: str = "auto",
        name: str = "",
    ) -> "QLinear":
        """A QLinear from AWQ 4-bit tensors (formats/int4.py ``from_awq``)."""
        what = f"AWQ layer '{name}'" if name else "AWQ"
        q, s, z, g = f4.from_awq(qweight, qzeros, scales, group_size, what=what)
        return PackedLinear.wrap(
            Int4Format(q, s, z, g, scheme == "w4a8", what=what), bias, kernel=kernel, name=name
        )


class _SparseLayer(PackedLinear):
    """The sparse layer classes' shared constructor: (in, out, bias, name, scheme, kernel),
    scheme one of the class's ``schemes`` (the first, fp32 values, by default)."""

    schemes: tuple = ()

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        name: str = "",
        scheme: Optional[str] = None,
        kernel: str = "auto",
    ):
        cls = type(self).__name__
        scheme = self.schemes[0] if scheme is None else scheme
        if scheme not in self.schemes:
            raise ValueError(f"{cls}: scheme must be one of {self.schemes}, got {scheme!r}")
        fmt = _empty(scheme, out_features, in_features, cls)
        super().__init__(fmt, _bias(bias, out_features), kernel=kernel, name=name)

    @property
    def density(self) -> float:
        return self.fmt.density


class SparseLinear(_SparseLayer, formats=(Sparse24Format,)):
    """2:4 sparse weights, fp32 ("2:4") or int8 ("2:4+w8a8") values."""

    schemes = ("2:4", "2:4+w8a8")


class CsrLinear(_SparseLayer, formats=(CsrFormat,)):
    """Unstructured sparse weights, fp32 ("unstructured") or int8 ("unstructured+w8a8")."""

    schemes = ("unstructured", "unstructured+w8a8")

    @property
    def dense_from_rows(self) -> Optional[int]:
        return self.fmt.dense_from_rows

    @property
    def sparse_from_rows(self) -> Optional[int]:
        return self.fmt.sparse_from_rows

    def set_dense_fallback(self, rows: Optional[int], until: Optional[int] = None) -> None:
        """Run a dense copy of the weight from `rows` rows on (None: always sparse), up to
        `until` rows (exclusive; None: no end), where the sparse kernel takes over again."""
        f = self.fmt
        device = f.device
        self.fmt = CsrFormat(
            f.rowptr.cpu(),
            f.col.cpu(),
            f.val.cpu(),
            f.out_features,
            f.in_features,
            None if f.scale is None else f.scale.cpu(),
            rows,
            until,
        )
        self.fmt._apply(lambda t: t.to(device))


class BlockSparseLinear(_SparseLayer, formats=(BlockFormat,)):
    """Block-sparse weights, fp32 16x1 ("block") or int8 16x4 ("block+w8a8") blocks."""

    schemes = ("block", "block+w8a8")
