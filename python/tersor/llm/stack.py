"""Decode steps of a whole Hugging Face decoder stack (a causal LM's ``model.model``: embedding,
decoder layers, final norm) with every layer in one native call, once each layer steps as one
native call itself (tersor.llm.layer's ``_Native``: int8 / int4 weights with int8 or float
activations, act-order int4, 2:4 int8 / fp32 values).

Why: with each layer's step native, a 1B Llama's W4A8 decode step (Zen 3, 2 threads) still
spent ~4 ms of ~29 in Python: per layer ~170 us of module call, HF's checkpointing wrapper,
argument shims, the lean step's checks and cache bookkeeping, and per step the model forward's
mask and position logic. A decode step of a swapped stack is

    h = embed_tokens(input_ids);  cos, sin = rotary_emb(h, position_ids)
    every layer's native step in one call (_C.decoder_layers_step), in place on h's rows
    return norm(h), the cache

from the same modules and native layers, in the same order, as the per-layer path, so its
output is the model's own bit for bit (checked when the stack is swapped: a short prefill and
two decode steps both ways). Anything else takes the model's own forward (and its layers their
lean steps): a prefill, inputs_embeds, output_attentions / output_hidden_states, autograd,
training, torch.compile, a cache that is not HF's DynamicCache or has no rows yet, a mask other
than all-visible or a decode step's left padding, a hook on a decoder layer, a layer replaced
or no longer stepping natively.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn

from tersor import _C
from tersor.llm._swap import fast_subclass
from tersor.llm.attention import CACHE_ARG_NAMES, _buffers, left_padding
from tersor.llm.layer import FastDecoderLayer, _Native
from tersor.ops._common import IO_CODE, ptr

_hooks = nn.modules.module  # the global forward hooks live in this module's namespace

# the model forward's arguments a step may carry (others: the model's own forward)
_ARGS = frozenset(
    {
        "input_ids",
        "attention_mask",
        "position_ids",
        "inputs_embeds",
        "use_cache",
        "cache_position",  # (transformers 4.x; a DynamicCache's rows are its length)
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        *CACHE_ARG_NAMES,
    }
)


class FastDecoderStack:
    """Mixed into a swapped decoder-stack class (see the module docstring)."""

    _tersor_stack = None  # the _StackPlan of this instance, set when it is swapped

    def forward(self, *args, **kwargs):
        plan = self._tersor_stack
        if plan is not None and not args:
            out = plan.step(self, kwargs)
            if out is not None:
                return out
        return super().forward(*args, **kwargs)


def _start_rows(mask, b: int, length: int):
    """A decode step's 2-D attention mask [B, length] (1 / True: visible) as the kernel's start
    rows: None when every row is visible, int64 [B] for left padding (each sequence hides a
    prefix of its cache rows, never the new one), False for anything else."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != (b, length):
        return False
    valid = mask if mask.dtype is torch.bool else mask != 0
    return None if bool(valid.all()) else left_padding(valid)


