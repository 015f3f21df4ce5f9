"""Input scales: AWQ (method="awq") and SmoothQuant (smooth=alpha), their folds into the op
before a layer, and the layer-kept input scale the kernels apply (tersor/calibration/smooth.py,
csrc/half_io)."""

import copy

import pytest
import torch
from torch import nn

import tersor
from tersor import _C
from tersor.calibration import smooth
from tersor.formats import Int4Format, Int8Format
from tersor.nn.linear import PackedLinear

SCHEMES = {
    "w8a8": (Int8Format, tersor.W8A8Config()),
    "w8": (Int8Format, tersor.W8Config()),
    "w4 g32": (Int4Format, tersor.W4Config(group_size=32)),
    "w4a8 g-1": (Int4Format, tersor.W4A8Config(group_size=-1)),
    "w4a8 g32": (Int4Format, tersor.W4A8Config(group_size=32)),
}


def _outliers(n: int, k: int, seed: int = 0, hot: int = 4, gain: float = 20.0) -> torch.Tensor:
    """Activations with a few hot input channels (what input scales are for)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:hot]] *= gain
    return x


# ---- the kernels' input scale ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("m", [1, 7, 33, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kept_input_scale_is_x_times_scale_bit_for_bit(isa, scheme, m, dtype):
    """y = layer(x) with input_scale s is exactly layer_without_s(x * s) on every ISA path:
    one IEEE multiply per element, by the row quantizer (int8 activations) or while the rows
    are staged (fp32 activations)."""
    fmt_cls, cfg = SCHEMES[scheme]
    k = 64 if "g32" in scheme else 45  # K not a multiple of the tiles where groups allow
    g = torch.Generator().manual_seed(m)
    w, b = torch.randn(37, k, generator=g), torch.randn(37, generator=g)
    s = torch.rand(k, generator=g) + 0.25
    plain = PackedLinear.wrap(fmt_cls.from_float(w, cfg), b)
    scaled = PackedLinear.wrap(fmt_cls.from_float(w, cfg).with_input_scale(s), b)
    x = torch.randn(m, k + 3, generator=g)[:, 2 : 2 + k].to(dtype)  # strided rows
    want = plain((x.float() * s).contiguous()).to(dtype)
    assert torch.equal(scaled(x), want)
    assert torch.equal(scaled(x.reshape(1, m, k)), want.reshape(1, m, -1))  # N-D
    # the op path (torch.compile, devices) multiplies first: the same numbers
    ref = PackedLinear.wrap(scaled.fmt, b, kernel="ref")
    torch.testing.assert_close(ref(x.float()), plain(x.float() * s), rtol=1e-5, atol=1e-4)


def test_kept_input_scale_round_trips_and_dequantizes():
    w, s = torch.randn(40, 64), torch.rand(64) + 0.5
    for fmt_cls, cfg in SCHEMES.values():
        fmt = fmt_cls.from_float(w * s, cfg).with_input_scale(1.0 / s)
        layer = PackedLinear.wrap(fmt, None)
        stored = fmt_cls.from_float(w * s, cfg).dequantize()
        assert torch.equal(layer.dequantized_weight(), stored * (1.0 / s))  # in x's terms
        sd = layer.state_dict()
        assert torch.equal(sd["input_scale"], 1.0 / s)
        back = PackedLinear.wrap(fmt_cls.empty(40, 64, **fmt.options()), None)
        back.load_state_dict(sd)
        x = torch.randn(5, 64)
        assert torch.equal(back(x), layer(x))
        bad = dict(sd, input_scale=-sd["input_scale"])
        with pytest.raises(RuntimeError, match="input_scale: values must be finite and > 0"):
            back.load_state_dict(bad)
        with pytest.raises(RuntimeError, match=r"input_scale: expected float32 \(64,\)"):
            back.load_state_dict(dict(sd, input_scale=sd["input_scale"][:10]))
    with pytest.raises(ValueError, match="input_scale must be float32"):
        Int8Format.from_float(w, tersor.W8A8Config()).with_input_scale(torch.ones(3))


def test_scale_columns_binding_free_of_tails(isa):
    """The staging multiply itself, every ISA path, K around the 8-lane width."""
    for k in (1, 7, 8, 9, 17):
        x, s = torch.randn(3, k), torch.rand(k) + 0.5
        w = torch.randn(5, k)
        y = torch.empty(3, 5)
        fmt = Int8Format.from_float(w, tersor.W8Config())
        _C.gemm_w8(
            x.data_ptr(),
            3,
            k,
            k,
            fmt.packed.data_ptr(),
            0,
            fmt.scale.data_ptr(),
            5,
            0,
            y.data_ptr(),
            5,
            1,
            0,
            s.data_ptr(),
        )
        want = PackedLinear.wrap(fmt, None)(x * s)
        assert torch.equal(y, want)


# ---- the methods, against references written from the papers ----------------------------------


def _rtn4(w):
    from tersor.formats.int4 import dequantize_int4, quantize_int4

    q, s, z, g = quantize_int4(w, 32, False)
    return dequantize_int4(q, s, z, g)


def test_awq_search_is_the_papers_grid_search():
    """AWQ section 3.2: s = s_x^alpha over a grid of alpha, the one with the least output
    error || Q(W diag(s)) (diag(s)^-1 X) - W X || wins; written here as a loop over every
    alpha with float64 products on all rows."""
    x = _outliers(200, 64, seed=1)
    w = torch.randn(48, 64)
    got_s, got_alpha, err, base = smooth.awq_scale([w], x, x.abs().mean(0), _rtn4)
    errs = []
    for i in range(20):
        a = i / 20
        s = x.abs().mean(0).clamp(min=1e-4) ** a
        s = s / (s.max() * s.min()).sqrt()
        y = (x / s).double() @ _rtn4(w * s).double().t()
        errs.append(float((y - (x @ w.t()).double()).pow(2).sum()))
    assert got_alpha == pytest.approx(min(range(20), key=errs.__getitem__) / 20)
    assert got_alpha > 0 and err < 0.9 * base  # hot channels: scaling pays
    assert base == pytest.approx(errs[0], rel=1e-3)


def test_smoothquant_scale_balances_the_maxima():
    """SmoothQuant eq. 4: s_j = max|X_j|^a / max|W_j|^(1-a); at a = 0.5 the smoothed
    activation and weight have the same max per input channel."""
    x = _outliers(100, 32, seed=2)
    ws = [torch.randn(16, 32), torch.randn(8, 32)]
    s = smooth.smooth_scale(ws, x.abs().amax(0), 0.5)
    w_all = torch.cat(ws)
    torch.testing.assert_close((x / s).abs().amax(0), (w_all * s).abs().amax(0), rtol=1e-5, atol=0)
    s2 = smooth.smooth_scale(ws, x.abs().amax(0), 0.8)
    want = x.abs().amax(0) ** 0.8 / w_all.abs().amax(0) ** 0.2
    torch.testing.assert_close(s2, want)


def test_awq_clip_never_worse_than_no_clip():
    """The clip search's objective, per row and group of 32: || x_g (w_g - Q(clip(w_g)))^T ||^2
    on its sample rows, never above the unclipped one; an outlier weight's group gains."""
    g = torch.Generator().manual_seed(3)
    x, w = _outliers(200, 64, seed=3), torch.randn(20, 64, generator=g)
    w[0, 5] = 8.0  # one outlier weight: clipping its group pays
    wc = smooth.awq_clip(w, x, 32, _rtn4)

    def group_err(v):  # [rows, groups]
        d = (_rtn4(v) - w).view(20, 2, 32)
        return torch.stack(
            [(x[:, j * 32 : (j + 1) * 32] @ d[:, j].t()).pow(2).sum(0) for j in (0, 1)], 1
        )

    assert bool((group_err(wc) <= group_err(w) * (1 + 1e-5)).all())
    assert float(group_err(wc)[0, 0]) < float(group_err(w)[0, 0])


