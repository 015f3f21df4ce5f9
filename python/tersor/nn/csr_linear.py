"""CsrLinear: nn.Linear with an unstructured sparse weight (formats/sparse_csr.py), fp32 values
("unstructured") or int8 values x per-row int8 activations ("unstructured+w8a8"), run by the
``tersor::spmm_csr`` kernels; state_dict holds the canonical CSR arrays (+ weight_scale)."""
from __future__ import annotations

import torch
from torch import nn

from tersor.formats import sparse_csr as fc
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8
from tersor.nn._common import check_float_weight
from tersor.ops.gemm_w8a8 import gemm_w8a8, gemm_w8a8_cpu
from tersor.ops.spmm_csr import spmm_csr, spmm_csr_cpu

SCHEMES = ("unstructured", "unstructured+w8a8")

_KERNEL = ("rowptr", "col", "val", "ell_val", "ell_col", "ell_cnt", "ell_off", "perm")


class CsrLinear(nn.Module):
    """y = x W^T + b, W unstructured sparse. x: float32 [..., in_features] on the CPU."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, name: str = "",
                 scheme: str = "unstructured"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"CsrLinear: scheme must be one of {SCHEMES}, got {scheme!r}")
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.scheme, self.int8 = scheme, scheme == "unstructured+w8a8"
        rp, col, val = fc.to_csr(torch.zeros(out_features, in_features))
        self._pack(rp, col, val.to(torch.int8) if self.int8 else val,
                   torch.zeros(out_features) if self.int8 else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.dense_from_rows, self._dense_int8 = None, None
        self.register_buffer("dense_w", None, persistent=False)

    def _pack(self, rowptr, col, val, scale=None):
        p = fc.pack_csr(rowptr, col, val, self.out_features, self.in_features)
        for name in _KERNEL:  # sizes depend on the nonzeros: replace, do not copy into
            self.register_buffer(name, getattr(p, name), persistent=False)
        self.register_buffer("scale", scale, persistent=False)

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

    def quantized(self, config) -> "CsrLinear":
        """The "unstructured+w8a8" layer of this fp32 one (sparsify_ then
        quantize_(W8A8Config())): per-channel int8 of the kept weights, same zeros."""
        m = CsrLinear(self.in_features, self.out_features, self.bias is not None, self.name,
                      scheme="unstructured+w8a8")
        w = self.dense_weight()
        q, s = quantize_per_channel_int8(w)
        # the fp32 layer's positions, row-major like its CSR (a value rounding to 0 stays)
        m._pack(self.rowptr, self.col, q[w != 0], s)
        if self.bias is not None:
            m.bias.copy_(self.bias)
        from tersor._backend import cpu_info
        from tersor.configs import INT8_DENSE_FALLBACK_ROWS, LARGE_M_BREAK_EVEN

        # Decided at conversion, for the ISA active then: the sparse int8 kernel only wins with
        # VNNI (AVX-512 / AMX machines); on AVX2 it lost at every M (Zen 3, 90% zeros, M = 1:
        # 0.28x our dense W8A8).
        vnni = cpu_info()["active"] in ("avx512", "amx")
        m.set_dense_fallback(INT8_DENSE_FALLBACK_ROWS
                             if vnni and 1 - m.density >= LARGE_M_BREAK_EVEN else 1)
        return m

    def set_dense_fallback(self, rows) -> None:
        """Run a dense copy of the weight from `rows` rows on (None: always sparse). An int8
        layer's copy is the same int8 weight packed for the dense W8A8 kernel: same math."""
        self.dense_from_rows = rows
        dense = None
        if rows is not None:
            dense = pack_int8(self._int8_dense(), self.scale) if self.int8 else self.dense_weight()
        self.register_buffer("dense_w", dense if not self.int8 else None, persistent=False)
        self._dense_int8 = dense if self.int8 else None  # PackedInt8 (CPU only, not a buffer)

    def _int8_dense(self) -> torch.Tensor:
        return fc.from_csr(self.rowptr, self.col, self.val.to(torch.float32), self.out_features,
                           self.in_features).to(torch.int8)

    def get_extra_state(self):
        return {"dense_from_rows": self.dense_from_rows}

    def set_extra_state(self, state):
        self.dense_from_rows = state.get("dense_from_rows")

    @property
    def density(self) -> float:
        return int(self.rowptr[-1]) / max(1, self.out_features * self.in_features)

    def dense_weight(self) -> torch.Tensor:
        """float32 [N, K] (int8: the dequantized values)."""
        w = fc.from_csr(self.rowptr, self.col, self.val.to(torch.float32), self.out_features,
                        self.in_features)
        return w * self.scale[:, None] if self.int8 else w

    dequantized_weight = dense_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        what = f"layer '{self.name}' ({self.scheme})" if self.name else f"CsrLinear ({self.scheme})"
        if x.dtype is not torch.float32:
            raise TypeError(f"{what}: expected a float32 input, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{what}: expected input [..., {self.in_features}], got "
                             f"{tuple(x.shape)}")
        if self.dense_from_rows is not None and x.numel() // self.in_features >= self.dense_from_rows:
            if self.int8:
                d = self._dense_int8
                fn = gemm_w8a8 if torch.compiler.is_compiling() else gemm_w8a8_cpu
                return fn(x, d.packed, d.colsum, d.scale, self.bias, self.out_features)
            return torch.nn.functional.linear(x, self.dense_w, self.bias)
        args = [getattr(self, n) for n in _KERNEL]
        if torch.compiler.is_compiling():
            return spmm_csr(x, *args, self.scale, self.bias, self.out_features)
        return spmm_csr_cpu(x, *args, self.scale, self.bias, self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight_rowptr"] = self.rowptr.clone()
        destination[prefix + "weight_col"] = self.col.clone()
        destination[prefix + "weight_val"] = self.val.clone()
        if self.int8:
            destination[prefix + "weight_scale"] = self.scale.clone()
        destination[prefix + "_extra_state"] = self.get_extra_state()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = (["weight_rowptr", "weight_col", "weight_val"]
                 + (["weight_scale"] if self.int8 else [])
                 + (["bias"] if self.bias is not None else []))
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
        if self.int8:
            scale = state_dict[prefix + "weight_scale"]
            if val.dtype != torch.int8 or scale.shape != (n,) or (nnz > 0 and int(val.min()) < -127):
                error_msgs.append(f"{prefix}weight_val/weight_scale: expected int8 values in "
                                  f"[-127, 127] and a float32 scale [{n}]")
                return
            self._pack(rp.to(torch.int64), col.to(torch.int32), val, scale.to(torch.float32))
        else:
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
        held = [getattr(self, n) for n in _KERNEL] + [self.scale] + self._dense_tensors()
        return sum(t.numel() * t.element_size() for t in held if t is not None) + (
            4 * self.out_features if self.bias is not None else 0)

    def _dense_tensors(self) -> list:
        if self.int8:
            d = self._dense_int8
            return [] if d is None else [d.packed, d.colsum, d.scale]
        return [self.dense_w]

    def describe(self) -> str:
        note = f"density {self.density:.3f}, kernel spmm_csr{'_w8a8' if self.int8 else ''}"
        if self.dense_from_rows is not None:
            extra = sum(t.numel() * t.element_size() for t in self._dense_tensors())
            note += (f"; dense {'W8A8' if self.int8 else 'fp32'} from {self.dense_from_rows} "
                     f"rows (the sparse kernel loses there; +{extra / 2**20:.1f} MiB copy)")
        return note

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.scheme}, density {self.density:.3f}")
