"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), written from the paper for tersor's int4 and int8 grids.

Quantizing column k of W [N, K] to q_k leaves an error e_k = (w_k - q_k) / [H^-1]_kk that is
pushed onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
squared output error, H = 2 X^T X / n (X: the calibration inputs of the layer):

    W[:, j] -= e_k * [H^-1]_kj            for every j > k

With U the upper Cholesky factor of H^-1 (H^-1 = U^T U), row k of U holds exactly the weights
this update needs once columns < k are done, so the whole pass is one Cholesky and rank-1
updates. Updates are applied lazily: inside a block of B columns immediately, to the rest of W
once per block (one GEMM), which is what makes it fast.

    columns:  | done | block i1..i2 (rank-1 updates) | rest (updated once per block) |

Grids (the same rules as round-to-nearest in formats/int4.py / int8.py, so the result packs
into the very same formats):
- int4 group-wise: a group's scale / zero point are computed from the current (already
  updated) weights when the pass reaches the group's first column, then fixed for the group;
  scales are rounded to fp16 first, as the format stores them.
- int8 per channel: the scale is the row's absmax / qmax of the original weight (qmax 127, or
  63 for W8A8Config(weight_bits=7)).

act_order: columns go in decreasing diag(H) (the most active inputs first). Groups are then
contiguous in that order, which is what Int4Format's input permutation stores: x is permuted
once per call (an index_select; on MiniLM at 32 sentences the act-order layers encode ~15%
slower than round-to-nearest ones). For int8 and one-group int4 the order is undone after the
pass (the format has no column order), so act-order costs nothing there.

Numerical safety: inputs never active in calibration (diag(H) = 0) get H_kk = 1 (their columns
are rounded without feedback); dampening adds damp * mean(diag(H)) to the diagonal, and is
raised tenfold (up to 3 times) when the Cholesky still fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from tersor.formats.int4 import group_grid


