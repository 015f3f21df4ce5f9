"""``tersor::attention_decode``: grouped-query attention with rotary position embedding over
the new rows of a step, writing their keys and values into a preallocated cache in place: one
decode step, or a causal chunk of T new rows per sequence (a prefill; csrc/attention/
attention.h has the rule and the why).

    decode step:  q [B, H*D]     k, v [B, Hkv*D]     cos, sin [B, D] or None
    T new rows:   q [B, T, H*D]  k, v [B, T, Hkv*D]  cos, sin [B, T, D] or None
    (rows with unit column stride; the T rows of a sequence evenly spaced)
    k_cache, v_cache [B, Hkv, cap, D] contiguous, rows 0 .. pos-1 filled, pos + T <= cap
    start int64 [B] or None: sequence b attends rows start[b] .. (left padding, start <= pos)
    -> out shaped like q: new row t attends rows start[b] .. pos + t;
       k_cache[:, :, pos + t] = rope(k[:, t]), v_cache[:, :, pos + t] = v[:, t]

fp32, bf16 or fp16 (all the same dtype), fp32 arithmetic. The direct ``_C`` call serves eager
CPU use; the custom op (+ fake) lets torch.compile trace it, and runs the torch reference off
the CPU.
"""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import IO_CODE, empty_rows, ptr

OP = "tersor::attention_decode"


def decode_problem(q, k, v, cos, sin, k_cache, v_cache, pos: int, start=None) -> Optional[str]:
    """What is wrong with the arguments (the tensor and what was expected), or None. Messages
    are built only on failure: this runs once per step and layer."""
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
    rows = q.dim() == 3  # T new rows per sequence, else one (a decode step)
    lead = (b, q.shape[1]) if rows else (b,)
    form = f"B={b}, T={q.shape[1]}, " if rows else f"B={b}, "
    if q.dim() not in (2, 3) or tuple(q.shape[:-1]) != lead or q.shape[-1] % d:
        return f"q must be [{form}H*D] with D = {d}, got {tuple(q.shape)}"
    h = q.shape[-1] // d
    if h % hkv or h // hkv > 64:
        return f"{h} query heads for {hkv} kv heads (a multiple, at most 64 per kv head)"
    for name, t in (("k", k), ("v", v)):
        if tuple(t.shape) != (*lead, hkv * d):
            return f"{name} must be [{form}Hkv*D={hkv * d}], got {tuple(t.shape)}"
    if (cos is None) != (sin is None):
        return "cos and sin go together"
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            if tuple(t.shape) != (*lead, d):
                return f"{name} must be [{form}D={d}], got {tuple(t.shape)}"
        if cos.stride() != sin.stride():
            return "cos and sin must have the same strides"
    for name, t in (("q", q), ("k", k), ("v", v), ("cos", cos)):
        if t is not None and t.stride(-1) != 1:
            return f"{name} needs unit column stride, got strides {t.stride()}"
    if rows and b > 1 and q.shape[1] > 1:  # row (b, t) at (b T + t) * ld
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(0) != q.shape[1] * t.stride(1):
                return f"{name}'s rows must be evenly spaced, got strides {t.stride()}"
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return "k_cache / v_cache must be contiguous"
    n_new = q.shape[1] if rows else 1
    if not (0 <= pos and pos + n_new <= cap):
        return f"pos {pos} outside the cache's {cap} rows" + (
            f" ({n_new} new rows)" if rows else ""
        )
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


def _row_stride(t: torch.Tensor) -> int:
    """Elements between consecutive new rows of [B, X] or [B, T, X] (T rows evenly spaced)."""
    return t.stride(0) if t.dim() == 2 or t.shape[1] == 1 else t.stride(1)


def attention_decode_cpu(q, k, v, cos, sin, k_cache, v_cache, pos: int, scaling: float, start=None):
    """The native kernel on validated CPU tensors."""
    b, hkv, cap, d = k_cache.shape
    n_new = q.shape[1] if q.dim() == 3 else 1
    out = empty_rows(q, q.shape[-1])
    ldcs = ldcs_t = 0
    if cos is not None:
        ldcs, ldcs_t = cos.stride(0), (cos.stride(1) if cos.dim() == 3 else 0)
    _C.attention_decode(
        q.data_ptr(), _row_stride(q), k.data_ptr(), _row_stride(k), v.data_ptr(), _row_stride(v),
        ptr(cos), ptr(sin), ldcs, ldcs_t, k_cache.data_ptr(), v_cache.data_ptr(), b, n_new,
        q.shape[-1] // d, hkv, d, cap, pos, ptr(start), scaling, out.data_ptr(),
        _row_stride(out), IO_CODE[q.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return out


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] * cos + rotate_half(x) * sin (HF's apply_rotary_pos_emb), in x's dtype."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def attention_decode_ref(q, k, v, cos, sin, k_cache, v_cache, pos: int, scaling: float, start=None):
    """The rule in torch, fp32 arithmetic (the cache written in its dtype)."""
    if q.dim() == 2:  # a decode step: one new row
        q, k, v = q[:, None], k[:, None], v[:, None]
        cos, sin = (None, None) if cos is None else (cos[:, None], sin[:, None])
        out = attention_decode_ref(q, k, v, cos, sin, k_cache, v_cache, pos, scaling, start)
        return out[:, 0]
    b, hkv, _, d = k_cache.shape
    n = q.shape[1]
    h = q.shape[-1] // d
    qf, kf = q.float().view(b, n, h, d), k.float().view(b, n, hkv, d)
    if cos is not None:
        c, s = cos.float()[:, :, None], sin.float()[:, :, None]
        qf, kf = rope_ref(qf, c, s), rope_ref(kf, c, s)
    k_cache[:, :, pos : pos + n] = kf.transpose(1, 2).to(k_cache.dtype)
    v_cache[:, :, pos : pos + n] = v.view(b, n, hkv, d).transpose(1, 2)
    keys = k_cache[:, :, : pos + n].float().repeat_interleave(h // hkv, dim=1)
    values = v_cache[:, :, : pos + n].float().repeat_interleave(h // hkv, dim=1)
    s = (qf.transpose(1, 2) @ keys.transpose(-1, -2)) * scaling  # [B, H, T, pos + T]
    cols = torch.arange(pos + n, device=s.device)
    hidden = cols[None] > pos + torch.arange(n, device=s.device)[:, None]  # causal
    hidden = hidden[None].expand(b, n, pos + n)
    if start is not None:
        hidden = hidden | (cols[None, None] < start.to(s.device)[:, None, None])
    w = torch.softmax(s.masked_fill(hidden[:, None], float("-inf")), dim=-1)
    return (w @ values).transpose(1, 2).reshape(b, n, h * d).to(q.dtype)


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
    """Attention over a step's new rows (module docstring); the torch reference off the CPU."""
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
