"""tersor.llm.layer: a decoder layer's decode step in one lean call (optimize_decoding_): the
layer's own outputs bit for bit, and the layer's own forward wherever the lean step would skip
something (a hook, a module replaced since the swap, autograd)."""

import copy
import inspect

import pytest
import torch
from tests.llm_models import convert, decode_logits, tiny_llm
from torch import nn

import tersor
from tersor.llm.layer import FastDecoderLayer, _Plan

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def layer_steps_only(monkeypatch):
    """These tests are about each layer's step: the decoder stack's one call (which would serve
    the native steps instead; tests/test_llm_stack.py) stays out of the way."""
    from tersor.llm.stack import _StackPlan

    monkeypatch.setattr(_StackPlan, "step", lambda *a: None)


SCHEMES = {
    "float": None,
    "w8a8": tersor.W8A8Config(),
    "w7a8": tersor.W8A8Config(weight_bits=7),  # narrow weights: the native kind 3
    "w4a8": tersor.W4A8Config(group_size=32),
    "w4a16": tersor.W4A8Config(group_size=32, act_bits=16),  # two planes: the native kind 8
    "w4": tersor.W4Config(group_size=32),
    "w8": tersor.W8Config(),  # int8 weights, float activations: the native kind 7
    "2:4": tersor.Sparse24Config(),  # (sparsify_; the native kind 6)
    "2:4w8a8": (tersor.Sparse24Config(), tersor.W8A8Config()),  # then quantize_: kind 5
}


def counting_lean_steps(monkeypatch) -> list:
    """Which layers (their index) each served decode step came from."""
    served, step = [], _Plan.step

    def counted(self, layer, x, kwargs):
        out = step(self, layer, x, kwargs)
        if out is not None:
            served.append(self.attn.layer_idx)
        return out

    monkeypatch.setattr(_Plan, "step", counted)
    return served


def without_lean_steps(model, fn):
    orig = _Plan.step
    _Plan.step = lambda *a: None
    try:
        return fn()
    finally:
        _Plan.step = orig


def natives(model) -> list:
    """Whether each layer's steps run as one native call (_C.DecoderLayer)."""
    plans = [layer._tersor_plan for layer in model.model.layers]
    return [p.native is not None and p.native.layer is not None for p in plans]


def python_steps_only(monkeypatch):
    monkeypatch.setattr(_Plan, "_native_step", lambda *a: None)


def optimized(family="llama", scheme="w8a8", dtype=torch.float32, fuse="auto"):
    model = tiny_llm(family, dtype=dtype)
    convert(model, SCHEMES[scheme], fuse)
    report = tersor.optimize_decoding_(model)
    assert report.layers == ["model.layers.0", "model.layers.1"], report
    assert all(isinstance(layer, FastDecoderLayer) for layer in model.model.layers)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3"])
@pytest.mark.parametrize(
    "scheme,dtype,fuse,native",
    [
        ("float", torch.float32, "auto", False),
        ("float", torch.bfloat16, "auto", False),
        ("w8a8", torch.float32, "auto", True),
        ("w8a8", torch.float32, "auto", False),
        ("w7a8", torch.float32, "auto", True),
        ("w4a8", torch.float32, False, True),
        ("w4a8", torch.bfloat16, "auto", True),
        ("w4a16", torch.float32, "auto", True),
        ("w4a16", torch.bfloat16, False, True),
        ("w8a8", torch.float16, False, True),
        ("w4", torch.bfloat16, "auto", False),
        ("w4", torch.float32, "auto", True),
        ("w4", torch.bfloat16, False, True),
        ("w8", torch.float32, "auto", True),
        ("w8", torch.bfloat16, False, True),
        ("2:4", torch.float32, "auto", True),
        ("2:4", torch.bfloat16, "auto", True),
        ("2:4w8a8", torch.float32, "auto", True),
        ("2:4w8a8", torch.float16, "auto", True),
    ],
)
def test_lean_steps_equal_the_layers_own_forward(family, scheme, dtype, fuse, native, monkeypatch):
    """Fused q/k/v and gate/up groups, separate projections, Phi-3's fused qkv_proj and
    gate_up_proj, Qwen3's per-head norms, bf16 / fp16 models; a batch of two sequences. int8 /
    int4 weights with int8 activations and int4 weights with fp32 ones (W4) step natively, or
    in Python (native=False, and float layers); both are the layer's own forward bit for bit."""
    if not native:
        python_steps_only(monkeypatch)
    model = optimized(family, scheme, dtype, fuse)
    prompt = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    want = without_lean_steps(model, lambda: decode_logits(model, prompt, steps=5))
    served = counting_lean_steps(monkeypatch)
    got = decode_logits(model, prompt, steps=5)
    assert served == [0, 1] * 5
    if native:
        assert natives(model) == [True, True]
    for a, b in zip(want, got):
        assert a.dtype == dtype and torch.equal(a, b)


