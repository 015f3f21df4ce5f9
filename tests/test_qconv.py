"""QConv2d against F.conv2d on the dequantized weights, for every scheme and ISA path."""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tersor
from tersor.nn import QConv2d

CASES = [  # (C_in, C_out, kernel, stride, padding, dilation)
    (3, 8, 1, 1, 0, 1), (16, 24, 1, 2, 0, 1), (5, 7, 3, 1, 1, 1), (4, 6, 3, 2, 1, 1),
    (4, 6, 3, 1, 2, 2), (5, 9, 5, 1, 2, 1), (3, 5, 7, 2, 3, 1), (6, 4, 3, 1, 0, 1),
]
SCHEMES = {"w8": (tersor.W8Config(), 1e-5), "w8a8": (tersor.W8A8Config(), 0.02),
           "w4a8": (tersor.W4A8Config(group_size=-1), 0.03)}


def make_conv(ci, co, k, s, p, d, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(ci, co, k, s, p, d)


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "ci{}-co{}-k{}-s{}-p{}-d{}".format(*c))
def test_matches_conv2d_on_dequantized_weights(case, batch, layout, scheme):
    conv = make_conv(*case)
    cfg, tol = SCHEMES[scheme]
    q = QConv2d.from_float(conv, cfg)
    x = torch.randn(batch, case[0], 13, 11)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x, q.to_float().weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    y = q(x)
    assert y.shape == ref.shape
    assert ((y - ref).norm() / ref.norm()).item() < tol
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6]])
def test_every_isa_path_agrees(isa, case, c_ref):
    conv = make_conv(*case)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    x = torch.randn(2, case[0], 9, 10)
    assert torch.equal(q(x), c_ref(lambda: q(x)))


def test_to_float_state_dict_and_compile():
    conv = make_conv(5, 7, 3, 1, 1, 1)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    assert (q.to_float().weight - conv.weight).abs().max() < 0.01
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    fresh = QConv2d(5, 7, 3, 1, 1, 1)
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(2, 5, 12, 12)
    assert torch.equal(fresh(x), q(x))
    torch._dynamo.reset()
    model = nn.Sequential(q, nn.ReLU())
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5,
                               atol=1e-5)


def test_quantize_converts_conv_and_reports_what_stays_dense():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8),          # depthwise
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 10, 10)
    ref = model(x)
    report = tersor.quantize_(model, tersor.W8A8Config())
    by = {r.fqn: r for r in report.layers}
    assert isinstance(model[0], QConv2d) and isinstance(model[4], QConv2d)
    assert by["0"].shape == (8, 3, 3, 3)
    assert "depthwise convolution (groups=8)" in by["2"].reason
    assert "padding_mode='reflect'" in by["3"].reason
    assert isinstance(model[2], nn.Conv2d) and isinstance(model[3], nn.Conv2d)
    assert ((model(x) - ref).norm() / ref.norm()).item() < 0.03


def test_conv_errors():
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        QConv2d.from_float(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
                           tersor.W8A8Config(), name="c1")
    q = QConv2d.from_float(nn.Conv2d(3, 4, 3), tersor.W8A8Config(), name="c1")
    with pytest.raises(ValueError, match=r"layer 'c1' \(w8a8\): expected a 4-D input"):
        q(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="expected 3 input channels, got 5"):
        q(torch.randn(1, 5, 8, 8))
    with pytest.raises(TypeError, match="expected a float32 input, got torch.float16"):
        q(torch.randn(1, 3, 8, 8).half())
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        q(torch.randn(1, 3, 2, 2))


def test_digits_cnn_w8a8_accuracy_within_one_point():
    """A small CNN trained here on sklearn's digits keeps its accuracy under W8A8."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed")
    from tersor.demo import digits_cnn, train_digits_cnn

    digits = datasets.load_digits()
    torch.manual_seed(0)
    model, (xt, yt) = train_digits_cnn(digits, epochs=25)
    with torch.no_grad():
        acc32 = (model(xt).argmax(1) == yt).float().mean().item()
        tersor.quantize_(model, tersor.W8A8Config())
        acc8 = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc32 > 0.9
    assert acc8 >= acc32 - 0.01
    assert isinstance(digits_cnn()[0], nn.Conv2d)


def test_conv_op_opcheck_and_matches_im2col_path():
    from tersor.ops import conv_w8a8

    conv = make_conv(6, 20, 3, 2, 1, 1)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    x = torch.randn(2, 6, 9, 12)
    xh = x.permute(0, 2, 3, 1).contiguous()
    g = q.gemm
    args = (xh, g.packed, g.colsum, g.scale, g.bias, 20, 3, 3, 2, 2, 1, 1, 1, 1)
    torch.library.opcheck(conv_w8a8, args)
    y_native = conv_w8a8(*args)
    y_im2col = q._im2col_gemm(x.permute(0, 2, 3, 1), 2, y_native.shape[1], y_native.shape[2])
    assert torch.equal(y_native, y_im2col)  # same quantization rules, same epilogue


def test_digits_cnn_24_pruned_and_fine_tuned_within_two_points():
    """2:4 pruning of every conv and linear layer plus a short fine-tune keeps the digits CNN
    within 2 points of dense, running on the 2:4 kernels (QConv2d / SparseLinear)."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed")
    from tersor.demo import digits_cnn, prune_finetune_24, train_digits_cnn
    from tersor.nn import SparseLinear

    digits = datasets.load_digits()
    torch.manual_seed(0)
    model, (xt, yt) = train_digits_cnn(digits, epochs=25, model=digits_cnn())
    sparse = prune_finetune_24(model, digits, epochs=8)
    assert isinstance(sparse[0], QConv2d) and isinstance(sparse[0].gemm, SparseLinear)
    assert isinstance(sparse[-1], SparseLinear)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
        acc24 = (sparse(xt).argmax(1) == yt).float().mean().item()
    assert acc24 >= acc - 0.02, (acc, acc24)
