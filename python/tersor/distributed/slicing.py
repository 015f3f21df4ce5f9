"""One rank's slice of a compressed layer, cut from its canonical form.

A shard is the packing of a slice of the canonical tensors (formats/*.py), so every kernel
serves it unchanged and a rank never holds more than its part:

    column-wise (dim 0, output features): rows [lo, hi) of every N-leading tensor
        (codes, scales, zero points, CSR / BSR rows); input-indexed tensors (the act-order
        permutation, the input scale) whole. A fused output (Phi-3's qkv_proj) is cut per
        segment: rank r takes its part of q, of k and of v.
    row-wise (dim 1, input features): columns [lo, hi) of every K-indexed tensor; per-output
        tensors (per-channel scales) whole. int4 cuts only between groups, 2:4 between groups
        of 4, block-sparse between kernel blocks; a cut elsewhere is refused with the reason.

        int4 with act-order: the stored columns run in GPTQ's order, so a range of *input*
        features is scattered over every group. The shard takes whole stored groups instead,
        columns [lo, hi) in stored order, and reads the inputs perm[lo:hi] of the whole row
        (``input_index``): its layer gathers x first (distributed/layers.py).

    int4 codes, K = 8, G = 4, 2 ranks, row-wise:
        weight_int4 [N, K/2]   | b0 b1 | b2 b3 |      rank 0: bytes [0, 2), groups [0, 1)
        weight_scale [N, K/G]  |  s0   |  s1   |      rank 1: bytes [2, 4), groups [1, 2)

`get(name)` returns the canonical tensor or anything sliced the same way (a safetensors
slice: only the rows / columns asked for are read from the file), or None when absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from tersor.formats import BlockFormat, CsrFormat, Int4Format, Int8Format, Sparse24Format
from tersor.formats.int4 import effective_group_size

COLWISE, ROWWISE = 0, 1


@dataclass
class Slice:
    state: dict  # canonical tensors of the shard (name -> tensor, no layer prefix)
    out_features: int
    in_features: int
    options: dict  # the shard format's options (act_order dropped when it was resolved)
    input_index: Optional[torch.Tensor] = None  # row-wise act-order: inputs the shard reads


def _shape(t) -> tuple:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t.get_shape())


def _whole(t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else t[:]


def _rows(t, ranges, div: int = 1) -> torch.Tensor:
    """Rows [lo / div, ceil(hi / div)) of every range, concatenated."""
    parts = [t[lo // div : -(-hi // div)] for lo, hi in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _cols(t, lo: int, hi: int, div: int = 1) -> torch.Tensor:
    return t[:, lo // div : -(-hi // div)]


def _total(ranges) -> int:
    return sum(hi - lo for lo, hi in ranges)


class SliceError(ValueError):
    pass


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise SliceError(msg)


def _check_full(get, name: str, dim: int, size: int, what: str) -> None:
    """The full tensor has the layer's size along the dim being cut (a slice of a wrong-shaped
    tensor could otherwise look right)."""
    t = get(name)
    _need(t is not None, f"{what}: tensor '{name}' is missing")
    shape = _shape(t)
    _need(
        len(shape) > dim and shape[dim] == size,
        f"{what}: '{name}' has shape {shape}, expected {size} along dim {dim}",
    )


def _int8(get, n, k, options, dim, ranges, what) -> Slice:
    """Int8Format: weight_int8 [N, K], weight_scale [N], input_scale [K]."""
    _check_full(get, "weight_int8", dim, (n, k)[dim], what)
    xs = get("input_scale") if options.get("input_scaled") else None
    if dim == COLWISE:
        state = {
            "weight_int8": _rows(get("weight_int8"), ranges),
            "weight_scale": _rows(get("weight_scale"), ranges),
        }
        if xs is not None:
            state["input_scale"] = _whole(xs)
        return Slice(state, _total(ranges), k, options)
    ((lo, hi),) = ranges
    state = {
        "weight_int8": _cols(get("weight_int8"), lo, hi),
        "weight_scale": _whole(get("weight_scale")),
    }
    if xs is not None:
        state["input_scale"] = xs[lo:hi]
    return Slice(state, n, hi - lo, options)


def _int4(get, n, k, options, dim, ranges, what) -> Slice:
    """Int4Format: weight_int4 [N, ceil(K/2)] nibbles, weight_scale / weight_zero [N, K/G],
    input_perm [K] (act-order), input_scale [K] (in input order)."""
    gs = options.get("group_size", 128)
    g = effective_group_size(k, gs, what)
    names = ["weight_int4", "weight_scale"] + ([] if options.get("symmetric") else ["weight_zero"])
    _check_full(get, "weight_int4", dim, (n, (k + 1) // 2)[dim], what)
    perm = _whole(get("input_perm")) if options.get("act_order") else None
    xs = _whole(get("input_scale")) if options.get("input_scaled") else None
    if dim == COLWISE:
        state = {name: _rows(get(name), ranges) for name in names}
        if perm is not None:
            state["input_perm"] = perm
        if xs is not None:
            state["input_scale"] = xs
        return Slice(state, _total(ranges), k, options)
    ((lo, hi),) = ranges
    _need(
        gs != -1 and g < k,
        f"{what}: one int4 group spans the whole input (group_size={gs}); it cannot be split "
        f"along K (shard it column-wise, or quantize with a group size)",
    )
    _need(
        lo % g == 0 and (hi % g == 0 or hi == k),
        f"{what}: a row-wise cut at inputs [{lo}, {hi}) would split an int4 group of {g}; "
        f"each rank's share of K={k} must be whole groups",
    )
    state = {"weight_int4": _cols(get("weight_int4"), lo, hi, 2)}
    for name in names[1:]:
        state[name] = _cols(get(name), lo, hi, g)
    opts = {key: v for key, v in options.items() if key != "act_order"}
    index = None
    if perm is not None:  # whole stored groups; the shard reads inputs perm[lo:hi]
        index = perm[lo:hi].clone()
    if xs is not None:
        state["input_scale"] = xs[index] if index is not None else xs[lo:hi]
    return Slice(state, n, hi - lo, opts, index)


def _sparse24(get, n, k, options, dim, ranges, what) -> Slice:
    """Sparse24Format: weight_values [N, K/2], weight_meta [N, K/4], weight_scale [N] (int8)."""
    _check_full(get, "weight_meta", dim, (n, (k + 3) // 4)[dim], what)
    int8 = options.get("int8", False)
    if dim == COLWISE:
        state = {name: _rows(get(name), ranges) for name in ("weight_values", "weight_meta")}
        if int8:
            state["weight_scale"] = _rows(get("weight_scale"), ranges)
        return Slice(state, _total(ranges), k, options)
    ((lo, hi),) = ranges
    _need(
        lo % 4 == 0 and (hi % 4 == 0 or hi == k),
        f"{what}: a row-wise cut at inputs [{lo}, {hi}) would split a 2:4 group; each rank's "
        f"share of K={k} must be a multiple of 4",
    )
    state = {  # a group of 4 inputs keeps 2 values: value columns [lo / 2, 2 ceil(hi / 4))
        "weight_values": get("weight_values")[:, lo // 2 : 2 * -(-hi // 4)],
        "weight_meta": _cols(get("weight_meta"), lo, hi, 4),
    }
    if int8:
        state["weight_scale"] = _whole(get("weight_scale"))
    return Slice(state, n, hi - lo, options)


def _compressed_rows(ptr, idx, vals, row_ranges) -> tuple:
    """(ptr, idx, vals) of the compressed rows [p0, p1) of each range, concatenated (CSR rows,
    BSR panels): each range's pointers rebased onto the ones before it."""
    ptrs, idxs, vs, base = [torch.zeros(1, dtype=torch.int64)], [], [], 0
    for p0, p1 in row_ranges:
        a, b = int(ptr[p0]), int(ptr[p1])
        ptrs.append(ptr[p0 + 1 : p1 + 1].to(torch.int64) - a + base)
        idxs.append(idx[a:b])
        vs.append(vals[a:b])
        base += b - a
    return torch.cat(ptrs), torch.cat(idxs), torch.cat(vs)


