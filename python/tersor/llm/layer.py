"""Decode steps of whole Hugging Face decoder layers in one lean call: pre-norm attention and a
SwiGLU MLP, each with its residual add (Llama, Qwen2 / Qwen3, Phi-3, Mistral without a sliding
window), once ``optimize_decoding_`` has given the layer's attention, norms and MLP their
native forwards.

Why: with those forwards a 1B Llama's W4A8 decode step (Zen 2, 2 threads) still spent ~5 ms of
~36 in Python between the native calls: 12 module calls per layer, each through
``nn.Module.__call__``, HF's checkpointing wrapper and argument shims, plus the fused-projection
bookkeeping and each piece's own checks. A decode step (one new row per sequence) of a swapped
layer makes the same native calls in the same order from one function instead:

    h = rms_norm(x)         q, k, v = one call (fused group) or three     attention (+ cache)
    x = x + o_proj(attn)    h = rms_norm(x)    g, u = one call or two     x = x + down(silu(g) * u)

so its output is the layer's own bit for bit (checked when the layer is swapped). Anything
else takes the layer's own forward: a prefill, autograd, training, torch.compile, a cache or
mask the attention kernel does not serve, a hook on a module the step would skip, a module
replaced since the swap.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn

from tersor.llm._swap import fast_subclass
from tersor.llm.attention import CACHE_ARG_NAMES, FastDecodeAttention, _buffers
from tersor.llm.mlp import FastSwiGLU
from tersor.llm.norm import FastRMSNorm
from tersor.nn.fused import FusedGroup
from tersor.ops._common import IO_CODE, NATIVE, ptr
from tersor.ops.act import silu_mul_cpu
from tersor.ops.dense_path import DENSE_MIN_ROWS
from tersor.ops.gemm_w4 import (
    BF16_MIN_ROWS,
    FP32_BF16_MIN_ROWS,
    PLANES_MAX_ROWS,
    bf16_key,
    fp32_tiles_rows,
    w4_tiles,
)
from tersor.ops.gemm_w8 import w8_form
from tersor.ops.norm import rms_norm_cpu

_F32 = torch.float32
_NEVER = 1 << 62  # a Projection's rows that never come
_hooks = nn.modules.module  # the global forward hooks live in this module's namespace


class FastDecoderLayer:
    """Mixed into a swapped decoder-layer class (see the module docstring)."""

    _tersor_plan = None  # the _Plan of this instance, set when it is swapped

    def forward(self, hidden_states, *args, **kwargs):
        plan = self._tersor_plan
        if plan is not None and not args:
            out = plan.step(self, hidden_states, kwargs)
            if out is not None:
                return out
        return super().forward(hidden_states, *args, **kwargs)


def _project(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) for x [M, K]: a tersor layer's prepared native call (its weight and bias read
    now, as its forward does), else the module's own call."""
    fmt = getattr(module, "fmt", None)
    run = getattr(fmt, "cpu_call", None)
    if run is not None and module.kernel in NATIVE and (x.dtype is _F32 or fmt.cpu_half):
        y = run(x, module._buffers["bias"])
        if y is not None:
            return y
    return module(x)


def _project_all(modules: list, x: torch.Tensor) -> list:
    """Every module's output for x [M, K]: one call of their fused group (nn/fused.py) while it
    is enabled and holds exactly them, else one call each."""
    group = getattr(modules[0], "_fused", None)
    if group is not None and group.enabled and group.layers == modules:
        outs = group.outputs(x)
        if outs is not None:
            return outs
    return [_project(m, x) for m in modules]


# A projection's record as csrc/decoder_layer's Projection takes it (the fields in order):
# kind, w, scale, aux, bias, x_scale, K, N, group_size, ngroups, col, bf16_tiles_from,
# fp32_tiles_from, meta, perm
RECORD = 15
KIND, XS_AT, K_AT, N_AT, GROUP, PERM_AT = 0, 5, 6, 7, 8, 14  # offsets in a record
W4_KINDS = (2, 4)  # int4 weights with float activations
W8_KIND = 7  # int8 weights, float activations
PLANES_KIND = 8  # W4A8 with 16-bit activations as two int8 planes (act_bits=16)


