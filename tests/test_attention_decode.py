"""tersor::attention_decode (csrc/attention) and tersor.optimize_decoding_ (python/tersor/llm):
the kernel against a plain torch reference on odd shapes and every dtype, ISA paths bit for
bit against the portable build, bad arguments, and HF models whose decode steps take it."""

import pytest
import torch
from tests.llm_models import SIZES, decode_logits, tiny_llm

import tersor
from tersor.ops.attention import attention_decode, attention_decode_ref

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def make_args(b, h, hkv, d, pos, dtype, gen, rotary=True, cap=None, row_pad=0):
    cap = cap or pos + 5
    f = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    q = f(b, h * d + row_pad)[:, : h * d]  # rows inside wider rows: strided like fused outputs
    k, v = f(b, hkv * d), f(b, hkv * d)
    ang = torch.rand(b, d, generator=gen) * 6
    cos, sin = (ang.cos().to(dtype), ang.sin().to(dtype)) if rotary else (None, None)
    kc, vc = f(b, hkv, cap, d), f(b, hkv, cap, d)
    return [q, k, v, cos, sin, kc, vc, pos, d**-0.5]


def clone_caches(args):
    out = list(args)
    out[5], out[6] = args[5].clone(), args[6].clone()
    return out


SHAPES = [  # b, h, hkv, d, pos
    (1, 4, 4, 8, 0),  # one position; multi-head (G = 1)
    (1, 32, 8, 64, 190),  # Llama-3.2-1B
    (2, 6, 2, 72, 7),  # D = 9 chunks: the 8-, and 1-chunk value paths; L < 8
    (3, 8, 1, 16, 64),  # multi-query; L = 65: one full 8-block group + a tail
    (1, 12, 4, 128, 33),  # D = 128
    (2, 4, 2, 32, 129),  # value blocks of 64 positions and a tail
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_torch_reference(shape, dtype, gen):
    args = make_args(*shape, dtype, gen)
    ref_args = clone_caches(args)
    out = attention_decode(*args)
    ref = attention_decode_ref(*ref_args)
    tol = 2e-6 if dtype == torch.float32 else 1e-2  # fp32 sums; a half output's rounding
    assert out.dtype == dtype and out.shape == ref.shape
    assert (out.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()
    pos = shape[-1]
    assert torch.equal(args[5], ref_args[5]), "the roped key written to the cache"
    assert torch.equal(args[6], ref_args[6])
    assert not torch.equal(args[5][:, :, pos], make_args(*shape, dtype, gen)[5][:, :, pos])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_left_padding_skips_each_sequences_first_rows(dtype, gen):
    args = make_args(3, 8, 2, 32, 70, dtype, gen)
    start = torch.tensor([0, 9, 70])  # none, some (not a multiple of 8), all but the new row
    ref_args = clone_caches(args)
    out = attention_decode(*args, start=start)
    ref = attention_decode_ref(*ref_args, start=start)
    tol = 2e-6 if dtype == torch.float32 else 1e-2
    assert (out.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()
    # the last sequence sees only its new position: its output is that position's value
    h = 8
    want = args[6][2, :, 70].float().repeat_interleave(h // 2, dim=0).reshape(-1)
    assert (out[2].float() - want).abs().max() <= tol * want.abs().max()
    with pytest.raises(ValueError, match="start must lie in"):
        attention_decode(*clone_caches(args), start=torch.tensor([0, 0, 71]))
    with pytest.raises(ValueError, match="start must be contiguous int64"):
        attention_decode(*clone_caches(args), start=torch.tensor([0, 0, 1], dtype=torch.int32))


def test_left_padding_isa_paths_are_bit_identical(isa, gen, c_ref):
    args = make_args(3, 8, 2, 32, 70, torch.float32, gen)
    start = torch.tensor([0, 9, 70])
    ref_args = clone_caches(args)
    out = attention_decode(*args, start=start)
    assert torch.equal(out, c_ref(lambda: attention_decode(*ref_args, start=start)))


def test_without_rotary(gen):
    args = make_args(2, 8, 2, 32, 40, torch.float32, gen, rotary=False)
    ref_args = clone_caches(args)
    out, ref = attention_decode(*args), attention_decode_ref(*ref_args)
    assert (out - ref).abs().max() <= 2e-6 * ref.abs().max()
    assert torch.equal(args[5], ref_args[5])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 32, 8, 64, 190), (2, 6, 2, 72, 7), (3, 8, 1, 16, 64)])
def test_isa_paths_are_bit_identical_to_the_portable_build(shape, dtype, isa, gen, c_ref):
    args = make_args(*shape, dtype, gen)
    ref_args = clone_caches(args)
    out = attention_decode(*args)
    ref = c_ref(lambda: attention_decode(*ref_args))
    assert torch.equal(out, ref), isa
    assert torch.equal(args[5], ref_args[5]) and torch.equal(args[6], ref_args[6])


def test_threads_do_not_change_results(gen):
    args = make_args(2, 16, 4, 64, 100, torch.float32, gen)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(attention_decode(*clone_caches(args)))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_extreme_scores_stay_finite(gen):
    """Huge logits: the max subtraction keeps exp in range; the result is a convex mix."""
    args = make_args(1, 4, 2, 16, 20, torch.float32, gen)
    args[0] = args[0] * 1e4
    out = attention_decode(*args)
    assert torch.isfinite(out).all()
    vals = args[6][:, :, :21].abs().max()
    assert out.abs().max() <= vals * (1 + 1e-6)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.__setitem__(0, a[0].double()), "q is torch.float64"),
        (lambda a: a.__setitem__(5, a[5][..., :12].contiguous()), "k_cache / v_cache"),
        (lambda a: a.__setitem__(1, a[1][:, :-16]), "k must be"),
        (lambda a: a.__setitem__(3, None), "cos and sin go together"),
        (lambda a: a.__setitem__(7, 30), "pos 30 outside"),
        (lambda a: a.__setitem__(7, -1), "pos -1 outside"),
        (lambda a: a.__setitem__(0, a[0][:, ::2]), "q needs unit column stride"),
        (lambda a: a.__setitem__(0, a[0][:, :40]), "q must be"),
    ],
)
def test_bad_arguments_are_named(edit, message, gen):
    args = make_args(1, 4, 2, 16, 20, torch.float32, gen, cap=24)
    edit(args)
    with pytest.raises(ValueError, match=message):
        attention_decode(*args)


