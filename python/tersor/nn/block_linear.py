"""BlockSparseLinear: nn.Linear with a block-sparse weight (formats/sparse_block.py): fp32
16 x 1 blocks ("block", ``tersor::spmm_block`` fp32) or int8 16 x 4 blocks x per-row int8
activations ("block+w8a8"). state_dict holds the canonical BSR arrays."""
from __future__ import annotations

import torch
from torch import nn

from tersor.formats import sparse_block as fb
from tersor.formats.int8 import quantize_per_channel_int8
from tersor.nn._common import check_float_weight
from tersor.ops.spmm_block import spmm_block, spmm_block_cpu

SCHEMES = ("block", "block+w8a8")
_KERNEL = ("bptr", "kidx", "values", "colsum", "scale")


class BlockSparseLinear(nn.Module):
    """y = x W^T + b, W block-sparse. x: float32 [..., in_features] on the CPU."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str = "",
                 scheme: str = "block"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"BlockSparseLinear: scheme must be one of {SCHEMES}, got "
                             f"{scheme!r}")
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.scheme, self.int8 = scheme, scheme == "block+w8a8"
        zero = torch.zeros(out_features, in_features)
        self._pack(zero.to(torch.int8), torch.zeros(out_features)) if self.int8 else \
            self._pack(zero)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _pack(self, w, scale=None):
        p = fb.pack_block_int8(w, scale) if self.int8 else fb.pack_block_f32(w)
        for name, t in zip(_KERNEL, (p.ptr, p.kidx, p.values, p.colsum, p.scale)):
            self.register_buffer(name, t, persistent=False)  # sizes follow the kept blocks

    @classmethod
    def from_float(cls, linear: nn.Linear, weight: torch.Tensor, name: str = "") -> "BlockSparseLinear":
        """`weight`: the layer's pruned weight (sparsify_ prunes; zeros become skipped blocks)."""
        check_float_weight(linear.weight.detach(), f"layer '{name}'" if name else "BlockSparseLinear")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, name)
        m._pack(weight.detach().to(torch.float32))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def quantized(self, config) -> "BlockSparseLinear":
        """The "block+w8a8" layer of this fp32 one (sparsify_ then quantize_(W8A8Config())):
        per-channel int8 of the kept weights, re-blocked into 16 x 4 kernel blocks."""
        m = BlockSparseLinear(self.in_features, self.out_features, self.bias is not None,
                              self.name, scheme="block+w8a8")
        m._pack(*quantize_per_channel_int8(self.dense_weight()))
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m

    @property
    def density(self) -> float:
        """Fraction of kernel blocks kept (the work done relative to dense)."""
        bk = fb.KERNEL_BK["int8" if self.int8 else "fp32"]
        total = (self.bptr.numel() - 1) * -(-self.in_features // bk)
        return self.kidx.numel() / max(1, total)

    def describe(self) -> str:
        bk = fb.KERNEL_BK["int8" if self.int8 else "fp32"]
        nz = int((self.values != 0).sum())
        return (f"density {nz / max(1, self.out_features * self.in_features):.3f}, kernel "
                f"blocks (16, {bk}) kept {self.density:.3f}, kernel spmm_block "
                f"{'int8' if self.int8 else 'fp32'}")

    def dense_weight(self) -> torch.Tensor:
        """float32 [N, K] (int8: the dequantized values)."""
        w = fb.unpack_block(self.bptr, self.kidx, self.values, self.out_features,
                            self.in_features)
        return w.to(torch.float32) * self.scale[: self.out_features, None] if self.int8 else w

    dequantized_weight = dense_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        what = f"layer '{self.name}' ({self.scheme})" if self.name else f"BlockSparseLinear ({self.scheme})"
        if x.dtype is not torch.float32:
            raise TypeError(f"{what}: expected a float32 input, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{what}: expected input [..., {self.in_features}], got "
                             f"{tuple(x.shape)}")
        fn = spmm_block if torch.compiler.is_compiling() else spmm_block_cpu
        return fn(x, self.bptr, self.kidx, self.values, self.colsum, self.scale, self.bias,
                  self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        bk = fb.KERNEL_BK["int8" if self.int8 else "fp32"]
        destination[prefix + "weight_crow"] = self.bptr.clone()
        destination[prefix + "weight_col"] = self.kidx.to(torch.int32)
        destination[prefix + "weight_values"] = self.values.reshape(-1, 16, bk).clone()
        if self.int8:
            destination[prefix + "weight_scale"] = self.scale[: self.out_features].clone()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = (["weight_crow", "weight_col", "weight_values"]
                 + (["weight_scale"] if self.int8 else []) + (["bias"] if self.bias is not None else []))
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                               and "." not in k[len(prefix):] and k[len(prefix):] not in names)
        if missing:
            return
        crow, col, vals = (state_dict[prefix + n] for n in names[:3])
        bk = fb.KERNEL_BK["int8" if self.int8 else "fp32"]
        panels, kb = -(-self.out_features // 16), -(-self.in_features // bk)
        nb = int(crow[-1]) if crow.numel() else -1
        if (tuple(crow.shape) != (panels + 1,) or col.numel() != nb
                or tuple(vals.shape) != (nb, 16, bk)
                or (nb > 0 and (int(col.min()) < 0 or int(col.max()) >= kb))):
            error_msgs.append(f"{prefix}weight_crow/col/values: not a BSR matrix of "
                              f"{panels} x {kb} blocks of (16, {bk})")
            return
        w = fb.unpack_block(crow, col, vals.to(torch.int8 if self.int8 else torch.float32),
                            self.out_features, self.in_features)
        if self.int8:
            self._pack(w, state_dict[prefix + "weight_scale"].to(torch.float32))
        else:
            self._pack(w)
        if self.bias is not None:
            self.bias.copy_(state_dict[prefix + "bias"])

    @property
    def nbytes(self) -> int:
        return (sum(t.numel() * t.element_size() for t in
                    (getattr(self, n) for n in _KERNEL) if t is not None)
                + (4 * self.out_features if self.bias is not None else 0))

    def extra_repr(self) -> str:
        kind = "int8 16x4 blocks x int8 activations" if self.int8 else "fp32 16x1 blocks"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {kind}, block density {self.density:.3f}")
