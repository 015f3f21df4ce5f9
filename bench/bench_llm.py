"""A Llama decode step under pytest-benchmark (the tiny shape, so that CI runs it; the
Llama-3.2-1B shape is `python -m tersor.bench --family llm`): greedy generation of 4 tokens
with every projection W4A8 g32, checked against the fp32 logits first; and one layer's
attention over a 128-token prefill at the 1B shape, our kernel against torch's ops."""

import pytest
import torch

import tersor


@pytest.mark.parametrize("scheme", ["fp32", "w8a8", "w4a8"])
def bench_llm_tiny_generate(benchmark, scheme):
    pytest.importorskip("transformers", reason="transformers is not installed")
    from tersor.bench.llm import build

    model = build("tiny")
    prompt = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(prompt).logits
        if scheme != "fp32":
            cfg = tersor.W8A8Config() if scheme == "w8a8" else tersor.W4A8Config(group_size=32)
            tersor.quantize_(model, cfg, progress=False)
            out = model(prompt).logits
            assert (out - ref).norm() < 0.35 * ref.norm(), "wrong before timing"
    benchmark.group = "llm tiny generate 4 tokens"

    def step():
        with torch.inference_mode():
            model.generate(
                prompt, max_new_tokens=4, eos_token_id=None, pad_token_id=0, do_sample=False
            )

    benchmark(step)


def _torch_attention(q, k, v, cos, sin, hkv, d):
    """HF's eager sequence for T new rows into an empty cache: rope, repeat the kv heads,
    causal SDPA (what a Llama block's forward runs around its projections)."""
    from tersor.ops.attention import rope_ref

    b, t, _ = q.shape
    qh = rope_ref(q.view(b, t, -1, d).transpose(1, 2), cos[:, None], sin[:, None])
    kh = rope_ref(k.view(b, t, hkv, d).transpose(1, 2), cos[:, None], sin[:, None])
    vh = v.view(b, t, hkv, d).transpose(1, 2)
    g = qh.shape[1] // hkv
    kh, vh = kh.repeat_interleave(g, dim=1), vh.repeat_interleave(g, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
    return out.transpose(1, 2).reshape(b, t, -1)


@pytest.mark.parametrize("impl", ["tersor", "torch rope + sdpa"])
def bench_attention_prefill_1b(benchmark, impl):
    """A 128-token prefill's attention in one layer of the Llama-3.2-1B shape (32 query / 8 kv
    heads of 64): tersor's kernel (rope, cache rows, causal attention in one call) against the
    torch ops HF runs; checked against each other first."""
    from tersor.ops.attention import attention_decode

    gen = torch.Generator().manual_seed(0)
    b, t, h, hkv, d = 1, 128, 32, 8, 64
    q = torch.randn(b, t, h * d, generator=gen)
    k, v = torch.randn(b, t, hkv * d, generator=gen), torch.randn(b, t, hkv * d, generator=gen)
    ang = torch.rand(b, t, d, generator=gen) * 6
    cos, sin = ang.cos(), ang.sin()
    kc, vc = torch.empty(b, hkv, 256, d), torch.empty(b, hkv, 256, d)
    ref = _torch_attention(q, k, v, cos, sin, hkv, d)
    out = attention_decode(q, k, v, cos, sin, kc, vc, 0, d**-0.5)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max(), "wrong before timing"
    benchmark.group = "attention: 1B layer, 128-token prefill"
    if impl == "tersor":
        benchmark(lambda: attention_decode(q, k, v, cos, sin, kc, vc, 0, d**-0.5))
    else:
        benchmark(lambda: _torch_attention(q, k, v, cos, sin, hkv, d))