def test_head_dim_must_be_a_multiple_of_8(gen):
    args = make_args(1, 2, 1, 12, 3, torch.float32, gen)
    with pytest.raises(ValueError, match="multiple of 8"):
        attention_decode(*args)


def test_custom_op_registration(gen):
    args = make_args(1, 4, 2, 16, 5, torch.float32, gen)
    torch.library.opcheck(torch.ops.tersor.attention_decode, tuple(args))


def make_rows(b, n, h, hkv, d, pos, dtype, gen, rotary=True, row_pad=0):
    """Arguments for n new rows per sequence: q / k / v [B, n, X] (q's rows inside wider ones,
    like a fused projection's output), cos / sin [1, n, D] expanded over the batch."""
    f = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    q = f(b, n, h * d + row_pad)[..., : h * d]
    k, v = f(b, n, hkv * d), f(b, n, hkv * d)
    ang = torch.rand(1, n, d, generator=gen) * 6
    cos, sin = (ang.cos().to(dtype).expand(b, n, d), ang.sin().to(dtype).expand(b, n, d))
    if not rotary:
        cos = sin = None
    kc, vc = f(b, hkv, pos + n + 3, d), f(b, hkv, pos + n + 3, d)
    return [q, k, v, cos, sin, kc, vc, pos, d**-0.5]


