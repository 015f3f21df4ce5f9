"""The one-layer design: format objects behind PackedLinear, configs with a dict round trip and
a handler registry, the self-describing binding, and the user-facing fixes that came with it
(reports, already-compressed layers, straight-through input gradients, dtype-safe .to())."""

import dataclasses

import pytest
import torch
from torch import nn

import tersor
from tersor import _C
from tersor.api import quantize_with, register_handler
from tersor.formats import SCHEMES, Int8Format, WeightFormat
from tersor.nn import PackedLinear, QConv2d

SCHEME_CONFIGS = {
    "w8a8": [tersor.W8A8Config()],
    "w8": [tersor.W8Config()],
    "w4": [tersor.W4Config(group_size=32)],
    "w4a8": [tersor.W4A8Config(group_size=32, symmetric=True)],
    "2:4": [tersor.Sparse24Config()],
    "2:4+w8a8": [tersor.Sparse24Config(), tersor.W8A8Config()],
    "unstructured": [tersor.SparseConfig(0.8)],
    "unstructured+w8a8": [tersor.SparseConfig(0.9), tersor.W8A8Config()],
    "block": [tersor.SparseConfig(0.75, block=(16, 4))],
    "block+w8a8": [tersor.SparseConfig(0.75, block=(16, 4)), tersor.W8A8Config()],
}


def build(scheme, k=64, n=48, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    if scheme.startswith("block") and n % 16:  # the (16, 4) blocks must divide the layer
        n = 16 * (n // 16 + 1)
        lin = nn.Linear(k, n)
    model = nn.Sequential(lin)
    for cfg in SCHEME_CONFIGS[scheme]:
        verb = tersor.sparsify_ if "Sparse" in type(cfg).__name__ else tersor.quantize_
        verb(model, cfg)
    layer = model[0]
    assert isinstance(layer, PackedLinear) and layer.scheme == scheme
    return lin, layer


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_format_through_one_layer(scheme):
    """Every scheme is a PackedLinear holding a format object; forward == x W_deq^T + b (the
    int8-activation schemes within their quantization error), state_dict round trip through a
    fresh layer of the public class, to_float, nbytes, repr."""
    lin, layer = build(scheme)
    fmt = layer.fmt
    assert isinstance(fmt, WeightFormat) and type(fmt) is SCHEMES[scheme][0]
    x = torch.randn(7, 64)
    w = layer.dequantized_weight()
    ref = x @ w.t() + layer.bias
    tol = 0.03 if "a8" in scheme else 1e-5
    assert (layer(x) - ref).norm() <= tol * ref.norm()
    # kernel="ref": the same op, its reference registration (what other devices run)
    native = layer(x)
    layer.kernel = "ref"
    torch.testing.assert_close(layer(x), native, rtol=1e-5, atol=1e-5)
    layer.kernel = "auto"
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 64\], got \(2, 63\)"):
        layer(torch.randn(2, 63))  # inside the packed (padded) width: still refused
    fresh_cls = type(layer)
    kw = {"scheme": scheme}
    if scheme.startswith("w4"):
        kw.update(group_size=32, symmetric=scheme == "w4a8")
    fresh = fresh_cls(64, 48, **kw)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), layer(x))
    back = layer.to_float()
    torch.testing.assert_close(back.weight, w, rtol=0, atol=0)
    assert layer.nbytes == fmt.nbytes + 4 * 48
    assert f"scheme={scheme}" in repr(layer)


