"""Kernels of the static int8 pipeline (csrc/conv/requant.h, csrc/int8_ops): the convolution
from s8 codes to s8 codes (bias, clamp, residual add and requantization fused) or to fp32, dense
(every conv path: the AVX2 direct one, the gather path, the AMX implicit GEMM emulated),
grouped and depthwise; pooling, add and quantize. Every ISA path bit for bit with the C ref;
the C ref against the torch reference of the rules (codes within one of it: the fp32 epilogue
against fp64 can round a value lying on a .5 the other way; fp32 outputs within fp32
rounding)."""

import pytest
import torch

from tersor.formats.int8 import pack_int8, quantize_per_channel_int8
from tersor.ops import int8_static as ops

# (C, N, k, stride, padding, dilation, H, W, groups: C is depthwise; k, padding: n or (h, w))
CASES = [
    (3, 16, 3, 2, 1, 1, 9, 11, 1),  # the stem: runs of 3 codes, the gather path
    (8, 7, 1, 1, 0, 1, 5, 6, 1),  # 1x1, N < 16
    (16, 33, 3, 1, 1, 1, 7, 7, 1),  # N past a tile
    (64, 20, 3, 1, 1, 1, 6, 5, 1),  # C % 64 == 0: the implicit GEMM applies
    (12, 24, 3, 2, 1, 2, 13, 10, 1),  # dilated: one run per tap
    (37, 37, 3, 1, 1, 1, 6, 7, 37),  # depthwise, channel tail
    (32, 32, 3, 2, 1, 1, 9, 9, 32),
    (24, 24, 3, 1, 2, 1, 5, 9, 24),  # depthwise read in place, a border two pixels deep
    (20, 20, 5, 1, 2, 1, 8, 7, 20),  # depthwise 5x5: 13 tap pairs, channel tail
    (48, 48, 3, 1, 2, 2, 9, 8, 48),  # depthwise dilated: the AVX2 ring holds rows 2 apart
    (16, 16, 3, 1, 0, 1, 6, 6, 16),  # depthwise without a border
    (8, 16, 3, 1, 1, 1, 5, 5, 8),  # depthwise, channel multiplier 2: the padded copy
    (16, 16, 7, 1, 3, 1, 9, 9, 16),  # depthwise 7x7 (49 taps): the padded copy, the ref
    (16, 16, (26, 1), 1, (12, 0), 1, 27, 5, 16),  # depthwise 26 x 1: the AVX2 ring's most rows
    (24, 40, 1, 1, 0, 1, 40, 40, 1),  # 1x1 over 24 channels, 1600 rows: a tile runs 3 blocks
    (8, 24, 3, 1, 1, 1, 36, 36, 1),  # short K (72), 1296 rows: the same, three runs per row
    (16, 40, 3, 1, 1, 1, 20, 20, 1),  # K 144 (short up to 192), 1200 rows; 8 columns last
    (8, 32, 3, 1, 1, 1, 7, 6, 2),  # grouped, 4 channels per group: read in place on AVX2
    (6, 48, 3, 2, 1, 1, 7, 9, 3),  # grouped, 2 channels per group: gathered
    (64, 64, 3, 1, 1, 1, 6, 5, 4),  # grouped with C % 64 == 0: no implicit GEMM
    # 189 rows (three row blocks, the last short) over 5 / 4 column blocks: threads split a row
    # block's columns (gemm_w8a8/row_blocks.h), across groups in the second
    (32, 80, 3, 1, 1, 1, 7, 9, 1),
    (32, 64, 3, 1, 1, 1, 7, 9, 2),
]


