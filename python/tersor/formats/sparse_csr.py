"""Unstructured sparse fp32 weights.

Canonical (state_dict) form, hardware-neutral CSR, one row per output channel::

    weight_rowptr  int64   [N + 1]
    weight_col     int32   [nnz]     k of each nonzero, ascending within a row
    weight_val     float32 [nnz]

Kernel forms (csrc/spmm_csr/spmm_csr.h) built once at conversion: the CSR itself (the
transposed-activation kernel for many rows) and ELL blocks for few rows::

    channels sorted by nonzero count (descending), 16 per block: perm[Np] int32
    block b: depth_b = its largest count; steps ell_off[b] .. ell_off[b+1]
      ell_val[step][16] float32, ell_col[step][16] uint16: lane c's j-th nonzero
      ell_cnt[16 b + c] uint16: how many steps lane c really has (the rest are masked)

Sorting by count keeps the lanes of a block busy (Sputnik's row reordering); K <= 65536.

int8 values ("unstructured+w8a8"): the same arrays with ``weight_val`` / ``ell_val`` int8
(symmetric per output channel, in [-127, 127]) and ``weight_scale`` float32 [N].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tersor.formats import huge_pages
from tersor.formats.base import (
    WeightFormat,
    bad_index_ptr,
    bad_scale,
    check_float_weight,
    dense_of_rows,
    row_blocks,
)
from tersor.ops._common import rows_window
from tersor.ops.gemm_w8a8 import cpu_runner_w8a8, linear_w8a8
from tersor.ops.spmm_csr import cpu_runner_csr, linear_csr

BLOCK_N = 16


@dataclass(frozen=True)
class PackedCsr:
    rowptr: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    ell_val: torch.Tensor
    ell_col: torch.Tensor
    ell_cnt: torch.Tensor
    ell_off: torch.Tensor
    perm: torch.Tensor
    out_features: int
    in_features: int

    @property
    def nnz(self) -> int:
        return int(self.rowptr[-1])


def kth_smallest(chunks, kth: int) -> float:
    """The kth smallest (1-based) of non-negative float32 values given as chunks (a callable
    returning an iterable of tensors, called once per pass), exact, in memory of one chunk: a
    radix select on the bit patterns (non-negative floats order like their int32 bits), 8
    bits per pass over the data. torch.kthvalue / topk over a whole weight copy it and add
    int64 indices (3x the weight and more)."""
    prefix = 0
    for shift in (24, 16, 8, 0):
        counts = torch.zeros(256, dtype=torch.int64)
        for c in chunks():
            b = c.reshape(-1).contiguous().view(torch.int32)
            if shift < 24:
                b = b[(b >> (shift + 8)) == (prefix >> (shift + 8))]
            counts += torch.bincount((b >> shift) & 0xFF, minlength=256)
        below = torch.cumsum(counts, 0)
        j = int(torch.searchsorted(below, torch.tensor(kth)))
        kth -= int(below[j - 1]) if j else 0
        prefix |= j << shift
    return float(torch.tensor([prefix], dtype=torch.int32).view(torch.float32))


def prune_unstructured_rows(weight: torch.Tensor, sparsity: float, score=None, what="layer"):
    """rows(r0, r1) -> float32 rows r0:r1 of `weight`, with the `sparsity` fraction of entries
    of smallest score over the whole layer zeroed: exactly that many (ties at the threshold go
    in row-major order). score: |w| by default, or e.g. Wanda's |w| * ||x||, as a tensor or as
    a rows callable like this one's. Nothing the size of the weight is ever built: the
    threshold is a radix select over row blocks, and each call computes its rows again (bf16 /
    fp16 weights widened a block at a time). NaN / Inf weights are refused, naming `what`,
    rather than pruned away."""
    w = weight.detach()
    n, k = w.shape
    drop = int(round(sparsity * w.numel()))
    blocks = row_blocks(n, k, multiple=1)

    def scores(r0, r1):  # score: None (|w|), a tensor like w, or rows(r0, r1) of one
        s = w[r0:r1] if score is None else score(r0, r1) if callable(score) else score[r0:r1]
        return s.detach().to(torch.float32).abs()

    def finite(wb, r0):
        if not bool(torch.isfinite(wb).all()):
            raise ValueError(f"{what}: weight holds NaN or Inf (rows from {r0}); cannot prune it")
        return wb

    if drop <= 0:
        return lambda r0, r1: finite(w[r0:r1].to(torch.float32), r0)
    thr = kth_smallest(lambda: (scores(r0, r1) for r0, r1 in blocks), drop)
    # of the entries equal to the threshold, the first `ties` (row-major) go too: each row
    # block's share, so that any block can be computed on its own
    ties = drop - sum(int((scores(r0, r1) < thr).sum()) for r0, r1 in blocks)
    tie_drop = {}
    for r0, r1 in blocks:
        tie_drop[r0] = min(ties, int((scores(r0, r1) == thr).sum()))
        ties -= tie_drop[r0]

    def rows(r0, r1):
        # any (r0, r1) within one of `blocks` (those are the ones callers use)
        b0 = max(b for b, _ in blocks if b <= r0)
        wb = finite(w[b0:r1].to(torch.float32), b0)
        sb = scores(b0, r1)
        keep = sb > thr
        if tie_drop[b0]:
            eq = (sb == thr).reshape(-1)
            keep |= (eq & (torch.cumsum(eq, 0) > tie_drop[b0])).view_as(sb)
        else:
            keep |= sb == thr
        return (wb * keep)[r0 - b0 :]

    return rows


def prune_unstructured(weight: torch.Tensor, sparsity: float, score=None) -> torch.Tensor:
    """The dense float32 weight prune_unstructured_rows describes (for tests and callers that
    want the pruned weight itself; layers are built from the rows, csr_from_rows)."""
    return dense_of_rows(*weight.shape, prune_unstructured_rows(weight, sparsity, score))


def csr_from_rows(n: int, k: int, rows):
    """(rowptr int64 [N + 1], col int32 [nnz], val float32 [nnz]) of the nonzeros of the
    float32 weight whose rows r0:r1 rows(r0, r1) computes (called twice per row block:
    count, then fill the arrays allocated at their final size). Neither a dense copy nor
    nonzero()'s int64 [nnz, 2] indices of a whole weight (4x its nonzeros) is ever made."""
    blocks = row_blocks(n, k, multiple=1)
    rowptr = torch.zeros(n + 1, dtype=torch.int64)
    for r0, r1 in blocks:
        rowptr[r0 + 1 : r1 + 1] = (rows(r0, r1) != 0).sum(1)
    rowptr = rowptr.cumsum(0)
    nnz = int(rowptr[-1])
    col = torch.empty(nnz, dtype=torch.int32)
    val = torch.empty(nnz, dtype=torch.float32)
    for r0, r1 in blocks:
        wb = rows(r0, r1)
        nz = wb != 0
        a, b = int(rowptr[r0]), int(rowptr[r1])
        col[a:b] = nz.nonzero()[:, 1]  # row-major: ascending k within a row
        val[a:b] = wb[nz]
    return rowptr, col, val


