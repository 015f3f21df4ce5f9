import dataclasses
import io

import pytest
import torch
from torch import nn

import tersor
from tersor.formats import Int8Format
from tersor.nn import QLinear

CONFIGS = [
    tersor.W8A8Config(),
    tersor.W8Config(),
    tersor.W4Config(group_size=-1),
    tersor.W4A8Config(group_size=-1, symmetric=True),
]


def make_linear(k, n, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.scheme)
@pytest.mark.parametrize("bias", [True, False])
def test_from_float_matches_dense(isa, cfg, bias):
    lin = make_linear(70, 33, bias)
    q = QLinear.from_float(lin, cfg)
    x = torch.randn(7, 70)
    y, y_ref = q(x), lin(x)
    assert y.shape == (7, 33)
    rel = (y - y_ref).norm() / y_ref.norm()
    assert rel < (0.02 if "8" in cfg.scheme.replace("a8", "") else 0.15)  # int4: coarser
    # the module path equals the torch reference path of the same layer
    q_ref = QLinear.from_float(lin, dataclasses.replace(cfg, kernel="ref"))
    torch.testing.assert_close(y, q_ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.scheme)
def test_nd_and_noncontiguous_inputs(cfg):
    lin = make_linear(37, 20)
    q = QLinear.from_float(lin, cfg)
    x = torch.randn(2, 3, 5, 37)
    y = q(x)
    assert y.shape == (2, 3, 5, 20)
    torch.testing.assert_close(y.reshape(-1, 20), q(x.reshape(-1, 37)))
    xt = x.transpose(1, 2)  # non-contiguous N-D
    torch.testing.assert_close(q(xt), q(xt.contiguous()))
    xs = torch.randn(5, 80)[:, 10:47]  # strided rows
    torch.testing.assert_close(q(xs), q(xs.contiguous()))
    assert q(torch.empty(0, 37)).shape == (0, 20)
    assert q(torch.empty(2, 0, 37)).shape == (2, 0, 20)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.scheme)
def test_to_float_and_dequantized_weight(cfg):
    lin = make_linear(37, 20)
    q = QLinear.from_float(lin, cfg)
    back = q.to_float()
    if isinstance(q.fmt, Int8Format):
        qi, s = q.canonical_weight()
        torch.testing.assert_close(back.weight, qi.float() * s[:, None], rtol=0, atol=0)
        assert (back.weight - lin.weight).abs().max() <= s.max() / 2 + 1e-7
    else:
        from tersor.formats.int4 import dequantize_int4

        qi, s, z = q.canonical_weight()
        torch.testing.assert_close(back.weight, dequantize_int4(qi, s, z, q.fmt.G), rtol=0, atol=0)
    torch.testing.assert_close(back.bias, lin.bias)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.scheme)
def test_state_dict_round_trip(cfg):
    lin = make_linear(37, 20)
    q = QLinear.from_float(lin, cfg)
    sd = q.state_dict()
    if isinstance(q.fmt, Int8Format):
        assert set(sd) == {"weight_int8", "weight_scale", "bias"}
        assert sd["weight_int8"].dtype == torch.int8 and sd["weight_int8"].shape == (20, 37)
        fresh = QLinear(37, 20, scheme=cfg.scheme)
    else:
        assert set(sd) == {"weight_int4", "weight_scale", "bias"} | (
            set() if cfg.symmetric else {"weight_zero"}
        )
        assert sd["weight_int4"].dtype == torch.uint8 and sd["weight_int4"].shape == (20, 19)
        fresh = QLinear(
            37, 20, scheme=cfg.scheme, group_size=cfg.group_size, symmetric=cfg.symmetric
        )
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(4, 37)
    assert torch.equal(fresh(x), q(x))


def test_state_dict_errors():
    q = QLinear.from_float(make_linear(37, 20), tersor.W8A8Config())
    sd = q.state_dict()
    fresh = QLinear(37, 21)
    with pytest.raises(RuntimeError, match=r"weight_int8: expected int8 \(21, 37\)"):
        fresh.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="Missing key"):
        QLinear(37, 20).load_state_dict({"weight_int8": sd["weight_int8"]})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        QLinear(37, 20).load_state_dict({**sd, "weight": torch.zeros(1)})


def test_model_state_dict_round_trip():
    model = nn.Sequential(nn.Linear(37, 64), nn.ReLU(), nn.Linear(64, 10))
    tersor.quantize_(model, tersor.W8A8Config())
    sd = model.state_dict()
    model2 = nn.Sequential(nn.Linear(37, 64), nn.ReLU(), nn.Linear(64, 10))
    tersor.quantize_(model2, tersor.W8A8Config())
    model2.load_state_dict(sd)
    x = torch.randn(3, 37)
    assert torch.equal(model(x), model2(x))


