"""SparseGPT (Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot"), written from the paper: GPTQ's pass (gptq.py) where a column's
"quantization" is zeroing the pruned weights, so the weights that stay absorb the error of the
ones that go, through the same inverse-Hessian updates.

Which weights go: the smallest w^2 / [H^-1]_kk^2 (the OBS saliency of the paper)
- 2:4: per row, per group of 4 consecutive input columns, the 2 smallest, chosen when the pass
  reaches the group (so earlier updates count), the groups tersor's 2:4 format stores;
- unstructured: `sparsity` of each block of 128 columns, chosen over the block's rows and
  columns when the pass reaches the block (the paper's adaptive mask selection).
"""

from __future__ import annotations

import torch

from tersor.calibration import gptq
from tersor.calibration.gptq import Prepared, prepare


def sparsegpt(
    weight: torch.Tensor,
    hessian,
    *,
    n_of_4: bool = True,
    sparsity: float = 0.5,
    block_size: int = 128,
    damp: float = 0.01,
) -> torch.Tensor:
    """The pruned, updated float32 weight [N, K]: 2:4 along K (n_of_4), else `sparsity` of
    its weights zero."""
    prep = hessian if isinstance(hessian, Prepared) else prepare(hessian, damp)
    u = prep.u
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("the weight holds NaN or Inf")
    n, k = w.shape
    wt = w.t().contiguous()  # [K, N]: a column of W is a contiguous row
    d2 = u.diagonal().square()
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wt[i1:i2]
        err1 = torch.empty(i2 - i1, n)
        u1 = u[i1:i2, i1:i2]
        keep = None
        if not n_of_4:  # the block's mask, over all its rows and columns at once
            score = w1.square() / d2[i1:i2, None]
            drop = int(round(score.numel() * sparsity))
            keep = torch.ones(i2 - i1, n, dtype=torch.bool)
            if drop:
                idx = torch.topk(score.flatten(), drop, largest=False).indices
                keep.view(-1)[idx] = False
        # natively (csrc/gptq): column by column, the pruned weights zeroed and their error
        # spread over the block's later columns; 2:4 chooses each group's 2 smallest
        # saliencies when the pass reaches it (a tail group of K % 4 columns is padded with
        # zeros in the format: it drops all but 2)
        mode = gptq.PRUNE_TWO_OF_FOUR if n_of_4 else gptq.PRUNE_KEPT
        gptq.block_pass(w1, u1, err1, w1, keep=keep, mode=mode)
        if i2 < k:
            wt[i2:].addmm_(u[i1:i2, i2:].t(), err1, alpha=-1.0)
    return wt.t().contiguous()
