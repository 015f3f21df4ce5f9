"""SparseLinear: nn.Linear with a 2:4 semi-structured sparse fp32 weight (formats/sparse24.py),
run by the ``tersor::spmm_24`` kernels. state_dict holds the canonical (values, meta) form."""
from __future__ import annotations

import torch
from torch import nn

from tersor.formats import sparse24 as f24
from tersor.nn._common import check_float_weight
from tersor.ops.spmm_24 import spmm_24, spmm_24_cpu


class SparseLinear(nn.Module):
    """y = x W^T + b, W 2:4 sparse. x: float32 [..., in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str = ""):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.scheme = "2:4"
        p = f24.pack_24(*f24.compress_24(torch.zeros(out_features, in_features)), in_features)
        self.register_buffer("values", p.values, persistent=False)
        self.register_buffer("meta", p.meta, persistent=False)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, config, name: str = "") -> "SparseLinear":
        label = f"layer '{name}'" if name else "SparseLinear"
        w = linear.weight.detach()
        check_float_weight(w, label)
        if not f24.is_24(w):
            if not config.prune:
                raise ValueError(f"{label}: weight is not 2:4 sparse and Sparse24Config(prune="
                                 f"False) forbids pruning it")
            w = f24.prune_24(w)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, name)
        m._set(*f24.compress_24(w))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def _set(self, values, meta):
        p = f24.pack_24(values, meta, self.in_features)
        self.values.copy_(p.values)
        self.meta.copy_(p.meta)

    def dense_weight(self) -> torch.Tensor:
        v, m = f24.unpack_24(self.values, self.meta, self.out_features, self.in_features)
        return f24.decompress_24(v, m, self.in_features)

    dequantized_weight = dense_weight  # the name QConv2d and QLinear share

    @property
    def kernel(self) -> str:
        return "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        what = f"layer '{self.name}' (2:4)" if self.name else "SparseLinear (2:4)"
        if x.dtype is not torch.float32:
            raise TypeError(f"{what}: expected a float32 input, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{what}: expected input [..., {self.in_features}], got "
                             f"{tuple(x.shape)}")
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            return spmm_24_cpu(x, self.values, self.meta, self.bias, self.out_features)
        return spmm_24(x, self.values, self.meta, self.bias, self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        v, m = f24.unpack_24(self.values, self.meta, self.out_features, self.in_features)
        destination[prefix + "weight_values"] = v
        destination[prefix + "weight_meta"] = m
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = ["weight_values", "weight_meta"] + (["bias"] if self.bias is not None else [])
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                               and "." not in k[len(prefix):] and k[len(prefix):] not in names)
        if missing:
            return
        g = (self.in_features + 3) // 4
        v, m = state_dict[prefix + "weight_values"], state_dict[prefix + "weight_meta"]
        if tuple(v.shape) != (self.out_features, 2 * g) or tuple(m.shape) != (self.out_features, g):
            error_msgs.append(f"{prefix}weight_values/weight_meta: expected "
                              f"{(self.out_features, 2 * g)} / {(self.out_features, g)}, got "
                              f"{tuple(v.shape)} / {tuple(m.shape)}")
            return
        if bool(((m & 3) >= (m >> 2)).any()) or int(m.max()) > 15:
            error_msgs.append(f"{prefix}weight_meta: positions must satisfy p0 < p1 <= 3")
            return
        self._set(v.to(torch.float32), m.to(torch.uint8))
        if self.bias is not None:
            self.bias.copy_(state_dict[prefix + "bias"])

    @property
    def nbytes(self) -> int:
        return (self.values.numel() * 4 + self.meta.numel()
                + (4 * self.out_features if self.bias is not None else 0))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, 2:4 sparse fp32, {self.nbytes / 2**20:.2f} MiB")