def _native_projection(module, fmt, bias, col: int):
    """The RECORD integers of csrc/decoder_layer's Projection for a packed int8 / int4 weight
    with int8 activations, an int8 / int4 weight with float activations (W8 / W4: imported
    weight-only checkpoints) or a 2:4 sparse weight (int8 values x int8 activations, or
    fp32), on the native CPU kernel, and the tensors they point into; None for any other
    layer (the lean step then runs in Python)."""
    from tersor.formats import Int4Format, Int8Format, Sparse24Format
    from tersor.nn.linear import PackedLinear

    if not isinstance(module, PackedLinear) or module.kernel not in NATIVE or fmt.cpu_call is None:
        return None
    xs, act_int8, meta = fmt.input_scale, getattr(fmt, "act_int8", False), None
    perm = getattr(fmt, "perm", None)  # act-order: the step gathers fp32 rows, as the layer
    if perm is not None and (xs is not None or not isinstance(fmt, Int4Format)):
        return None
    if isinstance(fmt, Sparse24Format):
        # (fp32 rows in the kernels: the step stages half rows as the layer's forward widens
        # them; rows that take the dense copy are left to serves())
        tensors = (fmt.values, fmt.scale, fmt.colsum) if fmt.int8 else (fmt.values, None, None)
        kind, sizes, meta = 5 if fmt.int8 else 6, (0, 0), fmt.meta
    elif not fmt.cpu_half and perm is None:  # (the kernel's call stages half rows itself)
        return None
    elif isinstance(fmt, Int8Format):
        tensors = (fmt.packed, fmt.scale, fmt.colsum if act_int8 else None)
        kind, sizes = (3 if fmt.narrow_w else 0) if act_int8 else W8_KIND, (0, 0)
    elif isinstance(fmt, Int4Format):
        tensors = (fmt.codes, fmt.scale, fmt.zero)
        kind, sizes = 1 if act_int8 else 2, (fmt.G, fmt.scale.shape[1])
        if act_int8 and fmt.x_planes == 2:
            kind = PLANES_KIND  # (up to PLANES_MAX_ROWS rows: serves())
        if kind == 2 and xs is None and BF16_MIN_ROWS is not None and BF16_MIN_ROWS["w4"] <= 1:
            kind = 4  # its bf16 rows take the bf16 group form at every row count, as here
    else:
        return None
    keep = [t for t in (*tensors, bias, xs, meta, perm) if t is not None]
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in keep):
        return None
    if any(t.dtype != _F32 for t in (bias, xs) if t is not None):
        return None
    ptrs = [0 if t is None else t.data_ptr() for t in (*tensors, bias, xs)]
    # W4 (kind 2): the rows from which the layer's prepared call (ops/gemm_w4.py cpu_runner_w4)
    # takes the group form for bf16 rows without an input scale, and the fp32 tiles for float
    # rows (AMX-BF16 CPUs)
    tiles_from = [_NEVER, _NEVER]
    if kind == W8_KIND and BF16_MIN_ROWS is not None and xs is None:
        tiles_from[0] = BF16_MIN_ROWS["w8"]  # (its bf16 kernel, as w8_form chooses)
    if kind == 2 and fmt.G % 32 == 0:
        if BF16_MIN_ROWS is not None and xs is None:
            tiles_from[0] = BF16_MIN_ROWS[bf16_key(fmt.G)]
        tiles_from[1] = min(fp32_tiles_rows(fmt.G), _NEVER)
    record = [kind, *ptrs, fmt.in_features, fmt.out_features, *sizes, col, *tiles_from]
    return record + [0 if t is None else t.data_ptr() for t in (meta, perm)], keep