# ---- folds -------------------------------------------------------------------------------------


class _PostNormBlock(nn.Module):
    """BERT's layer: post-norm residuals, GELU before the output dense."""

    def __init__(self, d=32, f=64):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o, self.ln1 = nn.Linear(d, d), nn.LayerNorm(d)
        self.up, self.down, self.ln2 = nn.Linear(d, f), nn.Linear(f, d), nn.LayerNorm(d)

    def forward(self, x):
        q, k = self.query(x), self.key(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8, -1) @ self.value(x)
        h = self.ln1(x + self.o(a))
        return self.ln2(h + self.down(torch.nn.functional.gelu(self.up(h))))


class _PostNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.emb = nn.Linear(16, 32)
        self.blocks = nn.ModuleList([_PostNormBlock(), _PostNormBlock()])
        with torch.no_grad():  # hot channels in the residual stream
            self.emb.weight[:3] *= 15

    def forward(self, x):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h)
        return h


def test_folds_are_proven_on_the_block():
    """Only an exact rewrite is accepted: v -> o (linear through the attention sum) folds;
    the post-norm LayerNorm (it also feeds the residual) and up -> down (GELU) do not."""
    blk = _PostNormBlock()
    x = torch.randn(2, 5, 32)
    assert smooth.find_fold(blk, [blk.o], (x,), {}) is blk.value
    assert smooth.find_fold(blk, [blk.up], (x,), {}) is None
    assert smooth.find_fold(blk, [blk.down], (x,), {}) is None
    assert smooth.find_fold(blk, [blk.query, blk.key, blk.value], (x,), {}) is None
    before = copy.deepcopy(blk.state_dict())
    for k, v in blk.state_dict().items():  # the trials leave every weight as it was
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    "cfg",
    [
        tersor.W4Config(group_size=32, method="awq"),
        tersor.W4A8Config(group_size=32, method="awq"),
        tersor.W8A8Config(smooth=0.5),
        tersor.W8A8Config(smooth=0.5, method="gptq"),
        tersor.W4Config(group_size=32, method="awq+gptq", act_order=True),
        tersor.W4A8Config(group_size=32, method="awq+gptq"),
    ],
    ids=lambda c: f"{c.scheme}-{c.method}-{c.smooth}-{c.act_order}",
)
def test_post_norm_network_keeps_scales_in_layers(cfg):
    model = _PostNormNet().eval()
    calib, test = torch.randn(256, 16), torch.randn(64, 16)
    with torch.no_grad():
        ref = model(test)
    rtn = copy.deepcopy(model)
    tersor.quantize_(
        rtn,
        tersor.configs.Config.from_dict(
            {**cfg.to_dict(), "method": "rtn", "smooth": None, "act_order": False}
        ),
        progress=False,
    )
    report = tersor.quantize_(model, cfg, calibration=calib, progress=False)
    notes = {r.fqn: r.reason for r in report.converted}
    assert "folded into 'blocks.0.value'" in notes["blocks.0.o"]
    for name in ("blocks.0.query", "blocks.0.up", "blocks.1.down", "blocks.1.key"):
        assert "kept by the layer" in notes[name], name
        assert model.get_submodule(name).fmt.input_scale is not None
    assert model.blocks[0].o.fmt.input_scale is None
    with torch.no_grad():
        got, base = model(test), rtn(test)
    assert (got - ref).norm() < (base - ref).norm()
    # query / key / value share one kept scale: one packed call, the same numbers
    blk = model.blocks[0]
    assert torch.equal(blk.query.fmt.input_scale, blk.value.fmt.input_scale)
    tersor.fuse_projections(model, True)
    assert blk.query._fused is not None
    with torch.no_grad():
        assert torch.equal(model(test), got)


