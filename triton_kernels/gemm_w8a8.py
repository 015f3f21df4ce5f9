"""Triton W8A8: per-row int8 activation quantization and an int8 x int8 GEMM (int32
accumulation via tl.dot) with the activation x weight scale epilogue; fp32 out.

Weights are the canonical int8 form of formats/int8.py ([N, K] int8 + [N] fp32 scales), the form
a GPU re-packs from. Runs on CUDA, and on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

import torch
import triton
import triton.language as tl

from . import FP_FUSION

# 1.5 * 2**23: x + M - M rounds fp32 |x| < 2**22 half to even (a constexpr: a jit function reads
# no other globals)
_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, BLOCK_K: tl.constexpr):
    """One program per row: amax, then q = round_half_even(x * 127 / amax) (quant_act.h rules)."""
    row = tl.program_id(0)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + rk, mask=rk < K, other=0.0)
        amax = tl.maximum(amax, tl.abs(x))
    a = tl.max(amax, axis=0)
    # IEEE divisions (Triton's "/" is the approximate one on a GPU): the scale and the codes are
    # the CPU kernel's bit for bit
    inv = tl.where(a > 0, tl.math.div_rn(tl.zeros_like(a) + 127.0, a), 0.0)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + rk, mask=rk < K, other=0.0)
        q = (x * inv + _MAGIC) - _MAGIC
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        tl.store(q_ptr + row * K + rk, q.to(tl.int8), mask=rk < K)
    tl.store(s_ptr + row, tl.math.div_rn(a, tl.zeros_like(a) + 127.0))


@triton.jit
def gemm_w8a8_kernel(
    a_ptr,
    sa_ptr,
    b_ptr,
    sb_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            a_ptr + rm[:, None] * K + rk[None, :],
            mask=(rm[:, None] < M) & (rk[None, :] < K),
            other=0,
        )
        b = tl.load(
            b_ptr + rn[None, :] * K + rk[:, None],
            mask=(rn[None, :] < N) & (rk[:, None] < K),
            other=0,
        )
        acc += tl.dot(a, b)
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
    sb = tl.load(sb_ptr + rn, mask=rn < N, other=0.0)
    y = acc.to(tl.float32) * (sa[:, None] * sb[None, :])
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], y, mask=(rm[:, None] < M) & (rn[None, :] < N))


def quantize_rows(x: torch.Tensor):
    """x [M, K] float32 (row stride free, unit column stride) -> (q int8 [M, K], scale fp32 [M]),
    bit for bit the CPU kernels' codes and scales."""
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8, device=x.device)
    s = torch.empty(m, dtype=torch.float32, device=x.device)
    # no fused multiply-add: x * inv is rounded before the rounding to an integer, as on the CPU
    quantize_rows_kernel[(m,)](x, q, s, k, x.stride(0), BLOCK_K=128, enable_fp_fusion=False)
    return q, s


def gemm_w8a8(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    bias=None,
    block_m: int = 16,
    block_n: int = 32,
    block_k: int = 32,
) -> torch.Tensor:
    """x [M, K] float32, q [N, K] int8, scale [N] float32 -> y [M, N] float32."""
    m, k = x.shape
    n = q.shape[0]
    xq, sx = quantize_rows(x)
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    gemm_w8a8_kernel[grid](
        xq,
        sx,
        q.contiguous(),
        scale,
        bias if bias is not None else scale,
        y,
        m,
        n,
        k,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        **FP_FUSION,
    )
    return y
