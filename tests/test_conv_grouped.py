"""Grouped W8A8 convolution (groups > 1, not depthwise; csrc/conv/conv_w8a8_dispatch.cpp):
every ISA path bit for bit with the C ref and within fp32 rounding of the torch reference
(exact integer sums), on channel slices read in place (C / groups a multiple of 4) or gathered,
strides, paddings, dilations; the layer, reports, checkpoints, torch.compile."""

import pytest
import torch
from tests.conv_layers import check_round_trips, check_w8a8_only
from torch import nn

import tersor
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8
from tersor.nn import QConv2d
from tersor.ops.conv import conv_w8a8, conv_w8a8_cpu
from tersor.ref.int8 import conv_w8a8_ref

# (C, N, groups, k, stride, padding, dilation, H, W)
CASES = [
    (8, 32, 2, 3, 1, 1, 1, 7, 6),  # 4 channels per group: AVX2 / AVX-512 read them in place
    (8, 64, 2, 3, 1, 1, 1, 7, 6),  # 2 column blocks per group: a 3-block VNNI tile stops at 2
    (12, 48, 3, 3, 2, 1, 1, 9, 8),
    (6, 32, 2, 3, 1, 1, 1, 5, 7),  # 3 channels per group: gathered
    (64, 64, 4, 3, 1, 1, 1, 6, 6),  # 16 per group, stride 1, C % 64 == 0: no implicit GEMM
    (16, 32, 2, 5, 1, 2, 2, 11, 9),  # dilated
    (32, 96, 2, 1, 1, 0, 1, 5, 4),  # 1x1 grouped
    (20, 64, 4, (3, 1), 2, (1, 0), 1, 8, 7),
]


