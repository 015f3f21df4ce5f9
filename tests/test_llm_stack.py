"""tersor.llm.stack: a decoder stack's decode step with every layer in one native call
(optimize_decoding_): the model's own outputs bit for bit, and the model's own forward (its
layers on their lean steps) wherever the one call would skip something."""

import copy

import pytest
import torch
from tests.llm_models import convert, decode_logits, tiny_llm
from torch import nn

import tersor
from tersor.llm import stack as stack_mod
from tersor.llm.layer import _Plan
from tersor.llm.stack import FastDecoderStack, _StackPlan
from tersor.ops.gemm_w4 import fp32_tiles_take

pytest.importorskip("transformers")


def counting(monkeypatch) -> dict:
    """How many decode steps the one call served, and how many layer steps ran on their own."""
    hits = {"stack": 0, "layer": 0}
    step, layer_step = _StackPlan.step, _Plan.step

    def counted(self, model, kw):
        out = step(self, model, kw)
        hits["stack"] += out is not None
        return out

    def counted_layer(self, layer, x, kwargs):
        out = layer_step(self, layer, x, kwargs)
        hits["layer"] += out is not None
        return out

    monkeypatch.setattr(_StackPlan, "step", counted)
    monkeypatch.setattr(_Plan, "step", counted_layer)
    return hits


def own_and_stepped(model, prompt, monkeypatch, steps=3):
    """The logits of `steps` decode steps by the modules' own forward (no native step at all), and
    as the model steps now, with the hits of those."""
    with monkeypatch.context() as m:
        m.setattr(_StackPlan, "step", lambda *a: None)
        m.setattr(_Plan, "step", lambda *a: None)
        want = decode_logits(model, prompt, steps=steps)
    with monkeypatch.context() as m:
        hits = counting(m)
        got = decode_logits(model, prompt, steps=steps)
    return want, got, hits


def without_stack(fn):
    orig = _StackPlan.step
    _StackPlan.step = lambda *a: None
    try:
        return fn()
    finally:
        _StackPlan.step = orig


S24 = tersor.Sparse24Config()
S24_W8A8 = (S24, tersor.W8A8Config())  # sparsify_, then quantize_: 2:4 int8 values


def optimized(family="llama", config=None, dtype=torch.float32, fuse="auto", then=None):
    """The tiny model in config (a tuple: one after the other), then(model) if given, then
    optimize_decoding_."""
    model = tiny_llm(family, dtype=dtype)
    convert(model, config or tersor.W8A8Config(), fuse)
    if then is not None:
        then(model)
    report = tersor.optimize_decoding_(model)
    assert report.stacks == ["model"] and not report.left, report
    assert isinstance(model.model, FastDecoderStack)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3"])
@pytest.mark.parametrize(
    "config,dtype,fuse",
    [
        (tersor.W8A8Config(), torch.float32, "auto"),
        (tersor.W4A8Config(group_size=32), torch.float32, False),
        (tersor.W4A8Config(group_size=32), torch.bfloat16, "auto"),
        (tersor.W4A8Config(group_size=32, act_bits=16), torch.float16, "auto"),
        (tersor.W8A8Config(), torch.float16, False),
        (tersor.W4Config(group_size=32), torch.float32, "auto"),
        (tersor.W4Config(group_size=32), torch.bfloat16, False),
        (tersor.W8Config(), torch.float32, "auto"),
        (tersor.W8Config(), torch.bfloat16, False),
        (S24, torch.float32, "auto"),
        (S24_W8A8, torch.float32, "auto"),
        (S24_W8A8, torch.bfloat16, "auto"),
    ],
)
def test_one_call_steps_equal_the_models_own_forward(family, config, dtype, fuse, monkeypatch):
    """Every decode step of a batch of two in one call; the logits and the cache rows are the
    model's own (its layers' lean steps, themselves checked against HF's forward) bit for bit."""
    model = optimized(family, config, dtype, fuse)
    prompt = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    want = without_stack(lambda: decode_logits(model, prompt, steps=5))
    hits = counting(monkeypatch)
    got = decode_logits(model, prompt, steps=5)
    assert hits == {"stack": 5, "layer": 0}
    for a, b in zip(want, got):
        assert a.dtype == dtype and torch.equal(a, b)


