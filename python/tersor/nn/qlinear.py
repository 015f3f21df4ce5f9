"""QLinear: a drop-in replacement for nn.Linear backed by tersor's packed-weight kernels.

Schemes: "w8a8", "w8" (int8 per-channel weights, formats/int8.py) and "w4a8", "w4" (int4
group-wise weights, formats/int4.py); "a8" means activations are quantized to int8 per row
inside the kernel, otherwise they stay float32. The weight lives only in kernel layout
(non-persistent buffers); ``state_dict`` writes the scheme's canonical form and loading
re-packs (DESIGN decision 4).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tersor import _C
from tersor.formats import int4 as f4
from tersor.nn._common import check_float_weight
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8, unpack_int8
from tersor.configs import KERNELS
from tersor.ops import device, gpu
from tersor.ops.dense_path import DENSE_MIN_ROWS
from tersor.ops.dequant import dequant_w8
from tersor.ops.gemm_w4 import dequant_w4t, gemm_w4, gemm_w4_cpu, gemm_w4a8
from tersor.ops.gemm_w8 import gemm_w8, gemm_w8_cpu
from tersor.ops.gemm_w8a8 import gemm_w8a8, gemm_w8a8_cpu
from tersor.ref import int4 as int4_ref
from tersor.ref import int8 as int8_ref

SCHEMES = {"w8a8": "int8", "w8": "int8", "w4a8": "int4", "w4": "int4"}
_BUFFERS = ("packed", "colsum", "scale", "zero", "bias", "perm")
_F32 = torch.float32
_is_compiling = torch.compiler.is_compiling
_num_threads = torch.get_num_threads


class QLinear(nn.Module):
    """y = x W^T + b with W in a packed low-bit format.

    x: float32 [..., in_features] on the CPU (any strides); returns float32 [..., out_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 scheme: str = "w8a8", kernel: str = "auto", name: str = "",
                 group_size: int = 128, symmetric: bool = False, act_order: bool = False):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"QLinear: scheme must be one of {tuple(SCHEMES)}, got {scheme!r}")
        if kernel not in KERNELS:
            raise ValueError(f"QLinear: kernel must be one of {KERNELS}, got {kernel!r}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.kernel, self.name = scheme, kernel, name
        self.family = SCHEMES[scheme]
        n, k = out_features, in_features
        if self.family == "int8":
            p = pack_int8(torch.zeros(n, k, dtype=torch.int8), torch.zeros(n))
            self.register_buffer("packed", p.packed, persistent=False)
            self.register_buffer("colsum", p.colsum, persistent=False)
            self.register_buffer("scale", p.scale, persistent=False)
            self.zero = self.perm = None
        else:
            self.group_size, self.symmetric = group_size, symmetric
            self._G = f4.effective_group_size(k, group_size, self._label())
            ng = -(-k // self._G)
            p = f4.pack_int4(torch.zeros(n, k, dtype=torch.uint8), torch.zeros(n, ng),
                             None if symmetric else torch.zeros(n, ng, dtype=torch.uint8),
                             self._G)
            self.register_buffer("packed", p.codes, persistent=False)
            self.register_buffer("scale", p.scale, persistent=False)
            self.register_buffer("zero", p.zero, persistent=False)
            self.register_buffer("perm", torch.arange(k) if act_order else None,
                                 persistent=False)
            self.colsum = None
        self.register_buffer("bias", torch.zeros(n) if bias else None)

    def _label(self) -> str:
        return f"layer '{self.name}'" if self.name else "QLinear"

    # ---- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_float(cls, linear: nn.Linear, config, name: str = "") -> "QLinear":
        w = linear.weight
        label = f"layer '{name}'" if name else "QLinear"
        check_float_weight(w, label)
        extra = {}
        if SCHEMES[config.scheme] == "int4":
            extra = dict(group_size=config.group_size, symmetric=config.symmetric)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                scheme=config.scheme, kernel=config.kernel, name=name, **extra)
        if m.family == "int8":
            m._set_int8(*quantize_per_channel_int8(w))
        else:
            q, s, z, _ = f4.quantize_int4(w, config.group_size, config.symmetric, label)
            m._set_int4(q, s, z)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    @classmethod
    def from_gptq(cls, qweight, qzeros, scales, g_idx=None, bias=None, *, version: int = 1,
                  scheme: str = "w4", kernel: str = "auto", name: str = "") -> "QLinear":
        """A QLinear from GPTQ 4-bit tensors (formats/int4.py ``from_gptq``); act-order
        (a permuted g_idx) is served by permuting the input features once per call."""
        q, s, z, g, perm = f4.from_gptq(qweight, qzeros, scales, g_idx, version=version,
                                        what=f"GPTQ layer '{name}'" if name else "GPTQ")
        n, k = q.shape
        m = cls(k, n, bias is not None, scheme=scheme, kernel=kernel, name=name,
                group_size=g if g < k else -1, act_order=perm is not None)
        m._set_int4(q, s, z)
        if perm is not None:
            m.perm.copy_(perm)
        if bias is not None:
            m.bias.copy_(bias.to(torch.float32))
        return m

    @classmethod
    def from_awq(cls, qweight, qzeros, scales, group_size: int = 128, bias=None, *,
                 scheme: str = "w4", kernel: str = "auto", name: str = "") -> "QLinear":
        """A QLinear from AWQ 4-bit tensors (formats/int4.py ``from_awq``)."""
        q, s, z, g = f4.from_awq(qweight, qzeros, scales, group_size,
                                 what=f"AWQ layer '{name}'" if name else "AWQ")
        n, k = q.shape
        m = cls(k, n, bias is not None, scheme=scheme, kernel=kernel, name=name, group_size=g)
        m._set_int4(q, s, z)
        if bias is not None:
            m.bias.copy_(bias.to(torch.float32))
        return m

    def _set_int8(self, q: torch.Tensor, s: torch.Tensor) -> None:
        p = pack_int8(q, s)
        self._drop_caches()
        # copy_ keeps the buffers' storage: anything holding them stays valid
        self.packed.copy_(p.packed)
        self.colsum.copy_(p.colsum)
        self.scale.copy_(p.scale)

    def _set_int4(self, q, s, z) -> None:
        if self.symmetric and z is not None:
            if not bool((z == 8).all()):
                raise ValueError(f"{self._label()}: symmetric layer given zero points != 8")
            z = None
        p = f4.pack_int4(q, s, z, self._G)
        self._drop_caches()
        self.packed.copy_(p.codes)
        self.scale.copy_(p.scale)
        if self.zero is not None:
            if p.zero is None:  # a symmetric import into an asymmetric layer: z = 8
                self.zero.fill_(8)
            else:
                self.zero.copy_(p.zero)

    def canonical_weight(self):
        """int8: (q int8 [N, K], scale fp32 [N]); int4: (q uint8 [N, K], scale fp16
        [N, ngroups], zero uint8 [N, ngroups] or None) -- in the layer's K order."""
        if self.family == "int8":
            return unpack_int8(self.packed, self.scale, self.out_features, self.in_features)
        return f4.unpack_int4(self.packed, self.scale, self.zero, self.out_features,
                              self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """float32 [N, K] in the original input order."""
        if self.family == "int8":
            return dequant_w8(self.packed, self.scale, self.out_features, self.in_features)
        w = dequant_w4t(self.packed, self.scale, self.zero, self.out_features,
                        self.in_features, self._G).t()
        if self.perm is not None:  # columns were stored in act-order
            w = w[:, torch.argsort(self.perm)]
        return w.contiguous()

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
            self._drop_caches()

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._drop_caches()
        return out

    def _drop_caches(self):
        """Forget the eager CPU argument tuple and the GPU weight forms (ops/gpu.py)."""
        self.__dict__["_fast"] = None
        self.__dict__["_gpu"] = None

    def _fast_args(self):
        """(kernel, packed, colsum, scale, bias, K, N, max_rows) for the eager CPU int8 path,
        or False."""
        f = self.__dict__.get("_fast")
        if f is None:
            b = self._buffers
            if (self.kernel not in ("auto", "native") or b["packed"].device.type != "cpu"
                    or self.family != "int8"):
                f = False
            else:
                kernel = _C.gemm_w8a8 if self.scheme == "w8a8" else _C.gemm_w8
                max_rows = DENSE_MIN_ROWS.get(self.scheme, 1 << 62)  # beyond: the dense path
                f = (kernel, b["packed"], b["colsum"], b["scale"], b["bias"], self.in_features,
                     self.out_features, max_rows)
            self.__dict__["_fast"] = f
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._fast_args()
        if (f and x.dtype is _F32 and x.is_cpu and x.dim() == 2 and x.is_contiguous()
                and not _is_compiling()):
            kernel, packed, colsum, scale, bias, k, n, max_rows = f
            m, kx = x.shape
            if kx == k and m < max_rows:
                y = torch.empty(m, n)
                if m:
                    kernel(x.data_ptr(), m, k, k, packed.data_ptr(), colsum.data_ptr(),
                           scale.data_ptr(), n, 0 if bias is None else bias.data_ptr(),
                           y.data_ptr(), n, _num_threads())
                return y
        return self._forward_general(x)

    def _forward_general(self, x):
        """int4, N-D / strided inputs, tracing, the ref kernel, other devices and bad input."""
        if isinstance(x, torch.Tensor) and (x.is_cuda or self.kernel in ("cuda", "triton")):
            return self._forward_device(x)
        if (x.dtype is not torch.float32 or x.dim() == 0 or x.shape[-1] != self.in_features
                or x.device.type != "cpu" or self.packed.device.type != "cpu"):
            return self._forward_slow(x)
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        if self.kernel == "ref":
            return self._forward_ref(x)
        if torch.compiler.is_compiling():
            return self._forward_op(x)
        if self.family == "int4":
            return gemm_w4_cpu(x, self.packed, self.scale, self.zero, self.bias,
                               self.out_features, self._G, self.scheme == "w4a8")
        if self.scheme == "w8a8":
            return gemm_w8a8_cpu(x, self.packed, self.colsum, self.scale, self.bias,
                                 self.out_features)
        return gemm_w8_cpu(x, self.packed, self.scale, self.bias, self.out_features)

    def _forward_device(self, x):
        """A CUDA tensor, or kernel="cuda" / "triton" (Triton also runs CPU tensors under
        TRITON_INTERPRET=1): the kernel ops/device.py picks, on the GPU weight forms."""
        what = f"{self._label()} ({self.scheme}, in_features={self.in_features})"
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{what}: expected a float32, float16 or bfloat16 input, got "
                            f"{x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{what}: expected input [..., {self.in_features}], got "
                             f"{tuple(x.shape)}")
        if x.device != self.packed.device:
            raise ValueError(f"{what}: input is on {x.device} but the layer's weights are on "
                             f"{self.packed.device}")
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        x2 = x.reshape(-1, self.in_features)
        if self.family == "int8":
            q, s = gpu.gpu_weights(self, self.canonical_weight)
            fn = gpu.w8a8 if self.scheme == "w8a8" else gpu.w8
            y = fn(x2, q, s, self.bias, self.kernel, what)
        elif self.scheme == "w4":
            forms = gpu.gpu_weights(self, lambda: gpu.int4_forms(
                *self.canonical_weight(), self._G, self.packed.is_cuda))
            y = gpu.w4(x2, forms, self._G, self.bias, self.kernel, what)
        else:  # w4a8: no GPU kernel (the GPU int4 path is W4 with fp16 activations)
            device.pick(self.kernel, x2, (), what)
            y = int4_ref.gemm_w4a8_ref(x2.float(), *self.canonical_weight(), self._G,
                                       self.bias).to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def _forward_op(self, x):
        n = self.out_features
        if self.scheme == "w8a8":
            return gemm_w8a8(x, self.packed, self.colsum, self.scale, self.bias, n)
        if self.scheme == "w8":
            return gemm_w8(x, self.packed, self.scale, self.bias, n)
        op = gemm_w4a8 if self.scheme == "w4a8" else gemm_w4
        return op(x, self.packed, self.scale, self.zero, self.bias, n, self._G)

    def _forward_ref(self, x):
        x2 = x.reshape(-1, self.in_features)
        if self.family == "int8":
            fn = int8_ref.gemm_w8a8_ref if self.scheme == "w8a8" else int8_ref.gemm_w8_ref
            y = fn(x2, *self.canonical_weight(), self.bias)
        else:
            fn = int4_ref.gemm_w4a8_ref if self.scheme == "w4a8" else int4_ref.gemm_w4_ref
            y = fn(x2, *self.canonical_weight(), self._G, self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def _forward_slow(self, x):
        """Validation with messages that name the layer; other devices go through the op."""
        what = f"{self._label()} ({self.scheme}, in_features={self.in_features})"
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
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return self._forward_op(x)

    # ---- state dict: canonical form -----------------------------------------------------------
    def _state_names(self) -> list:
        if self.family == "int8":
            names = ["weight_int8", "weight_scale"]
        else:
            names = ["weight_int4", "weight_scale"] + ([] if self.symmetric else ["weight_zero"])
            names += ["input_perm"] if self.perm is not None else []
        return names + (["bias"] if self.bias is not None else [])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.family == "int8":
            q, s = self.canonical_weight()
            destination[prefix + "weight_int8"] = q
            destination[prefix + "weight_scale"] = s
        else:
            q, s, z = self.canonical_weight()
            destination[prefix + "weight_int4"] = f4.to_nibbles(q)
            destination[prefix + "weight_scale"] = s
            if z is not None:
                destination[prefix + "weight_zero"] = z
            if self.perm is not None:
                destination[prefix + "input_perm"] = self.perm.clone()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = self._state_names()
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        for key in state_dict:
            if key.startswith(prefix) and "." not in key[len(prefix):] \
                    and key[len(prefix):] not in names:
                unexpected_keys.append(key)
        if missing:
            return
        err = self._load_canonical(lambda n: state_dict[prefix + n], prefix)
        if err:
            error_msgs.append(err)

    def _load_canonical(self, get, prefix) -> Optional[str]:
        n, k = self.out_features, self.in_features

        def bad(name, t, dtype, shape):
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                return (f"{prefix}{name}: expected {str(dtype).replace('torch.', '')} "
                        f"{tuple(shape)}, got {str(t.dtype).replace('torch.', '')} "
                        f"{tuple(t.shape)}")
            return None

        if self.family == "int8":
            q, s = get("weight_int8"), get("weight_scale")
            e = bad("weight_int8", q, torch.int8, (n, k)) or bad("weight_scale", s, _F32, (n,))
            if e:
                return e
            if q.numel() and int(q.min()) < -127:
                return f"{prefix}weight_int8: values must lie in [-127, 127]"
            self._set_int8(q.cpu(), s.cpu())
        else:
            ng = self.scale.shape[1]
            b, s = get("weight_int4"), get("weight_scale")
            z = None if self.symmetric else get("weight_zero")
            e = (bad("weight_int4", b, torch.uint8, (n, (k + 1) // 2))
                 or bad("weight_scale", s, torch.float16, (n, ng))
                 or (z is not None and bad("weight_zero", z, torch.uint8, (n, ng))))
            if e:
                return e
            if z is not None and z.numel() and int(z.max()) > 15:
                return f"{prefix}weight_zero: values must lie in [0, 15]"
            self._set_int4(f4.from_nibbles(b.cpu(), k), s.cpu(), None if z is None else z.cpu())
            if self.perm is not None:
                p = get("input_perm")
                e = bad("input_perm", p, torch.int64, (k,))
                if e:
                    return e
                if not torch.equal(torch.sort(p).values, torch.arange(k)):
                    return f"{prefix}input_perm: not a permutation of range({k})"
                self.perm.copy_(p)
        if self.bias is not None:
            bb = get("bias")
            if tuple(bb.shape) != (n,):
                return f"{prefix}bias: expected ({n},), got {tuple(bb.shape)}"
            self.bias.copy_(bb)
        return None

    # ---- description --------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        ts = [t for t in (self.packed, self.colsum, self.scale, self.zero, self.bias)
              if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    def extra_repr(self) -> str:
        fp32 = 4 * self.out_features * (self.in_features + (self.bias is not None))
        g = f", group_size={self.group_size}" if self.family == "int4" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}{g}, "
                f"{self.nbytes / 2**20:.2f} MiB vs {fp32 / 2**20:.2f} MiB fp32")
