"""Depthwise W8A8 convolution (csrc/conv/conv_dw_w8a8.h): every ISA path bit for bit with the C
ref and within fp32 rounding of the torch reference (exact integer sums, fp64 epilogue), on odd
channel counts, strides, paddings, dilations and channel multipliers; the layer, reports,
checkpoints and torch.compile."""

import pytest
import torch
from tests.conv_layers import check_round_trips, check_w8a8_only
from torch import nn

import tersor
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8
from tersor.nn import QConv2d
from tersor.ops.conv import conv_dw_w8a8, conv_dw_w8a8_cpu
from tersor.ref.int8 import conv_w8a8_ref

# (C, mult, k, stride, padding, dilation, H, W)
CASES = [
    (1, 1, 3, 1, 1, 1, 5, 6),
    (7, 1, 3, 2, 1, 1, 9, 8),
    (16, 1, 3, 1, 0, 1, 6, 6),
    (37, 1, 5, 1, 2, 1, 11, 7),
    (32, 2, 3, 2, 1, 1, 9, 9),
    (24, 1, 3, 1, 2, 2, 10, 12),
    (40, 1, 1, 1, 0, 1, 4, 5),
    (3, 3, (3, 1), 1, (1, 0), 1, 7, 5),
    # three taps wide (AVX-512: quad rows, one vpdpbusd per kernel row): rows reused from the
    # ring across output rows and images, a channel tail, stride 2, five kernel rows
    (33, 1, 3, 1, 1, 1, 13, 17),
    (20, 1, (5, 3), 2, (2, 1), 1, 11, 9),
    (16, 1, 3, 2, 1, 1, 14, 14),
]


def _case(case, gen, batch=3, bias=True):
    c, mult, k, s, p, d, h, w = case
    k = k if isinstance(k, tuple) else (k, k)
    p = p if isinstance(p, tuple) else (p, p)
    x = torch.randn(batch, h, w, c, generator=gen) * 2
    wt = torch.randn(c * mult, k[0] * k[1], generator=gen)
    q, sc = quantize_per_channel_int8(wt)
    b = torch.randn(c * mult, generator=gen) if bias else None
    return x, q, sc, pack_int8(q, sc), b, k, (s, s), p, (d, d)


def _run(x, pk, b, n, k, s, p, d):
    return conv_dw_w8a8_cpu(x, pk.packed, pk.scale, b, n, *k, *s, *p, *d)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_every_isa_matches_ref(isa, case, bias, gen, c_ref):
    x, q, sc, pk, b, k, s, p, d = _case(case, gen, bias=bias)
    n = q.shape[0]
    y = _run(x, pk, b, n, k, s, p, d)
    assert torch.equal(y, c_ref(lambda: _run(x, pk, b, n, k, s, p, d)))
    c = x.shape[3]
    ref = conv_w8a8_ref(x.permute(0, 3, 1, 2), q, sc, b, k, s, p, d, groups=c).permute(0, 2, 3, 1)
    # exact integer sums; fp32 fma epilogue against fp64: a rounding apart
    torch.testing.assert_close(y, ref, rtol=2e-6, atol=1e-6)


def test_zero_and_non_finite_images(isa, gen, c_ref):
    x, q, sc, pk, b, k, s, p, d = _case(CASES[3], gen)
    x[1] = 0.0
    x[2, 3, 2, 5] = float("nan")
    n = q.shape[0]
    y = _run(x, pk, b, n, k, s, p, d)
    assert torch.equal(y[1], b.expand_as(y[1]))  # an all-zero image: the bias
    assert torch.isnan(y[2]).all() and torch.isfinite(y[0]).all()
    assert torch.equal(
        torch.nan_to_num(y), torch.nan_to_num(c_ref(lambda: _run(x, pk, b, n, k, s, p, d)))
    )


def test_op_reference_and_opcheck(gen):
    x, q, sc, pk, b, k, s, p, d = _case(CASES[4], gen)
    n = q.shape[0]
    args = (x, pk.packed, pk.scale, b, n, *k, *s, *p, *d)
    torch.testing.assert_close(
        conv_dw_w8a8(*args, "ref"), conv_dw_w8a8(*args), rtol=2e-6, atol=1e-6
    )
    torch.library.opcheck(conv_dw_w8a8, args)


def _mobile_block():
    """A MobileNetV2 inverted residual's convolutions: expand 1x1, depthwise 3x3, project."""
    return nn.Sequential(
        nn.Conv2d(8, 48, 1),
        nn.ReLU6(),
        nn.Conv2d(48, 48, 3, stride=2, padding=1, groups=48),
        nn.ReLU6(),
        nn.Conv2d(48, 16, 1),
    )


def test_quantize_converts_depthwise_for_w8a8_only(gen):
    torch.manual_seed(0)
    model = _mobile_block()
    x = torch.randn(2, 8, 15, 13, generator=gen)
    ref = model(x)
    rep = tersor.quantize_(model, tersor.W8A8Config())
    assert len(rep.converted) == 3 and isinstance(model[2], QConv2d) and model[2].groups == 48
    assert ((model(x) - ref).norm() / ref.norm()).item() < 0.03
    # channels_last in, channels_last out; the same numbers
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(model(xc), model(x))
    assert model(xc).is_contiguous(memory_format=torch.channels_last)
    check_w8a8_only(_mobile_block, 2, "depthwise")


def test_state_dict_checkpoint_to_float_and_compile(tmp_path, gen):
    check_round_trips(_mobile_block, torch.randn(2, 8, 9, 9, generator=gen), 2, 48, tmp_path)


def test_gradient_flows_through_depthwise(gen):
    q = QConv2d.from_float(nn.Conv2d(6, 6, 3, padding=1, groups=6), tersor.W8A8Config())
    x = torch.randn(1, 6, 5, 5, generator=gen, requires_grad=True)
    q(x).sum().backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