class _Native:
    """The layer's step as one native call (_C.DecoderLayer), where every projection is a
    packed int8 / int4 weight with int8 activations, an int8 / int4 one with float activations
    or a 2:4 sparse one (_native_projection): built from the plan's modules, valid while
    their prepared calls are the same objects (a format replacing its tensors prepares a new
    call), their fused groups stay enabled and the norms keep their weights. Holds the tensors
    it points into."""

    def __init__(self, plan: "_Plan"):
        from tersor import _C

        attn, n1, n2 = plan.attn, plan.norm1, plan.norm2
        self.layer, self.dtype, self.weight_only = None, n1.weight.dtype, False
        self.permuted, self.w8_scaled = False, set()
        self.dense_from = _NEVER  # the fewest rows from which a 2:4 layer runs its dense copy
        self.planes = False  # a projection has two activation planes (act_bits=16)
        self.bf16_groups, self.w4_groups = set(), set()
        self.norms, self.calls, self.groups = (n1, n2, *plan.qk_norms), [], []
        self.keep = [n.weight for n in self.norms]
        self.norm_ptrs = [w.data_ptr() for w in self.keep]  # (.to() swaps a Parameter's data)
        d = attn.head_dim
        if self.dtype not in IO_CODE or any(
            not isinstance(n, FastRMSNorm) or w.dtype is not self.dtype or not w.is_contiguous()
            for n, w in zip(self.norms, self.keep)
        ):
            return
        if plan.qk_norms and any(w.shape != (d,) for w in self.keep[2:]):
            return
        stages = []
        for mods in (plan.qkv, [plan.o], plan.gate_up, [plan.down]):
            flat = self._stage(mods)
            if flat is None:
                return
            stages.append(flat)
        kinds = [kind for flat in stages for kind in flat[KIND::RECORD]]
        self.weight_only = any(kind in W4_KINDS for kind in kinds)
        self.planes = PLANES_KIND in kinds
        # group sizes of the weight-only W4 weights, and of those whose bf16 rows take the bf16
        # kernels (kind 4)
        groups = [
            (kind, g) for flat in stages for kind, g in zip(flat[KIND::RECORD], flat[GROUP::RECORD])
        ]
        self.w4_groups = {g for kind, g in groups if kind in W4_KINDS}
        self.bf16_groups = {g for kind, g in groups if kind == 4}
        self.permuted = any(p != 0 for flat in stages for p in flat[PERM_AT::RECORD])
        # whether each W8 projection has an input scale (w8_form reads only that)
        self.w8_scaled = {
            xs != 0
            for flat in stages
            for kind, xs in zip(flat[KIND::RECORD], flat[XS_AT::RECORD])
            if kind == W8_KIND
        }
        hidden = n1.weight.shape[0]
        if plan.qkv_split is None:
            nq, nkv = (m.out_features for m in plan.qkv[:2])
        else:
            nq, nkv = plan.qkv_split
        inter = plan.down.in_features
        # (K, total N) of each stage, as the native step lays its rows out
        want = [({hidden}, nq + 2 * nkv), ({nq}, hidden), ({hidden}, 2 * inter), ({inter}, hidden)]
        got = [(set(flat[K_AT::RECORD]), sum(flat[N_AT::RECORD])) for flat in stages]
        if got != want or nq % d or nkv % d or (nq // d) % (nkv // d):
            return
        qk = ()
        if plan.qk_norms:
            qn, kn = plan.qk_norms
            qk = (qn.weight.data_ptr(), qn.variance_epsilon, kn.weight.data_ptr())
            qk += (kn.variance_epsilon,)
        self.layer = _C.DecoderLayer(
            hidden, n1.weight.data_ptr(), n1.variance_epsilon, n2.weight.data_ptr(),
            n2.variance_epsilon, stages[0], nq, nkv, stages[1], stages[2], inter, stages[3],
            nq // d, nkv // d, d, attn.scaling, *qk,
        )  # fmt: skip

    def _stage(self, modules: list):
        """The flat projections of one stage writing side by side: their fused group's one
        call, or one each."""
        group = getattr(modules[0], "_fused", None)
        if group is not None and group.enabled and group.layers == modules:
            got = _native_projection(modules[0], group.fmt, group.bias, 0)
            if got is None:
                return None
            self.groups.append(group)
            self.calls += [(m, m.fmt, m.fmt.cpu_call, m._buffers["bias"]) for m in modules]
            self.keep += got[1]
            return got[0]
        flat, col = [], 0
        for m in modules:
            fmt = getattr(m, "fmt", None)
            got = None if fmt is None else _native_projection(m, fmt, m._buffers["bias"], col)
            if got is None:
                return None
            self.calls.append((m, m.fmt, m.fmt.cpu_call, m._buffers["bias"]))
            self.keep += got[1]
            flat += got[0]
            if getattr(fmt, "dense_from_rows", None) is not None:
                self.dense_from = min(self.dense_from, fmt.dense_from_rows)
            col += m.out_features
        return flat

    def serves(self, dtype: torch.dtype, rows: int) -> bool:
        """Whether the layers' own calls would run the kernels of this step on `rows` rows of
        `dtype`: int8 activations at any row count; a W4 weight (fp32 activations) below the
        rows of its prepared call's dense panels and scaled bf16 form (ops/gemm_w4.py), and
        for fp32 rows not under "medium" matmul precision (its bf16 kernels): the step has the
        register kernel, the bf16 group form (kind 4 at every row count; kind 2 from the rows
        its projections name, AMX-BF16 CPUs) and the fp32 tiles (from the rows they name). 2:4
        int8 layers below the rows of their dense copy (formats/sparse24.py); W8 layers where
        w8_form names the register kernel, or the bf16 one for bf16 rows (ops/gemm_w8.py).
        Act-order layers' rows are fp32 rows whatever the dtype (formats/int4.py)."""
        if rows >= self.dense_from or (self.planes and rows > PLANES_MAX_ROWS):
            return False  # (act_bits=16 layers take their float rows from PLANES_MAX_ROWS)
        for scaled in self.w8_scaled:  # W8: its register kernel, or the bf16 one for bf16 rows
            form = w8_form(dtype, rows, True if scaled else None)
            if form != "fp32" and (form != "bf16" or dtype is not torch.bfloat16):
                return False
        if self.permuted and not self._w4_serves(_F32, rows):
            return False  # (act-order rows reach their kernels as fp32 rows)
        return self._w4_serves(dtype, rows)

    def _w4_serves(self, dtype: torch.dtype, rows: int) -> bool:
        if not self.weight_only:
            return True
        if rows >= DENSE_MIN_ROWS["w4"]:
            return False
        if dtype is torch.bfloat16:  # (the scaled form: where the group form's rows end)
            if BF16_MIN_ROWS is None:
                return True
            groups = self.w4_groups if BF16_MIN_ROWS["w4"] > 1 else self.bf16_groups
            return not any(w4_tiles(rows, g) for g in groups)
        if dtype is _F32 and rows >= FP32_BF16_MIN_ROWS["w4"]:
            if torch.get_float32_matmul_precision() == "medium":
                return False
        return True  # float rows: the register kernel or the fp32 tiles, as the layers' calls

    def current(self) -> bool:
        """The addresses it holds are still the modules' tensors."""
        for m, fmt, call, bias in self.calls:
            if m.fmt is not fmt or fmt.cpu_call is not call or m._buffers["bias"] is not bias:
                return False
        for g in self.groups:  # (a group's members prepare new calls with it)
            if not g.enabled or g.fmt.cpu_call is None:
                return False
        for n, w, p in zip(self.norms, self.keep, self.norm_ptrs):
            if n._parameters["weight"] is not w or w.data_ptr() != p:
                return False
        return True


class _Plan:
    """A swapped layer's decode step over the modules it had at the swap (modules and numbers
    only: copies and pickles of the model carry it along)."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.attn, self.mlp = attn, mlp
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv_split = None  # Phi-3's fused qkv_proj: q / k / v widths
        if attn._tersor_layout == "phi3":
            self.qkv = [attn.qkv_proj]
            nq = attn.config.num_attention_heads * attn.head_dim
            self.qkv_split = (nq, attn.num_key_value_heads * attn.head_dim)
        else:
            self.qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        fused_mlp = hasattr(mlp, "gate_up_proj")
        self.gate_up = [mlp.gate_up_proj] if fused_mlp else [mlp.gate_proj, mlp.up_proj]
        self.o, self.down = attn.o_proj, mlp.down_proj
        # (parent, child name, child): the tree as it was; the step checks it is still so
        self.tree = [
            (layer, n, getattr(layer, n))
            for n in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        ]
        qk = getattr(attn, "q_norm", None) is not None
        self.qk_norms = [attn.q_norm, attn.k_norm] if qk else []  # Qwen3: per head, before rope
        attn_children = [*self.qkv, self.o, *self.qk_norms]
        for parent, children in ((attn, attn_children), (mlp, [*self.gate_up, self.down])):
            self.tree += [(parent, n, m) for n, m in parent._modules.items() if m in children]
        skipped = [attn, mlp, self.norm1, self.norm2, *attn_children, *self.gate_up, self.down]
        self.native = None  # its _Native, built at the first step (copies rebuild theirs)
        self.hook_dicts = [d for m in skipped for d in (m._forward_hooks, m._forward_pre_hooks)]

    def __getstate__(self) -> dict:  # (the native layer holds addresses: never copied)
        return {**self.__dict__, "native": None}

    def _current(self) -> bool:
        """The modules are the ones planned, with no hooks but the fused groups'."""
        for parent, name, child in self.tree:
            if parent._modules.get(name) is not child:
                return False
        if _hooks._global_forward_hooks or _hooks._global_forward_pre_hooks:
            return False
        for hooks in self.hook_dicts:  # only fused groups' (they arm their members)
            if hooks and any(
                type(getattr(h, "__self__", None)) is not FusedGroup for h in hooks.values()
            ):
                return False
        return True

    def _native_step(self, x, x2, rows):
        """The step as one native call where _Native serves it (rows of its dtype, a cache that has
        rows, rotary rows for one or every sequence), else None."""
        native = self.native
        if native is None:
            native = self.native = _Native(self)
        cos = rows[5]
        b = x2.shape[0]
        if (
            native.layer is None
            or x2.dtype is not native.dtype
            or not native.serves(x2.dtype, b)
            or rows[1] is None  # (a fresh cache: HF initializes it in the Python path)
            or (cos is not None and cos.shape[0] not in (1, b))
        ):
            return None
        if not native.current():
            self.native = None  # rebuilt at the next step
            return None
        layer, keys, values, pos, start, cos, sin = rows
        kbuf, vbuf = _buffers(layer, keys, values, pos)
        d = self.attn.head_dim
        ldcs = 0
        if cos is not None:  # [B or 1, 1, D] rows; one row serves every sequence
            cos, sin = cos.reshape(-1, d).contiguous(), sin.reshape(-1, d).contiguous()
            ldcs = d if cos.shape[0] == b else 0
        x2 = x2.contiguous()
        y = x2.new_empty(x.shape)
        native.layer.step(
            x2.data_ptr(), y.data_ptr(), b, ptr(cos), ptr(sin), ldcs, kbuf.data_ptr(),
            vbuf.data_ptr(), kbuf.shape[2], pos, ptr(start), IO_CODE[x2.dtype],
            torch.get_num_threads(),
        )  # fmt: skip
        layer.keys, layer.values = kbuf[:, :, : pos + 1], vbuf[:, :, : pos + 1]
        return y

    def step(self, layer: nn.Module, x: torch.Tensor, kwargs: dict):
        """The layer's output for a decode step, or None (its own forward)."""
        if (
            not isinstance(x, torch.Tensor)
            or x.dim() != 3
            or x.shape[1] != 1
            or torch.is_grad_enabled()
            or layer.training
            or kwargs.get("output_attentions")
            or not self._current()
        ):
            return None
        attn = self.attn
        rows = attn._tersor_cache_rows(x, kwargs)
        if rows is None:
            return None
        b = x.shape[0]
        x2 = x.reshape(b, x.shape[-1])
        n1, n2 = self.norm1, self.norm2
        if x2.dtype not in IO_CODE or not (x2.dtype is n1.weight.dtype is n2.weight.dtype):
            return None
        y = self._native_step(x, x2, rows)
        if y is not None:
            return y
        h = rms_norm_cpu(x2, n1.weight, n1.variance_epsilon)
        if self.qkv_split is None:
            q, k, v = _project_all(self.qkv, h)
        else:
            qkv, (nq, nkv) = _project(self.qkv[0], h), self.qkv_split
            q, k, v = qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]
        out = attn._tersor_attend(x, rows, q.view(b, 1, -1), k.view(b, 1, -1), v.view(b, 1, -1))
        if out is None:  # (q, k, v in another dtype: the cache rows are not written yet)
            return None
        x2 = x2 + _project(self.o, out.view(b, -1))
        h = rms_norm_cpu(x2, n2.weight, n2.variance_epsilon)
        if len(self.gate_up) == 1:  # Phi-3: [gate | up] in one output row
            g, u = _project(self.gate_up[0], h).chunk(2, dim=-1)
        else:
            g, u = _project_all(self.gate_up, h)
        y = x2 + _project(self.down, silu_mul_cpu(g, u))
        return y.view(x.shape)