def _case(case, gen, batch=3, relu=False):
    c, n, k, s, p, d, h, w, groups = case
    (kh, kw), (ph, pw) = (
        (k if isinstance(k, tuple) else (k, k)),
        (p if isinstance(p, tuple) else (p, p)),
    )
    xs = torch.randint(0 if relu else -127, 128, (batch, h, w, c), dtype=torch.int8, generator=gen)
    k_in = kh * kw * (c // groups)
    q, sc = quantize_per_channel_int8(torch.randn(n, k_in, generator=gen))
    pk = pack_int8(q, sc)
    bias = torch.randn(n, generator=gen)
    return xs, q, sc, pk, bias, (kh, kw, s, s, ph, pw, d, d), groups


def _run(xs, pk, bias, n, geom, groups, out_scale, lo, hi, res=None, res_scale=0.0, emu=False):
    return ops.conv_static_cpu(
        xs, 0.02, pk.packed, pk.colsum, pk.scale, bias, n, geom, groups, out_scale, lo, hi,
        res, res_scale, emulate_implicit=emu,
    )  # fmt: skip


def _ho_wo(xs, geom):
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    h, w = xs.shape[1:3]
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


@pytest.mark.parametrize("epilogue", ["fp32", "codes", "relu", "residual_relu", "relu6"])
@pytest.mark.parametrize("case", CASES)
def test_conv_every_isa_matches_ref(isa, case, epilogue, gen, c_ref):
    xs, q, sc, pk, bias, geom, groups = _case(case, gen, relu=epilogue == "relu")
    n = q.shape[0]
    out_scale, lo, hi, res, rs = 0.0, -127.0, 127.0, None, 0.0
    if epilogue != "fp32":
        y32 = _run(xs, pk, bias, n, geom, groups, 0.0, 0, 0)
        out_scale = float(y32.abs().amax()) / 127 * 0.8  # some values clip
        lo = 0.0 if "relu" in epilogue else -127.0
        hi = round(6.0 / out_scale) if epilogue == "relu6" else 127.0
    if epilogue == "residual_relu":
        res = torch.randint(-127, 128, (xs.shape[0], *_ho_wo(xs, geom), n), dtype=torch.int8,
                            generator=gen)  # fmt: skip
        rs = out_scale * 0.7
    run = lambda: _run(xs, pk, bias, n, geom, groups, out_scale, lo, hi, res, rs)  # noqa: E731
    y = run()
    assert torch.equal(y, c_ref(run))
    ref = ops.conv_static_ref(xs, 0.02, q, sc, bias, geom, groups, out_scale, lo, hi, res, rs)
    if epilogue == "fp32":
        torch.testing.assert_close(y, ref, rtol=2e-6, atol=1e-6)
    else:
        assert y.dtype == torch.int8
        diff = (y.int() - ref.int()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01
        assert int(y.min()) >= lo and int(y.max()) <= hi
        assert ((y == lo) | (y == hi)).any() and (y != 0).float().mean() > 0.3  # clips, not all 0


@pytest.mark.parametrize("lo", [-127.0, 0.0, 5.0])
def test_conv_codes_past_the_int32_range(isa, lo, gen, c_ref):
    """A tiny output scale puts the requantized values far past int32 (the AVX2 epilogue bounds
    them above in fp32 and below on the packed bytes): every path clamps them to [lo, 127]
    like the ref, in tiles of 1-4 rows and a column tail."""
    xs = torch.randint(-127, 128, (1, 5, 3, 20), dtype=torch.int8, generator=gen)
    q, sc = quantize_per_channel_int8(torch.randn(19, 20, generator=gen))
    pk, bias = pack_int8(q, sc), torch.zeros(19)
    geom = (1, 1, 1, 1, 0, 0, 1, 1)
    y = _run(xs, pk, bias, 19, geom, 1, 1e-30, lo, 127.0)
    assert torch.equal(y, c_ref(lambda: _run(xs, pk, bias, 19, geom, 1, 1e-30, lo, 127.0)))
    y32 = _run(xs, pk, bias, 19, geom, 1, 0.0, 0, 0)
    want = torch.where(y32 > 0, 127, torch.where(y32 < 0, int(lo), max(0, int(lo))))
    assert torch.equal(y.int(), want.int()) and (y == 127).any() and (y == int(lo)).any()


@pytest.mark.parametrize("c", [16, 32, 96])
def test_conv_1x1_reads_the_signs_of_each_tile(isa, c, gen, c_ref):
    """A 1x1 layer's direct paths take each 8-row tile's signs from its own codes (direct_rows.h):
    codes >= 0 but for a few negative ones scattered over the images (one image has none); a
    tile that missed one would read it as u8 (128 off)."""
    b, h, w, n = 3, 7, 9, 24
    xs = torch.randint(0, 128, (b, h, w, c), dtype=torch.int8, generator=gen)
    for i in range(2):  # image 2 stays non-negative
        for _ in range(3):
            px = torch.randint(0, h * w, (1,), generator=gen).item()
            xs[i, px // w, px % w, torch.randint(0, c, (1,), generator=gen).item()] = -100
    q, sc = quantize_per_channel_int8(torch.randn(n, c, generator=gen))
    pk, bias = pack_int8(q, sc), torch.randn(n, generator=gen)
    geom = (1, 1, 1, 1, 0, 0, 1, 1)
    for out_scale in (0.0, 0.05):
        run = lambda o=out_scale: _run(xs, pk, bias, n, geom, 1, o, -127.0, 127.0)  # noqa: E731
        y = run()
        assert torch.equal(y, c_ref(run))
        ref = ops.conv_static_ref(
            xs, 0.02, q, sc, bias, geom, 1, out_scale, -127.0, 127.0, None, 0.0
        )
        if out_scale == 0.0:
            torch.testing.assert_close(y, ref, rtol=2e-6, atol=1e-6)


# (C, N, k, stride, padding, H, W): 4-code groups per kernel row even (3x3 over 64), odd (the
# 4-channel stem's 7, 3x3 over 4 channels' 3), a 1x1 layer's 6, N past a tile
NARROW_CASES = [
    (64, 40, 3, 1, 1, 6, 5),
    (4, 16, 7, 2, 3, 11, 9),
    (4, 33, 3, 1, 1, 7, 1),
    (24, 20, 1, 1, 0, 9, 11),
    (48, 40, 1, 1, 0, 12, 12),  # the flipped copy's 32- and 16-byte steps; 7 row blocks
    (36, 20, 1, 1, 0, 9, 11),  # and its scalar tail
]


@pytest.mark.parametrize("case", NARROW_CASES)
def test_conv_narrow_weights_sum_group_pairs_exactly(isa, case, gen, c_ref):
    """Narrow weights (|w| <= 64) over non-negative codes: the AVX2 tile adds the int16 pair
    sums of two 4-k groups before widening them (tile_avx2.h). At the extremes (codes 127,
    weights +-64 of one sign per column) two pair sums reach +-32512: exact, no saturation.
    Image 1 holds one negative code, image 2 signed codes throughout (the flipped narrow tile;
    a 1x1 layer's row blocks over 32 channels or more copied as u8 a + 128,
    conv_w8a8_avx2.cpp), image 0 none."""
    c, n, k, s, p, h, w = case
    xs = torch.where(
        torch.rand(3, h, w, c, generator=gen) < 0.7,
        torch.tensor(127, dtype=torch.int8),
        torch.randint(0, 128, (3, h, w, c), dtype=torch.int8, generator=gen),
    )
    xs[1, 0, 0, 0] = -127
    xs[2] = torch.randint(-127, 128, (h, w, c), dtype=torch.int8, generator=gen)
    sign = torch.where(torch.rand(n, 1, generator=gen) < 0.5, -1, 1)
    q = torch.where(
        torch.rand(n, k * k * c, generator=gen) < 0.8,
        64 * sign,
        torch.randint(-64, 65, (n, k * k * c), generator=gen),
    ).to(torch.int8)
    sc = torch.rand(n, generator=gen) * 1e-3 + 1e-4
    y = _check_narrow(xs, q, sc, (k, k, s, s, p, p, 1, 1), gen, c_ref)
    assert float(y.abs().amax()) > 0.5 * 127 * 64 * k * k * c * 0.02 * float(sc.min())


@pytest.mark.parametrize("c", [72, 160])
def test_conv_signed_codes_extreme_weights_exact(isa, c, gen, c_ref):
    """Signed codes read in place (AVX2's XOR tile, kXorW: |w| x (a XOR sign mask of w), the
    accumulators at each column's sum of |w| over its negative codes, staged in int16 over at
    most 512 codes before widening): weights at -127 in a whole column, in half of one and
    alternating in a third, codes at +-127 against them, K = 648 / 1440 past those 512; the
    C ref bit for bit and the torch rule."""
    n, h, w = 20, 6, 7
    xs = torch.randint(-127, 128, (2, h, w, c), dtype=torch.int8, generator=gen)
    xs[..., ::5], xs[..., 2::5] = 127, -127
    k_in = 9 * c
    q, sc = quantize_per_channel_int8(torch.randn(n, k_in, generator=gen))
    q[0], q[1, : k_in // 2] = -127, -127
    q[2, ::2], q[2, 1::2] = 127, -127
    pk, bias = pack_int8(q, sc), torch.randn(n, generator=gen)
    geom = (3, 3, 1, 1, 1, 1, 1, 1)
    run = lambda: _run(xs, pk, bias, n, geom, 1, 0.0, 0, 0)  # noqa: E731
    y = run()
    assert torch.equal(y, c_ref(run))
    ref = ops.conv_static_ref(xs, 0.02, q, sc, bias, geom, 1, 0.0, -127.0, 127.0, None, 0.0)
    torch.testing.assert_close(y, ref, rtol=2e-6, atol=1e-6)


def _check_narrow(xs, q, sc, geom, gen, c_ref, channels=0):
    """The narrow-weights convolution of xs (read as `channels`, 0: its own) with codes out
    and fp32 out: the ISA path equal to the C ref, the fp32 output to the torch rule; returns
    the fp32 output."""
    n = q.shape[0]
    pk, bias = pack_int8(q, sc), torch.randn(n, generator=gen)
    for out_scale in (0.5, 0.0):
        run = lambda o=out_scale: ops.conv_static_cpu(  # noqa: E731
            xs, 0.02, pk.packed, pk.colsum, pk.scale, bias, n, geom, 1, o, -127.0, 127.0,
            None, 0.0, channels=channels, narrow_w=True,
        )  # fmt: skip
        y = run()
        assert torch.equal(y, c_ref(run))
    padded = torch.nn.functional.pad(xs, (0, max(channels, xs.shape[3]) - xs.shape[3]))
    ref = ops.conv_static_ref(padded, 0.02, q, sc, bias, geom, 1, 0.0, -127.0, 127.0, None, 0.0)
    torch.testing.assert_close(y, ref, rtol=2e-6, atol=1e-6)
    return y


# The implicit GEMM's K steps (csrc/conv/conv_w8a8_implicit.h ImplicitPlan) and its pixel
# numbering: over the padded width at stride 1, per output row otherwise.
IMPLICIT_CASES = [
    (64, 20, 3, 1, 1, 1, 6, 5, 1),  # 64-code steps, stride 1
    (4, 64, 7, 2, 3, 1, 23, 21, 1),  # the stem: one 28-code step per kernel row, stride 2
    (16, 33, 1, 1, 0, 1, 5, 37, 1),  # a 1x1 layer of 16 channels; rows past 16 pixels
    (96, 24, 1, 1, 0, 1, 4, 5, 1),  # 96 = 2 steps of 48
    (144, 16, 1, 2, 0, 1, 9, 9, 1),  # 3 steps of 48, stride 2
    (64, 48, 3, 2, 1, 1, 9, 35, 1),  # stride 2, 3 segments per output row
    (8, 32, 3, 1, 2, 2, 9, 8, 1),  # dilated: runs of C per tap
]


@pytest.mark.parametrize("epilogue", ["fp32", "codes", "residual_relu"])
@pytest.mark.parametrize("case", IMPLICIT_CASES)
def test_conv_implicit_gemm_emulated_matches(case, epilogue, gen, c_ref):
    """The AMX implicit GEMM over emulated tiles (any CPU): bit for bit with the C ref, and
    with the AMX tiles where the CPU has them (the default path there)."""
    xs, q, sc, pk, bias, geom, groups = _case(case, gen, batch=2)
    n = q.shape[0]
    out_scale, res, rs = 0.0, None, 0.0
    if epilogue == "codes":
        out_scale = 0.05
    elif epilogue == "residual_relu":
        out_scale = 0.05
        res = torch.randint(-127, 128, (xs.shape[0], *_ho_wo(xs, geom), n), dtype=torch.int8,
                            generator=gen)  # fmt: skip
        rs = 0.03
    args = (xs, pk, bias, n, geom, groups, out_scale, 0.0, 127.0, res, rs)
    y = _run(*args, emu=True)
    assert torch.equal(y, c_ref(lambda: _run(*args)))
    assert torch.equal(y, _run(*args))


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize(
    "case",
    [
        (64, 16, 3, 1, 1, 1, 20, 19, 1),  # codes > weights: split by images, epilogue overlapped
        (8, 48, 3, 1, 1, 1, 23, 17, 1),  # codes > weights, 72 codes a patch: not overlapped
        (64, 80, 3, 2, 1, 1, 7, 9, 1),  # weights > codes: split by column pairs
    ],
)
def test_conv_implicit_gemm_work_orders(case, batch, gen, c_ref):
    """The implicit GEMM's three work orders (split by images, by an image's panels, by column
    pairs: conv_w8a8_implicit.h work_order) on two threads, each block's epilogue run between
    the next block's K steps from 384 codes a patch: bit for bit with the C ref."""
    xs, q, sc, pk, bias, geom, groups = _case(case, gen, batch=batch)
    n = q.shape[0]
    res = torch.randint(-127, 128, (batch, *_ho_wo(xs, geom), n), dtype=torch.int8, generator=gen)
    args = (xs, pk, bias, n, geom, groups, 0.05, 0.0, 127.0, res, 0.03)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y = _run(*args, emu=True)
        assert torch.equal(y, c_ref(lambda: _run(*args)))
        assert torch.equal(y, _run(*args))
    finally:
        torch.set_num_threads(threads)


def test_requant_nan_inf_and_halves(isa, c_ref):
    x = torch.tensor(
        [
            [
                0.5,
                1.5,
                2.5,
                -0.5,
                -1.5,
                float("nan"),
                float("inf"),
                -float("inf"),
                1e30,
                -1e-30,
                126.5,
                127.49,
                -300.0,
                3.0,
                0.49999997,
                7.5,
                8.5,
                0.0,
            ]
        ]  # fmt: skip
    )
    x = x.repeat(3, 1)  # 18 columns: one 16-wide vector step and a scalar tail per row
    q = ops.quantize_s8_cpu(x, 1.0, -127.0, 127.0)
    assert torch.equal(q, c_ref(lambda: ops.quantize_s8_cpu(x, 1.0, -127.0, 127.0)))
    want = [0, 2, 2, 0, -2, 0, 127, -127, 127, 0, 126, 127, -127, 3, 0, 8, 8, 0]
    assert q[0].tolist() == want
    assert torch.equal(q, ops._requant_ref(x, 1.0, -127.0, 127.0))
    relu = ops.quantize_s8_cpu(x, 0.5, 0.0, 13.0)
    assert int(relu.min()) == 0 and int(relu.max()) == 13


@pytest.mark.parametrize(
    "kind,params",
    [
        (ops.MAX, (3, 3, 2, 2, 1, 1, 0)),
        (ops.MAX, (2, 2, 2, 2, 0, 0, 0)),
        (ops.AVG, (3, 3, 2, 2, 1, 1, 1)),
        (ops.AVG, (3, 3, 1, 1, 1, 1, 0)),
        (ops.ADAPTIVE_AVG, (1, 1)),
        (ops.ADAPTIVE_AVG, (3, 2)),
    ],
)
def test_pool_matches_torch(kind, params, gen):
    xs = torch.randint(-127, 128, (2, 9, 7, 19), dtype=torch.int8, generator=gen)
    y = ops.pool_s8_cpu(xs, kind, params)
    assert torch.equal(y, ops.pool_s8_ref(xs, kind, params))
    x = xs.permute(0, 3, 1, 2).double()  # torch's own pooling on the codes, as numbers
    if kind == ops.MAX:
        kh, kw, sh, sw, ph, pw, _ = params
        want = torch.nn.functional.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))
    elif kind == ops.AVG:
        kh, kw, sh, sw, ph, pw, inc = params
        want = torch.nn.functional.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), False, bool(inc))
    else:
        want = torch.nn.functional.adaptive_avg_pool2d(x, params)
    assert torch.equal(y.permute(0, 3, 1, 2).double(), want.round())