@dataclass
class Solved:
    """A layer's GPTQ result in canonical form: int4 (q uint8 [N, K] in `perm` order when
    act_order, scale fp16 / zero uint8 [N, ngroups]) or int8 (q int8 [N, K], scale fp32 [N])."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: Optional[torch.Tensor]
    perm: Optional[torch.Tensor]
    dequantized: torch.Tensor  # float32 [N, K], original column order: the weight it stands for
    err: float  # relative output error on the calibration Hessian: tr(dW H dW^T) / tr(W H W^T)


class Int4Grid:
    def __init__(self, group_size: int, symmetric: bool):
        self.g, self.symmetric = group_size, symmetric

    def params(self, w: torch.Tensor):
        """(scale fp16, zero float, safe scale) of the group columns w [N, g]: the rule
        round-to-nearest uses (formats/int4.py group_grid)."""
        return group_grid(w.amin(1), w.amax(1), self.symmetric)

    @staticmethod
    def codes(out, w, safe, zero):
        return torch.div(w, safe, out=out).round_().add_(zero).clamp_(0, 15)

    @staticmethod
    def value(out, q, safe, zero):
        return torch.sub(q, zero, out=out).mul_(safe)


class Int8Grid:
    g = None  # one "group": the whole row, its scale fixed from the original weight

    def __init__(self, qmax: int = 127):
        self.qmax = qmax

    def params(self, w: torch.Tensor):
        amax = torch.maximum(-w.amin(1), w.amax(1))
        scale = amax / float(self.qmax)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale), safe

    def codes(self, out, w, safe, zero):
        return torch.div(w, safe, out=out).round_().clamp_(-self.qmax, self.qmax)

    @staticmethod
    def value(out, q, safe, zero):
        return torch.mul(q, safe, out=out)


def error_rows(n: int, k: int):
    """The rows output_error measures a [n, k] layer on (evenly spaced; None: all): 512 for
    K <= 1448, fewer above, at least 64 (about 2 x 2^30 flop per estimate; a 128256 x 2048
    vocabulary projection would cost 3 x 0.5 TFLOP exactly; the estimate is within a few
    percent)."""
    rows = max(64, min(512, (1 << 30) // max(k * k, 1)))
    return torch.linspace(0, n - 1, rows).long() if n > rows else None


def output_error(dw: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    """tr(dW H dW^T) / tr(W H W^T): the relative squared output error on the calibration
    inputs, over the rows error_rows picks."""
    pick = error_rows(*dw.shape)
    if pick is not None:
        dw, w = dw[pick], w[pick]
    num = (dw @ h * dw).sum()
    return float(num / (w @ h * w).sum().clamp(min=1e-30))


def _lower_inverse(low: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """L^-1 of a lower triangular L, a block of columns at a time: block j of L^-1 is zero
    above its diagonal block, so only the trailing triangle is solved (~1/3 of a full
    triangular solve against the identity, which torch's solve_triangular would do)."""
    k = low.shape[0]
    inv = torch.zeros_like(low)
    for c0 in range(0, k, block):
        c1 = min(c0 + block, k)
        eye = torch.zeros(k - c0, c1 - c0, dtype=low.dtype)
        eye.diagonal().fill_(1.0)
        inv[c0:, c0:c1] = torch.linalg.solve_triangular(low[c0:, c0:], eye, upper=False)
    return inv


def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) I)^-1 (H^-1 = U^T U): in float32,
    then float64, then with the dampening raised tenfold (3 times) while H is not positive
    definite.

    One factorization and one triangular inverse: with J the order reversal and
    J H J = L L^T, U = J L^-1 J is upper triangular and U^T U = J (J H J)^-1 J = H^-1 (the
    textbook route, Cholesky, inverse, Cholesky again, costs about twice as much: ~10 s for
    a 1B LLM's 8192-wide down projection on 2 cores)."""
    mean = h.diagonal().mean().clamp(min=1e-12)
    for attempt in range(4):
        for dtype in (torch.float32, torch.float64):
            hd = h.to(dtype).flip(0, 1)
            hd.diagonal().add_((damp * 10**attempt) * mean.to(dtype))
            low, info = torch.linalg.cholesky_ex(hd)
            if int(info) == 0:
                u = _lower_inverse(low).flip(0, 1)
                if bool(torch.isfinite(u).all()):
                    return u.to(torch.float32).contiguous()
    raise ValueError(
        f"the calibration Hessian is not positive definite even with dampening "
        f"{damp * 1000:g} x its mean diagonal"
    )


@dataclass
class Prepared:
    """What GPTQ needs of a Hessian, shared by layers that read the same input (q/k/v)."""

    h: torch.Tensor  # the Hessian as given
    perm: Optional[torch.Tensor]  # act-order column order, or None
    u: torch.Tensor  # inverse_cholesky of the (dead-fixed, permuted) Hessian


def prepare(hessian: torch.Tensor, damp: float = 0.01, act_order: bool = False) -> Prepared:
    h = hessian.detach().to(torch.float32)
    if not bool(torch.isfinite(h).all()):
        raise ValueError("the calibration inputs hold NaN or Inf")
    hf = h.clone()
    dead = hf.diagonal() == 0  # inputs never active: rounded without feedback
    hf[dead, dead] = 1.0
    perm = None
    if act_order:
        perm = torch.argsort(hf.diagonal(), descending=True, stable=True)
        hf = hf[perm][:, perm]
    return Prepared(h, perm, inverse_cholesky(hf, damp))


ROW_CHUNK = 8192
# Inside a block the rank-1 updates reach only the rest of a SUB_BLOCK of columns, and each
# finished sub-block updates the rest of the block in one product: the same lazy batching
# one level down (per column, 15 rows of W^T touched instead of up to 127). It divides every
# group size, so a group's grid is taken from fully updated weights.
SUB_BLOCK = 16


def spread_error(w1, u1, err1, e, i: int) -> None:
    """W[:, j] -= e_k * U[k, j] for the block's columns j after column i (rows of w1, the
    block of W^T; e = err1[i]): the rest of its sub-block now, the rest of the block in one
    product when the sub-block ends."""
    b = w1.shape[0]
    s2 = min(i // SUB_BLOCK * SUB_BLOCK + SUB_BLOCK, b)
    if i + 1 < s2:  # (addmm_ of [B, 1] x [1, N]: BLAS; torch's addr_ is ~100x slower on CPU)
        w1[i + 1 : s2].addmm_(u1[i, i + 1 : s2, None], e[None, :], alpha=-1.0)
    if i + 1 == s2 and s2 < b:
        s1 = s2 - SUB_BLOCK
        w1[s2:].addmm_(u1[s1:s2, s2:].t(), err1[s1:s2], alpha=-1.0)


def _pass(w, u, grid, grouped: bool, block_size: int, keep_t):
    """The column pass over the rows w [n, K] (see the module doc): (codes [n, K], values
    [n, K], the groups' scales, the groups' zero points)."""
    n, k = w.shape
    g = grid.g if grouped else k
    # the pass works on W^T [K, N]: a column of W is a contiguous row here
    wt = w.t().contiguous()
    q_t, deq_t = torch.empty(k, n), torch.empty(k, n)
    scales, zeros = [], []
    if not grouped:  # one grid per row of W, from the original weights
        scale, zero, safe = grid.params(w)
        scales.append(scale)
        zeros.append(zero)
    diag = u.diagonal().tolist()
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wt[i1:i2]  # a view: updated in place
        err1 = torch.empty(i2 - i1, n)
        u1 = u[i1:i2, i1:i2]
        # the block's rows as views, made in one call each (per-column indexing costs ~5 us
        # a view on a slow core, and the loop is per column)
        xs, qs, vs, es = (t.unbind(0) for t in (w1, q_t[i1:i2], deq_t[i1:i2], err1))
        for i in range(i2 - i1):
            col = i1 + i
            if grouped and col % g == 0:  # the group's grid, fixed from here on
                scale, zero, safe = grid.params(w1[i : i + g].t())
                scales.append(scale)
                zeros.append(zero)
            q = grid.codes(qs[i], xs[i], safe, zero)
            if keep_t is not None:  # pruned: code 0, value 0 (Int8Grid)
                q.masked_fill_(~keep_t[col], 0.0)
            v = grid.value(vs[i], q, safe, zero)
            e = torch.sub(xs[i], v, out=es[i]).div_(diag[col])
            spread_error(w1, u1, err1, e, i)
        if i2 < k:
            wt[i2:].addmm_(u[i1:i2, i2:].t(), err1, alpha=-1.0)
    return q_t.t(), deq_t.t(), scales, zeros


def gptq(
    weight: torch.Tensor,
    hessian,
    grid,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    mask: Optional[torch.Tensor] = None,
) -> Solved:
    """GPTQ of weight [N, K] (float) against hessian [K, K] (the sum of x x^T over the
    calibration rows; its scale does not matter), or a Prepared one, on `grid` (Int4Grid /
    Int8Grid). mask: bool [N, K], the weights a sparse layer keeps (Int8Grid only): the others
    are quantized to 0 and their error spread like any other's (SparseGPT's joint pruning and
    quantization, with the pattern already chosen)."""
    prep = hessian if isinstance(hessian, Prepared) else prepare(hessian, damp, act_order)
    w = weight.detach().to(torch.float32).clone()
    n, k = w.shape
    if not bool(torch.isfinite(w).all()):
        raise ValueError("the weight holds NaN or Inf")
    if mask is not None and not isinstance(grid, Int8Grid):
        raise ValueError("a sparsity mask is held on the int8 grid only")
    perm, u, h_orig = prep.perm, prep.u, prep.h
    if perm is not None:
        w = w[:, perm]
        mask = None if mask is None else mask[:, perm]
    keep_t = None if mask is None else mask.t().contiguous()

    grouped = grid.g is not None and grid.g < k
    if grouped and block_size % grid.g:
        block_size = max(grid.g, block_size // grid.g * grid.g)  # whole groups per block
    # Rows are independent given U: a wide layer goes ROW_CHUNK rows at a time, so the rank-1
    # updates stay in cache (a 128256-row vocabulary projection otherwise streams 32 MB per
    # column)
    parts = [
        _pass(
            w[r : r + ROW_CHUNK],
            u,
            grid,
            grouped,
            block_size,
            None if keep_t is None else keep_t[:, r : r + ROW_CHUNK],
        )
        for r in range(0, n, ROW_CHUNK)
    ]
    q_all = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    deq = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    scales = [torch.cat(c) for c in zip(*[p[2] for p in parts])]
    zeros = [torch.cat(c) for c in zip(*[p[3] for p in parts])]

    deq_orig = deq
    if perm is not None:
        inv = torch.argsort(perm)
        deq_orig = deq[:, inv]
        if not grouped:  # one grid per row: the column order is not part of the format
            q_all, perm = q_all[:, inv], None
    w0 = weight.detach().to(torch.float32)
    err = output_error(deq_orig - w0, w0, h_orig)
    if isinstance(grid, Int4Grid):
        scale = torch.stack(scales, 1)
        zero = None if grid.symmetric else torch.stack(zeros, 1).to(torch.uint8)
        q_out = q_all.to(torch.uint8)
    else:
        scale, zero, q_out = scales[0], None, q_all.to(torch.int8)
    return Solved(q_out, scale, zero, perm, deq_orig, err)