@pytest.mark.parametrize("method", ["awq", "awq+gptq"])
def test_llama_folds_into_norms_and_up_proj(method):
    """Pre-norm decoder: q/k/v fold into input_layernorm, gate/up into
    post_attention_layernorm, down into up_proj's rows; o_proj (GQA: v has fewer channels)
    and lm_head keep theirs. The folded model computes what the calibration pass ran."""
    pytest.importorskip("transformers")
    from tests.llm_models import tiny_llm

    model = tiny_llm("llama")
    with torch.no_grad():
        for layer in model.model.layers:  # hot channels, as trained LLMs have
            layer.input_layernorm.weight[:4] *= 12
    gen = torch.Generator().manual_seed(9)
    calib = [torch.randint(0, 128, (2, 24), generator=gen) for _ in range(6)]
    test = torch.randint(0, 128, (3, 24), generator=gen)
    with torch.no_grad():
        ref = model(test).logits
    norm0 = model.model.layers[0].input_layernorm.weight.clone()
    rtn = copy.deepcopy(model)
    tersor.quantize_(rtn, tersor.W4Config(group_size=32), progress=False)
    report = tersor.quantize_(
        model, tersor.W4Config(group_size=32, method=method), calibration=calib, progress=False
    )
    notes = {r.fqn: r.reason for r in report.converted}
    p = "model.layers.1."
    assert f"folded into '{p}input_layernorm'" in notes[p + "self_attn.k_proj"]
    assert f"folded into '{p}post_attention_layernorm'" in notes[p + "mlp.up_proj"]
    assert f"folded into '{p}mlp.up_proj'" in notes[p + "mlp.down_proj"]
    assert "kept by the layer" in notes[p + "self_attn.o_proj"]
    assert "kept by the layer" in notes["lm_head"]
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norm0)
    with torch.no_grad():
        got, base = model(test).logits, rtn(test).logits
    assert (got - ref).norm() < (base - ref).norm()