def test_generate_with_left_padding_takes_the_one_call(monkeypatch):
    model = optimized("llama", tersor.W4A8Config(group_size=32))
    prompt = torch.randint(1, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    padded = torch.ones_like(prompt)
    padded[0, :3] = 0
    kw = dict(pad_token_id=0, max_new_tokens=8, min_new_tokens=8, do_sample=False)

    def run(mask):
        with torch.inference_mode():
            return model.generate(prompt, attention_mask=mask, output_logits=True,
                                  return_dict_in_generate=True, **kw)  # fmt: skip

    for mask in (padded, torch.ones_like(prompt)):
        want = without_stack(lambda: run(mask))
        hits = counting(monkeypatch)
        got = run(mask)
        assert hits == {"stack": 7, "layer": 0}
        assert torch.equal(got.sequences, want.sequences)
        assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))


def test_the_models_own_forward_wherever_the_one_call_would_skip_something(monkeypatch):
    model = optimized("llama")
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(2))
    want = decode_logits(model, prompt, steps=3)
    hits = counting(monkeypatch)

    def expect(stack, layer):
        got = decode_logits(model, prompt, steps=3)
        assert hits == {"stack": stack, "layer": layer}
        assert all(torch.equal(a, b) for a, b in zip(want, got))
        hits.update(stack=0, layer=0)

    seen = []
    handle = model.model.layers[1].register_forward_hook(lambda m, a, out: seen.append(1))
    expect(stack=0, layer=2 * 3)  # a hook on a layer: every layer called as a module
    assert len(seen) == 4
    handle.remove()
    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *a: None)
    expect(stack=0, layer=3)  # inside a layer: that layer on its own forward
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        expect(stack=0, layer=0)
    finally:
        handle.remove()
    expect(stack=3, layer=0)

    with torch.inference_mode():  # another batch's cache: the model's own path says so
        out = model(prompt, use_cache=True)
        arg = "cache" if hasattr(out, "cache") and out.cache is not None else "past_key_values"
        with pytest.raises(RuntimeError):
            model(torch.zeros(2, 1, dtype=torch.long), use_cache=True, **{arg: getattr(out, arg)})
    assert hits == {"stack": 0, "layer": 0}

    layers = model.model.layers
    planned = layers[1]
    layers[1] = copy.deepcopy(planned)  # a layer replaced since the swap
    expect(stack=0, layer=2 * 3)
    layers[1] = planned
    expect(stack=3, layer=0)

    with torch.inference_mode():  # asking for hidden states: the model's forward
        out = model(prompt, use_cache=True)
        arg = "cache" if hasattr(out, "cache") and out.cache is not None else "past_key_values"
        tok = out.logits[:, -1:].argmax(-1)
        step = model(tok, use_cache=True, output_hidden_states=True, **{arg: getattr(out, arg)})
    # (transformers 5 records them with hooks on the layers, which then stay: later steps
    # take the model's forward and the layers theirs)
    assert len(step.hidden_states) == 3 and hits["stack"] == 0


def test_changed_layers_take_one_step_of_their_own_then_the_one_call(monkeypatch):
    """A format preparing a new call, or the fused groups dissolved: the next step takes the
    layers' own lean steps, which rebuild their native layers from the current modules; the
    one call serves the steps after it."""
    from tersor.nn.fused import fuse_projections

    model = optimized("llama", tersor.W4A8Config(group_size=32))
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(5))
    want = decode_logits(model, prompt, steps=4)
    hits = counting(monkeypatch)
    down = model.model.layers[1].mlp.down_proj
    down.fmt.codes = down.fmt.codes.clone()
    down.fmt._finish()
    fuse_projections(model, False)
    got = decode_logits(model, prompt, steps=4)
    assert hits == {"stack": 3, "layer": 2}  # the first step rebuilt the native layers
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_copies_run_their_own_modules():
    model = optimized("llama", tersor.W4A8Config(group_size=32))
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    want = decode_logits(model, prompt, steps=3)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.model.layers[0].post_attention_layernorm.weight.mul_(2)
    changed = decode_logits(twin, prompt, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(want, decode_logits(model, prompt, steps=3)))
    assert not torch.equal(want[-1], changed[-1])
    expected = without_stack(lambda: decode_logits(twin, prompt, steps=3))
    assert all(torch.equal(a, b) for a, b in zip(expected, changed))