class _StackPlan:
    """A swapped stack's decode step over the modules it had at the swap."""

    def __init__(self, model: nn.Module, out_cls: type, out_field: str):
        self.layers = list(model.layers)
        self.plans = [layer._tersor_plan for layer in self.layers]
        self.out_cls, self.out_field = out_cls, out_field
        self.config = model.config
        self.hidden = model.norm.weight.shape[0]
        self.head_dim = self.plans[0].attn.head_dim
        first = self.plans[0]
        nkv = first.qkv_split[1] if first.qkv_split is not None else first.qkv[1].out_features
        self.kv_heads = nkv // self.head_dim
        # (parent, child name, child): the tree as it was; a step checks it is still so
        self.tree = [(model, n, getattr(model, n)) for n in ("embed_tokens", "layers", "norm")]
        self.tree += [(model.layers, str(i), layer) for i, layer in enumerate(self.layers)]
        self.hook_dicts = [d for m in self.layers for d in (m._forward_hooks, m._forward_pre_hooks)]

    def _natives(self, dtype, rows: int) -> Optional[list]:
        """Every layer's native step, current and serving `rows` rows of this dtype, or None."""
        if _hooks._global_forward_hooks or _hooks._global_forward_pre_hooks:
            return None
        if any(self.hook_dicts):
            return None
        for parent, name, child in self.tree:
            if parent._modules.get(name) is not child:
                return None
        out = []
        for layer, plan in zip(self.layers, self.plans):
            if layer._tersor_plan is not plan or layer.training or not plan._current():
                return None
            native = plan.native
            if native is None:
                native = plan.native = _Native(plan)
            if native.layer is None or native.dtype is not dtype or not native.serves(dtype, rows):
                return None
            if not native.current():
                plan.native = None  # rebuilt at the next step
                return None
            out.append(native.layer)
        return out

    def step(self, model: nn.Module, kw: dict):
        """The stack's output for a decode step, or None (its own forward)."""
        if model.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        if not _ARGS.issuperset(kw) or kw.get("inputs_embeds") is not None:
            return None
        cfg = self.config
        if kw.get("use_cache") is False or kw.get("return_dict") is False:
            return None
        if kw.get("output_attentions") or getattr(cfg, "output_attentions", False):
            return None
        if kw.get("output_hidden_states") or getattr(cfg, "output_hidden_states", False):
            return None
        ids = kw.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] != 1:
            return None
        if not ids.is_cpu:
            return None
        b = ids.shape[0]
        cache = next((kw[n] for n in CACHE_ARG_NAMES if kw.get(n) is not None), None)
        rows = getattr(cache, "layers", None)
        if rows is None or len(rows) != len(self.layers) or getattr(cache, "offloading", False):
            return None
        dtype, pos = self.plans[0].norm1.weight.dtype, None
        for row in rows:
            if type(row).__name__ != "DynamicLayer" or not row.is_initialized:
                return None  # sliding-window, static, quantized caches: HF's path
            keys = row.keys
            if keys is None or keys.dim() != 4 or keys.dtype is not dtype or not keys.is_cpu:
                return None
            if keys.shape[:2] != (b, self.kv_heads) or keys.shape[3] != self.head_dim:
                return None  # (another batch's cache: the model's path says what is wrong)
            if pos is None:
                pos = keys.shape[-2]
            elif keys.shape[-2] != pos:
                return None
        if not pos or dtype not in IO_CODE:
            return None  # (a fresh cache: HF initializes it in the model's path)
        start = _start_rows(kw.get("attention_mask"), b, pos + 1)
        if start is False:
            return None
        layers = self._natives(dtype, b)
        if layers is None:
            return None
        h = model.embed_tokens(ids)
        position_ids = kw.get("position_ids")
        if position_ids is None:  # (what the model's forward makes)
            position_ids = torch.full((1, 1), pos, dtype=torch.long)
        cos, sin = model.rotary_emb(h, position_ids=position_ids)
        d, hidden = self.head_dim, self.hidden
        if h.shape != (b, 1, hidden) or h.dtype is not dtype or cos.dtype is not dtype:
            return None
        cos, sin = cos.reshape(-1, d).contiguous(), sin.reshape(-1, d).contiguous()
        if cos.shape[0] not in (1, b):
            return None
        x = h.reshape(b, hidden).clone()  # stepped in place (never a tensor a hook kept)
        bufs = [_buffers(row, row.keys, row.values, pos) for row in rows]
        _C.decoder_layers_step(
            layers, x.data_ptr(), x.data_ptr(), b, cos.data_ptr(), sin.data_ptr(),
            d if cos.shape[0] == b else 0, [k.data_ptr() for k, _ in bufs],
            [v.data_ptr() for _, v in bufs], [k.shape[2] for k, _ in bufs], pos, ptr(start),
            IO_CODE[dtype], torch.get_num_threads(),
        )  # fmt: skip
        for row, (kbuf, vbuf) in zip(rows, bufs):
            row.keys, row.values = kbuf[:, :, : pos + 1], vbuf[:, :, : pos + 1]
        return self.out_cls(
            last_hidden_state=model.norm(x.view(b, 1, hidden)), **{self.out_field: cache}
        )


def is_decoder_stack(module: nn.Module) -> bool:
    """A decoder stack whose layers all took the lean decode step."""
    layers = getattr(module, "layers", None)
    return (
        isinstance(layers, nn.ModuleList)
        and len(layers) > 0
        and all(isinstance(m, FastDecoderLayer) for m in layers)
    )