ROW_SHAPES = [  # b, n, h, hkv, d, pos
    (1, 128, 32, 8, 64, 0),  # a 1B Llama's 128-token prefill
    (2, 7, 6, 2, 72, 0),  # odd: D = 9 chunks, rows < 8
    (3, 33, 8, 1, 16, 5),  # a chunk after 5 cached rows; multi-query
    (1, 2, 4, 4, 8, 64),  # two rows after a full 8-block group
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_new_rows_are_causal_and_match_the_reference(shape, dtype, gen):
    args = make_rows(*shape, dtype, gen, row_pad=8)
    ref_args = clone_caches(args)
    out = attention_decode(*args)
    ref = attention_decode_ref(*ref_args)
    tol = 2e-6 if dtype == torch.float32 else 1e-2
    assert out.shape == args[0].shape and out.dtype == dtype
    assert (out.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()
    assert torch.equal(args[5], ref_args[5]) and torch.equal(args[6], ref_args[6])
    # row t is the decode step at position pos + t on the cache of the rows before it
    b, n, h, hkv, d, pos = shape
    t = n // 2
    step = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    for i in (0, 1, 2, 3, 4):
        step[i] = args[i][:, t].contiguous() if args[i] is not None else None
    step[7] = pos + t
    one = attention_decode(*step)
    assert (one.float() - out[:, t].float()).abs().max() <= tol * ref.float().abs().max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_rows_isa_paths_are_bit_identical(dtype, isa, gen, c_ref):
    for shape in ROW_SHAPES[1:]:
        args = make_rows(*shape, dtype, gen)
        ref_args = clone_caches(args)
        out = attention_decode(*args)
        assert torch.equal(out, c_ref(lambda: attention_decode(*ref_args))), (isa, shape)
        assert torch.equal(args[5], ref_args[5])


def test_new_rows_with_left_padding_and_without_rotary(gen):
    args = make_rows(3, 5, 8, 2, 32, 12, torch.float32, gen, rotary=False)
    start = torch.tensor([0, 3, 12])
    ref_args = clone_caches(args)
    out = attention_decode(*args, start=start)
    ref = attention_decode_ref(*ref_args, start=start)
    assert (out - ref).abs().max() <= 2e-6 * ref.abs().max()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.__setitem__(7, 28), "pos 28 outside the cache.s 32 rows .5 new rows"),
        (lambda a: a.__setitem__(1, a[1][:, :4]), "k must be .B=2, T=5, Hkv"),
        (lambda a: a.__setitem__(3, a[3][:, :, :8]), "cos must be .B=2, T=5, D=16"),
        (
            lambda a: a.__setitem__(0, a[0].transpose(0, 1).contiguous().transpose(0, 1)),
            "q's rows must be evenly spaced",
        ),
    ],
)
def test_bad_new_rows_are_named(edit, message, gen):
    args = make_rows(2, 5, 4, 2, 16, 24, torch.float32, gen)
    edit(args)
    with pytest.raises(ValueError, match=message):
        attention_decode(*args)


def test_new_rows_custom_op_registration(gen):
    args = make_rows(1, 3, 4, 2, 16, 2, torch.float32, gen)
    args[3], args[4] = args[3].contiguous(), args[4].contiguous()
    torch.library.opcheck(torch.ops.tersor.attention_decode, tuple(args))


# -- Hugging Face models --------------------------------------------------------------------


def sdpa(model):
    model.config._attn_implementation = "sdpa"
    return model


