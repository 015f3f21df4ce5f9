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

from tersor.calibration.gptq import Prepared, prepare, spread_error


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
    diag = u.diagonal().tolist()
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wt[i1:i2]
        err1 = torch.empty(i2 - i1, n)
        u1 = u[i1:i2, i1:i2]
        pruned = torch.zeros(i2 - i1, n, dtype=torch.bool)
        if not n_of_4:  # the block's mask, over all its rows and columns at once
            score = w1.square() / d2[i1:i2, None]
            drop = int(round(score.numel() * sparsity))
            if drop:
                idx = torch.topk(score.flatten(), drop, largest=False).indices
                pruned.view(-1)[idx] = True
        xs, es = w1.unbind(0), err1.unbind(0)
        for i in range(i2 - i1):
            # this group's 2 smallest saliencies go (a tail group of K % 4 columns is padded
            # with zeros in the format: it drops all but 2)
            if n_of_4 and i % 4 == 0 and min(4, i2 - i1 - i) > 2:
                score = w1[i : i + 4].square() / d2[i1 + i : i1 + i + 4, None]
                idx = torch.topk(score, score.shape[0] - 2, dim=0, largest=False).indices
                pruned[i : i + 4].scatter_(0, idx, True)
            x, drop = xs[i], pruned[i]
            e = torch.mul(x, drop, out=es[i]).div_(diag[i1 + i])
            x.masked_fill_(drop, 0.0)
            spread_error(w1, u1, err1, e, i)
        if i2 < k:
            wt[i2:].addmm_(u[i1:i2, i2:].t(), err1, alpha=-1.0)
    return wt.t().contiguous()