def test_a_failed_conversion_leaves_norms_and_weights_unchanged(monkeypatch):
    model = _PostNormNet().eval()
    before = copy.deepcopy(model.state_dict())
    real = Int4Format.from_float

    def fail_on_down(weight, config, **kw):
        if weight.shape == (32, 64):
            raise ValueError("injected failure")
        return real(weight, config, **kw)

    monkeypatch.setattr(Int4Format, "from_float", staticmethod(fail_on_down))
    with pytest.raises(ValueError, match="injected failure"):
        tersor.quantize_(
            model,
            tersor.W4Config(group_size=32, method="awq"),
            calibration=torch.randn(64, 16),
            progress=False,
        )
    assert all(isinstance(m, nn.Linear) for m in model.modules() if hasattr(m, "in_features"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_config_checks():
    with pytest.raises(ValueError, match="smooth moves activation outliers"):
        tersor.W4Config(smooth=0.5)
    with pytest.raises(ValueError, match="pick one"):
        tersor.W8A8Config(smooth=0.5, method="awq")
    with pytest.raises(ValueError, match="pick one"):
        tersor.W8A8Config(smooth=0.5, method="awq+gptq")
    with pytest.raises(ValueError, match=r"act_order applies to method='gptq' or 'awq\+gptq'"):
        tersor.W4Config(method="awq", act_order=True)
    assert tersor.W4Config(method="awq+gptq", act_order=True).act_order
    with pytest.raises(ValueError, match=r"smooth must be None or in \(0, 1\]"):
        tersor.W8A8Config(smooth=0.0)
    with pytest.raises(ValueError, match="smooth= needs calibration="):
        tersor.quantize_(nn.Sequential(nn.Linear(8, 8)), tersor.W8A8Config(smooth=0.5))
    cfg = tersor.W8A8Config(smooth=0.7)
    assert tersor.configs.Config.from_dict(cfg.to_dict()) == cfg


def test_checkpoint_and_fused_groups_with_kept_scales(tmp_path):
    """Layers that keep an input scale save and load it; q/k/v sharing one run as one call."""
    pytest.importorskip("transformers")
    from tests.llm_models import tiny_llm

    model = tiny_llm("llama")
    calib = torch.randint(0, 128, (4, 16))
    tersor.quantize_(
        model,
        tersor.W8A8Config(smooth=0.5),
        calibration=calib,
        progress=False,
        fuse_projections=True,
    )
    o = model.model.layers[0].self_attn.o_proj
    assert o.fmt.input_scale is not None
    test = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        want = model(test).logits
    tersor.save_pretrained(model, tmp_path)
    fresh = tiny_llm("llama", seed=1)
    tersor.load_pretrained(fresh, tmp_path)
    assert torch.equal(fresh.model.layers[0].self_attn.o_proj.fmt.input_scale, o.fmt.input_scale)
    with torch.no_grad():
        torch.testing.assert_close(fresh(test).logits, want, rtol=0, atol=0)