@pytest.mark.parametrize(
    "scheme", ["2:4", "2:4+w8a8", "unstructured", "unstructured+w8a8", "block", "block+w8a8"]
)
@pytest.mark.parametrize("m", [1, 7, 33])
def test_sparse_layers_match_their_reference(isa, scheme, m):
    """ref/sparse.py, from the canonical state_dict only, against the layer on every ISA path."""
    from tersor.ref import spmm_24_ref, spmm_block_ref, spmm_csr_ref

    _, layer = build(scheme, k=70 if not scheme.startswith("block") else 64, n=33)
    sd, b, n = layer.state_dict(), layer.bias, layer.out_features
    x = torch.randn(m, layer.in_features)
    s = sd.get("weight_scale")
    if scheme.startswith("2:4"):
        ref = spmm_24_ref(x, sd["weight_values"], sd["weight_meta"], b, s)
    elif scheme.startswith("unstructured"):
        ref = spmm_csr_ref(x, sd["weight_rowptr"], sd["weight_col"], sd["weight_val"], n, b, s)
    else:
        ref = spmm_block_ref(x, sd["weight_crow"], sd["weight_col"], sd["weight_values"], n, b, s)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_to_moves_every_packed_tensor_and_keeps_its_dtype(scheme):
    _, layer = build(scheme)
    x = torch.randn(3, 64)
    y = layer(x)
    dtypes = [None if t is None else t.dtype for t in layer.fmt.tensors]
    layer.half()  # a model cast to fp16 must not corrupt packed codes / scales / the bias
    assert [None if t is None else t.dtype for t in layer.fmt.tensors] == dtypes
    assert layer.bias.dtype == torch.float32
    assert torch.equal(layer(x), y)
    layer.to("meta")  # every tensor moves, the CSR dense copy included
    assert all(t.device.type == "meta" for t in layer.fmt.tensors if t is not None)
    with pytest.raises(ValueError, match="input is on cpu but the layer's weights are on meta"):
        layer(x)


@pytest.mark.parametrize("scheme", ["w8a8", "w4", "2:4", "unstructured", "block+w8a8"])
def test_input_gradient_is_straight_through(scheme):
    """Quantized layers are inference layers, but a gradient w.r.t. the input flows through the
    dequantized weight (weights frozen), so a model with tersor layers can sit under a loss."""
    _, layer = build(scheme)
    x = torch.randn(5, 64, requires_grad=True)
    layer(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    w = layer.dequantized_weight()
    y2 = layer(x2.detach()) + (x2 - x2.detach()) @ w.t()  # same value, gradient through w
    y2.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert not any(p.requires_grad for p in layer.parameters())


def test_conv_input_gradient_and_dtype_hint():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    q = QConv2d.from_float(conv, tersor.W8A8Config(), name="c")
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    q(x).sum().backward()
    w = q.to_float().weight
    ref = torch.nn.grad.conv2d_input(x.shape, w, torch.ones(2, 16, 6, 6), 1, 1)
    torch.testing.assert_close(x.grad, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(
        TypeError,
        match=r"layer 'c' \(w8a8\): expected a float32 input, got "
        r"torch.float16 \(cast with x.float\(\)",
    ):
        q(torch.randn(1, 8, 6, 6).half())


def test_from_float_is_one_signature_everywhere():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    for cls, cfg in [
        (tersor.QLinear, tersor.W8A8Config()),
        (tersor.SparseLinear, tersor.Sparse24Config()),
        (tersor.CsrLinear, tersor.SparseConfig(0.9)),
        (tersor.BlockSparseLinear, tersor.SparseConfig(0.75, block=(16, 4))),
    ]:
        layer = cls.from_float(lin, cfg, name="fc", calibration=None)
        assert isinstance(layer, cls) and layer.name == "fc"
    # calibration: Wanda scores from this layer's inputs, as sparsify_ computes them
    x = torch.randn(16, 64) * torch.linspace(0.1, 3, 64)
    a = tersor.SparseLinear.from_float(lin, tersor.Sparse24Config(), calibration=x)
    model = nn.Sequential(nn.Linear(64, 32))
    model[0].load_state_dict(lin.state_dict())
    tersor.sparsify_(model, tersor.Sparse24Config(), calibration=x)
    assert torch.equal(a.dense_weight(), model[0].dense_weight())
    with pytest.raises(TypeError, match="from_float: config must be one of"):
        tersor.QLinear.from_float(lin, {"bits": 8})


def test_report_is_in_model_order_with_conv_shapes():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, groups=8),  # grouped, 2 channels per group: no kernel
        nn.Flatten(),
        nn.Linear(16 * 16, 10),
        nn.Linear(10, 10),
    )
    report = tersor.quantize_(model, tersor.W8A8Config(), filter_fn=lambda m, n: n != "5")
    assert [r.fqn for r in report.layers] == ["0", "2", "4", "5"]
    assert [r.status for r in report.layers] == ["converted", "dense", "converted", "dense"]
    text = str(report)
    assert "16x3x3x3" in text and "grouped" in text and "weights" in text
    assert "linear weights" not in text and report.seconds > 0