def test_bad_inputs_name_the_layer():
    model = nn.Sequential(nn.Linear(37, 20))
    tersor.quantize_(model, tersor.W8A8Config())
    layer = model[0]
    for dtype in (torch.float64, torch.int32):
        with pytest.raises(
            TypeError,
            match=rf"layer '0' \(w8a8, in_features=37\): expected a "
            rf"float32 input, got {dtype}",
        ):
            layer(torch.ones(2, 37, dtype=dtype))
    with pytest.raises(
        ValueError, match=r"layer '0'.*expected input \[\.\.\., 37\], got \(2, 36\)"
    ):
        layer(torch.ones(2, 36))
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.tensor(1.0))
    with pytest.raises(ValueError, match="on meta but the layer's weights are on cpu"):
        layer(torch.ones(2, 37, device="meta"))


def test_repr_says_scheme_and_bytes():
    q = QLinear.from_float(make_linear(384, 384), tersor.W8A8Config())
    r = repr(q)
    assert "scheme=w8a8" in r and "MiB vs" in r


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.scheme)
def test_torch_compile_fullgraph(cfg):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(37, 64), nn.GELU(), nn.Linear(64, 10))
    tersor.quantize_(model, cfg)
    x = torch.randn(5, 37)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


def test_call_keeps_hooks_compile_and_fx():
    """PackedLinear.__call__ skips nn.Module.__call__ only while nothing would notice: hooks of
    every kind (the layer's and global ones) still run, module.compile() still compiles, and
    torch.fx's tracer (which patches nn.Module.__call__) still records the layer as a call."""
    q = QLinear.from_float(make_linear(37, 20), tersor.W8A8Config())
    x = torch.randn(3, 37)
    y = q(x)
    seen = []
    hooks = [
        q.register_forward_pre_hook(lambda m, a: (a[0] * 2,)),
        q.register_forward_hook(lambda m, a, out: seen.append("fwd") or out + 1),
        nn.modules.module.register_module_forward_hook(lambda m, a, out: seen.append("global")),
    ]
    try:
        torch.testing.assert_close(q(x), q.forward(2 * x) + 1)
    finally:
        for h in hooks:
            h.remove()
    assert seen == ["global", "fwd"]  # global hooks run first; q.forward is not a call
    torch.testing.assert_close(q(x), y)
    xg = x.clone().requires_grad_()
    h = q.register_full_backward_hook(lambda m, gi, go: seen.append("bwd"))
    q(xg).sum().backward()
    h.remove()
    assert seen[-1] == "bwd" and xg.grad is not None

    class LeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, QLinear) or super().is_leaf_module(m, name)

    model = nn.Sequential(nn.ReLU(), q)
    graph = LeafTracer().trace(model)
    assert [n.op for n in graph.nodes].count("call_module") == 2

    torch._dynamo.reset()
    q.compile(fullgraph=True, backend="eager")
    try:
        assert q._compiled_call_impl is not None
        torch.testing.assert_close(q(x), y)
    finally:
        q._compiled_call_impl = None


@pytest.mark.parametrize("scheme", ["w4", "w4a8"])
@pytest.mark.parametrize("act_order", [False, True])
def test_from_gptq_matches_dequantized_linear(scheme, act_order):
    """A GPTQ layer (act-order included) computes x @ dequant(W)^T + b in the original order."""
    from test_formats_int4 import _gptq_dequant_doc, _pack_gptq

    gen = torch.Generator().manual_seed(11)
    k, n, g = 128, 48, 32
    qv = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(4, 12, (k // g, n), generator=gen)
    scales = (torch.rand(k // g, n, generator=gen) * 0.05 + 0.01).half()
    g_idx = torch.arange(k, dtype=torch.int32) // g
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    qweight, qzeros = _pack_gptq(qv, zeros, True)
    bias = torch.randn(n, generator=gen)
    layer = QLinear.from_gptq(qweight, qzeros, scales, g_idx, bias, scheme=scheme)
    w = _gptq_dequant_doc(qweight, qzeros, scales, g_idx, True)
    x = torch.randn(5, k, generator=gen)
    ref = torch.nn.functional.linear(x, w, bias)
    tol = 1e-4 if scheme == "w4" else 0.02 * ref.abs().max().item()
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=tol)
    torch.testing.assert_close(layer.to_float().weight, w, rtol=0, atol=0)
    # the state dict carries the permutation and reloads to the same layer
    fresh = QLinear(k, n, scheme=scheme, group_size=g, act_order=act_order)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), layer(x))


def test_int4_conversion_errors():
    lin = make_linear(100, 8)
    with pytest.raises(ValueError, match="in_features=100 is not a multiple of group_size=32"):
        QLinear.from_float(lin, tersor.W4A8Config(group_size=32))
    with pytest.raises(ValueError, match="W4Config.group_size must be one of"):
        tersor.W4Config(group_size=16)
    with pytest.raises(ValueError, match="symmetric must be a bool"):
        tersor.W4A8Config(symmetric=1)