def to_csr(weight: torch.Tensor):
    """(rowptr int64 [N + 1], col int32 [nnz], val float32 [nnz]) of a weight's nonzeros."""
    w = weight.detach()
    return csr_from_rows(*w.shape, lambda r0, r1: w[r0:r1].to(torch.float32))


def csr_rows(rowptr, n: int, k: int):
    """(r0, r1, a, b, rows) over row blocks of a CSR matrix: rows r0:r1 hold nonzeros a:b,
    rows int64 [b - a] the row of each (the per-nonzero index temporaries of one block)."""
    counts = rowptr[1:] - rowptr[:-1]
    for r0, r1 in row_blocks(n, k, multiple=1):
        a, b = int(rowptr[r0]), int(rowptr[r1])
        yield r0, r1, a, b, torch.repeat_interleave(torch.arange(r0, r1), counts[r0:r1])


def from_csr(rowptr, col, val, n: int, k: int) -> torch.Tensor:
    """The dense [N, K] weight (val's dtype) of a CSR matrix."""
    w = torch.zeros(n, k, dtype=val.dtype)
    flat = w.view(-1)
    for _, _, a, b, rows in csr_rows(rowptr, n, k):
        flat[rows * k + col[a:b]] = val[a:b]
    return w


def pack_csr(rowptr, col, val, n: int, k: int) -> PackedCsr:
    if k > 65536:
        raise ValueError(f"unstructured sparse layers need in_features <= 65536, got {k}")
    counts = rowptr[1:] - rowptr[:-1]
    order = torch.argsort(counts, descending=True, stable=True)
    np_ = (n + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    perm = torch.full((np_,), n, dtype=torch.int32)
    perm[:n] = order.to(torch.int32)
    cnt = torch.zeros(np_, dtype=torch.int64)
    cnt[:n] = counts[order]
    depth = cnt.view(-1, BLOCK_N).amax(1)
    ell_off = torch.zeros(depth.numel() + 1, dtype=torch.int64)
    ell_off[1:] = depth.cumsum(0)
    steps = int(ell_off[-1])
    # nonzero i of channel ch (its j-th) lands at step ell_off[lane // 16] + j, lane lane % 16
    lane_of = torch.empty(n, dtype=torch.int64)
    lane_of[order] = torch.arange(n)
    # what one row streams (huge_pages.py); the CSR form serves more rows from the caches
    ell_val = huge_pages.empty((steps, BLOCK_N), val.dtype).zero_()
    # columns < 65536 stored through int16 (wrapping) and read as uint16: no int32 copy
    ell_col = huge_pages.empty((steps, BLOCK_N), torch.int16).zero_()
    for _, _, a, b, rows in csr_rows(rowptr, n, k):
        lane = lane_of[rows]
        step = ell_off[lane // BLOCK_N] + torch.arange(a, b) - rowptr[rows]
        at = step * BLOCK_N + lane % BLOCK_N
        ell_val.view(-1)[at] = val[a:b]
        ell_col.view(-1)[at] = col[a:b].to(torch.int16)
    return PackedCsr(
        rowptr.contiguous(),
        col.contiguous(),
        val.contiguous(),
        ell_val,
        ell_col.view(torch.uint16),
        cnt.to(torch.uint16).contiguous(),
        ell_off,
        perm,
        n,
        k,
    )


def int8_rows_window(k: int, density: float) -> tuple:
    """(dense_from_rows, sparse_from_rows) of an unstructured int8 layer of in_features k:
    the rows [dense_from, sparse_from) run the dense W8A8 kernel on a dense int8 copy, the rest
    the sparse kernel. Decided at conversion, for the ISA active then.
    - VNNI (AVX-512 / AMX machines): the sparse kernel wins at few rows only. Sparse time /
      dense (AMX) time, AMX Xeon (family 6 model 167), 2 threads, at 1 / 2 rows
      (`--family sparse90` / `sparse95 --m 1,2`), K x N:
                             90% zeros               95% zeros
        1536x384 2048x512    0.86 / 1.11  0.78 / 1.03  0.75 / 0.92  0.56 / 0.72
        1536x1536 2048x2048  0.66 / 1.03  0.55 / 0.87  0.46 / 0.65  0.31 / 0.43
        4096x4096            0.64 / 1.25               0.34 / 0.60
        384x1536             1.19 / 1.72               1.08 / 1.43
      so the dense copy from 2 rows below 95% zeros, from 4 (INT8_DENSE_FALLBACK_ROWS) above;
      from one row where an output keeps fewer than INT8_SPARSE_MIN_NONZEROS nonzeros (k x
      density: 38 / 19 at 384x1536, where the sparse kernel's cost per output outweighs the
      products) or the layer is below LARGE_M_BREAK_EVEN sparsity.
    - AVX2: the dense W8A8 kernel wins at few rows (Zen 3, 90% zeros: the sparse one
      0.63-0.97x at M = 1, 0.5-0.76x at 2) and loses from a few dozen, where the sparse one
      runs the fp32 kernels' FMAs on codes (1.16-1.72x at 32 rows, 1.31-1.80x at 128; 85%
      zeros: 1.38x / 1.27x): dense below INT8_AVX2_SPARSE_FROM_ROWS rows."""
    from tersor._backend import cpu_info
    from tersor.configs import (
        INT8_AVX2_SPARSE_FROM_ROWS,
        INT8_DENSE_FALLBACK_ROWS,
        INT8_SPARSE_MIN_NONZEROS,
        LARGE_M_BREAK_EVEN,
    )

    sparsity = 1 - density
    sparse_enough = sparsity >= LARGE_M_BREAK_EVEN
    if cpu_info()["active"] not in ("avx512", "amx"):
        return 1, (INT8_AVX2_SPARSE_FROM_ROWS if sparse_enough else None)
    if not sparse_enough or k * density < INT8_SPARSE_MIN_NONZEROS:
        return 1, None
    # (a pruned layer's zeros round: 0.1% slack on the sparsity)
    return next(r for s, r in INT8_DENSE_FALLBACK_ROWS.items() if sparsity + 1e-3 >= s), None


class CsrFormat(WeightFormat):
    """Unstructured sparse weights: fp32 values ("unstructured") or int8 values x dynamic int8
    activations ("unstructured+w8a8"), run by ``tersor::spmm_csr``.

    dense_from_rows: from this many rows on, run a dense copy of the weight instead (kept beside
    the sparse form: fp32 for F.linear, or the int8 weight packed for our dense W8A8 kernel, the
    same math) -- for layers too dense to beat dense GEMM at large M (configs.py).
    sparse_from_rows: from this many rows on, the sparse kernel again (the dense copy serves
    [dense_from_rows, sparse_from_rows) rows): int8 layers on CPUs without VNNI, where the dense
    W8A8 kernel wins at few rows and the sparse one from a few dozen (configs.py)."""

    widens_by_rows = True  # bf16 / fp16 weights: no whole fp32 copy

    optional_state_names = ("_extra_state",)

    def __init__(
        self, rowptr, col, val, n: int, k: int, scale=None, dense_from_rows=None,
        sparse_from_rows=None,
    ):  # fmt: skip
        super().__init__(n, k)
        self.int8 = scale is not None
        self.scheme = "unstructured+w8a8" if self.int8 else "unstructured"
        p = pack_csr(rowptr, col, val, n, k)
        self.rowptr, self.col, self.val = p.rowptr, p.col, p.val
        self.ell_val, self.ell_col, self.ell_cnt = p.ell_val, p.ell_col, p.ell_cnt
        self.ell_off, self.perm = p.ell_off, p.perm
        self.scale = None if scale is None else scale.to(torch.float32).contiguous()
        self.dense_from_rows = dense_from_rows
        self.sparse_from_rows = None if dense_from_rows is None else sparse_from_rows
        self.dense_w = self.dense_packed = self.dense_colsum = self.dense_scale = None
        if dense_from_rows is not None:
            if self.int8:
                from tersor.formats.int8 import pack_int8

                d = pack_int8(self._int8_dense(), self.scale)
                self.dense_packed, self.dense_colsum, self.dense_scale = d.packed, d.colsum, d.scale
            else:
                self.dense_w = self.dense_weight()
        self._finish()

    tensor_names = (
        "rowptr",
        "col",
        "val",
        "ell_val",
        "ell_col",
        "ell_cnt",
        "ell_off",
        "perm",
        "scale",
        "dense_w",
        "dense_packed",
        "dense_colsum",
        "dense_scale",
    )
    _KERNEL = tensor_names[:9]  # what tersor::spmm_csr takes
    streamed_names = ("ell_val", "ell_col")

    @classmethod
    def from_float(cls, weight, config=None, *, what="layer", score=None, dense_from_rows=None):
        """weight: the pruned weight to store (its zeros are skipped)."""
        w = weight.detach()
        check_float_weight(w, what, halves=True)  # to_csr widens a row block at a time
        return cls(*to_csr(w), *w.shape, dense_from_rows=dense_from_rows)

    @classmethod
    def empty(cls, out_features, in_features, int8=False, dense_from_rows=None):
        rp, col, val = to_csr(torch.zeros(out_features, in_features))
        return cls(
            rp,
            col,
            val.to(torch.int8) if int8 else val,
            out_features,
            in_features,
            torch.zeros(out_features) if int8 else None,
            dense_from_rows,
        )

    def options(self):
        return {"int8": True} if self.int8 else {}

    @property
    def density(self) -> float:
        return int(self.rowptr[-1]) / max(1, self.out_features * self.in_features)

    def _int8_dense(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        return from_csr(self.rowptr.cpu(), self.col.cpu(), self.val.cpu(), n, k)

    def dense_weight(self) -> torch.Tensor:
        w = from_csr(
            self.rowptr.cpu(),
            self.col.cpu(),
            self.val.cpu().to(torch.float32),
            self.out_features,
            self.in_features,
        )
        return w * self.scale.cpu()[:, None] if self.int8 else w

    def dequantize(self):
        """float32 [N, K] (int8: the dequantized values)."""
        return self.dense_weight()

    def with_int8_values(self, config, solved=None):
        """The same positions with int8 values: symmetric per output channel, rounded to
        nearest (quantize_per_channel_int8 of the dense weight, bit for bit, computed from
        the nonzeros alone), or `solved` = GPTQ's dense (q, scale) read at the positions."""
        from tersor.ops._common import QMAX

        n, k = self.out_features, self.in_features
        rp, col, val = self.rowptr.cpu(), self.col.cpu(), self.val.cpu()
        if self.int8:
            val = val.to(torch.float32) * self.scale.cpu().repeat_interleave(rp[1:] - rp[:-1])
        q = torch.empty(val.shape, dtype=torch.int8)
        if solved is None:
            amax = torch.zeros(n)  # a row's zeros count too: max |w| over the row, >= 0
            for _, _, a, b, rows in csr_rows(rp, n, k):
                amax.scatter_reduce_(0, rows, val[a:b].abs(), "amax")
            s = amax / QMAX
            safe = torch.where(s > 0, s, torch.ones_like(s))
            for _, _, a, b, rows in csr_rows(rp, n, k):
                q[a:b] = (val[a:b] / safe[rows]).round_().clamp_(-QMAX, QMAX)
        else:
            dense_q, s = solved
            for _, _, a, b, rows in csr_rows(rp, n, k):
                q[a:b] = dense_q.reshape(-1)[rows * k + col[a:b]]
        # The fp32 layer's positions stay (a value rounding to 0 too).
        return CsrFormat(rp, col, q, n, k, s, *int8_rows_window(k, self.density))

    def state_names(self):
        return ["weight_rowptr", "weight_col", "weight_val"] + (
            ["weight_scale"] if self.int8 else []
        )

    def state_dict(self):
        out = {
            "weight_rowptr": self.rowptr.cpu().clone(),
            "weight_col": self.col.cpu().clone(),
            "weight_val": self.val.cpu().clone(),
        }
        if self.int8:
            out["weight_scale"] = self.scale.cpu().clone()
        out["_extra_state"] = {
            "dense_from_rows": self.dense_from_rows,
            "sparse_from_rows": self.sparse_from_rows,
        }
        return out

    def load_state(self, get, prefix):
        rp, col, val = get("weight_rowptr"), get("weight_col"), get("weight_val")
        n, k = self.out_features, self.in_features
        err = bad_index_ptr(prefix, "weight_rowptr", rp, n)
        if err:
            return err
        if col.dtype not in (torch.int32, torch.int64) or (
            not self.int8 and not val.is_floating_point()
        ):
            return (
                f"{prefix}weight_col/val: expected integer columns and float values, got "
                f"{col.dtype} / {val.dtype}"
            )
        nnz = int(rp[-1])
        if (
            col.dim() != 1
            or val.dim() != 1
            or col.numel() != nnz
            or val.numel() != nnz
            or (nnz > 0 and (int(col.min()) < 0 or int(col.max()) >= k))
        ):
            return f"{prefix}weight_rowptr/col/val: not a CSR matrix of shape {(n, k)}"
        scale = None
        if self.int8:
            scale = get("weight_scale")
            if (
                val.dtype != torch.int8
                or scale.dtype != torch.float32
                or scale.shape != (n,)
                or (nnz > 0 and int(val.min()) < -127)
                or bad_scale(prefix, "weight_scale", scale)
            ):
                return (
                    f"{prefix}weight_val/weight_scale: expected int8 values in [-127, 127] "
                    f"and a float32 scale [{n}]"
                )
            scale = scale.cpu()
        else:
            val = val.to(torch.float32)
        extra = get("_extra_state")
        rows = self.dense_from_rows if extra is None else extra.get("dense_from_rows")
        back = self.sparse_from_rows if extra is None else extra.get("sparse_from_rows")
        for name, v in (("dense_from_rows", rows), ("sparse_from_rows", back)):
            if v is not None and (type(v) is not int or v < 1):
                return f"{prefix}_extra_state: {name} must be None or a positive int, got {v!r}"
        device = self.device
        self.__init__(
            rp.cpu().to(torch.int64), col.cpu().to(torch.int32), val.cpu(), n, k, scale, rows, back
        )
        self._apply(lambda t: t.to(device))
        return None

    def describe(self):
        note = f"density {self.density:.3f}, kernel spmm_csr{'_w8a8' if self.int8 else ''}"
        if self.dense_from_rows is not None:
            extra = sum(
                t.numel() * t.element_size()
                for t in (self.dense_w, self.dense_packed, self.dense_colsum, self.dense_scale)
                if t is not None
            )
            upto = "" if self.sparse_from_rows is None else f" to {self.sparse_from_rows - 1}"
            note += (
                f"; dense {'W8A8' if self.int8 else 'fp32'} from {self.dense_from_rows}{upto} "
                f"rows (the sparse kernel loses there; +{extra / 2**20:.1f} MiB copy)"
            )
        return note

    def cpu_runner(self):
        generic = super().cpu_runner()
        n, k = self.out_features, self.in_features
        arrays = [getattr(self, t) for t in self._KERNEL[:8]]
        if self.int8:
            # both kernels' lean calls (the generic call costs ~7 us more: a 384x1536 layer at
            # one row took 41 us against 34), the dense copy's rows to the dense W8A8 kernel
            sparse = cpu_runner_csr(arrays, n, k, None, generic, self.scale)
            if self.dense_from_rows is None:
                return sparse
            dense = cpu_runner_w8a8(self.dense_packed, self.dense_colsum, self.dense_scale, n, k)
            if self.dense_from_rows <= 1 and self.sparse_from_rows is None:
                return dense  # every row (rows_window would only add its checks)
            return rows_window(sparse, dense, k, self.dense_from_rows, self.sparse_from_rows)
        return cpu_runner_csr(arrays, n, k, self.dense_from_rows, generic)

    def _dense_for(self, x) -> bool:
        """Whether x's rows take the dense copy (dense_from_rows <= rows < sparse_from_rows)."""
        if self.dense_from_rows is None:
            return False
        rows = x.numel() // max(x.shape[-1], 1)
        back = self.sparse_from_rows
        return rows >= self.dense_from_rows and (back is None or rows < back)

    def linear(self, x, bias, kernel, row_amax=None):
        n = self.out_features
        if self._dense_for(x):
            if self.int8:
                d = (self.dense_packed, self.dense_colsum, self.dense_scale)
                return linear_w8a8(x, *d, bias, n, kernel, None, row_amax)
            return torch.nn.functional.linear(x, self.dense_w.to(x.dtype), bias)
        return linear_csr(x, *(getattr(self, t) for t in self._KERNEL), bias, n, kernel, row_amax)