def test_configs_round_trip_through_dicts():
    for cfg in [
        tersor.W8A8Config(skip_names=("head",)),
        tersor.W8Config(kernel="ref"),
        tersor.W4Config(group_size=64, symmetric=True),
        tersor.W4A8Config(),
        tersor.Sparse24Config(prune=False),
        tersor.SparseConfig(0.8, block=(16, 4), scope="global"),
    ]:
        d = cfg.to_dict()
        assert d["type"] == type(cfg).__name__ and d["version"] == type(cfg).version
        import json

        assert tersor.Config.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match="unknown tersor config type 'W3Config'"):
        tersor.Config.from_dict({"type": "W3Config"})
    with pytest.raises(ValueError, match=r"W8A8Config: unknown fields \['bits'\]"):
        tersor.Config.from_dict({"type": "W8A8Config", "bits": 8})
    with pytest.raises(ValueError, match="newer than this tersor's"):
        tersor.Config.from_dict({"type": "W8A8Config", "version": 99})


def test_a_new_config_needs_only_a_handler():
    @dataclasses.dataclass(frozen=True)
    class MyInt8Config(tersor.W8Config):
        pass

    register_handler(MyInt8Config, "quantize_")(quantize_with(Int8Format))
    model = nn.Sequential(nn.Linear(16, 8))
    report = tersor.quantize_(model, MyInt8Config())
    assert isinstance(model[0], tersor.QLinear) and report.converted[0].scheme == "w8"
    with pytest.raises(TypeError, match="config must be one of"):
        tersor.sparsify_(model, MyInt8Config())


def test_binding_is_self_describing():
    """Every _C function names its arguments and says what it does; the ISA list is C++'s."""
    fns = [getattr(_C, n) for n in dir(_C) if not n.startswith("_") and callable(getattr(_C, n))]
    assert len(fns) >= 17
    for cls in [f for f in fns if isinstance(f, type)]:  # a class: its constructor and methods
        fns.remove(cls)
        fns += [
            getattr(cls, m)
            for m in vars(cls)
            if (m == "__init__" or not m.startswith("_")) and callable(getattr(cls, m))
        ]  # (not its constants)
    for fn in fns:
        sig, _, doc = fn.__doc__.partition("\n")
        assert "arg0" not in sig and len(doc.strip()) > 20, fn.__name__
    assert tersor._backend.ISAS == _C.ISAS == ("ref", "avx2", "avx512", "amx")
    assert set(tersor.available_isas()) <= set(_C.ISAS)


def test_generated_stub_is_current():
    import pathlib

    from tersor import _stub

    path = pathlib.Path(_stub.__file__).with_name("_C.pyi")
    assert path.read_text() == _stub.render(), "run `python -m tersor._stub` and commit _C.pyi"


def test_unknown_isa_names_the_choices(monkeypatch):
    layer = tersor.QLinear.from_float(nn.Linear(8, 8), tersor.W8A8Config())
    monkeypatch.setenv("TERSOR_CPU_ISA", "sse2")
    with pytest.raises(ValueError, match="'sse2' is not one of auto, ref, avx2, avx512, amx"):
        layer(torch.randn(2, 8))


def test_cli_runs_keep_baseline_warnings_out_of_the_tables():
    import warnings

    from tersor.bench.timing import quiet_baselines

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_baselines():
            warnings.warn("torch.ao.quantization is deprecated", DeprecationWarning, stacklevel=1)
            warnings.warn("Sparse CSR tensor support is in beta state", UserWarning, stacklevel=1)
            warnings.warn("tersor: something of our own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["tersor: something of our own"]


@pytest.mark.parametrize("cfg", [tersor.W8A8Config(), tersor.W4Config(group_size=32)])
def test_copies_and_pickles_run_their_own_weights(cfg):
    """copy.deepcopy / torch.save of a converted model: the copy's prepared CPU call reads the
    copy's tensors (a copied closure would read the original's)."""
    import copy
    import io

    model = nn.Sequential(nn.Linear(64, 32))
    tersor.quantize_(model, cfg, progress=False)
    x = torch.randn(3, 64)
    with torch.no_grad():
        ref = model(x)
        clone = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for t in model[0].fmt.tensors:
            if t is not None and t.is_floating_point():
                t.zero_()  # the original changes; the copies must not
        assert torch.equal(clone(x), ref) and torch.equal(loaded(x), ref)
