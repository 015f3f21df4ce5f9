"""QLinear: a drop-in replacement for nn.Linear backed by tersor's packed-weight kernels.

It holds the weight only in kernel layout (non-persistent buffers); ``state_dict`` writes the
canonical form of the scheme's format module and loading re-packs (DESIGN decision 4).
"""
from __future__ import annotations

import torch
from torch import nn

from tersor import _C
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8, unpack_int8
from tersor.ops.dequant import dequant_w8
from tersor.ops.gemm_w8 import gemm_w8, gemm_w8_cpu
from tersor.ops.gemm_w8a8 import gemm_w8a8, gemm_w8a8_cpu
from tersor.ref import int8 as int8_ref

SCHEMES = ("w8a8", "w8")
_BUFFERS = ("packed", "colsum", "scale", "bias")
_F32 = torch.float32
_is_compiling = torch.compiler.is_compiling
_num_threads = torch.get_num_threads


class QLinear(nn.Module):
    """y = x W^T + b with W in a packed low-bit format.

    x: float32 [..., in_features] on the CPU (any strides); returns float32 [..., out_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 scheme: str = "w8a8", kernel: str = "auto", name: str = ""):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"QLinear: scheme must be one of {SCHEMES}, got {scheme!r}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.kernel, self.name = scheme, kernel, name
        self._native = kernel != "ref"
        p = pack_int8(torch.zeros(out_features, in_features, dtype=torch.int8),
                      torch.zeros(out_features))
        self.register_buffer("packed", p.packed, persistent=False)
        self.register_buffer("colsum", p.colsum, persistent=False)
        self.register_buffer("scale", p.scale, persistent=False)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    # ---- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_float(cls, linear: nn.Linear, config, name: str = "") -> "QLinear":
        w = linear.weight
        label = name or "QLinear"
        if w.dtype != torch.float32:
            raise TypeError(f"layer '{label}': weight must be float32, got {w.dtype}")
        if not torch.isfinite(w).all():
            raise ValueError(f"layer '{label}': weight holds NaN or Inf; cannot quantize")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                scheme=config.scheme, kernel=config.kernel, name=name)
        q, s = quantize_per_channel_int8(w)
        m._set_int8(q, s)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def _set_int8(self, q: torch.Tensor, s: torch.Tensor) -> None:
        p = pack_int8(q, s)
        # copy_ keeps the buffers' storage: anything holding them stays valid
        self.packed.copy_(p.packed)
        self.colsum.copy_(p.colsum)
        self.scale.copy_(p.scale)

    def weight_int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical form: (int8 [N, K], fp32 scale [N])."""
        return unpack_int8(self.packed, self.scale, self.out_features, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        return dequant_w8(self.packed, self.scale, self.out_features, self.in_features)

    def to_float(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    # ---- forward ------------------------------------------------------------------------------
    # The eager fast path is budgeted at ~5 us above the kernel (DESIGN decision 2). Reading a
    # buffer through nn.Module.__getattr__ costs ~1 us each on this machine, so forward reads
    # what the kernel needs from one tuple kept in __dict__, rebuilt whenever a buffer is
    # replaced (assignment, .to(), ...). Data pointers are still read on every call.
    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in _BUFFERS or name == "kernel":
            self.__dict__["_fast"] = None

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.__dict__["_fast"] = None
        return out

    def _fast_args(self):
        """(kernel, packed, colsum, scale, bias, K, N) for the eager CPU path, or False."""
        f = self.__dict__.get("_fast")
        if f is None:
            packed, colsum, scale, bias = (self._buffers[n] for n in _BUFFERS)
            if self.kernel == "ref" or packed.device.type != "cpu":
                f = False
            else:
                kernel = _C.gemm_w8a8 if self.scheme == "w8a8" else _C.gemm_w8
                f = (kernel, packed, colsum, scale, bias, self.in_features, self.out_features)
            self.__dict__["_fast"] = f
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._fast_args()
        if (f and x.dtype is _F32 and x.is_cpu and x.dim() == 2 and x.is_contiguous()
                and not _is_compiling()):
            kernel, packed, colsum, scale, bias, k, n = f
            m, kx = x.shape
            if kx == k:
                y = torch.empty(m, n)
                if m:
                    kernel(x.data_ptr(), m, k, k, packed.data_ptr(), colsum.data_ptr(),
                           scale.data_ptr(), n, 0 if bias is None else bias.data_ptr(),
                           y.data_ptr(), n, _num_threads())
                return y
        return self._forward_general(x)

    def _forward_general(self, x):
        """N-D / strided inputs, tracing, the ref kernel, other devices and bad input."""
        if (x.dtype is not torch.float32 or x.dim() == 0 or x.shape[-1] != self.in_features
                or x.device.type != "cpu" or self.packed.device.type != "cpu"):
            return self._forward_slow(x)
        if self.kernel == "ref":
            return self._forward_ref(x)
        if torch.compiler.is_compiling():
            return self._forward_op(x)
        if self.scheme == "w8a8":
            return gemm_w8a8_cpu(x, self.packed, self.colsum, self.scale, self.bias,
                                 self.out_features)
        return gemm_w8_cpu(x, self.packed, self.scale, self.bias, self.out_features)

    def _forward_op(self, x):
        if self.scheme == "w8a8":
            return gemm_w8a8(x, self.packed, self.colsum, self.scale, self.bias,
                                      self.out_features)
        return gemm_w8(x, self.packed, self.scale, self.bias, self.out_features)

    def _forward_ref(self, x):
        q, s = self.weight_int8()
        x2 = x.reshape(-1, self.in_features)
        fn = int8_ref.gemm_w8a8_ref if self.scheme == "w8a8" else int8_ref.gemm_w8_ref
        return fn(x2, q, s, self.bias).view(*x.shape[:-1], self.out_features)

    def _forward_slow(self, x):
        """Validation with messages that name the layer; other devices go through the op."""
        label = f"layer '{self.name}'" if self.name else "QLinear"
        what = f"{label} ({self.scheme}, in_features={self.in_features})"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: expected a torch.Tensor input, got {type(x).__name__}")
        if x.dtype is not torch.float32:
            raise TypeError(f"{what}: expected a float32 input, got {x.dtype} "
                            f"(cast with x.float(), or keep this layer dense)")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{what}: expected input [..., {self.in_features}], "
                             f"got {tuple(x.shape)}")
        if x.device != self.packed.device:
            raise ValueError(f"{what}: input is on {x.device} but the layer's weights are on "
                             f"{self.packed.device}")
        if self.kernel == "native":
            raise RuntimeError(f"{what}: no native kernel for device {x.device} "
                               f"(kernel='native' was requested)")
        return self._forward_op(x)

    # ---- state dict: canonical form -----------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        q, s = self.weight_int8()
        destination[prefix + "weight_int8"] = q
        destination[prefix + "weight_scale"] = s
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = ["weight_int8", "weight_scale"] + (["bias"] if self.bias is not None else [])
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        for key in state_dict:
            if key.startswith(prefix) and "." not in key[len(prefix):] \
                    and key[len(prefix):] not in names:
                unexpected_keys.append(key)
        if missing:
            return
        q, s = state_dict[prefix + "weight_int8"], state_dict[prefix + "weight_scale"]
        n, k = self.out_features, self.in_features
        if q.dtype != torch.int8 or tuple(q.shape) != (n, k):
            error_msgs.append(f"{prefix}weight_int8: expected int8 {(n, k)}, got {q.dtype} "
                              f"{tuple(q.shape)}")
            return
        if s.dtype != torch.float32 or tuple(s.shape) != (n,):
            error_msgs.append(f"{prefix}weight_scale: expected float32 ({n},), got {s.dtype} "
                              f"{tuple(s.shape)}")
            return
        if q.numel() and int(q.min()) < -127:
            error_msgs.append(f"{prefix}weight_int8: values must lie in [-127, 127]")
            return
        self._set_int8(q.cpu(), s.cpu())
        if self.bias is not None:
            b = state_dict[prefix + "bias"]
            if tuple(b.shape) != (n,):
                error_msgs.append(f"{prefix}bias: expected ({n},), got {tuple(b.shape)}")
                return
            self.bias.copy_(b)

    # ---- description --------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        q_bytes = self.out_features * self.in_features + 4 * self.out_features
        return q_bytes + (4 * self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        fp32 = 4 * self.out_features * (self.in_features + (self.bias is not None))
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, "
                f"{self.nbytes / 2**20:.2f} MiB vs {fp32 / 2**20:.2f} MiB fp32")
