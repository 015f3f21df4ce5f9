"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), written from the paper for tersor's int4 and int8 grids.

Quantizing column k of W [N, K] to q_k leaves an error e_k = (w_k - q_k) / [H^-1]_kk that is
pushed onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
squared output error, H = 2 X^T X / n (X: the calibration inputs of the layer):

    W[:, j] -= e_k * [H^-1]_kj            for every j > k

With U the upper Cholesky factor of H^-1 (H^-1 = U^T U), row k of U holds exactly the weights
this update needs once columns < k are done, so the whole pass is one Cholesky and rank-1
updates. Updates are applied lazily: inside a block of B columns immediately, to the rest of W
once per block (one GEMM), which is what makes it fast. The block's column loop runs natively
(csrc/gptq/gptq.h states its arithmetic; a torch loop paid 5-60 us of dispatch per column).

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

from tersor import _C
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
    code_range = (0.0, 15.0)

    def __init__(self, group_size: int, symmetric: bool):
        self.g, self.symmetric = group_size, symmetric

    def params(self, w: torch.Tensor):
        """(scale fp16, zero float, safe scale) of the group columns w [N, g]: the rule
        round-to-nearest uses (formats/int4.py group_grid)."""
        return group_grid(w.amin(1), w.amax(1), self.symmetric)


class Int8Grid:
    g = None  # one "group": the whole row, its scale fixed from the original weight

    def __init__(self, qmax: int = 127):
        self.qmax = qmax
        self.code_range = (-float(qmax), float(qmax))

    def params(self, w: torch.Tensor):
        amax = torch.maximum(-w.amin(1), w.amax(1))
        scale = amax / float(self.qmax)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale), safe


