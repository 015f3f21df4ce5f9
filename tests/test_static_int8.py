"""quantize_static (tersor/static_int8): whole CNNs rewritten to run int8 between layers.

Graph coverage (residual adds in forward, depthwise and grouped convolutions, pooling, cat,
view, functional ReLU, an op the pipeline does not know), the report, the model left
unchanged, observers, state_dict round trip, torch.compile, errors, and accuracy on the digits
CNN trained here."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tersor
from tersor.bench.cnn import mobilenet_v2, resnet18
from tersor.static_int8 import modules as M
from tersor.static_int8.observers import Observer


def _randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _cos(a, b):
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).min().item()


@pytest.mark.parametrize("build", [resnet18, mobilenet_v2])
def test_whole_cnn_converts_and_stays_close(build, gen):
    torch.manual_seed(0)
    model = _randomize_bn(build(num_classes=10), gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(2)]
    q = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal)
    rep = q.tersor_report
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(rep.converted) == layers and not rep.kept_float
    assert rep.int8_exits == [] and len(rep.int8_entries) == 1  # the input, nothing else
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in q.modules())
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])
    x = torch.randn(3, 3, 64, 64, generator=gen)
    with torch.inference_mode():
        ref, got = model(x), q(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert _cos(ref, got) > 0.99
    if build is mobilenet_v2:  # every depthwise conv ran int8, and the projections' adds fused
        dws = [m for m in q.modules() if isinstance(m, M.StaticConv) and m.depthwise]
        assert len(dws) == 17
        assert sum(m._residual_scale > 0 for m in q.modules() if isinstance(m, M.StaticConv)) == 10
    else:  # 8 basic blocks: each second conv absorbs its block's add and ReLU
        fused = [m for m in q.modules() if isinstance(m, M.StaticConv) and m._residual_scale > 0]
        assert len(fused) == 8 and all(m.act == (0.0, None) for m in fused)


class _Mixed(nn.Module):
    """Ops the pipeline runs on codes, in forward: functional ReLU, cat, a standalone add after
    two ReLUs, F.max_pool2d / F.avg_pool2d, view; and a sigmoid it does not run (fp32)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.d = nn.Conv2d(16, 12, 3, stride=2, padding=1, groups=4)  # grouped: kept float
        self.fc = nn.Linear(12 * 3 * 3, 5)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), torch.relu(self.b(x))], 1)
        y = F.max_pool2d(y, 2)
        z = F.relu(self.c(y))
        y = z + y  # an add after two ReLUs: no conv absorbs it
        y = F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
        y = torch.sigmoid(self.d(y)) * 2.0
        y = F.adaptive_avg_pool2d(y, (3, 3))
        return self.fc(y.view(y.size(0), -1))


def test_graph_ops_on_codes_and_fp32_fallback(gen):
    torch.manual_seed(0)
    model = _Mixed().eval()
    cal = [torch.randn(4, 3, 12, 12, generator=gen) for _ in range(3)]
    q = tersor.quantize_static(model, tersor.W8A8StaticConfig(observer="minmax"), calibration=cal)
    rep = q.tersor_report
    assert [n for n, _ in rep.kept_float] == ["d"] and "grouped" in rep.kept_float[0][1]
    assert len(rep.converted) == 4  # a, b, c, fc
    assert any("d" in w for w in rep.int8_exits)  # the grouped conv reads fp32
    kinds = {type(m).__name__ for m in q.modules()}
    assert {"Cat", "Add", "Pool", "StaticConv", "Quantize", "Dequantize"} <= kinds
    x = torch.randn(5, 3, 12, 12, generator=gen)
    with torch.inference_mode():
        ref, got = model(x), q(x)
    assert _cos(ref, got) > 0.995
    assert str(rep).count("leaves int8") == len(rep.int8_exits)


class _ResNeXtish(nn.Module):
    """A stem and one ResNeXt bottleneck (grouped 3x3: `groups` groups of 32 / groups), the
    skip in forward."""

    def __init__(self, groups=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=groups), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.expand = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.expand(self.grouped(self.reduce(x)))
        y = F.relu(x + y)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("groups", [2, 8])  # 16 outputs per group; 4, run as 2 merged groups