_PARTS = {
    "self_attn": FastDecodeAttention,
    "mlp": FastSwiGLU,
    "input_layernorm": FastRMSNorm,
    "post_attention_layernorm": FastRMSNorm,
}


def is_decoder_layer(module: nn.Module) -> bool:
    """A pre-norm decoder layer whose attention, MLP and norms all have their native forwards
    (a part left as it was is reported as that part)."""
    return all(isinstance(getattr(module, n, None), cls) for n, cls in _PARTS.items())


def unsupported(module: nn.Module) -> Optional[str]:
    """Why such a layer cannot take the lean step, or None."""
    if module.self_attn._tersor_layout == "gpt2":
        return "GPT-2 layout"
    params = inspect.signature(type(module).forward).parameters
    if not any(n in params for n in CACHE_ARG_NAMES):
        return "its forward takes no cache argument"
    return None


def _self_check(module: nn.Module) -> Optional[str]:
    """The layer's own forward and the lean step on the same short sequence (a 3-row prefill
    by the layer's forward, then two decode steps; scratch caches): None when the step served
    both decode steps and every output and cache row is the same bit for bit."""
    from transformers.cache_utils import DynamicCache

    params = inspect.signature(type(module).forward).parameters
    cache_arg = next(n for n in CACHE_ARG_NAMES if n in params)
    norm = module.input_layernorm.weight
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(1, 5, norm.shape[0], generator=gen).to(norm.dtype)
    ang = torch.randn(1, 5, module.self_attn.head_dim, generator=gen)
    cos, sin = ang.cos().to(norm.dtype), ang.sin().to(norm.dtype)
    caches = (DynamicCache(), DynamicCache())

    def kwargs(t0, t1, cache):
        return dict(
            attention_mask=None,
            position_ids=torch.arange(t0, t1)[None],
            position_embeddings=(cos[:, t0:t1], sin[:, t0:t1]),
            use_cache=True,
            **{cache_arg: cache},
        )

    with torch.inference_mode():
        want = [module(xs[:, a:b], **kwargs(a, b, caches[0])) for a, b in ((0, 3), (3, 4), (4, 5))]
        module(xs[:, :3], **kwargs(0, 3, caches[1]))
        got = [
            module._tersor_plan.step(module, xs[:, t : t + 1], kwargs(t, t + 1, caches[1]))
            for t in (3, 4)
        ]
    if not isinstance(want[1], torch.Tensor):
        return f"its forward returns {type(want[1]).__name__}, not a tensor"
    if any(g is None for g in got):
        return "the lean step declined a plain decode step"
    if not all(torch.equal(a, b) for a, b in zip(want[1:], got)):
        return "the lean step differs from the layer's own forward"
    la, lb = (c.layers[module.self_attn.layer_idx] for c in caches)
    if not (torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)):
        return "the lean step writes different cache rows"
    return None


def swap_layer(module: nn.Module) -> Optional[str]:
    """Gives the decoder layer the lean decode step; the reason it was left as it was, or None."""
    if isinstance(module, FastDecoderLayer):
        return None
    reason = unsupported(module)
    if reason is not None:
        return reason
    module._tersor_plan = _Plan(module)
    try:
        reason = _self_check(module)
    except Exception as e:  # the check itself failed: leave the layer as it was
        reason = f"self-check failed: {type(e).__name__}: {e}"
    if reason is None:
        module.__class__ = fast_subclass(type(module), FastDecoderLayer)
    else:
        del module._tersor_plan
    return reason