def unsupported(module: nn.Module) -> Optional[str]:
    """Why such a stack cannot take the one-call step, or None."""
    missing = [
        n for n in ("embed_tokens", "norm", "rotary_emb", "config") if not hasattr(module, n)
    ]
    if missing:
        return f"not a Llama-style decoder stack (no {', '.join(missing)})"
    if not isinstance(module.embed_tokens, nn.Embedding):
        return f"its embed_tokens is a {type(module.embed_tokens).__name__}, not nn.Embedding"
    if getattr(module.config, "num_hidden_layers", None) != len(module.layers):
        return "config.num_hidden_layers is not the number of layers"
    if any(m.self_attn.layer_idx != i for i, m in enumerate(module.layers)):
        return "its layers' layer_idx are not their positions"
    params = inspect.signature(type(module).forward).parameters
    if not any(n in params for n in CACHE_ARG_NAMES):
        return "its forward takes no cache argument"
    return None


def _natively_stepped(module: nn.Module) -> bool:
    """Every layer steps as one native call (built now where it was not yet)."""
    for layer in module.layers:
        plan = layer._tersor_plan
        if plan.native is None:
            plan.native = _Native(plan)
        if plan.native.layer is None:
            return False
    return True


def _self_check(module: nn.Module, plan: _StackPlan, cache_arg: str) -> Optional[str]:
    """The stack's own forward and the one-call step on the same short sequence (a 3-token
    prefill by the forward, then two decode steps; scratch caches): None when the step served
    both and every output and cache row is the same bit for bit."""
    from transformers.cache_utils import DynamicCache

    vocab = module.embed_tokens.num_embeddings
    ids = torch.randint(0, vocab, (1, 5), generator=torch.Generator().manual_seed(0))
    caches = (DynamicCache(), DynamicCache())

    def kwargs(t0, t1, cache):
        return dict(
            input_ids=ids[:, t0:t1],
            position_ids=torch.arange(t0, t1)[None],
            use_cache=True,
            **{cache_arg: cache},
        )

    with torch.inference_mode():
        want = [module(**kwargs(a, b, caches[0])) for a, b in ((0, 3), (3, 4), (4, 5))]
        module(**kwargs(0, 3, caches[1]))
        got = [plan.step(module, kwargs(t, t + 1, caches[1])) for t in (3, 4)]
    if any(g is None for g in got):
        return "the one-call step declined a plain decode step"
    if not all(
        torch.equal(a.last_hidden_state, b.last_hidden_state) for a, b in zip(want[1:], got)
    ):
        return "the one-call step differs from the stack's own forward"
    for la, lb in zip(caches[0].layers, caches[1].layers):
        if not (torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)):
            return "the one-call step writes different cache rows"
    return None


def swap_stack(module: nn.Module) -> Optional[str]:
    """Gives the decoder stack the one-call decode step; the reason it was left as it was, or
    None. (Call only for an is_decoder_stack module whose layers step natively.)"""
    if isinstance(module, FastDecoderStack):
        return None
    reason = unsupported(module)
    if reason is not None:
        return reason
    params = inspect.signature(type(module).forward).parameters
    cache_arg = next(n for n in CACHE_ARG_NAMES if n in params)
    try:
        from transformers.cache_utils import DynamicCache

        with torch.inference_mode():  # what the forward returns, and under which field the cache
            cache = DynamicCache()
            ids = torch.zeros(1, 1, dtype=torch.long)
            out = module(input_ids=ids, use_cache=True, **{cache_arg: cache})
        field = next((k for k in out.keys() if out[k] is cache), None)
        if field is None:
            return "its forward does not return the cache it is given"
        plan = _StackPlan(module, type(out), field)
        reason = _self_check(module, plan, cache_arg)
    except Exception as e:  # the check itself failed: leave the stack as it was
        reason = f"self-check failed: {type(e).__name__}: {e}"
    if reason is None:
        module._tersor_stack = plan
        module.__class__ = fast_subclass(type(module), FastDecoderStack)
        _register_output_capture(module)
    return reason


def _register_output_capture(module: nn.Module) -> None:
    """transformers 5 looks up what a model can record (output_hidden_states, attentions) by
    its class's name, registered when the model is built: the swapped class needs it too."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # (older versions record outputs inside the forward)
        return
    _CAN_RECORD_REGISTRY[module] = getattr(module, "_can_record_outputs", None)