def _case(case, gen, batch=3, bias=True):
    c, n, g, k, s, p, d, h, w = case
    k = k if isinstance(k, tuple) else (k, k)
    p = p if isinstance(p, tuple) else (p, p)
    x = torch.randn(batch, h, w, c, generator=gen) * 2
    wt = torch.randn(n, k[0] * k[1] * (c // g), generator=gen)
    q, sc = quantize_per_channel_int8(wt)
    b = torch.randn(n, generator=gen) if bias else None
    return x, q, sc, pack_int8(q, sc), b, g, k, (s, s), p, (d, d)


def _run(x, pk, b, n, g, k, s, p, d):
    return conv_w8a8_cpu(x, pk.packed, pk.colsum, pk.scale, b, n, *k, *s, *p, *d, groups=g)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_every_isa_matches_ref(isa, case, bias, gen, c_ref):
    x, q, sc, pk, b, g, k, s, p, d = _case(case, gen, bias=bias)
    x[0] = x[0].relu()  # a non-negative image (AVX2's plain tile) beside signed ones
    n = q.shape[0]
    y = _run(x, pk, b, n, g, k, s, p, d)
    assert torch.equal(y, c_ref(lambda: _run(x, pk, b, n, g, k, s, p, d)))
    ref = conv_w8a8_ref(x.permute(0, 3, 1, 2), q, sc, b, k, s, p, d, groups=g)
    torch.testing.assert_close(y, ref.permute(0, 2, 3, 1), rtol=2e-6, atol=1e-5)


def test_op_reference_opcheck_and_bad_groups(gen):
    x, q, sc, pk, b, g, k, s, p, d = _case(CASES[1], gen)
    n = q.shape[0]
    args = (x, pk.packed, pk.colsum, pk.scale, b, n, *k, *s, *p, *d)
    torch.testing.assert_close(
        conv_w8a8(*args, "ref", g), conv_w8a8(*args, "auto", g), rtol=2e-6, atol=1e-5
    )
    torch.library.opcheck(conv_w8a8, (*args, "auto", g))
    # 12 outputs per group: a 16-column block would straddle two groups
    x, q, sc, pk, b, _, k, s, p, d = _case((8, 24, 2, 3, 1, 1, 1, 5, 5), gen)
    with pytest.raises(ValueError, match="groups of a multiple of 16 outputs"):
        conv_w8a8(x, pk.packed, pk.colsum, pk.scale, b, 24, *k, *s, *p, *d, "auto", 2)


def _resnext_block():
    """A ResNeXt bottleneck's convolutions: reduce 1x1, grouped 3x3 (32 groups of 16 would
    be the real width; 4 groups of 16 here), expand 1x1."""
    return nn.Sequential(
        nn.Conv2d(32, 64, 1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(64, 32, 1),
    )


def test_quantize_converts_grouped_for_w8a8(gen):
    torch.manual_seed(0)
    model = _resnext_block()
    x = torch.randn(2, 32, 15, 13, generator=gen)
    ref = model(x)
    rep = tersor.quantize_(model, tersor.W8A8Config())
    assert len(rep.converted) == 3 and isinstance(model[2], QConv2d) and model[2].groups == 4
    assert ((model(x) - ref).norm() / ref.norm()).item() < 0.03
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(model(xc), model(x))
    # what the kernel cannot serve stays dense, with the reason: 3 outputs per group would
    # need 16 groups merged into one
    narrow = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=4))
    by = {r.fqn: r for r in tersor.quantize_(narrow, tersor.W8A8Config()).layers}
    assert "needs a multiple of 16 outputs per group" in by["0"].reason
    assert type(narrow[0]) is nn.Conv2d


@pytest.mark.parametrize("groups,outs", [(8, 4), (4, 8), (6, 24), (16, 12)])
def test_narrow_groups_merge_block_diagonally(groups, outs, gen, tmp_path):
    """Groups of 4 / 8 / 24 / 12 outputs run merged by 4 / 2 / 2 / 4 (block-diagonal weights):
    the same function as the float convolution, the checkpoint and to_float included."""
    cin = 2 * groups
    conv = nn.Conv2d(cin, groups * outs, 3, stride=2, padding=1, groups=groups)
    model = nn.Sequential(conv)
    x = torch.randn(2, cin, 9, 7, generator=gen)
    ref = conv(x)
    rep = tersor.quantize_(model, tersor.W8A8Config())
    q = model[0]
    assert len(rep.converted) == 1 and isinstance(q, QConv2d)
    t = 16 // __import__("math").gcd(outs, 16)
    assert q.groups == groups // t and q.out_channels // q.groups % 16 == 0
    assert ((q(x) - ref).norm() / ref.norm()).item() < 0.03
    # the merged weight is block-diagonal: what lies off the blocks is exactly zero
    w = q.to_float().weight  # [N, t * cin / groups, kh, kw]
    n, cg = groups * outs, cin // groups
    place = torch.arange(n) // outs % t
    for i in range(t):
        off = torch.ones(t * cg, dtype=torch.bool)
        off[i * cg : (i + 1) * cg] = False
        assert (w[place == i][:, off] == 0).all()
    torch.testing.assert_close(q.to_float()(x), ref, rtol=0.05, atol=0.05)
    tersor.save_pretrained(model, str(tmp_path / "ck"))
    with torch.device("meta"):
        meta = nn.Sequential(nn.Conv2d(cin, groups * outs, 3, stride=2, padding=1, groups=groups))
    tersor.load_pretrained(meta, str(tmp_path / "ck"))
    assert torch.equal(meta(x), q(x))
    check_w8a8_only(_resnext_block, 2, "grouped")


def test_state_dict_checkpoint_to_float_compile_and_gradient(tmp_path, gen):
    x = torch.randn(2, 32, 9, 9, generator=gen)
    check_round_trips(_resnext_block, x, 2, 4, tmp_path)
    q = QConv2d.from_float(nn.Conv2d(32, 64, 3, padding=1, groups=2), tersor.W8A8Config())
    xg = x.clone().requires_grad_(True)
    q(xg).sum().backward()
    assert xg.grad.shape == x.shape and torch.isfinite(xg.grad).all()