def test_grouped_convolution_runs_int8(groups, gen):
    torch.manual_seed(0)
    model = _randomize_bn(_ResNeXtish(groups), gen)
    cal = [torch.randn(2, 3, 16, 16, generator=gen) for _ in range(2)]
    q = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal)
    rep = q.tersor_report
    assert len(rep.converted) == 5 and not rep.kept_float and rep.int8_exits == []
    grouped = [m for m in q.modules() if isinstance(m, M.StaticConv) and m.groups == 2]
    assert len(grouped) == 1 and not grouped[0].depthwise and "groups=2" in repr(grouped[0])
    x = torch.randn(3, 3, 16, 16, generator=gen)
    with torch.inference_mode():
        ref, got = model(x), q(x)
    assert _cos(ref, got) > 0.99


def test_observers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g)
    x[0] = 40.0  # one outlier
    obs = {k: Observer(k, percentile=99.9) for k in ("minmax", "percentile", "mse")}
    for o in obs.values():
        o.observe_range(x)
        if o.needs_histogram:
            o.observe_histogram(x)
    assert obs["minmax"].threshold() == 40.0
    assert 3.0 < obs["percentile"].threshold() < 3.6  # |N(0,1)|'s 99.9th percentile: 3.29
    t = obs["mse"].threshold()

    def err(th):
        s = th / 127
        return ((x / s).round().clamp(-127, 127) * s - x).pow(2).mean().item()

    # the squared error of the codes, brute force over thresholds: mse's pick is near the best
    best = min(err(0.5 * i) for i in range(2, 81))
    assert err(t) <= best * 1.05 and err(t) < err(40.0) and t < 40.0
    empty = Observer("mse")
    assert empty.scale() > 0  # never seen anything: any positive scale
    relu = Observer("minmax")
    relu.observe_range(torch.rand(10))
    assert relu.non_negative


def test_state_dict_round_trip_and_compile(gen):
    torch.manual_seed(0)
    model = _randomize_bn(resnet18(num_classes=10), gen)
    cal_a = [torch.randn(2, 3, 32, 32, generator=gen)]
    cal_b = [torch.randn(2, 3, 32, 32, generator=gen) * 3]
    qa = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal_a)
    qb = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal_b)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.inference_mode():
        ya = qa(x)
        assert not torch.equal(ya, qb(x))  # other scales
        qb.load_state_dict(qa.state_dict())
        assert torch.equal(qb(x), ya)  # scales and weights came with the state_dict
        assert any(k.endswith("input_scale") for k in qa.state_dict())
        compiled = torch.compile(qa, backend="eager", fullgraph=True)
        assert torch.equal(compiled(x), ya)


def test_seven_bit_weights_match_the_reference_path(isa, gen, c_ref):
    """W8A8StaticConfig(weight_bits=7): codes within [-63, 63] and the narrow-weight hint on
    every layer, so on AVX2 the layers reading signed codes (the stem, MobileNetV2's expansion
    convolutions after the projections) multiply u8 a + 128 (flipped in the tile) by w and
    take 128 * colsum off; the network's output is the C ref's bit for bit."""
    torch.manual_seed(0)
    model = _randomize_bn(mobilenet_v2(num_classes=10), gen)
    cal = [torch.randn(2, 3, 48, 48, generator=gen) for _ in range(2)]
    q = tersor.quantize_static(model, tersor.W8A8StaticConfig(weight_bits=7), calibration=cal)
    convs = [m for m in q.modules() if isinstance(m, M.StaticConv)]
    assert all(m._narrow_w and int(m.weight_int8.abs().max()) == 63 for m in convs)
    x = torch.randn(2, 3, 48, 48, generator=gen)
    with torch.inference_mode():
        got = q(x)
        assert torch.equal(got, c_ref(lambda: q(x)))
        assert _cos(model(x), got) > 0.98


