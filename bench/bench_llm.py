"""A Llama decode step under pytest-benchmark (the tiny shape, so that CI runs it; the
Llama-3.2-1B shape is `python -m tersor.bench --family llm`): greedy generation of 4 tokens
with every projection W4A8 g32, checked against the fp32 logits first."""

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
            model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    benchmark(step)
