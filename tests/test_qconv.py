"""QConv2d against F.conv2d on the dequantized weights, for every scheme and ISA path."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tersor
from tersor import _C
from tersor.nn import QConv2d
from tersor.ops.gemm_w4 import FP32_TILES_MIN_ROWS

CASES = [  # (C_in, C_out, kernel, stride, padding, dilation)
    (3, 8, 1, 1, 0, 1),
    (16, 24, 1, 2, 0, 1),
    (5, 7, 3, 1, 1, 1),
    (4, 6, 3, 2, 1, 1),
    (4, 6, 3, 1, 2, 2),
    (5, 9, 5, 1, 2, 1),
    (3, 5, 7, 2, 3, 1),
    (6, 4, 3, 1, 0, 1),
]
SCHEMES = {  # name: (configs applied in order, tolerance against F.conv2d on to_float())
    "w8": ([tersor.W8Config()], 1e-5),
    "w8a8": ([tersor.W8A8Config()], 0.02),
    "w4": ([tersor.W4Config(group_size=-1)], 1e-5),
    "w4a8": ([tersor.W4A8Config(group_size=-1)], 0.03),
    "2:4": ([tersor.Sparse24Config()], 1e-5),
    "2:4+w8a8": ([tersor.Sparse24Config(), tersor.W8A8Config()], 0.02),
}


def make_conv(ci, co, k, s, p, d, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(ci, co, k, s, p, d)


def convert(conv, scheme):
    """QConv2d of `scheme` from conv (2:4+w8a8: the 2:4 layer then quantized, as sparsify_ then
    quantize_ do)."""
    configs = SCHEMES[scheme][0]
    q = QConv2d.from_float(conv, configs[0])
    for cfg in configs[1:]:
        q = q.quantized(cfg)
    assert q.scheme == scheme
    return q


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "ci{}-co{}-k{}-s{}-p{}-d{}".format(*c))
def test_matches_conv2d_on_dequantized_weights(case, batch, layout, scheme):
    conv = make_conv(*case)
    q, tol = convert(conv, scheme), SCHEMES[scheme][1]
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


# the last case takes the AMX implicit GEMM (stride 1, C_in % 64 == 0) where AMX is present
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6], (64, 20, 3, 1, 1, 1)])
@pytest.mark.parametrize("weight_bits", [8, 7])  # 7: narrow weights (AVX2: u8 a + 128 x w)
def test_every_isa_path_agrees(isa, case, weight_bits, c_ref):
    conv = make_conv(*case)
    q = QConv2d.from_float(conv, tersor.W8A8Config(weight_bits=weight_bits))
    assert q.gemm.fmt.narrow_w == (weight_bits == 7)
    x = torch.randn(2, case[0], 9, 10)
    assert torch.equal(q(x), c_ref(lambda: q(x)))


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "w8a8"])  # w8a8: the test above
@pytest.mark.parametrize(
    "case", [CASES[1], CASES[4], CASES[6]], ids=lambda c: "ci{}-co{}-k{}-s{}-p{}-d{}".format(*c)
)
def test_every_scheme_on_every_isa_path(isa, scheme, case, c_ref):
    """The schemes that run on the Linear kernels (im2col blocks): each ISA path against
    F.conv2d on the dequantized weights, and against the C ref path."""
    conv = make_conv(*case)
    q = convert(conv, scheme)
    x = torch.randn(3, case[0], 11, 9).contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x, q.to_float().weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    y = q(x)
    assert ((y - ref).norm() / ref.norm()).item() < SCHEMES[scheme][1]
    rows = y.numel() // y.shape[1]
    if not (
        isa == "amx" and scheme == "w8" and rows >= FP32_TILES_MIN_ROWS["w8"] and _C.has_amx_bf16()
    ):  # fmt: skip  (the fp32 tiles: test_kernels_int8.py)
        assert torch.equal(y, c_ref(lambda: q(x)))


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
    torch.testing.assert_close(
        torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-5
    )


def test_quantize_converts_conv_and_reports_what_stays_dense():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # grouped, 2 channels per group
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(8, 4, 1),
    )
    x = torch.randn(2, 3, 10, 10)
    ref = model(x)
    report = tersor.quantize_(model, tersor.W8A8Config())
    by = {r.fqn: r for r in report.layers}
    assert isinstance(model[0], QConv2d) and isinstance(model[4], QConv2d)
    assert by["0"].shape == (8, 3, 3, 3)
    assert "grouped convolution (groups=4, 2 outputs per group)" in by["2"].reason
    assert "padding_mode='reflect'" in by["3"].reason
    assert isinstance(model[2], nn.Conv2d) and isinstance(model[3], nn.Conv2d)
    assert ((model(x) - ref).norm() / ref.norm()).item() < 0.03


def test_conv_errors():
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        QConv2d.from_float(
            nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), tersor.W8A8Config(), name="c1"
        )
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


def _close_to_ref(y, ref):
    """fp32 fma epilogue against the fp64 reference on the same integer sums: a few ulps."""
    torch.testing.assert_close(y, ref, rtol=2e-6, atol=2e-6 * ref.abs().max().item())


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[2:4] != (1, 1)],  # 1x1/1: the GEMM
    ids=lambda c: "ci{}-co{}-k{}-s{}-p{}-d{}".format(*c),
)
def test_w8a8_conv_is_the_per_image_rule(case):
    """Native conv (every ISA), kernel="ref" and the torch reference agree: one activation scale
    per image, exact integer sums."""
    from tersor.ref.int8 import conv_w8a8_ref

    conv = make_conv(*case)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    x = torch.randn(3, case[0], 13, 11)
    x[1] *= 40.0  # images with very different ranges: a per-batch scale would fail this
    g = q.gemm
    ref = conv_w8a8_ref(
        x, *g.canonical_weight(), g.bias, q.kernel_size, q.stride, q.padding, q.dilation
    )
    _close_to_ref(q(x), ref)
    q_ref = QConv2d.from_float(conv, tersor.W8A8Config(kernel="ref"))
    _close_to_ref(q_ref(x), ref)


@pytest.mark.parametrize(
    "case",
    [
        (4, 6, 3, 1, 1, 1),
        (8, 20, 3, 2, 1, 1),
        (4, 6, 3, 1, 2, 2),
        (16, 24, 1, 2, 0, 1),
        (64, 20, 3, 1, 1, 1),
        (5, 7, 3, 1, 1, 1),
    ],
    ids=lambda c: "ci{}-co{}-k{}-s{}-p{}-d{}".format(*c),
)
def test_w8a8_conv_post_relu_images(isa, case, c_ref):
    """Images after a ReLU (every code >= 0) take the AVX2 tile without the sign trick; a signed
    image beside them, and 4-row tiles that straddle two images (13 x 11 output pixels per
    image), keep it. Every path: the per-image rule, bit-identical to the C ref."""
    from tersor.ref.int8 import conv_w8a8_ref

    conv = make_conv(*case)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    x = torch.randn(4, case[0], 13, 11)
    x[0], x[2], x[3] = x[0].relu(), x[2].relu() * 40.0, x[3].abs() + 0.5
    g = q.gemm
    ref = conv_w8a8_ref(
        x, *g.canonical_weight(), g.bias, q.kernel_size, q.stride, q.padding, q.dilation
    )
    y = q(x)
    _close_to_ref(y, ref)
    assert torch.equal(y, c_ref(lambda: q(x)))


@pytest.mark.parametrize(
    "case",
    [(8, 20, 3, 1, 1, 1), (5, 7, 3, 2, 1, 1)],
    ids=lambda c: "ci{}-co{}-k{}-s{}-p{}-d{}".format(*c),
)
def test_w8a8_conv_zero_and_non_finite_images(isa, case, c_ref):
    """An all-zero image gives the bias, an image holding NaN or Inf gives NaN everywhere (its
    scale), and neither touches the other images of the batch: on every path."""
    conv = make_conv(*case)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    x = torch.randn(4, case[0], 9, 10)
    x[0] = 0.0
    x[1, 0, 4, 5] = float("nan")
    x[2, -1, 0, 0] = float("inf")
    y = q(x)
    assert torch.equal(y[0], conv.bias.detach()[:, None, None].expand_as(y[0]))
    assert y[1].isnan().all() and y[2].isnan().all()
    torch.testing.assert_close(y[3:], q(x[3:]), rtol=0, atol=0)
    torch.testing.assert_close(y, c_ref(lambda: q(x)), rtol=0, atol=0, equal_nan=True)


IMPLICIT_CASES = [  # (C_in, C_out, kernel, padding, dilation, H, W): stride 1, C_in % 64 == 0
    (64, 40, 3, 1, 1, 9, 7),
    (128, 16, 3, 1, 1, 5, 6),
    (64, 33, (1, 3), (0, 1), 1, 4, 9),
    (64, 24, 3, 2, 2, 7, 8),
    (64, 17, 5, 2, 1, 6, 5),
    (64, 32, 3, 0, 1, 5, 5),
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "case", IMPLICIT_CASES, ids=lambda c: "ci{}-co{}-k{}-p{}-d{}-{}x{}".format(*c)
)
def test_implicit_gemm_addressing_bit_identical_to_gather_path(case, batch):
    """The AMX implicit GEMM (output pixels over the padded width, one strided tile load per
    tap) run over emulated tiles on any CPU: bit-identical to the gather path."""
    from tersor.ops.conv import conv_w8a8_cpu

    ci, co, k, p, d, h, w = case
    conv = nn.Conv2d(ci, co, k, 1, p, d)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    xh = torch.randn(batch, h, w, ci)
    g = q.gemm
    (kh, kw), (ph, pw), (dh, dw) = q.kernel_size, q.padding, q.dilation
    args = (xh, g.fmt.packed, g.fmt.colsum, g.fmt.scale, g.bias, co, kh, kw, 1, 1, ph, pw, dh, dw)
    y = conv_w8a8_cpu(*args, emulate_implicit=True)
    assert torch.equal(y, conv_w8a8_cpu(*args))
    with pytest.raises(ValueError, match="multiple of 4 codes"):
        conv_w8a8_cpu(
            xh[..., : ci - 1].contiguous(),
            g.fmt.packed,
            g.fmt.colsum,
            g.fmt.scale,
            g.bias,
            co,
            kh,
            kw,
            1,
            1,
            ph,
            pw,
            dh,
            dw,
            emulate_implicit=True,
        )


def test_conv_op_opcheck():
    from tersor.ops import conv_w8a8

    conv = make_conv(6, 20, 3, 2, 1, 1)
    q = QConv2d.from_float(conv, tersor.W8A8Config())
    xh = torch.randn(2, 9, 12, 6)
    g = q.gemm
    args = (xh, g.fmt.packed, g.fmt.colsum, g.fmt.scale, g.bias, 20, 3, 3, 2, 2, 1, 1, 1, 1)
    torch.library.opcheck(conv_w8a8, args)


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