def test_add_matches_reference(gen):
    a = torch.randint(-127, 128, (4, 5, 6, 7), dtype=torch.int8, generator=gen)
    b = torch.randint(-127, 128, (4, 5, 6, 7), dtype=torch.int8, generator=gen)
    y = ops.add_s8_cpu(a, 0.03, b, 0.05, 0.06, 0.0, 127.0)
    want = ops._requant_ref(a.float() * 0.03 + b.float() * 0.05, 1 / 0.06, 0.0, 127.0)
    assert int((y.int() - want.int()).abs().max()) <= 1 and int(y.min()) == 0
    rescaled = ops.add_s8_cpu(a, 0.03, None, 0.0, 0.06, -127.0, 127.0)
    assert torch.equal(rescaled, ops._requant_ref(a.float() * 0.03, 1 / 0.06, -127.0, 127.0))


def test_conv_reads_fewer_channels_as_zero_padded(isa, gen, c_ref):
    """A 3-channel image read as 4 channels (the stem): the same as padding the codes."""
    xs = torch.randint(-127, 128, (2, 11, 9, 3), dtype=torch.int8, generator=gen)
    q, sc = quantize_per_channel_int8(torch.randn(16, 7 * 7 * 4, generator=gen))
    pk = pack_int8(q, sc)
    g = [7, 7, 2, 2, 3, 3, 1, 1]
    run = lambda x, ch: ops.conv_static_cpu(  # noqa: E731
        x, 0.02, pk.packed, pk.colsum, pk.scale, None, 16, g, 1, 0.05, -127.0, 127.0,
        None, 0.0, channels=ch,
    )  # fmt: skip
    y = run(xs, 4)
    padded = torch.nn.functional.pad(xs, (0, 1))
    assert torch.equal(y, run(padded, 0))
    assert torch.equal(y, c_ref(lambda: run(xs, 4)))
    ref = ops._conv_ref_call(xs, 0.02, pk.packed, pk.scale, None, 16, g, 1, 0.05, -127.0,
                             127.0, None, 0.0, 4)  # fmt: skip
    assert int((y.int() - ref.int()).abs().max()) <= 1