def _compressed_cols(ptr, idx, vals, rows: int, lo: int, hi: int) -> tuple:
    """(ptr, idx - lo, vals) of the entries whose column index lies in [lo, hi)."""
    keep = (idx >= lo) & (idx < hi)
    row = torch.repeat_interleave(torch.arange(rows), (ptr[1:] - ptr[:-1]).to(torch.int64))
    counts = torch.bincount(row[keep], minlength=rows)
    ptr2 = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return ptr2, (idx[keep] - lo).to(idx.dtype), vals[keep]


def _csr(get, n, k, options, dim, ranges, what) -> Slice:
    """CsrFormat: weight_rowptr [N + 1], weight_col / weight_val [nnz], weight_scale [N]."""
    rp, col, val = (_whole(get(x)) for x in ("weight_rowptr", "weight_col", "weight_val"))
    _need(
        tuple(rp.shape) == (n + 1,),
        f"{what}: weight_rowptr has {tuple(rp.shape)}, expected ({n + 1},)",
    )
    int8 = options.get("int8", False)
    scale = _whole(get("weight_scale")) if int8 else None
    extra = get("_extra_state")
    names = ("weight_rowptr", "weight_col", "weight_val")
    if dim == COLWISE:
        state = dict(zip(names, _compressed_rows(rp, col, val, ranges)))
        if int8:
            state["weight_scale"] = _rows(scale, ranges)
        n2, k2 = _total(ranges), k
    else:
        ((lo, hi),) = ranges
        state = dict(zip(names, _compressed_cols(rp, col, val, n, lo, hi)))
        if int8:
            state["weight_scale"] = scale
        n2, k2 = n, hi - lo
    if extra is not None:
        state["_extra_state"] = extra
    return Slice(state, n2, k2, options)