def test_left_padded_generate_takes_lean_steps(monkeypatch):
    model = optimized("llama", "w4a8")
    prompt = torch.randint(1, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    padded = torch.ones_like(prompt)
    padded[0, :3] = 0
    kw = dict(pad_token_id=0, max_new_tokens=8, min_new_tokens=8, do_sample=False)

    def run():
        with torch.inference_mode():
            return model.generate(prompt, attention_mask=padded, **kw)

    want = without_lean_steps(model, run)
    served = counting_lean_steps(monkeypatch)
    assert torch.equal(run(), want) and len(served) == 2 * 7 and all(natives(model))


def test_w4_layers_step_natively_only_where_their_calls_run_the_register_kernel(monkeypatch):
    """A W4 weight's prepared call leaves the register kernel for the dense panels (and, on
    CPUs with AVX512-BF16, for the bf16 kernels) from some rows on: there the native step
    declines and the lean step runs the prepared calls in Python."""
    import tersor.llm.layer as layer_mod

    model = optimized("llama", "w4")
    prompt = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(4))
    want = decode_logits(model, prompt, steps=3)
    assert all(natives(model))
    monkeypatch.setattr(layer_mod, "DENSE_MIN_ROWS", {"w4": 2})  # (as if 2 rows were many)
    native_steps, native_step = [], _Plan._native_step

    def counted(self, x, x2, rows):
        out = native_step(self, x, x2, rows)
        native_steps.append(out is not None)
        return out

    monkeypatch.setattr(_Plan, "_native_step", counted)
    served = counting_lean_steps(monkeypatch)
    got = decode_logits(model, prompt, steps=3)
    assert served == [0, 1] * 3 and native_steps == [False] * 6
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    native = model.model.layers[0]._tersor_plan.native
    assert native.weight_only and not native.serves(torch.float32, 2)
    assert native.serves(torch.float32, 1)


def test_planes_layers_step_natively_up_to_their_rows(monkeypatch):
    """act_bits=16 layers run the planes up to PLANES_MAX_ROWS rows, float rows above: the
    native step (kind 8, planes only) declines from there on."""
    import tersor.llm.layer as layer_mod

    model = optimized("llama", "w4a16")
    prompt = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(5))
    want = decode_logits(model, prompt, steps=3)
    assert all(natives(model))
    native = model.model.layers[0]._tersor_plan.native
    assert native.planes and native.serves(torch.float32, 2)
    assert not native.serves(torch.float32, layer_mod.PLANES_MAX_ROWS + 1)
    monkeypatch.setattr(layer_mod, "PLANES_MAX_ROWS", 1)  # (as if 2 rows were many)
    assert not native.serves(torch.float32, 2)
    served = counting_lean_steps(monkeypatch)
    got = decode_logits(model, prompt, steps=3)
    assert served == [0, 1] * 3
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_native_steps_follow_fusion_and_format_changes(monkeypatch):
    """Dissolving the fused groups, a format preparing a new call (its tensors replaced) or a
    norm weight's new storage rebuilds the native layer from the current modules."""
    from tersor.nn.fused import fuse_projections

    model = optimized("llama", "w4a8")
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(5))
    want = decode_logits(model, prompt, steps=4)
    first = [layer._tersor_plan.native for layer in model.model.layers]
    assert all(n.groups for n in first)  # q/k/v and gate/up as one call each
    fuse_projections(model, False)
    got = decode_logits(model, prompt, steps=4)
    again = [layer._tersor_plan.native for layer in model.model.layers]
    assert all(a is not b and not a.groups and a.layer is not None for a, b in zip(again, first))
    down = model.model.layers[1].mlp.down_proj
    down.fmt.codes = down.fmt.codes.clone()
    down.fmt._finish()
    assert not model.model.layers[1]._tersor_plan.native.current()
    last = decode_logits(model, prompt, steps=4)
    norm = model.model.layers[0].input_layernorm.weight
    norm.data = norm.data.clone()  # (what .to() does to a Parameter: same object, new storage)
    assert not model.model.layers[0]._tersor_plan.native.current()
    after = decode_logits(model, prompt, steps=4)
    for a, b, c, d in zip(want, got, last, after):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)


