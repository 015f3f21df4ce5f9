"""Decode steps and prefills of Hugging Face attention blocks on ``tersor::attention_decode``:
Llama-style blocks (q/k/v/o projections or Phi-3's fused qkv_proj, rotary embedding) and
GPT-2's (fused c_attn, no rotary: the kernel's cos / sin are then None).

A decode step (one new token per sequence) of a Llama-style attention block is, in HF eager
mode, ~25 torch ops around the projections: views and transposes, rotary embedding (slices,
a negation, a cat, four products, two sums), two ``torch.cat`` that grow the KV cache by
copying all of it, and SDPA on one query row (~0.2 ms alone at 190 cached positions, 2 threads,
Zen 3). Here the three projections run as before (our layers, fused), and one native call does
the rest: rope q and k, write k and v into the cache, attend (csrc/attention/attention.h). A
prefill (T new rows, causal) takes the same call: a 1B Llama's 128-token prefill spent ~4 ms
per layer in those ops, ~2.7 ms here (Sapphire Rapids, 2 threads).

How it attaches, and why so:
- Masks: none (sdpa without padding: causal for a prefill into an empty cache), all-visible /
  plain causal (eager attention), and a decode step's left padding (a batch of prompts of
  different lengths: each sequence skips its padded cache rows) take the kernel; any other
  mask (a left-padded prefill, whose padded query rows see nothing) takes the model's own
  forward.
- The attention module's class is swapped for a subclass whose ``forward`` takes the fast
  path when it applies and otherwise calls the model's own ``forward`` unchanged (other
  masks, training, other caches). Same instance, same children and state_dict keys: the
  module tree the user sees is the model's.
- The cache stays HF's ``DynamicCache``. Its ``DynamicLayer`` grows by ``torch.cat`` (a copy of
  the whole cache per token); here the layer's keys / values become views of buffers with
  room to grow (capacity doubling), so a step writes one row. Anything HF does to the layer
  (crop, reorder for beam search, its own update in a prefill) replaces those views with
  plain tensors; the next fast step notices and adopts them into new buffers.
- Each block is checked when it is swapped: its own forward and the fast one run a short
  prefill and two decode steps on scratch caches and must agree, else the block is left as
  it was, with the reason in the report.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn

from tersor.llm._swap import fast_subclass
from tersor.ops.attention import attention_decode_cpu

CACHE_ARG_NAMES = ("cache", "past_key_values", "past_key_value")  # across transformers versions
MIN_CAPACITY = 256  # cache rows allocated at first adoption


class FastDecodeAttention:
    """Mixed into a swapped HF attention class (see the module docstring)."""

    _tersor_cache_arg = "cache"  # the HF forward's name for the cache, set per class
    _tersor_layout = "llama"  # where the projections are (_layout), set per class

    def forward(self, *args, **kwargs):
        out = self._tersor_decode_step(args, kwargs)
        if out is None:
            return super().forward(*args, **kwargs)
        return out

    def _tersor_decode_step(self, args, kwargs):
        """(attn_output, None) for a step the kernel serves (a decode step, or a causal prefill
        chunk: see _step_mask), else None."""
        x = args[0] if args else kwargs.get("hidden_states")
        if len(args) > 1 or x is None:
            return None
        rows = self._tersor_cache_rows(x, kwargs)
        if rows is None:
            return None
        out = self._tersor_attend(x, rows, *self._tersor_qkv(x))
        if out is None:
            return None
        return (self.c_proj(out) if self._tersor_layout == "gpt2" else self.o_proj(out)), None

    def _tersor_cache_rows(self, x, kwargs):
        """What a step needs besides q, k, v: (cache layer, its keys, values, pos, start rows,
        cos, sin), or None when the step is not the kernel's (the model's own forward)."""
        if self.training or torch.compiler.is_compiling():
            return None  # (compiled: the model's own forward is what dynamo traces)
        cache = kwargs.get(self._tersor_cache_arg)
        pe = kwargs.get("position_embeddings")
        rope = self._tersor_layout != "gpt2"  # GPT-2 adds learned positions before its blocks
        if (
            cache is None
            or (rope and pe is None)
            or kwargs.get("encoder_hidden_states") is not None
        ):
            return None
        if x.dim() != 3 or x.shape[1] == 0 or not x.is_cpu:
            return None
        if x.requires_grad and torch.is_grad_enabled():
            return None
        layers = getattr(cache, "layers", None)
        idx = self.layer_idx
        if layers is None or len(layers) <= idx or getattr(cache, "offloading", False):
            return None
        layer = layers[idx]
        if type(layer).__name__ != "DynamicLayer":
            return None  # sliding-window, static, quantized caches: HF's path
        keys, values = (layer.keys, layer.values) if layer.is_initialized else (None, None)
        fresh = keys is None or keys.numel() == 0  # no rows yet (HF's empty may be 1-D)
        if not fresh and (keys.dim() != 4 or keys.dtype != x.dtype):
            return None
        if not fresh and keys.shape[0] != x.shape[0]:
            return None  # another batch's cache: the model's own path says what is wrong
        pos = 0 if fresh else keys.shape[-2]
        start = _step_mask(kwargs.get("attention_mask"), x.shape[1], pos)
        if start is False:
            return None  # a mask that is not causal (+ left padding in a decode step)
        cos, sin = pe if rope else (None, None)
        if rope and (cos.dtype != x.dtype or cos.shape[-1] != self.head_dim):
            return None  # (a partial rotary's cos is narrower than a head)
        return layer, (None if fresh else keys), values, pos, start, cos, sin

    def _tersor_attend(self, x, rows, q, k, v):
        """The kernel's step on q, k, v [B, n, heads * D] (the projections' outputs): rope, the
        cache rows written, attention; [B, n, heads * D], or None (the model's own path)."""
        layer, keys, values, pos, start, cos, sin = rows
        b, n = x.shape[:2]
        d = self.head_dim
        if getattr(self, "q_norm", None) is not None:  # Qwen3: RMSNorm per head, before rope
            q = self.q_norm(q.view(b, n, -1, d)).reshape(b, n, -1)
            k = self.k_norm(k.view(b, n, -1, d)).reshape(b, n, -1)
        if not (q.dtype == k.dtype == v.dtype == x.dtype):
            return None
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return None  # autograd through float projections: the model's own path
        if keys is None:  # HF's own initialization, on empty rows
            empty = k.new_empty(b, k.shape[-1] // d, 0, d)
            keys, values = layer.update(empty, empty.clone())
        kbuf, vbuf = _buffers(layer, keys, values, pos, n)
        if n == 1:  # the kernel's decode form: [B, X] rows
            q, k, v = q.view(b, -1), k.view(b, -1), v.view(b, -1)
        if cos is not None:
            cos = cos.reshape(cos.shape[0], n, d).expand(b, n, d)  # [B or 1, n, D]
            sin = sin.reshape(sin.shape[0], n, d).expand(b, n, d)
            if n == 1:
                cos, sin = cos[:, 0], sin[:, 0]
        out = attention_decode_cpu(q, k, v, cos, sin, kbuf, vbuf, pos, self.scaling, start)
        layer.keys, layer.values = kbuf[:, :, : pos + n], vbuf[:, :, : pos + n]
        return out.view(b, n, -1)

    def _tersor_qkv(self, x):
        """q, k, v [B, 1, heads * D]: three projections, or views into one fused output (Phi-3's
        qkv_proj, GPT-2's c_attn): rows with unit column stride, what the kernel reads."""
        if self._tersor_layout == "gpt2":
            return self.c_attn(x).split(self.split_size, dim=2)
        if self._tersor_layout == "llama":
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        qkv = self.qkv_proj(x)
        nq = self.config.num_attention_heads * self.head_dim
        nkv = self.num_key_value_heads * self.head_dim
        return qkv[..., :nq], qkv[..., nq : nq + nkv], qkv[..., nq + nkv :]


# (mask, n, pos, its start) of the last step: every layer of a step gets the same mask. One
# tuple, replaced whole, so threads running models at once never pair one's mask with another's
# start.
_last_mask: list = [(None, 0, 0, None)]


def _step_mask(mask, n: int, pos: int):
    """A step's mask as the kernel's start rows: None when the step is plain causal attention
    (new row t sees cache rows 0 .. pos + t), int64 [B] for a decode step's left padding (each
    row hides a prefix, never the new position), False for anything else (the model's own
    path). HF passes no mask for a prefill without padding (sdpa; causal) and a [B, 1, n,
    pos + n] mask otherwise (bool: True attends; float: 0 attends); a prefill with padding
    takes the model's path. Computed once per step: HF hands every layer the same mask."""
    if mask is None:
        return None if n == 1 or pos == 0 else False  # (sdpa: causal from the first row)
    last = _last_mask[0]
    if last[0] is mask and last[1] == n and last[2] == pos:
        return last[3]
    result = False
    length = pos + n
    if mask.dim() == 4 and mask.shape[-2] == n and mask.shape[-1] == length:
        valid = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0  # [B, n, length]
        causal = torch.arange(length)[None] <= pos + torch.arange(n)[:, None]
        if bool((valid == causal).all()):
            result = None
        elif n == 1:
            result = left_padding(valid[:, 0])
    _last_mask[0] = (mask, n, pos, result)
    return result


def left_padding(valid: torch.Tensor):
    """A decode step's visible cache rows, bool [B, length], as the kernel's start rows: int64
    [B] when each sequence hides a prefix of its rows (never the new, last one), else False."""
    length = valid.shape[-1]
    lead = (~valid).to(torch.int64).cumprod(-1).sum(-1)  # hidden prefix lengths
    if bool((valid.sum(-1) == length - lead).all()) and int(lead.max()) < length:
        return lead.contiguous()
    return False


def _buffers(layer, keys: torch.Tensor, values: torch.Tensor, pos: int, n: int = 1):
    """The layer's growable cache buffers, [B, Hkv, capacity, D] with capacity >= pos + n, holding
    its keys / values in rows [0, pos): the current ones when layer.keys is still their view,
    else new ones (capacity doubling) with the layer's tensors copied in."""
    kbuf = getattr(layer, "_tersor_kbuf", None)
    vbuf = getattr(layer, "_tersor_vbuf", None)
    if (
        kbuf is not None
        and keys.data_ptr() == kbuf.data_ptr()
        and values.data_ptr() == vbuf.data_ptr()
        and keys.shape[:2] == kbuf.shape[:2]
        and keys.shape[-1] == kbuf.shape[-1]
        and keys.dtype == kbuf.dtype
        and pos + n <= kbuf.shape[2]
    ):
        return kbuf, vbuf
    b, hkv, _, d = keys.shape
    cap = max(MIN_CAPACITY, 2 * (pos + n))
    kbuf = keys.new_empty(b, hkv, cap, d)
    vbuf = values.new_empty(b, hkv, cap, d)
    kbuf[:, :, :pos] = keys
    vbuf[:, :, :pos] = values
    layer._tersor_kbuf, layer._tersor_vbuf = kbuf, vbuf
    return kbuf, vbuf


# -- swapping ------------------------------------------------------------------------------------


def _layout(module: nn.Module) -> str:
    """Where a block's projections are: "llama" (q/k/v/o_proj), "phi3" (fused qkv_proj, o_proj)
    or "gpt2" (fused c_attn and c_proj, no rotary embedding)."""
    if hasattr(module, "c_attn") and hasattr(module, "c_proj"):
        return "gpt2"
    return "phi3" if hasattr(module, "qkv_proj") else "llama"


def _fast_class(module: nn.Module) -> type:
    cls = type(module)
    params = inspect.signature(cls.forward).parameters
    cache_arg = next((n for n in CACHE_ARG_NAMES if n in params), None)
    return fast_subclass(
        cls, FastDecodeAttention, _tersor_cache_arg=cache_arg, _tersor_layout=_layout(module)
    )


def unsupported(module: nn.Module) -> Optional[str]:
    """Why this attention module cannot take the fast path, or None."""
    layout = _layout(module)
    projections = {
        "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "phi3": ("qkv_proj", "o_proj"),
        "gpt2": ("c_attn", "c_proj", "split_size"),
    }[layout]
    missing = [
        n for n in (*projections, "head_dim", "scaling", "layer_idx") if not hasattr(module, n)
    ]
    if layout == "phi3":  # the split needs the head counts
        cfg = getattr(module, "config", None)
        if not hasattr(cfg, "num_attention_heads") or not hasattr(module, "num_key_value_heads"):
            missing.append("config.num_attention_heads / num_key_value_heads")
    if missing:
        return f"not a Llama-, Phi-3- or GPT-2-style attention block (no {', '.join(missing)})"
    params = inspect.signature(type(module).forward).parameters
    if not any(n in params for n in CACHE_ARG_NAMES):
        return "its forward takes no cache argument"
    if layout != "gpt2" and "position_embeddings" not in params:
        return "its forward takes no position_embeddings argument"
    if layout == "gpt2" and getattr(module, "is_cross_attention", False):
        return "cross-attention"
    if layout == "gpt2" and getattr(module, "reorder_and_upcast_attn", False):
        return "reorder_and_upcast_attn (its own eager attention)"
    cfg = getattr(module, "config", None)
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return f"sliding-window attention (window {cfg.sliding_window})"
    if getattr(cfg, "partial_rotary_factor", 1.0) not in (None, 1.0):
        return f"partial rotary embedding (factor {cfg.partial_rotary_factor})"
    if getattr(cfg, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    if module.head_dim % 8:
        return f"head dim {module.head_dim} is not a multiple of 8"
    if getattr(module, "is_causal", True) is not True:
        return "not causal"
    return None


def _self_check(module: nn.Module, fast: type) -> Optional[str]:
    """Runs the module's own forward and the fast one on the same short sequence (a 3-token
    prefill, then two decode steps) with scratch caches; None when they agree."""
    from transformers.cache_utils import DynamicCache

    p = next(module.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    for buf in module.buffers():  # packed layers hold their weights in buffers
        if buf.is_floating_point() and buf.dtype in (torch.bfloat16, torch.float16):
            dtype = buf.dtype
    layout = fast._tersor_layout
    first = {"llama": "q_proj", "phi3": "qkv_proj", "gpt2": "c_attn"}[layout]
    first = getattr(module, first)
    # (a transformers Conv1D keeps its weight [in, out]; our layers say in_features)
    hidden = getattr(first, "in_features", None) or first.weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(1, 5, hidden, generator=gen).to(dtype)
    ang = torch.randn(1, 5, module.head_dim, generator=gen)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    caches = (DynamicCache(), DynamicCache())
    outs = []
    orig = type(module)
    with torch.inference_mode():
        for cls, cache in zip((orig, fast), caches):
            module.__class__ = cls
            try:
                run = (
                    lambda t0, t1: module(  # noqa: E731
                        hidden_states=xs[:, t0:t1],
                        attention_mask=None,
                        **{fast._tersor_cache_arg: cache},
                        **(
                            {}
                            if layout == "gpt2"
                            else {"position_embeddings": (cos[:, t0:t1], sin[:, t0:t1])}
                        ),
                    )[0]
                )
                outs.append([run(0, 3), run(3, 4), run(4, 5)])
            finally:
                module.__class__ = orig
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for step, (a, b) in enumerate(zip(*outs)):
        err = ((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-30)).item()
        if not err <= tol:
            return f"fast path differs from the module's own forward at step {step} ({err:.2g})"
    la, lb = (c.layers[module.layer_idx] for c in caches)
    if not torch.allclose(la.keys.float(), lb.keys.float(), rtol=tol, atol=tol):
        return "fast path writes different cache keys"
    return None


def swap_attention(module: nn.Module) -> Optional[str]:
    """Gives the module the fast decode path; the reason it was left as it was, or None."""
    if isinstance(module, FastDecodeAttention):
        return None
    reason = unsupported(module)
    if reason is not None:
        return reason
    fast = _fast_class(module)
    try:
        reason = _self_check(module, fast)
    except Exception as e:  # the check itself failed: leave the block as it was
        reason = f"self-check failed: {type(e).__name__}: {e}"
    if reason is None:
        module.__class__ = fast
    return reason
