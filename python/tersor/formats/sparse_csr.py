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


def prune_unstructured(weight: torch.Tensor, sparsity: float, score=None) -> torch.Tensor:
    """Zero the `sparsity` fraction of entries with the smallest score (|w| by default, or
    e.g. Wanda's |w| * ||x||) over the whole layer."""
    w = weight.detach().to(torch.float32)
    s = (w.abs() if score is None else score.detach().to(torch.float32).abs()).flatten()
    drop = int(round(sparsity * s.numel()))
    if drop <= 0:
        return w.clone()
    keep = torch.ones_like(s, dtype=torch.bool)
    keep[torch.topk(s, drop, largest=False).indices] = False
    return (w.flatten() * keep).view_as(w)


def to_csr(weight: torch.Tensor):
    w = weight.detach().to(torch.float32)
    nz = w != 0
    rowptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
    rowptr[1:] = nz.sum(1).cumsum(0)
    col = nz.nonzero()[:, 1].to(torch.int32)  # row-major: ascending k within a row
    return rowptr, col.contiguous(), w[nz].contiguous()


def from_csr(rowptr, col, val, n: int, k: int) -> torch.Tensor:
    w = torch.zeros(n, k)
    rows = torch.repeat_interleave(torch.arange(n), rowptr[1:] - rowptr[:-1])
    w[rows, col.to(torch.int64)] = val
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
    rows = torch.repeat_interleave(torch.arange(n), counts)
    lane = lane_of[rows]
    step = ell_off[lane // BLOCK_N] + torch.arange(rows.numel()) - rowptr[rows]
    ell_val = torch.zeros(steps, BLOCK_N, dtype=val.dtype)
    ell_col = torch.zeros(steps, BLOCK_N, dtype=torch.int32)
    ell_val[step, lane % BLOCK_N] = val
    ell_col[step, lane % BLOCK_N] = col
    return PackedCsr(rowptr.contiguous(), col.contiguous(), val.contiguous(),
                     ell_val.contiguous(), ell_col.to(torch.uint16).contiguous(),
                     cnt.to(torch.uint16).contiguous(), ell_off, perm, n, k)