def test_stacks_of_python_steps_and_failed_checks_keep_their_forward(monkeypatch):
    model = tiny_llm("llama")  # float layers step in Python: no one call, nothing to report
    report = tersor.optimize_decoding_(model)
    assert report.stacks == [] and not report.left and len(report.layers) == 2

    class NoStep:  # a native stack step that leaves the rows as they were
        def __getattr__(self, name):
            return lambda *a: None if name == "decoder_layers_step" else getattr(tersor._C, name)

    monkeypatch.setattr(stack_mod, "_C", NoStep())
    model = tiny_llm("llama")
    tersor.quantize_(model, tersor.W8A8Config(), progress=False)
    report = tersor.optimize_decoding_(model)
    assert report.stacks == [] and "differs" in report.left["model"], report
    assert not isinstance(model.model, FastDecoderStack) and len(report.layers) == 2


@pytest.mark.parametrize("fuse", ["auto", False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_call_steps_of_a_w4_batch_take_the_layers_kernels(dtype, fuse, monkeypatch):
    """Five rows a step: W4 g32 layers take the bf16 group form from 4 bf16 rows and the fp32
    tiles from 5 float rows on AMX-BF16 CPUs (ops/gemm_w4.py; the register kernel elsewhere);
    the one call's projections name those rows and run the same kernels: the same bits."""
    model = optimized("llama", tersor.W4Config(group_size=32), dtype, fuse)
    prompt = torch.randint(0, 128, (5, 3), generator=torch.Generator().manual_seed(5))
    want, got, hits = own_and_stepped(model, prompt, monkeypatch)
    assert hits == {"stack": 3, "layer": 0}
    assert all(a.dtype == dtype and torch.equal(a, b) for a, b in zip(want, got))


@pytest.mark.parametrize("config", [S24, S24_W8A8], ids=["2:4", "2:4 W8A8"])
def test_one_call_steps_of_a_24_batch_take_the_layers_kernels(config, monkeypatch):
    """19 rows a step (the fp32 2:4 kernel's transposed form from 16 rows, one 19-row pass);
    2:4 int8 layers with a dense copy from 4 rows (as AMX CPUs keep one from 16): batches below
    it step in one call, those from it take the layers' own calls (the dense kernel)."""

    def dense_from_4_rows(model):
        for m in model.modules():
            if getattr(m, "scheme", None) == "2:4+w8a8":
                m.fmt._keep_dense_copy(4)
                m.fmt._finish()  # (its prepared call: the window of the dense copy)

    dense_copy = isinstance(config, tuple)
    model = optimized("llama", config, then=dense_from_4_rows if dense_copy else None)
    for rows in (2, 19):
        prompt = torch.randint(0, 128, (rows, 3), generator=torch.Generator().manual_seed(rows))
        want, got, hits = own_and_stepped(model, prompt, monkeypatch)
        one_call = not dense_copy or rows < 4
        assert hits == ({"stack": 3, "layer": 0} if one_call else {"stack": 0, "layer": 6})
        assert all(torch.equal(a, b) for a, b in zip(want, got))


@pytest.mark.parametrize(
    "dtype,activations",
    [(torch.float32, None), (torch.bfloat16, None), (torch.float16, "int8")],
    ids=["fp32 w4", "bf16 w4", "fp16 w4a8"],
)
def test_act_order_gptq_layers_step_in_one_call(tmp_path, dtype, activations, monkeypatch):
    """An act-order GPTQ checkpoint (input permutations, formats/int4.py): its layers' rows
    are widened to fp32 and gathered before the kernel, in the one call as in the layers'
    own; two rows and five (the W4 group form's rows on AVX512-BF16 CPUs), the model's own
    forward bit for bit."""
    from hf_writers import write_gptq

    write_gptq(tiny_llm("llama"), str(tmp_path), act_order=True)
    with tersor.empty_weights():
        model = tiny_llm("llama").to(dtype)
    tersor.load_pretrained(model, str(tmp_path), activations=activations)
    perms = [m.fmt.perm for m in model.modules() if getattr(m, "scheme", "")[:2] == "w4"]
    assert len(perms) == 14 and all(p is not None for p in perms)
    report = tersor.optimize_decoding_(model)
    assert report.stacks == ["model"] and not report.left, report
    for b in (2, 5):
        prompt = torch.randint(0, 128, (b, 3), generator=torch.Generator().manual_seed(b))
        want, got, hits = own_and_stepped(model, prompt, monkeypatch)
        assert hits == {"stack": 3, "layer": 0}
        assert all(a.dtype == dtype and torch.equal(a, b) for a, b in zip(want, got))


def test_w8_bf16_rows_step_on_the_bf16_kernel_from_its_rows(monkeypatch):
    """W8 bf16 rows take gemm_w8_bf16 from BF16_MIN_ROWS["w8"] rows (CPUs with AVX512-BF16; its
    C ref elsewhere): here from 3 rows, set for the test. A 2-row batch and a 5-row one (the
    bf16 kernel's rows) both step in one call, and equal the layers' own calls. (Which kernel
    ran does not show: their fp32 sums differ in the last bits, which the bf16 outputs round
    away; the one call's choice is the layers' for speed, decoder_layer.cpp.)"""
    import sys

    from tersor.llm import layer as layer_mod

    never = 1 << 62
    rows = {"w4": never, "w4_odd": never, "w4_g32": never, "w8": 3}
    monkeypatch.setattr(sys.modules["tersor.ops.gemm_w4"], "BF16_MIN_ROWS", rows)
    monkeypatch.setattr(layer_mod, "BF16_MIN_ROWS", rows)
    model = optimized("llama", tersor.W8Config(), torch.bfloat16)
    for b in (2, 5):
        prompt = torch.randint(0, 128, (b, 3), generator=torch.Generator().manual_seed(b))
        want, got, hits = own_and_stepped(model, prompt, monkeypatch)
        assert hits == {"stack": 3, "layer": 0}
        assert all(torch.equal(a, b) for a, b in zip(want, got))


@pytest.mark.parametrize(
    "config",
    [
        tersor.W8A8Config(),
        tersor.W4A8Config(group_size=32),
        tersor.W4Config(group_size=32),
        tersor.W8Config(),
        S24,
        S24_W8A8,
    ],
)
def test_one_call_on_every_isa_path_equals_the_portable_path(config, isa, c_ref, monkeypatch):
    """The one call runs each kernel on the forced path; every path gives the portable C
    path's bits, so its logits equal the model's own forward under the ref path. (Where the
    prompt's 12 fp32 rows of a W4 weight take the AMX-BF16 tiles, ops/gemm_w4.py
    fp32_tiles_take, their sums are not the ref's bits: there the model's own forward on the
    same path is the reference.)"""
    model = optimized("llama", config)
    prompt = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(6))
    tiles = isinstance(config, tersor.W4Config) and fp32_tiles_take(12, config.group_size)
    reference = (lambda fn: fn()) if tiles else c_ref
    want = reference(lambda: without_stack(lambda: decode_logits(model, prompt, steps=3)))
    hits = counting(monkeypatch)
    got = decode_logits(model, prompt, steps=3)
    assert hits == {"stack": 3, "layer": 0}
    assert all(torch.equal(a, b) for a, b in zip(want, got))