def test_the_torch_reference_agrees(gen):
    """Every module through its custom op's torch reference (kernel_pref="ref" is what other
    devices run): codes within one of the kernels', outputs close."""
    model = _Mixed().eval()
    cal = [torch.randn(4, 3, 12, 12, generator=gen)]
    q = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal)
    x = torch.randn(2, 3, 12, 12, generator=gen)
    from tersor.ops import int8_static as ops

    with torch.inference_mode():
        got = q(x)
        conv = next(m for m in q.modules() if isinstance(m, M.StaticConv))
        xs = torch.randint(-127, 128, (2, 12, 12, 3), dtype=torch.int8, generator=gen)
        args = (xs, conv._input_scale, conv._packed, conv._colsum, conv._w_scale, conv.bias,
                conv.out_channels, conv.geometry, conv.groups, conv._output_scale, conv._lo,
                conv._hi, None, 0.0)  # fmt: skip
        c = conv.in_channels + conv.pad_channels  # the 3-channel stem is read as 4
        native = ops.conv_static_cpu(*args, channels=c)
        ref = ops.conv_w8a8_static(*args, c, kernel_pref="ref")
        assert int((native.int() - ref.int()).abs().max()) <= 1
    assert torch.isfinite(got).all()


def test_errors_name_what_is_wrong(gen):
    model = _Mixed().eval()
    with pytest.raises(ValueError, match="calibration= is required"):
        tersor.quantize_static(model, tersor.W8A8StaticConfig())
    with pytest.raises(TypeError, match="batches of model inputs"):
        tersor.quantize_static(model, calibration=lambda m: m(torch.randn(1, 3, 8, 8)))
    with pytest.raises(TypeError, match="W8A8StaticConfig"):
        tersor.quantize_static(model, tersor.W8A8Config(), calibration=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="observer"):
        tersor.W8A8StaticConfig(observer="max")

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x  # data-dependent: not traceable

    with pytest.raises(TypeError, match="traced"):
        tersor.quantize_static(Branchy(), calibration=torch.randn(1, 3, 4, 4))
    q = tersor.quantize_static(model, calibration=torch.randn(2, 3, 12, 12, generator=gen))
    conv = next(m for m in q.modules() if isinstance(m, M.StaticConv))
    with pytest.raises(TypeError, match=f"{conv.label}: input must be int8 codes"):
        conv(torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="input channels|expected"):
        conv(torch.zeros(1, 5, 12, 12, dtype=torch.int8))
    bad = {k: v.clone() for k, v in q.state_dict().items()}
    key = next(k for k in bad if k.endswith("input_scale"))
    bad[key].fill_(0.0)
    with pytest.raises(ValueError, match="input_scale must be a finite scale > 0"):
        q.load_state_dict(bad)


def test_keep_float_and_digits_accuracy():
    datasets = pytest.importorskip("sklearn.datasets")
    from tersor import demo

    digits = datasets.load_digits()
    torch.manual_seed(0)
    model, (xt, yt) = demo.train_digits_cnn(digits, epochs=12, model=demo._DigitsCNN())
    train = demo.train_images(digits)  # calibration: training images, disjoint from xt
    q = tersor.quantize_static(model, calibration=list(train[:512].split(128)))
    assert len(q.tersor_report.converted) == 4
    with torch.inference_mode():
        ref, got = model(xt), q(xt)
    top1 = lambda y: (y.argmax(1) == yt).float().mean().item() * 100  # noqa: E731
    assert top1(got) >= top1(ref) - 0.5
    assert F.cosine_similarity(ref, got, dim=1).mean().item() >= 0.98
    kept = tersor.quantize_static(
        model, tersor.W8A8StaticConfig(keep_float=("10",)), calibration=train[:128]
    )
    assert kept.tersor_report.kept_float == [("10", "keep_float")]
    with torch.inference_mode():
        assert F.cosine_similarity(ref, kept(xt), dim=1).mean().item() >= 0.98
    assert copy.deepcopy(q)(xt[:4]).shape == (4, 10)


