"""Hugging Face causal LMs through quantize_ (the LLM issue's first slice): GPT-2's Conv1D
projections converted (not skipped), lm_head included, bf16 models (bf16 weights quantized,
bf16 activations in and out). Models are built from configs with random weights (no hub)."""

import pytest
import torch

import tersor
from tersor.nn import PackedLinear

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
from llm_models import tiny_llm  # noqa: E402


def _gpt2():
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, attn_implementation="eager"
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(dtype=torch.float32):
    return tiny_llm("llama", dtype)


@pytest.mark.parametrize("cfg", [tersor.W8A8Config(), tersor.W4A8Config(group_size=32)])
def test_gpt2_conv1d_projections_are_converted(cfg):
    model = _gpt2()
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        ref = model(ids).logits
    report = tersor.quantize_(model, cfg, progress=True)  # a tqdm bar on stderr
    by_name = {r.fqn: r for r in report.layers}
    attn = by_name["transformer.h.0.attn.c_attn"]
    assert attn.status == "converted" and attn.shape == (192, 64)  # (N, K) of W [in, out]
    assert by_name["lm_head"].status == "converted"
    assert not report.skipped and len(report.converted) == 2 * 4 + 1
    assert isinstance(model.transformer.h[1].mlp.c_proj, PackedLinear)
    with torch.no_grad():
        out = model(ids).logits
    tol = 0.05 if cfg.scheme == "w8a8" else 0.2
    assert (out - ref).norm() <= tol * ref.norm()


def test_bf16_llama_runs_in_bf16():
    """A bf16 model: its bf16 weights are quantized (widened exactly first), activations come in
    and go out as bf16, accumulated in fp32; close to the bf16 dense model."""
    model = _llama(torch.bfloat16)
    ids = torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        ref = model(ids).logits.float()
    report = tersor.quantize_(model, tersor.W8A8Config())
    assert len(report.converted) == 2 * 7 + 1 and not report.skipped
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, PackedLinear)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    # the layer computes in fp32 on the widened input, rounded once to bf16
    torch.testing.assert_close(y, layer(x.float()).to(torch.bfloat16), rtol=0, atol=0)
    with torch.no_grad():
        out = model(ids).logits
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() <= 0.08 * ref.norm()
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 14)


def test_saved_llm_loads_into_a_meta_model(tmp_path):
    """A quantized Llama saved and loaded into a model built on the meta device (no float
    weights): its non-persistent rotary buffer travels too; same logits."""
    model = _llama()
    tersor.quantize_(model, tersor.W4A8Config(group_size=32))
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        ref = model(ids).logits
    tersor.save_pretrained(model, str(tmp_path))
    with torch.device("meta"):
        fresh = transformers.LlamaForCausalLM(model.config)
    tersor.load_pretrained(fresh, str(tmp_path))
    assert not any(t.is_meta for t in fresh.buffers()) and not any(
        p.is_meta for p in fresh.parameters()
    )
    with torch.no_grad():
        assert torch.equal(fresh.eval()(ids).logits, ref)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral", "phi3"])
@pytest.mark.parametrize(
    "cfg", [tersor.W8A8Config(), tersor.W4A8Config(group_size=32)], ids=["w8a8", "w4a8"]
)
def test_other_llm_families_convert_whole_and_generate(family, cfg):
    model = tiny_llm(family)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
    report = tersor.quantize_(model, cfg, progress=False)
    assert not report.skipped and len(report.converted) == len(linears)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    if family == "phi3":  # the fused projections are one layer each, as the model has them
        assert model.model.layers[0].self_attn.qkv_proj.out_features == 64 + 2 * 32
    if family == "qwen2":  # q/k/v carry biases
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    with torch.no_grad():
        out = model(ids).logits
    tol = 0.05 if cfg.scheme == "w8a8" else 0.2
    assert (out - ref).norm() <= tol * ref.norm()
    assert model.generate(ids[:1], max_new_tokens=3, do_sample=False).shape == (1, 14)


def test_torch_compile_of_the_quantized_hf_model():
    """The whole quantized HF model under torch.compile (inductor): tersor's custom ops trace as
    opaque calls, the rest is compiled (optimize_decoding_'s modules trace as the model's own);
    the output matches eager."""
    model = _llama()
    tersor.quantize_(model, tersor.W4A8Config(group_size=32), progress=False)
    tersor.optimize_decoding_(model)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model)(ids).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
