"""CsrLinear: nn.Linear with an unstructured sparse fp32 weight (formats/sparse_csr.py), run by
the ``tersor::spmm_csr`` kernels; state_dict holds the canonical CSR arrays."""
from __future__ import annotations

import torch
from torch import nn

from tersor.formats import sparse_csr as fc
from tersor.nn._common import check_float_weight
from tersor.ops.spmm_csr import spmm_csr, spmm_csr_cpu

_KERNEL = ("rowptr", "col", "val", "ell_val", "ell_col", "ell_cnt", "ell_off", "perm")


class CsrLinear(nn.Module):
    """y = x W^T + b, W unstructured sparse. x: float32 [..., in_features] on the CPU."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str = ""):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.scheme = "unstructured"
        self._pack(*fc.to_csr(torch.zeros(out_features, in_features)))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _pack(self, rowptr, col, val):
        p = fc.pack_csr(rowptr, col, val, self.out_features, self.in_features)
        for name in _KERNEL:  # sizes depend on the nonzeros: replace, do not copy into
            self.register_buffer(name, getattr(p, name), persistent=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, config, name: str = "") -> "CsrLinear":
        label = f"layer '{name}'" if name else "CsrLinear"
        w = linear.weight.detach()
        check_float_weight(w, label)
        if config.prune:
            w = fc.prune_unstructured(w, config.sparsity)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, name)
        m._pack(*fc.to_csr(w))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    @property
    def density(self) -> float:
        return int(self.rowptr[-1]) / max(1, self.out_features * self.in_features)

    def dense_weight(self) -> torch.Tensor:
        return fc.from_csr(self.rowptr, self.col, self.val, self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        what = f"layer '{self.name}' (unstructured)" if self.name else "CsrLinear"
        if x.dtype is not torch.float32:
            raise TypeError(f"{what}: expected a float32 input, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{what}: expected input [..., {self.in_features}], got "
                             f"{tuple(x.shape)}")
        args = [getattr(self, n) for n in _KERNEL]
        if torch.compiler.is_compiling():
            return spmm_csr(x, *args, self.bias, self.out_features)
        return spmm_csr_cpu(x, *args, self.bias, self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight_rowptr"] = self.rowptr.clone()
        destination[prefix + "weight_col"] = self.col.clone()
        destination[prefix + "weight_val"] = self.val.clone()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = ["weight_rowptr", "weight_col", "weight_val"] + (
            ["bias"] if self.bias is not None else [])
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                               and "." not in k[len(prefix):] and k[len(prefix):] not in names)
        if missing:
            return
        rp, col, val = (state_dict[prefix + n] for n in names[:3])
        n, k = self.out_features, self.in_features
        nnz = int(rp[-1]) if rp.numel() else -1
        if (rp.shape != (n + 1,) or col.numel() != nnz or val.numel() != nnz
                or (nnz > 0 and (int(col.min()) < 0 or int(col.max()) >= k))):
            error_msgs.append(f"{prefix}weight_rowptr/col/val: not a CSR matrix of shape "
                              f"{(n, k)}")
            return
        self._pack(rp.to(torch.int64), col.to(torch.int32), val.to(torch.float32))
        if self.bias is not None:
            self.bias.copy_(state_dict[prefix + "bias"])

    @property
    def nbytes(self) -> int:
        """Bytes held: both kernel forms (CSR for many rows, ELL blocks for few)."""
        return sum(getattr(self, n).numel() * getattr(self, n).element_size()
                   for n in _KERNEL) + (4 * self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, unstructured fp32, density {self.density:.3f}")
