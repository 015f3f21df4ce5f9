"""How sparsify_ decides what to zero: scores (magnitude, or Wanda's activation-aware
|w| * ||x_k|| from a calibration batch), per-layer or global thresholds, and the pruners of
each format (formats/sparse24.py, sparse_csr.py, sparse_block.py)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tersor.calibration import data
from tersor.formats.base import check_float_weight, row_blocks
from tersor.formats.sparse_block import block_keep_rows, block_scores, check_block, prune_block_rows
from tersor.formats.sparse_csr import kth_smallest, prune_unstructured_rows


def input_norms(model: nn.Module, layers: list, calibration) -> dict:
    """Run `calibration` through `model` once and return {id(layer): ||x_k||_2 per input
    feature}, the Wanda statistic, for every nn.Linear / nn.Conv2d in `layers`.

    calibration: a tensor (model(t)), a tuple (model(*args)), a dict (model(**kw)), a list of
    such batches, a DataLoader, or a callable run as calibration(model) (e.g.
    lambda m: m.encode(texts) for a wrapper model): tersor/calibration/data.py.
    For a Conv2d, feature k = (c, i, j) of the patch gets the norm of input channel c over
    all positions (the patch shifts are not tracked: an approximation for the padded border).
    """
    sums, hooks = {}, []

    def hook(mod, args):
        x = args[0].detach().to(torch.float32)
        if isinstance(mod, nn.Conv2d):
            s = x.transpose(0, 1).reshape(x.shape[1], -1).pow(2).sum(1)
        else:
            s = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        sums[id(mod)] = sums.get(id(mod), 0) + s

    for m in layers:
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        data.run_all(model, calibration)
    finally:
        for h in hooks:
            h.remove()
    missing = [m for m in layers if id(m) not in sums]
    if missing:
        raise ValueError(
            f"the calibration batch did not reach "
            f"{len(missing)} layer(s) to prune (e.g. {type(missing[0]).__name__} "
            f"{tuple(missing[0].weight.shape)}); Wanda scores need every one"
        )
    return {k: v.sqrt() for k, v in sums.items()}


def score(layer: nn.Module, norms: Optional[dict]) -> Optional[torch.Tensor]:
    """|w| * ||x_k|| in the weight's own shape, or None (magnitude) without calibration."""
    if not norms:
        return None
    w = layer.weight.detach().to(torch.float32).abs()
    n = norms[id(layer)]
    return w * (n[None, :, None, None] if w.dim() == 4 else n[None, :])


def score_rows(layer: nn.Module, norms: Optional[dict]):
    """rows(r0, r1) -> float32 scores of a Linear's weight rows r0:r1 (|w|, or Wanda's
    |w| * ||x_k||): one row block at a time, never a copy of the whole weight."""
    w = layer.weight.detach()
    n = norms[id(layer)] if norms else None
    if n is None:
        return lambda r0, r1: w[r0:r1].to(torch.float32).abs()
    return lambda r0, r1: w[r0:r1].to(torch.float32).abs() * n[None, :]


def global_threshold(layers: list, norms: Optional[dict], config) -> float:
    """The score below which weights (unstructured) or blocks (block) are zeroed so that
    `config.sparsity` of all of them over `layers` go."""

    def layer_scores():  # a row block (or one layer's block sums) at a time: radix select
        for m in layers:
            rows = score_rows(m, norms)
            if config.block is None:
                yield from (rows(r0, r1) for r0, r1 in row_blocks(*m.weight.shape, multiple=1))
                continue
            check_block(config.block, *m.weight.shape, f"layer {tuple(m.weight.shape)}")
            yield block_scores(m.weight, config.block, rows)

    if config.block is not None:
        total = sum(s.numel() for s in layer_scores())
    else:
        total = sum(m.weight.numel() for m in layers)
    drop = int(round(config.sparsity * total))
    if drop <= 0:
        return float("-inf")
    return kth_smallest(layer_scores, drop)


def unstructured_rows(
    layer: nn.Module, config, norms: Optional[dict], threshold: Optional[float], what: str
):
    """rows(r0, r1) -> float32 rows r0:r1 of the layer's weight pruned to the config (as they
    are when they are sparse enough already), computed a row block at a time: the pruned
    weight is never built whole (formats/sparse_csr.py csr_from_rows packs straight from
    it)."""
    w = layer.weight.detach()
    zeros = 1.0 - count_nonzero(*w.shape, lambda r0, r1: w[r0:r1]) / max(w.numel(), 1)
    if not config.prune or zeros >= config.sparsity - 1e-9:
        return prune_unstructured_rows(w, 0.0, what=what)
    rows = score_rows(layer, norms)
    if threshold is None:
        return prune_unstructured_rows(w, config.sparsity, rows, what=what)
    dense = prune_unstructured_rows(w, 0.0, what=what)  # widened, NaN / Inf refused
    return lambda r0, r1: dense(r0, r1) * (rows(r0, r1) > threshold)


def count_nonzero(n: int, k: int, rows) -> int:
    """Nonzeros of the [N, K] weight rows(r0, r1) computes, a row block at a time
    (count_nonzero's mask of a whole 8 GiB weight is 2 GiB)."""
    return sum(int(rows(r0, r1).count_nonzero()) for r0, r1 in row_blocks(n, k, multiple=1))


def prune_blocks(
    layer: nn.Module, config, norms: Optional[dict], threshold: Optional[float], what: str
) -> tuple:
    """(n, k, rows(r0, r1)): the layer's weight pruned to the config's blocks (kept as is when
    it already is), computed a row block at a time (BlockFormat packs straight from it)."""
    w = layer.weight.detach()
    check_float_weight(w, what, halves=True)
    n, k = w.shape
    r, c = check_block(config.block, n, k, what)
    bs = block_scores(w, (r, c))
    zero_blocks = 1.0 - int(bs.count_nonzero()) / max(bs.numel(), 1)
    if zero_blocks >= config.sparsity - 1e-9:
        return n, k, lambda r0, r1: w[r0:r1].to(torch.float32)  # block sparse enough already
    if not config.prune:
        raise ValueError(
            f"{what}: only {zero_blocks:.1%} of the {(r, c)} blocks are zero "
            f"and SparseConfig(prune=False) forbids pruning to "
            f"{config.sparsity:.0%}"
        )
    s = score_rows(layer, norms)
    if threshold is None:
        return n, k, prune_block_rows(w, config.sparsity, (r, c), s, what)
    return n, k, block_keep_rows(w, (r, c), block_scores(w, (r, c), s) > threshold)