def test_hooks_replaced_modules_and_autograd_take_the_layers_own_forward(monkeypatch):
    model = optimized("llama", "w8a8")
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(2))
    want = decode_logits(model, prompt, steps=3)
    served = counting_lean_steps(monkeypatch)

    seen = []
    o_proj = model.model.layers[0].self_attn.o_proj
    handle = o_proj.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    got = decode_logits(model, prompt, steps=3)
    assert seen == [5, 1, 1, 1] and served == [1, 1, 1]  # layer 0 on its own forward
    handle.remove()
    served.clear()
    handle = nn.modules.module.register_module_forward_hook(lambda m, args, out: None)
    try:
        decode_logits(model, prompt, steps=3)
    finally:
        handle.remove()
    assert served == []  # a global hook: every module's own call
    for a, b in zip(want, got):
        assert torch.equal(a, b)

    class Recorded(nn.Linear):
        calls = 0

        def forward(self, x):
            Recorded.calls += 1
            return super().forward(x)

    down = model.model.layers[1].mlp.down_proj
    new = Recorded(down.in_features, down.out_features, bias=False)
    model.model.layers[1].mlp.down_proj = new
    served.clear()
    decode_logits(model, prompt, steps=3)
    assert Recorded.calls == 4 and served == [0, 0, 0]

    served.clear()
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(prompt, use_cache=True)  # gradients on: the layers' own forwards
    cache = getattr(out, arg, None) or out.past_key_values
    out = model(out.logits[:, -1:].argmax(-1), use_cache=True, **{arg: cache})
    assert served == [] and out.logits.requires_grad


def test_copies_run_their_own_modules(monkeypatch):
    model = optimized("llama", "w4a8")
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    want = decode_logits(model, prompt, steps=3)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.model.layers[0].post_attention_layernorm.weight.mul_(2)
    served = counting_lean_steps(monkeypatch)
    changed = decode_logits(twin, prompt, steps=3)
    assert len(served) == 2 * 3
    unchanged = decode_logits(model, prompt, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(want, unchanged))
    assert not torch.equal(want[-1], changed[-1])
    expected = without_lean_steps(twin, lambda: decode_logits(twin, prompt, steps=3))
    assert all(torch.equal(a, b) for a, b in zip(expected, changed))


def test_a_layer_whose_parts_were_left_is_not_swapped():
    model = tiny_llm("mistral")  # sliding window: the attention keeps its forward
    report = tersor.optimize_decoding_(model)
    assert report.layers == [] and not isinstance(model.model.layers[0], FastDecoderLayer)
    assert all("sliding-window" in r for r in report.left.values())


def test_a_lean_step_that_disagrees_is_left(monkeypatch):
    import tersor.llm.layer as layer_mod

    monkeypatch.setattr(layer_mod, "silu_mul_cpu", lambda g, u: 2 * torch.nn.functional.silu(g) * u)
    model = tiny_llm("llama")
    report = tersor.optimize_decoding_(model)
    assert report.layers == [] and len(report.attention) == 2
    assert all("differs" in report.left[f"model.layers.{i}"] for i in (0, 1))
    assert not isinstance(model.model.layers[0], FastDecoderLayer)