def counting_fast_steps(monkeypatch):
    """Counts the attention steps the kernel served ("fast": the attention block's own fast
    step, or a decoder layer's lean step, tersor/llm/layer.py, or the decoder stack's one
    call, tersor/llm/stack.py, one per layer) and those it left ("model")."""
    from tersor.llm.attention import FastDecodeAttention
    from tersor.llm.layer import _Plan
    from tersor.llm.stack import _StackPlan

    hits = {"fast": 0, "model": 0, "layer": 0}
    orig = FastDecodeAttention._tersor_decode_step
    orig_layer, orig_stack = _Plan.step, _StackPlan.step

    def counted_stack(self, model, kw):
        out = orig_stack(self, model, kw)
        if out is not None:
            hits["fast"] += len(self.layers)
            hits["layer"] += len(self.layers)
        return out

    def counted(self, args, kwargs):
        out = orig(self, args, kwargs)
        hits["model" if out is None else "fast"] += 1
        return out

    def counted_layer(self, layer, x, kwargs):
        out = orig_layer(self, layer, x, kwargs)
        if out is not None:  # (else the layer's own forward runs the attention: counted there)
            hits["fast"] += 1
            hits["layer"] += 1
        return out

    monkeypatch.setattr(FastDecodeAttention, "_tersor_decode_step", counted)
    monkeypatch.setattr(_Plan, "step", counted_layer)
    monkeypatch.setattr(_StackPlan, "step", counted_stack)
    return hits


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hf_decode_steps_match_the_model(family, attn, monkeypatch):
    pytest.importorskip("transformers")
    model = tiny_llm(family)
    model.config._attn_implementation = attn
    prompt = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    ref = decode_logits(model, prompt)
    keys = list(model.state_dict())
    report = tersor.optimize_decoding_(model)
    assert len(report.attention) == 2 and len(report.mlps) == 2 and not report.left, report
    assert list(model.state_dict()) == keys  # the module tree is the model's
    hits = counting_fast_steps(monkeypatch)
    got = decode_logits(model, prompt)
    # the prefill and every decode step (those as whole-layer lean steps)
    assert hits == {"fast": 2 * 7, "model": 0, "layer": 2 * 6}
    for a, b in zip(ref, got):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefill_chunks_and_padded_prefills(attn, monkeypatch):
    """A prompt prefilled in two chunks (the second with a mask over pos > 0 cached rows) takes
    the kernel both times; a left-padded batch's prefill takes the model's own path (its padded
    query rows see nothing), its decode steps the kernel; the logits match the model's."""
    pytest.importorskip("transformers")
    import inspect

    model = tiny_llm("llama")
    model.config._attn_implementation = attn
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, 128, (2, 11), generator=gen)
    padded = torch.ones_like(prompt)
    padded[0, :4] = 0

    def run(m):
        with torch.inference_mode():
            first = m(prompt[:, :6], use_cache=True)
            cache = getattr(first, arg, None) or first.past_key_values
            second = m(prompt[:, 6:], use_cache=True, **{arg: cache})
            pad = m(prompt, attention_mask=padded, use_cache=True)
        return [first.logits, second.logits, pad.logits]

    ref = run(model)
    tersor.optimize_decoding_(model)
    hits = counting_fast_steps(monkeypatch)
    got = run(model)
    assert hits == {"fast": 2 * 2, "model": 2, "layer": 0}
    for a, b in zip(ref, got):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_generate_greedy_beams_and_padding_match(monkeypatch):
    """generate(): greedy, beam search (HF reorders the cache: the layer's tensors are
    replaced, and adopted again), and a left-padded batch (each sequence skips its padding)."""
    pytest.importorskip("transformers")
    model = sdpa(tiny_llm("llama"))
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 128, (2, 7), generator=gen)
    padded = torch.ones_like(prompt)
    padded[0, :2] = 0
    kw = dict(pad_token_id=0, max_new_tokens=12, min_new_tokens=12, do_sample=False)

    def run(m):
        with torch.inference_mode():
            return [
                m.generate(prompt, attention_mask=torch.ones_like(prompt), **kw),
                m.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=3, **kw),
                m.generate(prompt, attention_mask=padded, **kw),
            ]

    ref = run(model)
    tersor.optimize_decoding_(model)
    hits = counting_fast_steps(monkeypatch)
    got = run(model)
    assert hits["fast"] >= 3 * 2 * 11  # greedy, beams, padded: every decode step, both layers
    assert hits["layer"] >= 3 * 2 * 10  # (beam search's first step after HF's reorder: not)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_bf16_model_decodes_close_to_its_own_forward():
    pytest.importorskip("transformers")
    model = sdpa(tiny_llm("llama", dtype=torch.bfloat16))
    prompt = torch.randint(0, 128, (1, 11), generator=torch.Generator().manual_seed(2))
    ref = decode_logits(model, prompt)
    tersor.optimize_decoding_(model)
    got = decode_logits(model, prompt)
    for a, b in zip(ref, got):  # HF ropes in bf16, the kernel in fp32 (one rounding)
        assert b.dtype == torch.bfloat16
        assert (a.float() - b.float()).abs().max() <= 0.05 * a.float().abs().max()


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_quantized_model_takes_the_fast_path(family, monkeypatch):
    """Our layers under the kernel (Phi-3: its fused qkv_proj / gate_up_proj packed whole,
    the q / k / v and gate / up parts read as views of their outputs)."""
    pytest.importorskip("transformers")
    model = sdpa(tiny_llm(family))
    tersor.quantize_(model, tersor.W8Config(), progress=False)  # weight-only: no act rounding
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    ref = decode_logits(model, prompt)
    tersor.optimize_decoding_(model)
    hits = counting_fast_steps(monkeypatch)
    got = decode_logits(model, prompt)
    assert hits["fast"] == 14 and hits["layer"] == 12  # the prefill and 6 decode steps, 2 layers
    for a, b in zip(ref, got):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_blocks_that_do_not_qualify_are_left_with_the_reason():
    pytest.importorskip("transformers")
    import transformers

    mistral = tiny_llm("mistral")  # sliding window
    report = tersor.optimize_decoding_(mistral)
    assert not report.attention and all("sliding-window" in r for r in report.left.values())
    phi = transformers.AutoModelForCausalLM.from_config(
        transformers.Phi3Config(partial_rotary_factor=0.5, pad_token_id=0, **SIZES)
    )
    report = tersor.optimize_decoding_(phi)
    assert not report.attention and all("partial rotary" in r for r in report.left.values())
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=2, vocab_size=64, reorder_and_upcast_attn=True
    )
    gpt2 = transformers.GPT2LMHeadModel(cfg).eval()
    report = tersor.optimize_decoding_(gpt2)
    assert not report.attention and "reorder_and_upcast" in report.left["transformer.h.0.attn"]
    assert type(gpt2.transformer.h[0].attn) is transformers.models.gpt2.modeling_gpt2.GPT2Attention


