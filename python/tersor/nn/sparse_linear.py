"""SparseLinear: nn.Linear with a 2:4 semi-structured sparse weight (formats/sparse24.py), fp32
values (``tersor::spmm_24``) or int8 values x per-row int8 activations ("2:4+w8a8",
``tersor::spmm_24_w8a8``). state_dict holds the canonical (values, meta[, scale]) form."""
from __future__ import annotations

import torch
from torch import nn

from tersor.formats import sparse24 as f24
from tersor.nn._common import check_float_weight
from tersor.ops.dense_path import DENSE_MIN_ROWS
from tersor.ops.spmm_24 import spmm_24, spmm_24_cpu, spmm_24_w8a8, spmm_24_w8a8_cpu

SCHEMES = ("2:4", "2:4+w8a8")


class SparseLinear(nn.Module):
    """y = x W^T + b, W 2:4 sparse. x: float32 [..., in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str = "",
                 scheme: str = "2:4"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"SparseLinear: scheme must be one of {SCHEMES}, got {scheme!r}")
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.scheme = scheme
        self.int8 = scheme == "2:4+w8a8"
        zero = f24.compress_24(torch.zeros(out_features, in_features))
        if self.int8:
            p = f24.pack_24_int8(zero[0].to(torch.int8), zero[1], torch.zeros(out_features),
                                 in_features)
            self.register_buffer("colsum", p.colsum, persistent=False)
            self.register_buffer("scale", p.scale, persistent=False)
        else:
            p = f24.pack_24(*zero, in_features)
        self.register_buffer("values", p.values, persistent=False)
        self.register_buffer("meta", p.meta, persistent=False)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, config, name: str = "",
                   score=None) -> "SparseLinear":
        """score: what magnitude pruning ranks (|w| by default; e.g. Wanda's |w| * ||x||)."""
        label = f"layer '{name}'" if name else "SparseLinear"
        w = linear.weight.detach()
        check_float_weight(w, label)
        if not f24.is_24(w):
            if not config.prune:
                raise ValueError(f"{label}: weight is not 2:4 sparse and Sparse24Config(prune="
                                 f"False) forbids pruning it")
            w = f24.prune_24(w, score)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, name)
        m._set(*f24.compress_24(w))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def quantized(self, config) -> "SparseLinear":
        """The "2:4+w8a8" layer of this fp32 one (sparsify_ then quantize_(W8A8Config()))."""
        m = SparseLinear(self.in_features, self.out_features, self.bias is not None, self.name,
                         scheme="2:4+w8a8")
        m._set(*f24.quantize_24_int8(self.dense_weight()))
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["_gpu"] = None  # GPU weight forms are per device (ops/gpu.py)
        return super()._apply(fn, *args, **kwargs)

    def _set(self, values, meta, scale=None):
        self.__dict__["_gpu"] = None
        k = self.in_features
        p = (f24.pack_24_int8(values, meta, scale, k) if self.int8
             else f24.pack_24(values, meta, k))
        self.values.copy_(p.values)
        self.meta.copy_(p.meta)
        if self.int8:
            self.colsum.copy_(p.colsum)
            self.scale.copy_(p.scale)

    def canonical_weight(self):
        """(values [N, K/2], meta uint8 [N, K/4]) for fp32, plus scale [N] for int8."""
        n, k = self.out_features, self.in_features
        if self.int8:
            return f24.unpack_24_int8(self.values, self.meta, self.scale, n, k)
        return f24.unpack_24(self.values, self.meta, n, k)

    def dense_weight(self) -> torch.Tensor:
        """float32 [N, K] (int8: the dequantized values)."""
        c = self.canonical_weight()
        w = f24.decompress_24(c[0].to(torch.float32), c[1], self.in_features)
        return w * c[2][:, None] if self.int8 else w

    dequantized_weight = dense_weight  # the name QConv2d and QLinear share

    @property
    def kernel(self) -> str:
        return "auto"

    def describe(self) -> str:
        kept = int((self.canonical_weight()[0] != 0).sum())
        note = (f"density {kept / max(1, self.out_features * self.in_features):.3f}, kernel "
                f"spmm_24{'_w8a8' if self.int8 else ''}")
        if not self.int8:
            note += (f"; from {DENSE_MIN_ROWS['2:4']} rows on a CPU, panels decompressed for a "
                     f"dense GEMM (no copy kept)")
        return note

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        what = f"layer '{self.name}' ({self.scheme})" if self.name else f"SparseLinear ({self.scheme})"
        if x.dtype is not torch.float32 and not (x.is_cuda and x.dtype is torch.float16):
            raise TypeError(f"{what}: expected a float32 input (or float16 on a GPU), got "
                            f"{x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{what}: expected input [..., {self.in_features}], got "
                             f"{tuple(x.shape)}")
        if x.is_cuda and not self.int8:  # sparse tensor cores (ops/gpu.py)
            from tersor.ops import gpu

            v, m = gpu.gpu_weights(self, self.canonical_weight)
            x2 = x.reshape(-1, self.in_features)
            y = gpu.spmm_24(x2, v, m, self.bias, "auto", what, self.dense_weight)
            return y.view(*x.shape[:-1], self.out_features)
        eager = x.device.type == "cpu" and not torch.compiler.is_compiling()
        if self.int8:
            fn = spmm_24_w8a8_cpu if eager else spmm_24_w8a8
            return fn(x, self.values, self.meta, self.colsum, self.scale, self.bias,
                      self.out_features)
        fn = spmm_24_cpu if eager else spmm_24
        return fn(x, self.values, self.meta, self.bias, self.out_features)

    def _names(self):
        return (["weight_values", "weight_meta"] + (["weight_scale"] if self.int8 else [])
                + (["bias"] if self.bias is not None else []))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, t in zip(self._names(), self.canonical_weight()):
            destination[prefix + name] = t
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = self._names()
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                               and "." not in k[len(prefix):] and k[len(prefix):] not in names)
        if missing:
            return
        n, g = self.out_features, (self.in_features + 3) // 4
        v, m = state_dict[prefix + "weight_values"], state_dict[prefix + "weight_meta"]
        if tuple(v.shape) != (n, 2 * g) or tuple(m.shape) != (n, g):
            error_msgs.append(f"{prefix}weight_values/weight_meta: expected {(n, 2 * g)} / "
                              f"{(n, g)}, got {tuple(v.shape)} / {tuple(m.shape)}")
            return
        if bool(((m & 3) >= (m >> 2)).any()) or bool((m > 15).any()):
            error_msgs.append(f"{prefix}weight_meta: positions must satisfy p0 < p1 <= 3")
            return
        if self.int8:
            s = state_dict[prefix + "weight_scale"]
            if v.dtype != torch.int8 or tuple(s.shape) != (n,) or int(v.min()) < -127:
                error_msgs.append(f"{prefix}weight_values/weight_scale: expected int8 values in "
                                  f"[-127, 127] and a float32 scale [{n}]")
                return
            self._set(v, m.to(torch.uint8), s.to(torch.float32))
        else:
            self._set(v.to(torch.float32), m.to(torch.uint8))
        if self.bias is not None:
            self.bias.copy_(state_dict[prefix + "bias"])

    @property
    def nbytes(self) -> int:
        ts = [self.values, self.meta] + ([self.colsum, self.scale] if self.int8 else [])
        return (sum(t.numel() * t.element_size() for t in ts)
                + (4 * self.out_features if self.bias is not None else 0))

    def extra_repr(self) -> str:
        kind = "2:4 sparse int8 x int8 activations" if self.int8 else "2:4 sparse fp32"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {kind}, {self.nbytes / 2**20:.2f} MiB")
