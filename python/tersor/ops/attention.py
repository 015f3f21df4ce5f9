"""``tersor::attention_decode``: one decode step of grouped-query attention with rotary position
embedding, writing the new key and value into a preallocated cache in place
(csrc/attention/attention.h has the rule and the why).

    q [B, H*D]  k, v [B, Hkv*D]  cos, sin [B, D] or None   (rows with unit column stride)
    k_cache, v_cache [B, Hkv, cap, D] contiguous, rows 0 .. pos-1 filled
    start int64 [B] or None: sequence b attends rows start[b] .. pos (left padding)
    -> out [B, H*D];  k_cache[:, :, pos] = rope(k), v_cache[:, :, pos] = v

fp32, bf16 or fp16 (all the same dtype), fp32 arithmetic. The direct ``_C`` call serves eager
CPU use; the custom op (+ fake) lets torch.compile trace it, and runs the torch reference off
the CPU.
"""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import IO_CODE, ptr

OP = "tersor::attention_decode"


def decode_problem(q, k, v, cos, sin, k_cache, v_cache, pos: int, start=None) -> Optional[str]:
    """What is wrong with the arguments (the tensor and what was expected), or None. Messages
    are built only on failure: this runs once per decode step and layer."""
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        return (
            f"k_cache / v_cache must be [B, Hkv, cap, D] of one shape, got "
            f"{tuple(k_cache.shape)} / {tuple(v_cache.shape)}"
        )
    b, hkv, cap, d = k_cache.shape
    dtype = k_cache.dtype
    if dtype not in IO_CODE:
        return f"float32, bfloat16 or float16 expected, got {dtype}"
    named = dict(q=q, k=k, v=v, cos=cos, sin=sin, v_cache=v_cache)
    for name, t in named.items():
        if t is not None and t.dtype != dtype:
            return f"{name} is {t.dtype}, k_cache is {dtype}"
        if t is not None and t.device != k_cache.device:
            return f"{name} is on {t.device}, k_cache on {k_cache.device}"
    if d % 8:
        return f"head dim D = {d} must be a multiple of 8"
    if q.dim() != 2 or q.shape[0] != b or q.shape[1] % d:
        return f"q must be [B={b}, H*D] with D = {d}, got {tuple(q.shape)}"
    h = q.shape[1] // d
    if h % hkv or h // hkv > 64:
        return f"{h} query heads for {hkv} kv heads (a multiple, at most 64 per kv head)"
    for name, t in (("k", k), ("v", v)):
        if t.dim() != 2 or t.shape[0] != b or t.shape[1] != hkv * d:
            return f"{name} must be [B={b}, Hkv*D={hkv * d}], got {tuple(t.shape)}"
    if (cos is None) != (sin is None):
        return "cos and sin go together"
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            if t.dim() != 2 or t.shape[0] != b or t.shape[1] != d:
                return f"{name} must be [B={b}, D={d}], got {tuple(t.shape)}"
        if cos.stride() != sin.stride():
            return "cos and sin must have the same strides"
    for name, t in (("q", q), ("k", k), ("v", v), ("cos", cos)):
        if t is not None and t.stride(1) != 1:
            return f"{name} needs unit column stride, got strides {t.stride()}"
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return "k_cache / v_cache must be contiguous"
    if not 0 <= pos < cap:
        return f"pos {pos} outside the cache's {cap} rows"
    if start is not None:
        if start.dtype != torch.int64 or start.shape != (b,) or not start.is_contiguous():
            return f"start must be contiguous int64 [B={b}], got {start.dtype} {tuple(start.shape)}"
        if start.device != k_cache.device:
            return f"start is on {start.device}, k_cache on {k_cache.device}"
        if b and not (0 <= int(start.min()) and int(start.max()) <= pos):
            return f"start must lie in [0, pos={pos}], got {start.tolist()}"
    return None


def check_decode(q, k, v, cos, sin, k_cache, v_cache, pos: int, start=None) -> None:
    problem = decode_problem(q, k, v, cos, sin, k_cache, v_cache, pos, start)
    if problem is not None:
        raise ValueError(f"{OP}: {problem}")


def attention_decode_cpu(q, k, v, cos, sin, k_cache, v_cache, pos: int, scaling: float, start=None):
    """The native kernel on validated CPU tensors."""
    b, hkv, cap, d = k_cache.shape
    out = torch.empty(q.shape, dtype=q.dtype)
    _C.attention_decode(
        q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0),
        ptr(cos), ptr(sin), 0 if cos is None else cos.stride(0), k_cache.data_ptr(),
        v_cache.data_ptr(), b, q.shape[1] // d, hkv, d, cap, pos, ptr(start), scaling,
        out.data_ptr(), out.stride(0), IO_CODE[q.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return out


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] * cos + rotate_half(x) * sin (HF's apply_rotary_pos_emb), in x's dtype."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def attention_decode_ref(q, k, v, cos, sin, k_cache, v_cache, pos: int, scaling: float, start=None):
    """The rule in torch, fp32 arithmetic (the cache written in its dtype)."""
    b, hkv, _, d = k_cache.shape
    h = q.shape[1] // d
    qf, kf = q.float().view(b, h, d), k.float().view(b, hkv, d)
    if cos is not None:
        c, s = cos.float()[:, None], sin.float()[:, None]
        qf, kf = rope_ref(qf, c, s), rope_ref(kf, c, s)
    k_cache[:, :, pos] = kf.to(k_cache.dtype)
    v_cache[:, :, pos] = v.view(b, hkv, d)
    keys = k_cache[:, :, : pos + 1].float().repeat_interleave(h // hkv, dim=1)
    values = v_cache[:, :, : pos + 1].float().repeat_interleave(h // hkv, dim=1)
    s = (qf[:, :, None] @ keys.transpose(-1, -2)) * scaling  # [B, H, 1, pos + 1]
    if start is not None:
        hidden = torch.arange(pos + 1, device=s.device)[None] < start.to(s.device)[:, None]
        s = s.masked_fill(hidden[:, None, None], float("-inf"))
    w = torch.softmax(s, dim=-1)
    return (w @ values).reshape(b, h * d).to(q.dtype)


@torch.library.custom_op(OP, mutates_args=("k_cache", "v_cache"))
def attention_decode_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    scaling: float,
    start: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode-step attention (module docstring); the torch reference off the CPU."""
    return attention_decode_ref(q, k, v, cos, sin, k_cache, v_cache, pos, scaling, start)


@attention_decode_op.register_kernel("cpu")
def _(q, k, v, cos, sin, k_cache, v_cache, pos, scaling, start=None):
    check_decode(q, k, v, cos, sin, k_cache, v_cache, pos, start)
    return attention_decode_cpu(q, k, v, cos, sin, k_cache, v_cache, pos, scaling, start)


@attention_decode_op.register_fake
def _(q, k, v, cos, sin, k_cache, v_cache, pos, scaling, start=None):
    return torch.empty_like(q)


def attention_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    scaling: float,
    start: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Validated; the direct native call in eager CPU use, else the custom op."""
    check_decode(q, k, v, cos, sin, k_cache, v_cache, pos, start)
    if q.is_cpu and not torch.compiler.is_compiling():
        return attention_decode_cpu(q, k, v, cos, sin, k_cache, v_cache, pos, scaling, start)
    return attention_decode_op(q, k, v, cos, sin, k_cache, v_cache, pos, scaling, start)
