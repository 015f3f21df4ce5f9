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
        self.dense_from_rows = None
        self.register_buffer("dense_w", None, persistent=False)

    def _pack(self, rowptr, col, val):
        p = fc.pack_csr(rowptr, col, val, self.out_features, self.in_features)
        for name in _KERNEL:  # sizes depend on the nonzeros: replace, do not copy into
            self.register_buffer(name, getattr(p, name), persistent=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight=None, name: str = "",
                   dense_from_rows=None) -> "CsrLinear":
        """`weight`: the pruned weight to store (default: the layer's own, its zeros skipped).
        dense_from_rows: from this many rows, run a dense copy of the weight instead (kept
        beside the sparse form) -- for layers too dense to beat dense GEMM at large M."""
        label = f"layer '{name}'" if name else "CsrLinear"
        w = linear.weight.detach() if weight is None else weight.detach()
        check_float_weight(w, label)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, name)
        m._pack(*fc.to_csr(w))
        m.set_dense_fallback(dense_from_rows)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def set_dense_fallback(self, rows) -> None:
        """Run a dense copy of the weight from `rows` rows on (None: always sparse)."""
        self.dense_from_rows = rows
        self.register_buffer("dense_w", None if rows is None else self.dense_weight(),
                             persistent=False)

    def get_extra_state(self):
        return {"dense_from_rows": self.dense_from_rows}

    def set_extra_state(self, state):
        self.dense_from_rows = state.get("dense_from_rows")

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
        if self.dense_w is not None and x.numel() // self.in_features >= self.dense_from_rows:
            return torch.nn.functional.linear(x, self.dense_w, self.bias)
        args = [getattr(self, n) for n in _KERNEL]
        if torch.compiler.is_compiling():
            return spmm_csr(x, *args, self.bias, self.out_features)
        return spmm_csr_cpu(x, *args, self.bias, self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight_rowptr"] = self.rowptr.clone()
        destination[prefix + "weight_col"] = self.col.clone()
        destination[prefix + "weight_val"] = self.val.clone()
        destination[prefix + "_extra_state"] = self.get_extra_state()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = ["weight_rowptr", "weight_col", "weight_val"] + (
            ["bias"] if self.bias is not None else [])
        extra = prefix + "_extra_state"
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                               and "." not in k[len(prefix):] and k[len(prefix):] not in names
                               and k != extra)
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
        if extra in state_dict:
            self.set_extra_state(state_dict[extra])
        self.set_dense_fallback(self.dense_from_rows)

    @property
    def nbytes(self) -> int:
        """Bytes held: both kernel forms (CSR for many rows, ELL blocks for few), and the dense
        copy when it has one."""
        held = [getattr(self, n) for n in _KERNEL] + [self.dense_w]
        return sum(t.numel() * t.element_size() for t in held if t is not None) + (
            4 * self.out_features if self.bias is not None else 0)

    def describe(self) -> str:
        note = f"density {self.density:.3f}, kernel spmm_csr"
        if self.dense_w is not None:
            note += (f"; dense from {self.dense_from_rows} rows (slower than dense there; "
                     f"+{self.dense_w.numel() * 4 / 2**20:.1f} MiB dense copy)")
        return note

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, unstructured fp32, density {self.density:.3f}")
