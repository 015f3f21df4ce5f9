"""Triton W4: float activations (fp32, fp16 or bf16) x int4 group-wise weights, dequantized
inside the K loop, fp32 accumulation, output in the activations' dtype.

Weights are the canonical int4 form of formats/int4.py: codes packed two per byte along K
(k even in the low nibble) [N, K/2] uint8, scales [N, K/G] fp16, zero points [N, K/G] uint8
(symmetric: 8). Each K step of BLOCK_K (which divides G) reads BLOCK_K/2 bytes per column and
feeds the even and the odd k as two dots, so no interleave is needed.

Split-K: at small M a GPU has too few output tiles to fill its SMs (8192 x 8192 at M = 1 with
64-wide tiles: 128 tiles for 132 SMs, each streaming 4 MiB), so SPLIT_K programs share a tile's
K range (whole groups each) and add their partial sums atomically into an fp32 buffer.
On a GPU the tile shape is autotuned per architecture (key: M bucket, N, K); under
TRITON_INTERPRET=1 (CPU tensors, the tests) one fixed configuration runs.
"""

import os

import torch
import triton
import triton.language as tl

from . import FP_FUSION


def _kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    z_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    G,
    NG,
    stride_xm,
    GROUPS_PER_SPLIT,
    M_BUCKET,
    HAS_ZERO: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pm, pn, pk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rp = tl.arange(0, BLOCK_K // 2)  # byte (k pair) index within the step
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pk * GROUPS_PER_SPLIT * G
    k_end = tl.minimum(K, k_begin + GROUPS_PER_SPLIT * G)
    for k0 in range(k_begin, k_end, BLOCK_K):
        g = k0 // G
        s = tl.load(s_ptr + rn * NG + g, mask=rn < N, other=0.0).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(z_ptr + rn * NG + g, mask=rn < N, other=8).to(tl.float32)
        else:
            z = tl.full((BLOCK_N,), 8.0, tl.float32)
        kb = k0 // 2 + rp
        byte = tl.load(
            w_ptr + rn[None, :] * (K // 2) + kb[:, None],
            mask=(rn[None, :] < N) & (kb[:, None] < K // 2),
            other=0,
        ).to(tl.int32)
        ke = k0 + 2 * rp
        x_even = tl.load(
            x_ptr + rm[:, None] * stride_xm + ke[None, :],
            mask=(rm[:, None] < M) & (ke[None, :] < K),
            other=0.0,
        )
        x_odd = tl.load(
            x_ptr + rm[:, None] * stride_xm + ke[None, :] + 1,
            mask=(rm[:, None] < M) & (ke[None, :] + 1 < K),
            other=0.0,
        )
        # (q - z) * s is exact in fp16 / bf16 only up to their mantissa: dequantize in fp32,
        # round once to the activations' dtype for the tensor-core dot
        w_even = (((byte & 15).to(tl.float32) - z[None, :]) * s[None, :]).to(x_even.dtype)
        w_odd = (((byte >> 4).to(tl.float32) - z[None, :]) * s[None, :]).to(x_even.dtype)
        if FP32_DOT:
            acc += tl.dot(x_even, w_even, input_precision="ieee")
            acc += tl.dot(x_odd, w_odd, input_precision="ieee")
        else:
            acc += tl.dot(x_even, w_even) + tl.dot(x_odd, w_odd)
    if HAS_BIAS:
        if pk == 0:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm[:, None] * N + rn[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if SPLIT_K == 1:
        tl.store(out, acc, mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)


gemm_w4_kernel = triton.jit(_kernel)

_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
    for bm, bn, bk, w, st in [
        (16, 64, 32, 4, 4),
        (16, 64, 64, 4, 4),
        (16, 128, 64, 4, 4),
        (32, 128, 32, 4, 3),
        (32, 64, 128, 4, 3),
        (64, 128, 64, 8, 3),
        (128, 128, 32, 8, 3),
        (128, 256, 32, 8, 3),
    ]
]


def _m_bucket(m):
    return 1 << max(0, (m - 1).bit_length())  # retune per power-of-two M, not per M


def _prune(configs, named_args, **kwargs):
    """Only tile depths that divide the group size (a K step never straddles two groups)."""
    return [c for c in configs if named_args["G"] % c.kwargs["BLOCK_K"] == 0] or configs[:1]


gemm_w4_tuned = triton.autotune(
    _CONFIGS,
    key=["M_BUCKET", "N", "K"],
    reset_to_zero=["y_ptr"],
    prune_configs_by={"early_config_prune": _prune},
)(triton.jit(_kernel))


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def split_k_for(m: int, n: int, ngroups: int, block_n: int, sms: int) -> int:
    """Programs per output tile along K: enough tiles to give every SM two, whole groups each."""
    tiles = triton.cdiv(m, 16) * triton.cdiv(n, block_n)
    if m > 64 or tiles >= 2 * sms:
        return 1
    return max(1, min(ngroups, (2 * sms) // tiles, 16))


def gemm_w4(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero,
    group_size: int,
    bias=None,
    block_m: int = 16,
    block_n: int = 32,
    block_k: int = 32,
    split_k: int | None = None,
) -> torch.Tensor:
    """x [M, K] float32/float16/bfloat16, packed [N, K/2] uint8, scale [N, K/G] fp16, zero
    [N, K/G] uint8 or None -> y [M, N] in x's dtype. K must be a multiple of G and G of
    block_k. split_k=None picks it from the SM count (1 on CPU tensors)."""
    m, k = x.shape
    n, ng = packed.shape[0], k // group_size
    if k % group_size or group_size % block_k:
        raise ValueError(
            f"gemm_w4 (triton): K={k}, group_size={group_size} and block_k={block_k}"
            f" must nest (K % G == 0, G % block_k == 0)"
        )
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"gemm_w4 (triton): x must be float32, float16 or bfloat16, got {x.dtype}")
    if split_k is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
        split_k = split_k_for(m, n, ng, block_n, sms)
    gps = triton.cdiv(ng, split_k)
    split_k = triton.cdiv(ng, gps)
    y = (torch.zeros if split_k > 1 else torch.empty)(m, n, dtype=torch.float32, device=x.device)
    args = (
        x,
        packed.contiguous(),
        scale.contiguous(),
        zero if zero is not None else scale,
        bias if bias is not None else scale,
        y,
        m,
        n,
        k,
        group_size,
        ng,
        x.stride(0),
        gps,
        _m_bucket(m),
    )
    flags = dict(
        HAS_ZERO=zero is not None,
        HAS_BIAS=bias is not None,
        SPLIT_K=split_k,
        FP32_DOT=x.dtype == torch.float32,
        **FP_FUSION,
    )
    if x.is_cuda and not _interpreted():
        grid = lambda meta: (
            triton.cdiv(m, meta["BLOCK_M"]),
            triton.cdiv(n, meta["BLOCK_N"]),
            split_k,
        )
        gemm_w4_tuned[grid](*args, **flags)
    else:
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
        gemm_w4_kernel[grid](*args, **flags, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y if x.dtype == torch.float32 else y.to(x.dtype)
