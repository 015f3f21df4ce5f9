"""Triton whole-weight dequantize (the large-M path on a GPU: dequantize once into fp16/bf16,
then a dense tensor-core GEMM beats any fused low-bit kernel there).

    dequant_w8: int8 [N, K] x scale [N] fp32                       -> [N, K] in `dtype`
    dequant_w4: nibbles [N, K/2] uint8 (k even low), scale [N, NG] fp16, zero [N, NG] uint8
                or None (symmetric: 8)                              -> [N, K] in `dtype`

Runs on CUDA, and on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

import torch
import triton
import triton.language as tl

from . import FP_FUSION


@triton.jit
def dequant_w8_kernel(q_ptr, s_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    q = tl.load(q_ptr + rn[:, None] * K + rk[None, :], mask=mask, other=0).to(tl.float32)
    s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
    w = q * s[:, None]
    tl.store(out_ptr + rn[:, None] * K + rk[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def dequant_w4_kernel(
    b_ptr,
    s_ptr,
    z_ptr,
    out_ptr,
    N,
    K,
    G,
    NG,
    HAS_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    kb = (K + 1) // 2
    byte = tl.load(b_ptr + rn[:, None] * kb + rk[None, :] // 2, mask=mask, other=0).to(tl.int32)
    q = ((byte >> ((rk[None, :] % 2) * 4)) & 15).to(tl.float32)
    g = rk[None, :] // G
    s = tl.load(s_ptr + rn[:, None] * NG + g, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        z = tl.load(z_ptr + rn[:, None] * NG + g, mask=mask, other=8).to(tl.float32)
    else:
        z = 8.0
    w = (q - z) * s
    tl.store(out_ptr + rn[:, None] * K + rk[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def dequant_w8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float16) -> torch.Tensor:
    n, k = q.shape
    out = torch.empty(n, k, dtype=dtype, device=q.device)
    grid = (triton.cdiv(n, 32), triton.cdiv(k, 64))
    dequant_w8_kernel[grid](
        q.contiguous(), scale.contiguous(), out, n, k, BLOCK_N=32, BLOCK_K=64, **FP_FUSION
    )
    return out


def dequant_w4(
    nibbles: torch.Tensor, scale: torch.Tensor, zero, group_size: int, k: int, dtype=torch.float16
) -> torch.Tensor:
    n = nibbles.shape[0]
    out = torch.empty(n, k, dtype=dtype, device=nibbles.device)
    grid = (triton.cdiv(n, 32), triton.cdiv(k, 64))
    dequant_w4_kernel[grid](
        nibbles.contiguous(),
        scale.contiguous(),
        zero.contiguous() if zero is not None else scale,
        out,
        n,
        k,
        group_size,
        scale.shape[1],
        HAS_ZERO=zero is not None,
        BLOCK_N=32,
        BLOCK_K=64,
        **FP_FUSION,
    )
    return out