def _gpt2(attn: str):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64, attn_implementation=attn
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "w8"])
def test_gpt2_decode_steps_match_the_model(attn, quantized, monkeypatch):
    """GPT-2: no rotary embedding, q / k / v read as views of the fused c_attn output (a
    transformers Conv1D, or our layer after quantize_)."""
    pytest.importorskip("transformers")
    model = _gpt2(attn)
    if quantized:
        tersor.quantize_(model, tersor.W8Config(), progress=False)
    prompt = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    ref = decode_logits(model, prompt)
    report = tersor.optimize_decoding_(model)
    assert len(report.attention) == 2 and not report.left, report
    hits = counting_fast_steps(monkeypatch)
    got = decode_logits(model, prompt)
    assert hits == {"fast": 2 * 7, "model": 0, "layer": 0}  # GPT-2 blocks keep their forward
    for a, b in zip(ref, got):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_gpt2_generate_with_padding_matches(monkeypatch):
    pytest.importorskip("transformers")
    model = _gpt2("sdpa")
    prompt = torch.randint(1, 128, (2, 7), generator=torch.Generator().manual_seed(4))
    padded = torch.ones_like(prompt)
    padded[0, :3] = 0
    kw = dict(pad_token_id=0, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    with torch.inference_mode():
        ref = model.generate(prompt, attention_mask=padded, **kw)
    tersor.optimize_decoding_(model)
    hits = counting_fast_steps(monkeypatch)
    with torch.inference_mode():
        got = model.generate(prompt, attention_mask=padded, **kw)
    assert hits["fast"] >= 2 * 9 and torch.equal(ref, got)


def test_a_block_that_disagrees_with_its_forward_is_left(monkeypatch):
    pytest.importorskip("transformers")
    import tersor.llm.attention as att

    model = sdpa(tiny_llm("llama"))
    monkeypatch.setattr(att, "attention_decode_cpu", lambda *a: 2 * attention_decode_ref(*a))
    report = tersor.optimize_decoding_(model)
    assert not report.attention and all("differs" in r for r in report.left.values())
    assert not isinstance(model.model.layers[0].self_attn, att.FastDecodeAttention)


def test_optimizing_twice_is_harmless():
    pytest.importorskip("transformers")
    model = sdpa(tiny_llm("llama"))
    tersor.optimize_decoding_(model)
    cls = type(model.model.layers[0].self_attn)
    report = tersor.optimize_decoding_(model)
    assert len(report.attention) == 2 and type(model.model.layers[0].self_attn) is cls


def test_threads_decoding_different_batches_at_once():
    """Two optimized models decoding differently padded batches in 4 threads at once give what
    they give alone (the per-step mask cache is shared by the process)."""
    pytest.importorskip("transformers")
    from concurrent.futures import ThreadPoolExecutor

    models = [sdpa(tiny_llm("llama", seed=s)) for s in (0, 1)]
    for m in models:
        tersor.optimize_decoding_(m)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 128, (2, 6), generator=gen) for _ in range(2)]
    masks = [torch.ones(2, 6, dtype=torch.long) for _ in range(2)]
    masks[0][0, :2] = 0
    masks[1][1, :4] = 0
    kw = dict(pad_token_id=0, max_new_tokens=8, min_new_tokens=8, do_sample=False)

    def run(i):
        with torch.inference_mode():
            return models[i % 2].generate(prompts[i % 2], attention_mask=masks[i % 2], **kw)

    alone = [run(0), run(1)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, range(8)))
    for i, got in enumerate(together):
        assert torch.equal(got, alone[i % 2])


def test_autograd_keeps_the_models_own_path():
    """Gradients on: an input that needs none still meets float projections whose weights do,
    so the MLP gate and a decode step's attention take the model's own path and backward
    reaches every weight."""
    pytest.importorskip("transformers")
    import inspect

    model = sdpa(tiny_llm("llama"))
    tersor.optimize_decoding_(model)
    layer = model.model.layers[0]
    layer.mlp(torch.randn(2, 64)).sum().backward()  # x without grad, weights with
    assert layer.mlp.gate_proj.weight.grad is not None
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cache = model(prompt, use_cache=True).past_key_values
    model.model.embed_tokens.weight.requires_grad_(False)  # the step's x needs no gradient
    step = model(prompt[:, -1:], use_cache=True, **{arg: cache})
    step.logits.sum().backward()
    assert layer.self_attn.q_proj.weight.grad is not None
