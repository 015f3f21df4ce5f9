"""Triton W4: float activations x int4 group-wise weights, dequantized inside the K loop.

Weights are the canonical int4 form of formats/int4.py: codes packed two per byte along K
(k even in the low nibble) [N, K/2] uint8, scales [N, K/G] fp16, zero points [N, K/G] uint8
(symmetric: 8). Each K step of BLOCK_K (which divides G) reads BLOCK_K/2 bytes per column and
feeds the even and the odd k as two dots, so no interleave is needed. Runs on CUDA, and on CPU
tensors under TRITON_INTERPRET=1 (the tests).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def gemm_w4_kernel(x_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, y_ptr, M, N, K, G, NG, stride_xm,
                   HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rp = tl.arange(0, BLOCK_K // 2)  # byte (k pair) index within the step
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        g = k0 // G
        s = tl.load(s_ptr + rn * NG + g, mask=rn < N, other=0.0).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(z_ptr + rn * NG + g, mask=rn < N, other=8).to(tl.float32)
        else:
            z = tl.full((BLOCK_N,), 8.0, tl.float32)
        kb = k0 // 2 + rp
        byte = tl.load(w_ptr + rn[None, :] * (K // 2) + kb[:, None],
                       mask=(rn[None, :] < N) & (kb[:, None] < K // 2), other=0).to(tl.int32)
        w_even = ((byte & 15).to(tl.float32) - z[None, :]) * s[None, :]
        w_odd = ((byte >> 4).to(tl.float32) - z[None, :]) * s[None, :]
        ke = k0 + 2 * rp
        x_even = tl.load(x_ptr + rm[:, None] * stride_xm + ke[None, :],
                         mask=(rm[:, None] < M) & (ke[None, :] < K), other=0.0)
        x_odd = tl.load(x_ptr + rm[:, None] * stride_xm + ke[None, :] + 1,
                        mask=(rm[:, None] < M) & (ke[None, :] + 1 < K), other=0.0)
        acc += tl.dot(x_even, w_even) + tl.dot(x_odd, w_odd)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def gemm_w4(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero, group_size: int,
            bias=None, block_m: int = 16, block_n: int = 32, block_k: int = 32) -> torch.Tensor:
    """x [M, K] float32, packed [N, K/2] uint8, scale [N, K/G] fp16, zero [N, K/G] uint8 or
    None -> y [M, N] float32. K must be a multiple of G and G of block_k."""
    m, k = x.shape
    n = packed.shape[0]
    if k % group_size or group_size % block_k:
        raise ValueError(f"gemm_w4 (triton): K={k}, group_size={group_size} and block_k={block_k}"
                         f" must nest (K % G == 0, G % block_k == 0)")
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    gemm_w4_kernel[grid](x, packed.contiguous(), scale.contiguous(),
                         zero if zero is not None else scale,
                         bias if bias is not None else scale, y, m, n, k, group_size,
                         k // group_size, x.stride(0), HAS_ZERO=zero is not None,
                         HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
                         BLOCK_K=block_k)
    return y