def _block(get, n, k, options, dim, ranges, what) -> Slice:
    """BlockFormat: torch BSR of [Np, Kp] with blocks (16, BK): weight_crow [Np/16 + 1],
    weight_col [blocks] (k / BK), weight_values [blocks, 16, BK], weight_scale [N] (int8)."""
    int8 = options.get("int8", False)
    bk = 4 if int8 else 1
    crow, col, vals = (_whole(get(x)) for x in ("weight_crow", "weight_col", "weight_values"))
    panels = -(-n // 16)
    _need(
        tuple(crow.shape) == (panels + 1,),
        f"{what}: weight_crow has {tuple(crow.shape)}, expected ({panels + 1},)",
    )
    scale = _whole(get("weight_scale")) if int8 else None
    names = ("weight_crow", "weight_col", "weight_values")
    if dim == COLWISE:
        for lo, hi in ranges:
            _need(
                lo % 16 == 0 and (hi % 16 == 0 or hi == n),
                f"{what}: a column-wise cut at outputs [{lo}, {hi}) would split a block of 16 "
                f"output channels; each rank's share must be a multiple of 16",
            )
        panels_of = [(lo // 16, -(-hi // 16)) for lo, hi in ranges]
        state = dict(zip(names, _compressed_rows(crow, col, vals, panels_of)))
        if int8:
            state["weight_scale"] = _rows(scale, ranges)
        return Slice(state, _total(ranges), k, options)
    ((lo, hi),) = ranges
    _need(
        lo % bk == 0 and (hi % bk == 0 or hi == k),
        f"{what}: a row-wise cut at inputs [{lo}, {hi}) would split a kernel block of {bk} "
        f"inputs; each rank's share of K={k} must be a multiple of {bk}",
    )
    state = dict(zip(names, _compressed_cols(crow, col, vals, panels, lo // bk, -(-hi // bk))))
    if int8:
        state["weight_scale"] = scale
    return Slice(state, n, hi - lo, options)


SLICERS: dict = {
    Int8Format: _int8,
    Int4Format: _int4,
    Sparse24Format: _sparse24,
    CsrFormat: _csr,
    BlockFormat: _block,
}


def slice_canonical(
    fmt_cls, options: dict, get: Callable, n: int, k: int, dim: int, ranges: list, what: str
) -> Slice:
    """The shard of a layer of format `fmt_cls` (options as the manifest / ``options()`` give
    them) of shape [n, k]: rows (dim 0) or columns (dim 1) `ranges` of its canonical form."""
    slicer = SLICERS.get(fmt_cls)
    if slicer is None:
        raise SliceError(f"{what}: {fmt_cls.__name__} layers cannot be sharded")
    size = (n, k)[dim]
    for lo, hi in ranges:
        _need(0 <= lo < hi <= size, f"{what}: range [{lo}, {hi}) outside 0..{size}")
    return slicer(get, n, k, dict(options), dim, ranges, what)


def slice_dense(weight, dim: int, ranges: list) -> torch.Tensor:
    """A dense Linear's weight [N, K] shard."""
    if dim == COLWISE:
        return _rows(weight, ranges).contiguous()
    ((lo, hi),) = ranges
    return weight[:, lo:hi].contiguous()