@pytest.mark.parametrize(
    "case",
    [  # (C read, C stored, N, k, stride, padding, H, W)
        (4, 3, 32, 3, 2, 1, 13, 12),  # MobileNetV2's stem
        (4, 3, 64, 7, 2, 3, 11, 9),  # ResNet's stem: a border 3 pixels deep
        (16, 16, 24, 3, 1, 1, 7, 6),  # a 3x3 layer over signed codes; N past a tile
    ],
)
def test_conv_narrow_weights_over_signed_images_in_the_padded_copy(isa, case, gen, c_ref):
    """Narrow weights (|w| <= 64) over images that are all signed, read from the kernel's
    padded copy (a normalized photo into the stem): the AVX2 path turns its copy into u8
    a + 128 once, the zero borders and the zero 4th channel into the biased zero, and takes the
    biased tile. Every path matches the ref, the borders included; codes at -127 and 127."""
    ch, c, n, k, s, p, h, w = case
    xs = torch.randint(-127, 128, (2, h, w, c), dtype=torch.int8, generator=gen)
    xs[0, 0, 0, 0], xs[1, -1, -1, -1] = -127, 127
    q = torch.randint(-64, 65, (n, k, k, ch), dtype=torch.int8, generator=gen)
    q[..., c:] = 0  # the channels past the stored ones
    sc = torch.rand(n, generator=gen) * 1e-3 + 1e-4
    _check_narrow(xs, q.reshape(n, -1), sc, (k, k, s, s, p, p, 1, 1), gen, c_ref, channels=ch)