def error_rows(n: int, k: int):
    """The rows output_error measures a [n, k] layer on (evenly spaced; None: all): 512 for
    K <= 1448, fewer above, at least 64 (about 2 x 2^30 flop per estimate; a 128256 x 2048
    vocabulary projection would cost 3 x 0.5 TFLOP exactly; the estimate is within a few
    percent)."""
    rows = max(64, min(512, (1 << 30) // max(k * k, 1)))
    return torch.linspace(0, n - 1, rows).long() if n > rows else None


def output_error(
    dw: torch.Tensor, w: torch.Tensor, h: torch.Tensor, energy: Optional[float] = None
) -> float:
    """tr(dW H dW^T) / tr(W H W^T): the relative squared output error on the calibration
    inputs, over the rows error_rows picks; energy: output_energy(w, h) when several errors
    of one layer are measured (the denominator costs as much as the error)."""
    pick = error_rows(*dw.shape)
    if pick is not None:
        dw = dw[pick]
    num = float((dw @ h * dw).sum())
    return num / (output_energy(w, h) if energy is None else energy)


def output_energy(w: torch.Tensor, h: torch.Tensor) -> float:
    """tr(W H W^T) over the rows error_rows picks (output_error's denominator), at least 1e-30."""
    pick = error_rows(*w.shape)
    if pick is not None:
        w = w[pick]
    return max(float((w @ h * w).sum()), 1e-30)


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


QUANTIZE, PRUNE_KEPT, PRUNE_TWO_OF_FOUR = 0, 1, 2  # csrc/gptq/gptq.h Mode


def block_pass(
    w1,
    u1,
    err1,
    deq,
    *,
    q=None,
    keep=None,
    mode: int = QUANTIZE,
    group: int = 0,
    symmetric: bool = False,
    safe=None,
    zero=None,
    code_range=(0.0, 0.0),
    group_scale=None,
    group_zero=None,
) -> None:
    """One block's column pass, natively (csrc/gptq/gptq.h): w1 [B, n] (rows of W^T, updated
    in place, rows contiguous), u1 its square of U (a view of U: rows strided), err1 [B, n]
    out; deq (and q) [B, n] out, row-contiguous views (deq may be w1); keep bool [B, n] rows
    contiguous, or None."""
    b, n = w1.shape
    if b == 0:
        return
    rows = [w1, err1, deq] + ([q] if q is not None else [])
    if (
        any(t.dtype != torch.float32 or t.stride(1) != 1 or t.shape != (b, n) for t in rows)
        or (keep is not None and (keep.dtype != torch.bool or keep.stride(1) != 1))
        or u1.stride(1) != 1
        or u1.shape != (b, b)
        or (mode == PRUNE_KEPT and keep is None)
        or (mode == QUANTIZE and group == 0 and (safe is None or zero is None))
        or (group > 0 and (group_scale is None or group_zero is None))
    ):  # the native pass trusts its pointers
        raise ValueError(
            "gptq block_pass: float32 [B, n] row-contiguous tensors, and the grid or mask "
            "its mode reads, expected"
        )
    _C.gptq_block(
        w1.data_ptr(),
        w1.stride(0),
        u1.data_ptr(),
        u1.stride(0),
        err1.data_ptr(),
        0 if q is None else q.data_ptr(),
        deq.data_ptr(),
        deq.stride(0),
        0 if keep is None else keep.data_ptr(),
        0 if keep is None else keep.stride(0),
        b,
        n,
        group,
        symmetric,
        0 if safe is None else safe.data_ptr(),
        0 if zero is None else zero.data_ptr(),
        code_range[0],
        code_range[1],
        0 if group_scale is None else group_scale.data_ptr(),
        0 if group_zero is None else group_zero.data_ptr(),
        mode,
        torch.get_num_threads(),
    )


def _pass(w, u, grid, grouped: bool, block_size: int, keep_t):
    """The column pass over the rows w [n, K] (see the module doc): (codes [n, K], values
    [n, K], the groups' scales, the groups' zero points). Each block's columns run natively
    (csrc/gptq: quantize, then the rank-1 updates inside the block); the columns after it
    take the block's errors in one product here."""
    n, k = w.shape
    g = grid.g if grouped else k
    # the pass works on W^T [K, N]: a column of W is a contiguous row here
    wt = w.t().contiguous()
    q_t, deq_t = torch.empty(k, n), torch.empty(k, n)
    scales, zeros = [], []
    safe = zero = None
    if not grouped:  # one grid per row of W, from the original weights
        scale, zero, safe = grid.params(w)
        scales.append(scale)
        zeros.append(zero)
        safe, zero = safe.float().contiguous(), zero.float().contiguous()
    lo, hi = grid.code_range
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        b = i2 - i1
        err1 = torch.empty(b, n)
        u1 = u[i1:i2, i1:i2]
        ng = -(-b // g) if grouped else 0
        g_scale, g_zero = torch.empty(ng, n), torch.empty(ng, n)
        block_pass(
            wt[i1:i2],
            u1,
            err1,
            deq_t[i1:i2],
            q=q_t[i1:i2],
            keep=None if keep_t is None else keep_t[i1:i2],
            group=g if grouped else 0,
            symmetric=bool(getattr(grid, "symmetric", False)),
            safe=safe,
            zero=zero,
            code_range=(lo, hi),
            group_scale=g_scale,
            group_zero=g_zero,
        )
        for j in range(ng):
            scales.append(g_scale[j].to(torch.float16))
            zeros.append(g_zero[j])
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
    measure: bool = True,
) -> Solved:
    """GPTQ of weight [N, K] (float) against hessian [K, K] (the sum of x x^T over the
    calibration rows; its scale does not matter), or a Prepared one, on `grid` (Int4Grid /
    Int8Grid). mask: bool [N, K], the weights a sparse layer keeps (Int8Grid only): the others
    are quantized to 0 and their error spread like any other's (SparseGPT's joint pruning and
    quantization, with the pattern already chosen). measure=False: err is NaN (a caller that
    measures several errors of the layer shares their denominator)."""
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
    err = output_error(deq_orig - w0, w0, h_orig) if measure else float("nan")
    if isinstance(grid, Int4Grid):
        scale = torch.stack(scales, 1)
        zero = None if grid.symmetric else torch.stack(zeros, 1).to(torch.uint8)
        q_out = q_all.to(torch.uint8)
    else:
        scale, zero, q_out = scales[0], None, q_all.to(torch.int8)
    return Solved(q_out, scale, zero, perm, deq_orig, err)
