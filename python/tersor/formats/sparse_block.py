"""Block-sparse weights: blocks of 16 output channels x BK consecutive k, the unit one vector
instruction consumes (csrc/spmm_block/spmm_block.h).

    fp32: BK = 1, a block is 16 channels at one k = one zmm of W^T: one broadcast + one FMA per
          row, the dense GEMM's own inner step, so the kernel keeps dense efficiency per
          stored block (measured: see SparseConfig).
    int8: BK = 4, a block is one W8Tile (16 channels x 4 k, one VNNI lane per channel).

Pruning may use any block shape (r, c) dividing the layer; the packed form keeps every kernel
block holding a nonzero, so (16, 1) pruning fills fp32 kernel blocks exactly and (16, 4) int8
ones (a finer shape keeps partly-zero kernel blocks: still exact, less sparse in work).

Canonical (state_dict) form: torch's BSR of the weight zero-padded to Np x Kp with blocksize
(16, BK) (``torch.sparse_bsr_tensor(crow, col, values)`` rebuilds it)::

    weight_crow    int64   [Np/16 + 1]    kept blocks of panel p: crow[p] .. crow[p+1]-1
    weight_col     int32   [blocks]       block column (k / BK), ascending within a panel
    weight_values  float32 [blocks, 16, 1]   or int8 [blocks, 16, 4]
    weight_scale   float32 [N]            (int8 only; symmetric per output channel)

Kernel form: the same arrays (col as uint16, values as [blocks][16] fp32 or W8Tile)::

    panel p:  | blk kidx[crow[p]]  | blk kidx[crow[p]+1] | ...      one blk = 16 lanes x BK
              | c0 .. c15 (x BK)   | c0 .. c15 (x BK)    |          64 bytes fp32 or int8
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from tersor.formats import huge_pages
from tersor.formats.base import (
    CHUNK_ELEMENTS,
    WeightFormat,
    bad_index_ptr,
    bad_scale,
    check_float_weight,
    dense_of_rows,
    expect,
    row_blocks,
    row_sums_int32,
)
from tersor.ops.spmm_block import linear_block

BLOCK_N = 16
KERNEL_BK = {"fp32": 1, "int8": 4}


@dataclass(frozen=True)
class PackedBlock:
    ptr: torch.Tensor  # int64 [Np/16 + 1]
    kidx: torch.Tensor  # uint16 [blocks]
    values: torch.Tensor  # float32 [blocks, 16] or int8 [blocks, 16, 4]
    colsum: Optional[torch.Tensor]  # int32 [Np] (int8)
    scale: Optional[torch.Tensor]  # float32 [Np] (int8)
    out_features: int
    in_features: int

    @property
    def blocks(self) -> int:
        return self.kidx.numel()

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.ptr, self.kidx, self.values, self.colsum, self.scale)
            if t is not None
        )


def check_block(block, n: int, k: int, what: str = "layer") -> tuple:
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(isinstance(v, int) and v > 0 for v in block)
    ):
        raise ValueError(
            f"{what}: block must be a pair of positive ints (rows, cols), got {block!r}"
        )
    r, c = block
    if n % r or k % c:
        raise ValueError(
            f"{what}: block {tuple(block)} does not divide the weight [{n}, {k}] "
            f"(out_features % {r} = {n % r}, in_features % {c} = {k % c})"
        )
    return r, c


def _rows_of(t) -> callable:
    """rows(r0, r1) of a tensor, or the callable itself (a row source computed on demand)."""
    return t if callable(t) else lambda r0, r1: t[r0:r1]


def block_scores(weight: torch.Tensor, block, score=None) -> torch.Tensor:
    """[N/r, K/c] sum of |w| (or of the given score: a tensor like w, or rows(r0, r1) of one)
    over each block, a row block at a time (no |w| copy of a whole weight)."""
    r, c = block
    n, k = weight.shape
    rows = _rows_of(weight.detach() if score is None else score)
    out = torch.empty(n // r, k // c)
    for r0, r1 in row_blocks(n, k, multiple=r):
        sb = rows(r0, r1).detach().to(torch.float32).abs()
        out[r0 // r : r1 // r] = sb.view((r1 - r0) // r, r, k // c, c).sum((1, 3))
    return out


def block_keep_rows(weight: torch.Tensor, block, keep_blocks: torch.Tensor):
    """rows(r0, r1) -> float32 rows of the pruned weight: blocks where keep_blocks [N/r, K/c]
    is False zeroed (computed on demand, never the whole pruned weight)."""
    r, c = block
    w = weight.detach()

    def rows(r0, r1):
        mask = keep_blocks[torch.arange(r0, r1) // r].repeat_interleave(c, dim=1)
        return w[r0:r1].to(torch.float32) * mask

    return rows


def prune_block_rows(weight, sparsity: float, block, score=None, what: str = "layer"):
    """rows(r0, r1) of the weight with the `sparsity` fraction of (r, c) blocks of smallest
    summed score zeroed."""
    from tersor.formats.sparse_csr import kth_smallest

    check_block(block, *weight.shape, what)
    s = block_scores(weight, block, score).flatten()
    drop = int(round(sparsity * s.numel()))
    keep = torch.ones_like(s, dtype=torch.bool)
    if drop > 0:
        # exact threshold by radix select (topk's values, int64 indices and sort buffers are
        # ~10x the scores), ties at it dropped in row-major order, a chunk at a time
        chunks = lambda: s.split(CHUNK_ELEMENTS)  # noqa: E731
        thr = kth_smallest(chunks, drop)
        ties = drop - sum(int((c < thr).sum()) for c in chunks())
        for c, kc in zip(chunks(), keep.split(CHUNK_ELEMENTS)):
            eq = c == thr
            kc.copy_((c > thr) | (eq & (torch.cumsum(eq, 0) > ties)))
            ties = max(0, ties - int(eq.sum()))
    return block_keep_rows(weight, block, keep.view(weight.shape[0] // block[0], -1))


def prune_block(weight, sparsity: float, block, score=None, what: str = "layer"):
    """The dense float32 weight prune_block_rows describes."""
    rows = prune_block_rows(weight, sparsity, block, score, what)
    return dense_of_rows(*weight.shape, rows)


def _blocks(n: int, k: int, rows, bk: int, dtype):
    """(ptr, kidx int32, tiles [blocks, 16, bk]) of the nonzero 16 x bk kernel blocks of the
    weight rows(r0, r1) computes, panels in order and k ascending within a panel: two passes
    over 16-row-aligned row blocks (count, then fill arrays of their final size)."""
    panels, kb = -(-n // BLOCK_N), -(-k // bk)
    blocks = row_blocks(n, k, BLOCK_N)

    def tiles(r0, r1):  # [P, KB, 16, bk] of rows r0:r1 (r0 a panel start), zero-padded
        wb = rows(r0, r1).to(dtype)
        p = -(-(r1 - r0) // BLOCK_N)
        wp = torch.zeros(p * BLOCK_N, kb * bk, dtype=dtype)
        wp[: r1 - r0, :k] = wb
        t = wp.view(p, BLOCK_N, kb, bk).permute(0, 2, 1, 3)
        return t, (t != 0).flatten(2).any(2)

    ptr = torch.zeros(panels + 1, dtype=torch.int64)
    for r0, r1 in blocks:
        _, nz = tiles(r0, r1)
        p0 = r0 // BLOCK_N
        ptr[p0 + 1 : p0 + 1 + nz.shape[0]] = nz.sum(1)
    ptr = ptr.cumsum(0)
    kidx = torch.empty(int(ptr[-1]), dtype=torch.int32)
    vals = huge_pages.empty((int(ptr[-1]), BLOCK_N, bk), dtype)
    for r0, r1 in blocks:
        t, nz = tiles(r0, r1)
        p, kk = nz.nonzero(as_tuple=True)  # row-major: panels in order, k ascending
        a, b = int(ptr[r0 // BLOCK_N]), int(ptr[r0 // BLOCK_N + nz.shape[0]])
        kidx[a:b], vals[a:b] = kk, t[p, kk]
    return ptr, kidx, vals


def pack_block_f32(weight) -> PackedBlock:
    """A (pruned) float weight [N, K] (or a row source: (n, k, rows)) -> fp32 kernel blocks
    (16 x 1)."""
    n, k, rows = weight if isinstance(weight, tuple) else (*weight.shape, _rows_of(weight))
    if k > 65536:
        raise ValueError(f"block-sparse layers need in_features <= 65536, got {k}")
    ptr, kb, vals = _blocks(n, k, rows, KERNEL_BK["fp32"], torch.float32)
    return PackedBlock(ptr, kb.to(torch.uint16), vals.view(-1, BLOCK_N), None, None, n, k)


def pack_block_int8(q: torch.Tensor, scale: torch.Tensor) -> PackedBlock:
    """int8 weight [N, K] (values in [-127, 127]) + scale [N] -> int8 kernel blocks (16 x 4)."""
    n, k = q.shape
    if k > 65536:
        raise ValueError(f"block-sparse layers need in_features <= 65536, got {k}")
    ptr, kb, vals = _blocks(n, k, _rows_of(q), KERNEL_BK["int8"], torch.int8)
    np_ = ptr.numel() * BLOCK_N - BLOCK_N
    colsum = torch.zeros(np_, dtype=torch.int32)
    colsum[:n] = row_sums_int32(q)
    s = torch.zeros(np_)
    s[:n] = scale
    return PackedBlock(ptr, kb.to(torch.uint16), vals, colsum, s, n, k)


def unpack_block(ptr, kidx, values, n: int, k: int, r0: int = 0, r1=None) -> torch.Tensor:
    """Kernel blocks -> the dense weight rows r0:r1 (r0 a multiple of 16; default all) [.., K]
    in the values' dtype."""
    r1 = n if r1 is None else r1
    bk = 1 if values.dim() == 2 else values.shape[2]
    p0, p1 = r0 // BLOCK_N, -(-r1 // BLOCK_N)
    a, b = int(ptr[p0]), int(ptr[p1])
    kp = -(-k // bk) * bk
    dense = torch.zeros(p1 - p0, kp // bk, BLOCK_N, bk, dtype=values.dtype)
    p = torch.repeat_interleave(torch.arange(p1 - p0), ptr[p0 + 1 : p1 + 1] - ptr[p0:p1])
    dense[p, kidx[a:b].to(torch.int64)] = values[a:b].view(-1, BLOCK_N, bk)
    out = dense.permute(0, 2, 1, 3).reshape((p1 - p0) * BLOCK_N, kp)
    return out[: r1 - r0, :k].contiguous()


class BlockFormat(WeightFormat):
    """Block-sparse weights: fp32 16 x 1 blocks ("block") or int8 16 x 4 blocks with
    per-channel scales x dynamic int8 activations ("block+w8a8"), run by
    ``tersor::spmm_block``."""

    tensor_names = ("bptr", "kidx", "values", "colsum", "scale")

    widens_by_rows = True  # bf16 / fp16 weights: no whole fp32 copy

    def __init__(self, weight, scale: Optional[torch.Tensor] = None):
        """weight: the pruned float weight [N, K] or a row source (n, k, rows(r0, r1)) (fp32
        blocks), or int8 codes with their per-channel scale (int8 blocks); zero kernel blocks
        are skipped."""
        super().__init__(*(weight[:2] if isinstance(weight, tuple) else weight.shape))
        self.int8 = scale is not None
        self.scheme = "block+w8a8" if self.int8 else "block"
        p = pack_block_int8(weight, scale) if self.int8 else pack_block_f32(weight)
        self.bptr, self.kidx, self.values = p.ptr, p.kidx, p.values
        self.colsum, self.scale = p.colsum, p.scale
        self._finish()

    @classmethod
    def from_float(cls, weight, config=None, *, what="layer", score=None):
        """weight: the pruned weight, or a row source (n, k, rows(r0, r1)) of one (sparsify_
        prunes; zeros become skipped blocks)."""
        if isinstance(weight, tuple):
            return cls(weight)
        w = weight.detach()
        check_float_weight(w, what, halves=True)
        return cls((*w.shape, lambda r0, r1: w[r0:r1].to(torch.float32)))

    @classmethod
    def empty(cls, out_features, in_features, int8=False):
        zero = torch.zeros(out_features, in_features)
        return cls(zero.to(torch.int8), torch.zeros(out_features)) if int8 else cls(zero)

    def options(self):
        return {"int8": True} if self.int8 else {}

    @property
    def bk(self) -> int:
        return KERNEL_BK["int8" if self.int8 else "fp32"]

    @property
    def density(self) -> float:
        """Fraction of kernel blocks kept (the work done relative to dense)."""
        total = (self.bptr.numel() - 1) * -(-self.in_features // self.bk)
        return self.kidx.numel() / max(1, total)

    def dequantize(self, r0: int = 0, r1=None):
        """float32 [N, K] (int8: the dequantized values); rows r0:r1 only (r0 a multiple of
        16) when given."""
        n, k = self.out_features, self.in_features
        r1 = n if r1 is None else r1
        w = unpack_block(self.bptr.cpu(), self.kidx.cpu(), self.values.cpu(), n, k, r0, r1)
        if self.int8:
            return w.to(torch.float32) * self.scale.cpu()[r0:r1, None]
        return w

    def with_int8_values(self, config, solved=None):
        """Per-channel int8 of the kept weights, re-blocked into 16 x 4 kernel blocks: a row
        block at a time (rows are quantized on their own)."""
        from tersor.formats.int8 import quantize_per_channel_int8

        if solved is not None:
            return BlockFormat(*solved)
        n, k = self.out_features, self.in_features
        q, scale = torch.empty(n, k, dtype=torch.int8), torch.empty(n)
        for r0, r1 in row_blocks(n, k, BLOCK_N):
            q[r0:r1], scale[r0:r1] = quantize_per_channel_int8(self.dequantize(r0, r1))
        return BlockFormat(q, scale)

    def describe(self):
        nz = int(self.values.count_nonzero())  # a bool sum widens to int64: 2x the values
        return (
            f"density {nz / max(1, self.out_features * self.in_features):.3f}, kernel "
            f"blocks (16, {self.bk}) kept {self.density:.3f}, kernel spmm_block "
            f"{'int8' if self.int8 else 'fp32'}"
        )

    def state_names(self):
        return ["weight_crow", "weight_col", "weight_values"] + (
            ["weight_scale"] if self.int8 else []
        )

    def state_dict(self):
        out = {
            "weight_crow": self.bptr.cpu().clone(),
            "weight_col": self.kidx.cpu().to(torch.int32),
            "weight_values": self.values.cpu().reshape(-1, 16, self.bk).clone(),
        }
        if self.int8:
            out["weight_scale"] = self.scale.cpu()[: self.out_features].clone()
        return out

    def load_state(self, get, prefix):
        crow, col, vals = get("weight_crow"), get("weight_col"), get("weight_values")
        panels, kb = -(-self.out_features // 16), -(-self.in_features // self.bk)
        err = bad_index_ptr(prefix, "weight_crow", crow, panels)
        if err:
            return err
        nb = int(crow[-1])
        if (
            col.dtype not in (torch.int32, torch.int64)
            or col.dim() != 1
            or col.numel() != nb
            or tuple(vals.shape) != (nb, 16, self.bk)
            or (nb > 0 and (int(col.min()) < 0 or int(col.max()) >= kb))
        ):
            return (
                f"{prefix}weight_crow/col/values: not a BSR matrix of {panels} x {kb} "
                f"blocks of (16, {self.bk})"
            )
        w = unpack_block(
            crow.cpu(),
            col.cpu(),
            vals.cpu().to(torch.int8 if self.int8 else torch.float32),
            self.out_features,
            self.in_features,
        )
        scale = None
        if self.int8:
            scale = get("weight_scale")
            err = expect(prefix, "weight_scale", scale, torch.float32, (self.out_features,))
            err = err or bad_scale(prefix, "weight_scale", scale)
            if err:
                return err
            if vals.dtype != torch.int8 or (nb > 0 and int(vals.min()) < -127):
                return f"{prefix}weight_values: expected int8 values in [-127, 127]"
            scale = scale.cpu()
        device = self.device
        self.__init__(w, scale)
        self._apply(lambda t: t.to(device))
        return None

    def linear(self, x, bias, kernel, row_amax=None):
        return linear_block(
            x,
            self.bptr,
            self.kidx,
            self.values,
            self.colsum,
            self.scale,
            bias,
            self.out_features,
            kernel,
            row_amax,
        )