def test_the_public_op_checks_sizes(gen):
    xs, q, sc, pk, bias, geom, groups = _case(CASES[2], gen)
    n = q.shape[0]
    args = [xs, 0.02, pk.packed, pk.colsum, pk.scale, bias, n, list(geom), groups, 0.05, -127.0,
            127.0, None, 0.0]  # fmt: skip
    assert ops.conv_w8a8_static(*args).shape[3] == n
    for i, bad, what in [
        (0, xs[..., :5].contiguous(), "packed weight"),  # K no longer matches
        (5, bias[:3], "bias"),
        (12, torch.zeros(1, 1, 1, n, dtype=torch.int8), "res must be"),
        (0, xs.float(), "int8 NHWC"),
    ]:
        wrong = list(args)
        wrong[i] = bad
        with pytest.raises(ValueError, match=what):
            ops.conv_w8a8_static(*wrong)
    a = torch.zeros(2, 3, 4, 5, dtype=torch.int8)
    with pytest.raises(ValueError, match="one shape"):
        ops.add_s8(a, 1.0, a[:1], 1.0, 1.0, -127.0, 127.0)
    with pytest.raises(ValueError, match="empty pooling window"):
        ops.pool_s8(a, ops.MAX, [7, 7, 1, 1, 0, 0, 0])
    assert ops.pool_s8(a, ops.MAX, [2, 2, 2, 2, 0, 0, 0]).shape == (2, 1, 2, 5)