def _mobile_digits():
    """A MobileNetV2-style network (BN, ReLU6, depthwise, inverted residuals with the skip in
    forward) for 16x16 digit images."""
    from tersor.bench.cnn import InvertedResidual

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        InvertedResidual(16, 16, 1, 4),
        InvertedResidual(16, 24, 2, 4),
        InvertedResidual(24, 24, 1, 4),
        InvertedResidual(24, 32, 2, 4),
        nn.Conv2d(32, 96, 1, bias=False),
        nn.BatchNorm2d(96),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, 10),
    )


def test_trained_mobile_cnn_agrees_with_fp32():
    """Trained weights (not random): a depthwise-separable network trained here on digits,
    calibrated on training images, measured on the held-out ones."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    model = _mobile_digits()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        for idx in torch.randperm(len(tr), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[tr[idx]]), y[tr[idx]]).backward()
            opt.step()
    model.eval()
    q = tersor.quantize_static(model, calibration=list(x[tr[:512]].split(128)))
    assert len(q.tersor_report.converted) == sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()
    )
    with torch.inference_mode():
        ref, got = model(x[te]), q(x[te])
    assert (ref.argmax(1) == y[te]).float().mean() > 0.9  # the network did learn
    agree = (ref.argmax(1) == got.argmax(1)).float().mean().item()
    cos = F.cosine_similarity(ref, got, dim=1).mean().item()
    assert agree >= 0.95 and cos >= 0.99, (agree, cos)


class _Outlier(nn.Module):
    """fc2's input has one feature 1000x the others, which fc2 ignores: one scale per tensor
    leaves the features it reads almost no codes, so fc2 alone loses far more than fc1."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)
        with torch.no_grad():
            self.fc1.weight[0] *= 1000.0
            self.fc1.bias[0] = 1000.0
            self.fc2.weight[:, 0] = 0.0

    def forward(self, x):
        return self.fc2(self.fc1(x))


def test_min_sqnr_keeps_the_sensitive_layer_float(gen):
    torch.manual_seed(0)
    model = _Outlier().eval()
    cal = [torch.randn(64, 16, generator=gen)]
    cfg = tersor.W8A8StaticConfig(observer="minmax", min_sqnr=30.0)
    q = tersor.quantize_static(model, cfg, calibration=cal)
    kept = q.tersor_report.kept_float
    assert [n for n, _ in kept] == ["fc2"] and "SQNR" in kept[0][1], kept
    assert [n for n, _ in q.tersor_report.converted] == ["fc1"]
    x = torch.randn(32, 16, generator=gen)
    plain = tersor.quantize_static(
        model, tersor.W8A8StaticConfig(observer="minmax"), calibration=cal
    )
    with torch.inference_mode():
        ref = model(x)
        err = lambda m: ((m(x) - ref).norm() / ref.norm()).item()  # noqa: E731
        assert err(q) < err(plain) / 3
    everything = tersor.W8A8StaticConfig(min_sqnr=200.0)
    q_all = tersor.quantize_static(model, everything, calibration=cal)
    assert not q_all.tersor_report.converted and len(q_all.tersor_report.kept_float) == 2
    with pytest.raises(ValueError, match="min_sqnr"):
        tersor.W8A8StaticConfig(min_sqnr="high")


class _BroadcastAdd(nn.Module):
    """conv(x) + a [C, 1, 1] parameter, then ReLU: an add, but no residual to fuse."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(8, 1, 1))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x) + self.shift))


def test_a_broadcasting_add_is_not_fused_as_a_residual(gen):
    model = _BroadcastAdd().eval()
    cal = [torch.randn(2, 3, 10, 10, generator=gen)]
    q = tersor.quantize_static(model, calibration=cal)
    convs = {m.label: m for m in q.modules() if isinstance(m, M.StaticConv)}
    assert set(convs) == {"conv", "head"} and convs["conv"]._residual_scale == 0
    x = torch.randn(3, 3, 10, 10, generator=gen)
    with torch.inference_mode():
        assert _cos(model(x), q(x)) > 0.99
        with pytest.raises(ValueError, match="residual"):  # never read past a short residual
            convs["conv"]._run_eager(
                torch.zeros(1, 10, 10, 3, dtype=torch.int8),
                torch.zeros(1, 1, 1, 8, dtype=torch.int8),
            )
