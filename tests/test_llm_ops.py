"""tersor::rms_norm (csrc/norm), tersor::silu_mul (csrc/act) and their swaps in
tersor.optimize_decoding_: against HF's formulas on odd sizes and every dtype, ISA paths bit
for bit against the portable build."""

import pytest
import torch

from tersor.ops.act import silu_mul, silu_mul_ref
from tersor.ops.norm import rms_norm, rms_norm_ref

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def make(m, n, dtype, gen, ld_pad=0):
    x = (torch.randn(m, n + ld_pad, generator=gen) * 3)[:, :n].to(dtype)
    w = (torch.rand(n, generator=gen) + 0.5).to(dtype)
    return x, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n", [(1, 8), (1, 2048), (7, 13), (33, 384), (3, 1)])
def test_matches_hf_formula(m, n, dtype, gen):
    x, w = make(m, n, dtype, gen, ld_pad=5)
    y, ref = rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    # fp32: the mean's summation order; halves: that, rarely moving a rounding by one ulp
    tol = 2e-6 if dtype == torch.float32 else 8e-3
    assert (y.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()


def test_3d_rows_and_many_threads(gen):
    x = torch.randn(4, 33, 256, generator=gen)
    w = torch.rand(256, generator=gen)
    y = rms_norm(x, w, 1e-5)
    assert y.shape == x.shape
    assert (y - rms_norm_ref(x, w, 1e-5)).abs().max() <= 2e-6 * y.abs().max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_isa_paths_are_bit_identical_to_the_portable_build(dtype, isa, gen, c_ref):
    x, w = make(9, 1003, dtype, gen)  # a tail past the 8-lane steps
    assert torch.equal(rms_norm(x, w, 1e-6), c_ref(lambda: rms_norm(x, w, 1e-6)))


def test_all_zero_row_and_huge_values(gen):
    x = torch.zeros(2, 64)
    x[1] = 1e30
    w = torch.ones(64)
    y = rms_norm(x, w, 1e-6)
    assert torch.equal(y[0], torch.zeros(64))
    assert torch.isfinite(y).all() or torch.isinf(y[1]).all()  # 1e60 overflows fp32, as HF


@pytest.mark.parametrize(
    "x, w, message",
    [
        (torch.randn(2, 8), torch.ones(8, dtype=torch.float64), "weight is torch.float64"),
        (torch.randn(2, 8), torch.ones(9), r"weight must be \[8\]"),
        (torch.randn(2, 8).to(torch.int32), torch.ones(8), "x must be float32"),
    ],
)
def test_bad_arguments_are_named(x, w, message):
    with pytest.raises(ValueError, match=message):
        rms_norm(x, w, 1e-6)


def test_custom_op_registration(gen):
    x, w = make(3, 16, torch.float32, gen)
    torch.library.opcheck(torch.ops.tersor.rms_norm, (x, w, 1e-6))


def test_hf_rms_norms_are_swapped_and_fall_back_for_autograd():
    pytest.importorskip("transformers")
    from tests.llm_models import tiny_llm

    import tersor
    from tersor.llm.norm import FastRMSNorm

    model = tiny_llm("qwen3")  # also q_norm / k_norm inside attention
    report = tersor.optimize_decoding_(model)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert len(report.norms) == len(norms) == 2 * 4 + 1
    assert all(isinstance(m, FastRMSNorm) for m in norms)
    norm = model.model.norm
    x = torch.randn(2, 64, requires_grad=True)
    norm(x).sum().backward()  # autograd: the model's own forward, differentiable
    assert x.grad is not None and torch.isfinite(x.grad).all()


# -- silu_mul -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 8192), (7, 13), (33, 96), (2, 3, 5)])
def test_silu_mul_matches_torch(shape, dtype, gen):
    g = (torch.randn(*shape, generator=gen) * 6).to(dtype)
    u = torch.randn(*shape, generator=gen).to(dtype)
    y, ref = silu_mul(g, u), silu_mul_ref(g, u)
    assert y.dtype == dtype and y.shape == g.shape
    tol = 2e-6 if dtype == torch.float32 else 8e-3
    assert (y.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()


def test_silu_mul_extremes():
    g = torch.tensor([0.0, -0.0, 100.0, -100.0, 1e-30, -1e-30, 88.0, -88.0, float("nan")])
    y = silu_mul(g, torch.ones_like(g))
    assert torch.equal(y[:2], torch.zeros(2)) and y[2] == 100.0
    assert -1e-30 < y[3] <= 0 and torch.isnan(y[-1])
    assert (y[:-1] - torch.nn.functional.silu(g[:-1])).abs().max() <= 1e-6 * 100


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_isa_paths_are_bit_identical(dtype, isa, gen, c_ref):
    g = (torch.randn(5, 1003, generator=gen) * 6).to(dtype)
    u = torch.randn(5, 1003, generator=gen).to(dtype)
    assert torch.equal(silu_mul(g, u), c_ref(lambda: silu_mul(g, u)))


def test_silu_mul_bad_arguments_and_op(gen):
    with pytest.raises(ValueError, match="u is torch.float64"):
        silu_mul(torch.randn(2, 8), torch.randn(2, 8).double())
    with pytest.raises(ValueError, match="one shape"):
        silu_mul(torch.randn(2, 8), torch.randn(2, 9))
    g, u = torch.randn(3, 16, generator=gen), torch.randn(3, 16, generator=gen)
    torch.library.opcheck(torch.ops.tersor.silu_mul, (g, u))


def test_hf_mlps_are_swapped():
    pytest.importorskip("transformers")
    from tests.llm_models import tiny_llm

    import tersor
    from tersor.llm.mlp import FastSwiGLU

    for family in ("llama", "phi3"):  # Phi-3: the fused gate_up_proj's halves
        model = tiny_llm(family)
        x = torch.randn(2, 5, 64)
        with torch.inference_mode():
            want = model.model.layers[0].mlp(x)
        report = tersor.optimize_decoding_(model)
        mlp = model.model.layers[0].mlp
        assert len(report.mlps) == 2 and isinstance(mlp, FastSwiGLU)
        with torch.inference_mode():
            got = mlp(x)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
