"""Every ISA path of the int4 family against the C ref (bit for bit), the torch reference and an
fp64 oracle, on odd shapes, group sizes, symmetric and asymmetric weights."""

import pytest
import torch
import torch.nn.functional as F

import tersor
from tersor import _C
from tersor.formats.int4 import Int4Format, dequantize_int4, pack_int4, quantize_int4
from tersor.ops import dequant_w4t, gemm_w4, gemm_w4a8
from tersor.ops._common import IO_CODE
from tersor.ops.gemm_w4 import (
    BF16_MIN_ROWS,
    FP32_BF16_MIN_ROWS,
    TILES_MIN_ROWS,
    bf16_key,
    cpu_runner_w4,
    fp32_tiles_take,
    gemm_w4_cpu,
    w4_tiles,
)
from tersor.ref import gemm_w4a8_ref, quantize_planes_ref, quantize_rows_ref

CASES = [(-1, 3), (-1, 37), (32, 64), (32, 96), (64, 128), (128, 256), (-1, 261)]  # (G, K)
# 1, 2: the AVX-512 decode tile; 6, 7: partial row tiles of 2 and 3; 12: the VNNI tiles below
# AMX's 16 rows; 33: AMX row blocks of 32 and 1
MS = [1, 2, 6, 7, 12, 33]
W4_MS = [1, 2, 4, 5, 6, 7, 16, 33]  # the W4 kernels' tiles of 1..6 rows, slabs from 7 (AVX2) / 16
NS = [5, 33]


def make(m, k, n, g, sym, gen, bias=True):
    x = torch.randn(m, k, generator=gen) * 2
    w = torch.randn(n, k, generator=gen)
    q, s, z, G = quantize_int4(w, g, sym)
    b = torch.randn(n, generator=gen) if bias else None
    return x, q, s, z, G, b, pack_int4(q, s, z, G)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("g,k", CASES)
def test_gemm_w4a8(isa, g, k, m, n, sym, gen, c_ref):
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    xs = torch.randn(m, k + 5, generator=gen)[:, 2 : 2 + k]  # strided rows
    xs.copy_(x)
    y = gemm_w4a8(xs, p.codes, p.scale, p.zero, b, n, G)
    assert torch.equal(y, c_ref(lambda: gemm_w4a8(x, p.codes, p.scale, p.zero, b, n, G)))
    torch.testing.assert_close(y, gemm_w4a8_ref(x, q, s, z, G, b), rtol=2e-6, atol=2e-5)
    y64 = x.double() @ dequantize_int4(q, s, z, G).double().t() + b.double()
    assert (y.double() - y64).norm() <= 0.02 * y64.norm() + 1e-6


@pytest.mark.parametrize("g,k", [(32, 64), (-1, 37), (128, 256)])
def test_gemm_w4a8_integer_exact(isa, g, k, gen):
    """Without bias and with one group, y = fl(fl(t * s) * sx): t the exact integer."""
    x, q, s, z, G, _, p = make(7, k, 20, -1, False, gen, bias=False)
    y = gemm_w4a8(x, p.codes, p.scale, p.zero, None, 20, G)
    qx, sx = quantize_rows_ref(x)
    t = qx.double() @ q.double().t() - z.double().t() * qx.double().sum(1, keepdim=True)
    expect = (t.float() * s.float().t()) * sx[:, None]
    assert torch.equal(y, expect)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("g,k", [(32, 1056), (-1, 1029)])
def test_gemm_w4a8_one_panel_on_two_threads(isa, g, k, m, gen, c_ref):
    """A row panel of 1-4 rows with work enough for two threads (K * N >= 64K): each thread
    quantizes the rows into a copy of its own (no barrier). Bit for bit the C ref, on one thread
    and on two; one group: the exact integer sums."""
    n = 70
    x, q, s, z, G, _, p = make(m, k, n, g, False, gen, bias=False)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (2, 1):
            torch.set_num_threads(threads)
            outs.append(gemm_w4a8(x, p.codes, p.scale, p.zero, None, n, G))
        assert torch.equal(outs[0], outs[1])
        assert torch.equal(
            outs[0], c_ref(lambda: gemm_w4a8(x, p.codes, p.scale, p.zero, None, n, G))
        )
    finally:
        torch.set_num_threads(before)
    if g == -1:
        qx, sx = quantize_rows_ref(x)
        t = qx.double() @ q.double().t() - z.double().t() * qx.double().sum(1, keepdim=True)
        assert torch.equal(outs[0], (t.float() * s.float().t()) * sx[:, None])


@pytest.mark.parametrize(
    "g,k", [(32, 64), (64, 128), (128, 256), (-1, 261), (-1, 8192), (-1, 9000)]
)
def test_gemm_w4a8_extreme_codes(isa, g, k, gen, c_ref):
    """Codes 15 and 0 against activations at +-127 over whole groups: the largest partial sums
    the kernels form in narrow integers (AVX2 adds 8 vpmaddubsw pair sums in int16, up to
    8 * 3810), bit for bit the C ref's int32 sums. A group of 8192 (per channel): the largest
    whose sums the AVX-512 tiles take in fp32 exactly (15 * 127 * 8192 < 2^24); 9000 (past 2^24):
    int32."""
    x, q, s, z, G, b, _ = make(6, k, 20, g, False, gen)
    x[0], x[1] = 3.0, -3.0  # every code +127 / -127
    x[2] = torch.where(torch.arange(k) % 2 == 0, 3.0, -3.0)
    x[5] = 3.0
    x[5, 0] = 3.0 * 126 / 127  # odd sums: past 2^24, not exact in fp32
    q[:8] = 15
    q[8:12] = 0
    q[12:16] = torch.where(torch.arange(k) % 2 == 0, 15, 0).to(q.dtype)
    p = pack_int4(q, s, z, G)
    y = gemm_w4a8(x, p.codes, p.scale, p.zero, b, 20, G)
    assert torch.equal(y, c_ref(lambda: gemm_w4a8(x, p.codes, p.scale, p.zero, b, 20, G)))
    torch.testing.assert_close(y, gemm_w4a8_ref(x, q, s, z, G, b), rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("m", [1, 2, 7, 33])
@pytest.mark.parametrize("g,k", [(-1, 37), (32, 96), (128, 256), (-1, 261)])
def test_gemm_w4a8_planes(isa, g, k, m, sym, gen, c_ref):
    """16-bit activations as two int8 planes (x_planes=2): the C ref bit for bit, the torch
    reference, and within the planes' bound of the float activations' exact product: each
    activation within amax / 64516 (int8 alone: amax / 254)."""
    n = 37
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    x[0, 1] = 40.0  # an outlier sets the row's amax
    xs = torch.randn(m, k + 5, generator=gen)[:, 2 : 2 + k]  # strided rows
    xs.copy_(x)
    y = gemm_w4a8(xs, p.codes, p.scale, p.zero, b, n, G, "auto", 2)
    assert torch.equal(y, c_ref(lambda: gemm_w4a8(x, p.codes, p.scale, p.zero, b, n, G, "auto", 2)))
    torch.testing.assert_close(y, gemm_w4a8_ref(x, q, s, z, G, b, x_planes=2), rtol=2e-6, atol=2e-5)
    w = dequantize_int4(q, s, z, G).double()
    y64 = x.double() @ w.t() + b.double()
    amax = x.abs().amax(1, keepdim=True).double()
    bound = (amax / 64516) @ w.abs().sum(1, keepdim=True).t()  # sum_k |w| * amax / 64516
    err = (y.double() - y64).abs()
    assert (err <= bound + 1e-5 * y64.abs() + 1e-5).all()
    y8 = gemm_w4a8(x, p.codes, p.scale, p.zero, b, n, G)
    assert (y8.double() - y64).norm() > 20 * (y.double() - y64).norm()


@pytest.mark.parametrize("g,k", [(32, 64), (-1, 37)])
def test_gemm_w4a8_planes_codes_exact(isa, g, k, gen):
    """One group, no bias: y = fl(fl(t_hi s) sx_hi) + fl(fl(t_lo s) sx_lo), with t each plane's
    exact integer sum, so the codes and scales are those of the rules (quantize_planes_ref),
    including a row at amax = 0 and one holding NaN."""
    x, q, s, z, G, _, p = make(7, k, 20, -1, False, gen, bias=False)
    x[3] = 0.0
    x[5, 2] = float("nan")
    y = gemm_w4a8(x, p.codes, p.scale, p.zero, None, 20, G, "auto", 2)
    hi, s_hi, lo, s_lo = quantize_planes_ref(x)
    assert int(lo.abs().max()) <= 127 and int(lo[0].abs().max()) > 100

    def plane(codes, scale):
        t = codes.double() @ q.double().t() - z.double().t() * codes.double().sum(1, keepdim=True)
        return (t.float() * s.float().t()) * scale[:, None]

    want = plane(hi, s_hi) + plane(lo, s_lo)
    assert torch.equal(y[[0, 1, 2, 3, 4, 6]], want[[0, 1, 2, 3, 4, 6]])
    assert torch.isnan(y[5]).all() and (y[3] == 0).all()


def test_gemm_w4a8_planes_errors(gen):
    x, q, s, z, G, b, p = make(2, 64, 20, 32, False, gen)
    with pytest.raises(ValueError, match="x_planes must be 1 or 2"):
        gemm_w4a8(x, p.codes, p.scale, p.zero, b, 20, G, "auto", 3)
    with pytest.raises(ValueError, match="x_planes must be 1"):
        gemm_w4(x, p.codes, p.scale, p.zero, b, 20, G, "auto", 2)
    with pytest.raises(ValueError, match="x_planes must be 1 or 2"):
        cpu_runner_w4(p.codes, p.scale, p.zero, 20, 64, G, True, None, 0)(x, None)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("m", W4_MS)
@pytest.mark.parametrize("g,k", CASES)
def test_gemm_w4(isa, g, k, m, n, sym, gen, c_ref):
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    y = gemm_w4(x.t().contiguous().t(), p.codes, p.scale, p.zero, b, n, G)
    if not (isa == "amx" and fp32_tiles_take(m, G)):  # (those: test_gemm_w4_fp32_tiles)
        assert torch.equal(y, c_ref(lambda: gemm_w4(x, p.codes, p.scale, p.zero, b, n, G)))
    w = dequantize_int4(q, s, z, G)
    y64 = x.double() @ w.double().t() + b.double()
    torch_err = (F.linear(x, w, b).double() - y64).pow(2).mean().sqrt()
    assert (y.double() - y64).pow(2).mean().sqrt() <= 3 * torch_err + 1e-6


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize(
    "m,n", [(7, 5), (8, 37), (11, 300), (13, 40), (16, 45), (33, 70), (300, 21), (301, 260)]
)
@pytest.mark.parametrize("g,k", [(32, 608), (-1, 523), (128, 640)])
def test_gemm_w4_slabs(isa, g, k, m, n, sym, gen, c_ref):
    """The slab paths (AVX2 from 7 rows, AVX-512 from 16): K over several 256-k (AVX2) / 128-k
    (AVX-512) slabs with a partial one, rows split between threads when the column blocks are
    few (n = 5, 21), more rows than one pass over the weight (300 > 256), balanced row tiles
    (13 = 7 + 6), panels of 4 column blocks with 1-3 in the last (n = 21, 45, 70). AVX2: the
    first 4 rows of a part run inside the widening, the rest in tiles (8 = 4 + 4, 11 = 4 + 7;
    7 rows over one column block split between threads as parts of 3 and 4, all inside the
    widening); 16 column blocks or more (n = 260, 300) are taken one at a time."""
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    y = gemm_w4(x, p.codes, p.scale, p.zero, b, n, G)
    if not (isa == "amx" and fp32_tiles_take(m, G)):  # (those: test_gemm_w4_fp32_tiles)
        assert torch.equal(y, c_ref(lambda: gemm_w4(x, p.codes, p.scale, p.zero, b, n, G)))
    y64 = x.double() @ dequantize_int4(q, s, z, G).double().t() + b.double()
    assert (y.double() - y64).abs().max() <= 1e-4 * y64.abs().max()


@pytest.mark.parametrize("where", ["row", "head", "tail"])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("scale", [1.0, 2.0**-90, 2.0**-100, 2.0**-118])
def test_gemm_w4_one_row_tiny_inputs(isa, scale, m, where, gen, c_ref):
    """The AVX2 one-row kernel (1-2 rows) multiplies x * 2^-28 by (q - 8) * 2^28, which is
    exact only while x * 2^-28 stays normal: calls with a nonzero |x| below 2^-98 take the
    unscaled form. Both give the C ref's bits, down to rows of denormal products; the tiny
    values fill the first row, or that row is zero but for one k, whose product alone is each
    output: in the first 8 (head) or past the last whole 8 of K = 101 (tail)."""
    x, q, s, z, G, _, p = make(m, 101, 37, -1, True, gen, bias=False)
    if where == "row":
        x[0] *= scale
    else:
        k = 3 if where == "head" else 100
        x[0] = 0.0
        x[0, k] = 1.2345678 * scale
    x[0, 5] = 0.0
    y = gemm_w4(x, p.codes, p.scale, p.zero, None, 37, G)
    assert torch.equal(y, c_ref(lambda: gemm_w4(x, p.codes, p.scale, p.zero, None, 37, G)))
    y64 = x.double() @ dequantize_int4(q, s, z, G).double().t()
    assert (y.double() - y64).abs().max() <= 1e-5 * y64.abs().max() + 2.0**-140


def fma_chain(x, w):
    """sum_k x[:, k] * w[:, k] as one fp32 FMA chain per output in k order, exactly: with x of
    9 significant bits and w exact (<= 15 bits), each fp64 step x * w + acc is exact here, so
    rounding it to fp32 is the one rounding of an fp32 FMA."""
    acc = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    x64, w64 = x.double(), w.double()
    for k in range(x.shape[1]):
        acc = (acc + x64[:, k, None] * w64[None, :, k]).float().double()
    return acc.float()


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("m", [7, 16, 19])
@pytest.mark.parametrize("g,k", [(32, 608), (-1, 261), (128, 640)])
def test_gemm_w4_dequantized_rules(isa, g, k, m, sym, gen):
    """Where a call follows the dequantized rules (gemm_w4.h: from 7 rows on machines without
    AVX-512, from 16 on those with it, up to the rows AMX-BF16 takes the fp32 tiles from),
    y = fma-chain(x, (q - z) * s) + bias bit for bit on every path."""
    if not _C.gemm_w4_dequantized_rows(m):
        pytest.skip(f"this machine has AVX-512: the 32-k chunk rules hold for {m} rows")
    n = 21
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    if fp32_tiles_take(m, G):
        pytest.skip(f"the fp32 tiles take {m} rows of group size {G} here")
    x = torch.randint(-256, 257, (m, k), generator=gen).float() / 64  # 9 significant bits
    y = gemm_w4(x, p.codes, p.scale, p.zero, b, n, G)
    w = dequantize_int4(q, s, z, G)
    assert torch.equal(y, fma_chain(x, w) + b)
    assert not torch.equal(y.double(), x.double() @ w.double().t() + b.double())  # it rounds


@pytest.mark.parametrize("n", [37, 45])  # last column block: one partial half / two halves
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("g,k", CASES)
def test_dequant_w4t_exact(isa, g, k, sym, n, gen):
    _, q, s, z, G, _, p = make(1, k, n, g, sym, gen)
    assert torch.equal(
        dequant_w4t(p.codes, p.scale, p.zero, n, k, G), dequantize_int4(q, s, z, G).t()
    )


@pytest.mark.parametrize("op", [gemm_w4, gemm_w4a8])
def test_nan_rows_and_empty(isa, op, gen):
    x, _, _, _, G, b, p = make(4, 64, 20, 32, False, gen)
    x[2, 5] = float("nan")
    y = op(x, p.codes, p.scale, p.zero, b, 20, G)
    assert y[2].isnan().all() and torch.isfinite(y[[0, 1, 3]]).all()
    assert op(torch.empty(0, 64), p.codes, p.scale, p.zero, b, 20, G).shape == (0, 20)


def test_opcheck_int4_ops(gen):
    x, _, _, _, G, b, p = make(3, 64, 20, 32, False, gen)
    for op in (gemm_w4, gemm_w4a8):
        torch.library.opcheck(op, (x, p.codes, p.scale, p.zero, b, 20, G))
        torch.library.opcheck(op, (x[0], p.codes, p.scale, None, None, 20, G))
    torch.library.opcheck(dequant_w4t, (p.codes, p.scale, p.zero, 20, 64, G))


def test_int4_op_errors(gen):
    x, _, _, _, G, b, p = make(3, 64, 20, 32, False, gen)
    with pytest.raises(ValueError, match="packed K=64 .* does not fit x with K=63"):
        gemm_w4(x[:, :63], p.codes, p.scale, p.zero, b, 20, G)
    with pytest.raises(ValueError, match="scale must be float16"):
        gemm_w4a8(x, p.codes, p.scale.float(), p.zero, b, 20, G)


def test_w4_dense_path_for_large_batches(gen, monkeypatch):
    """From DENSE_MIN_ROWS rows the W4 op dequantizes panels of W^T and runs torch's GEMM;
    several panels are exercised by shrinking the panel size (the threshold lowered to 40
    rows: with AVX2 alone it is 2048)."""
    from tersor.ops import dense_path

    monkeypatch.setitem(dense_path.DENSE_MIN_ROWS, "w4", 40)
    m = dense_path.DENSE_MIN_ROWS["w4"]
    x, q, s, z, G, b, p = make(m, 128, 100, 32, False, gen)
    old = dense_path.PANEL_BYTES
    dense_path.PANEL_BYTES = 128 * 4 * 32  # 32-column panels
    try:
        y = gemm_w4(x, p.codes, p.scale, p.zero, b, 100, G)
    finally:
        dense_path.PANEL_BYTES = old
    y64 = x.double() @ dequantize_int4(q, s, z, G).double().t() + b.double()
    assert (y.double() - y64).abs().max() <= 1e-4 * y64.abs().max()
    torch.testing.assert_close(
        y[: m - 1], gemm_w4(x[: m - 1], p.codes, p.scale, p.zero, b, 100, G), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("n", [37, 100])  # 3 and 7 column blocks
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 33])  # to 8: pairs made in registers
@pytest.mark.parametrize("g,k", [*CASES, (32, 576), (128, 640)])  # 18 and 5 groups
def test_gemm_w4_bf16(isa, g, k, m, n, sym, gen, c_ref):
    """The bf16 dot-product path (csrc/gemm_w4/gemm_w4.h: vdpbf16ps where the CPU has
    AVX512-BF16, its C ref on every other path): bit for bit the C ref, the fp64 product of the
    bf16-rounded x and the exact weights to fp32 accumulation, and the fp32 path to the
    rounding of x. Up to 8 rows the AVX-512 tiles take 4, 3, 2 or 1 column blocks side by side
    by the rows (gemm_w4_avx512bf16.cpp row_tiles): 7 blocks leave each a shorter last tile."""
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    y = gemm_w4_cpu(x.t().contiguous().t(), p.codes, p.scale, p.zero, b, n, G, False, bf16=True)
    w = dequantize_int4(q, s, z, G).double()
    tiles = _tiles_run(isa, m, G)
    if tiles == "amx":  # the AMX-BF16 tiles: test_gemm_w4_bf16_tiles
        y64 = x.bfloat16().double() @ w.float().bfloat16().double().t() + b.double()
        assert (y.double() - y64).norm() <= 1e-6 * y64.norm()
        return
    ref = c_ref(lambda: gemm_w4_cpu(x, p.codes, p.scale, p.zero, b, n, G, False, bf16=True))
    if isa == "amx" and _C.gemm_w4_bf16_on_tiles(m, G):  # the group form on the tiles
        assert (y.double() - ref.double()).norm() <= 1e-6 * ref.double().norm()
    else:
        assert torch.equal(y, ref)
    if tiles == "scaled":  # the weights rounded with their scales: the fp64 product of those
        w = w.float().bfloat16().double()
    y64 = x.bfloat16().double() @ w.t() + b.double()
    assert (y.double() - y64).norm() <= 1e-6 * y64.norm()
    y64_fp32_x = x.double() @ w.t() + b.double()
    assert (y.double() - y64_fp32_x).norm() <= 2**-8 * y64_fp32_x.norm()


ROWS_ON_TILES = [(1, 64, 17, 32, False), (2, 576, 100, 32, True), (3, 320, 230, 64, False),
                 (5, 640, 37, 128, True), (7, 90, 21, -1, False), (8, 1024, 70, 128, False),
                 (13, 96, 5, 32, True), (16, 384, 100, 128, False),
                 (16, 16448, 20, 32, True)]  # fmt: skip


@pytest.mark.parametrize("m,k,n,g,sym", ROWS_ON_TILES)
def test_gemm_w4_bf16_rows_on_tiles(m, k, n, g, sym, gen, c_ref):
    """The bf16 group form on AMX-BF16 tiles (gemm_w4_amx.cpp run_amx_bf16_rows): A and C
    tiles of the call's rows (1-16), 1-4 column blocks side by side (n = 5 .. 230: 15 blocks
    leave each thread a shorter last tile), groups of one tile step (g32) or several, K padded
    to the group (k = 90: one group of 96), K in two chunks (k = 16448: 512 groups of 16
    rows' A in one chunk's 512 KiB). The fp64 product of bf16(x) and the exact weights
    to fp32 accumulation; the C ref of the group form to the order of its fp32 sums; bf16 rows
    read and written by the kernel itself (half rows) the same bits as the fp32 call rounded;
    1 and 2 threads the same bits."""
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    if not _C.gemm_w4_bf16_on_tiles(m, G):
        pytest.skip(f"no AMX-BF16 tiles for {m} rows of group size {G} on this CPU / path")

    def native(fn, xs, threads=2):
        y = torch.empty(m, n, dtype=xs.dtype)
        fn(xs.data_ptr(), m, k, k, p.codes.data_ptr(), p.scale.data_ptr(),
           0 if p.zero is None else p.zero.data_ptr(), G, p.scale.shape[1], n, b.data_ptr(),
           y.data_ptr(), n, threads, IO_CODE[xs.dtype], 0)  # fmt: skip
        return y

    xb = x.bfloat16()
    y = native(_C.gemm_w4_bf16, xb.float())
    w = dequantize_int4(q, s, z, G).double()
    y64 = xb.double() @ w.t() + b.double()
    assert (y.double() - y64).norm() <= 1e-6 * y64.norm()
    ref = c_ref(lambda: native(_C.gemm_w4_bf16, xb.float()))
    assert (y.double() - ref.double()).norm() <= 1e-6 * y64.norm()
    assert torch.equal(native(_C.gemm_w4_bf16, xb), y.bfloat16())
    assert torch.equal(native(_C.gemm_w4_bf16, xb.float(), threads=1), y)


@pytest.mark.parametrize("form", ["group", "scaled"])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("m,n", [(9, 5), (16, 45), (33, 70), (300, 21)])
@pytest.mark.parametrize("g,k", [(32, 608), (-1, 523), (128, 640)])
def test_gemm_w4_bf16_slabs(isa, g, k, m, n, sym, form, gen, c_ref):
    """The vdpbf16ps kernels' slabs, in the group form (_C.gemm_w4_bf16, from 9 rows) and the
    scaled form (_C.gemm_w4_bf16_tiles where the CPU has no AMX tiles): 256-k slabs with
    groups inside one (g32, g128) or across several (one group of 528), panels of 4 column
    blocks with 1-3 in the last (n = 5, 21, 45, 70), rows split between threads when the
    blocks are few, more rows than one pass (300 > 256): bit for bit the C ref."""
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    fn = _C.gemm_w4_bf16 if form == "group" else _C.gemm_w4_bf16_tiles
    if form == "scaled" and isa == "amx" and _C.has_amx_bf16() and G % 32 == 0:
        pytest.skip(f"the AMX-BF16 tiles run group size {G} here: test_gemm_w4_bf16_tiles")

    def native():
        y = torch.empty(m, n)
        fn(x.data_ptr(), m, k, k, p.codes.data_ptr(), p.scale.data_ptr(),
           0 if p.zero is None else p.zero.data_ptr(), G, p.scale.shape[1], n, b.data_ptr(),
           y.data_ptr(), n, 2, 0, 0)  # fmt: skip
        return y

    y = native()
    if form == "group" and isa == "amx" and _C.gemm_w4_bf16_on_tiles(m, G):
        ref = c_ref(native)  # the few-row tiles (test_gemm_w4_bf16_rows_on_tiles)
        assert (y.double() - ref.double()).norm() <= 1e-6 * ref.double().norm()
    else:
        assert torch.equal(y, c_ref(native))
    if form == "scaled":
        w = dequantize_int4(q, s, z, G).float().bfloat16().double()
        y64 = x.bfloat16().double() @ w.t() + b.double()
        assert (y.double() - y64).norm() <= 1e-6 * y64.norm()


def _tiles_run(isa, m, group_size):
    """Which scaled form gemm_w4_cpu(bf16=True) runs for these rows here: "amx" (the tiles),
    "scaled" (vdpbf16ps or its C ref: the same bits), or None (the group form)."""
    if not w4_tiles(m, group_size):
        return None
    amx = isa == "amx" and group_size % 32 == 0 and _C.has_amx_bf16()
    return "amx" if amx else "scaled"


def native_w4(fn, x, p, G, n, b):
    """fn (a _C.gemm_w4* entry) over fp32 rows x on 2 threads, into a fresh [M, n]."""
    m, k = x.shape
    y = torch.empty(m, n)
    fn(x.data_ptr(), m, k, k, p.codes.data_ptr(), p.scale.data_ptr(),
       0 if p.zero is None else p.zero.data_ptr(), G, p.scale.shape[1], n, b.data_ptr(),
       y.data_ptr(), n, 2, 0, 0)  # fmt: skip
    return y


TILE_CASES = [(16, 64, 16, 32, True), (33, 224, 37, 32, False), (70, 576, 100, 64, True),
              (64, 640, 48, 128, False), (9, 16512, 37, 128, False)]  # fmt: skip


@pytest.mark.parametrize("m,k,n,g,sym", TILE_CASES)
def test_gemm_w4_bf16_tiles(isa, m, k, n, g, sym, gen, c_ref):
    """The scaled form of the bf16 path (gemm_w4.h): the fp64 product of bf16(x) and the
    weights rounded to bf16 with their scales, bf16((q - z) s), to fp32 accumulation; the fp32
    path to the rounding of both. On the AMX-BF16 tiles (gemm_w4_amx.cpp): row blocks of 32
    past M, odd step counts (224 = 7 steps of 32), a lone last 16-column block (n = 37, 48),
    zero points, two k chunks of a lone row block (9 rows, k = 16512: its weights widened in
    pieces). Elsewhere (vdpbf16ps, or its C ref below AVX-512): bit for bit the C ref."""
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    args = (p.codes, p.scale, p.zero, b, n, G, False)

    def native(fn):
        return native_w4(fn, x, p, G, n, b)

    y = native(_C.gemm_w4_bf16_tiles)
    w = dequantize_int4(q, s, z, G).double()
    y64 = x.bfloat16().double() @ w.float().bfloat16().double().t() + b.double()
    # fp32 accumulation: its error grows as the square root of the sum's length
    assert (y.double() - y64).norm() <= 1e-6 * max(1.0, (k / 640) ** 0.5) * y64.norm()
    y64_exact = x.double() @ w.t() + b.double()
    assert (y.double() - y64_exact).norm() <= 2**-8 * y64_exact.norm()
    assert not torch.equal(y, native(_C.gemm_w4_bf16))  # not the group form
    if not (isa == "amx" and _C.has_amx_bf16()):
        assert torch.equal(y, c_ref(lambda: native(_C.gemm_w4_bf16_tiles)))
    if TILES_MIN_ROWS is not None and w4_tiles(m, G):
        # bf16 rows in and out through the op: the same bits as rounding the fp32 result
        yb = gemm_w4_cpu(x.bfloat16(), *args)
        assert yb.dtype == torch.bfloat16
        assert torch.equal(yb, gemm_w4_cpu(x.bfloat16().float(), *args, bf16=True).bfloat16())
        assert torch.equal(gemm_w4_cpu(x.bfloat16().float(), *args, bf16=True), y)


FP32_TILE_CASES = [(1, 64, 33, 32, True), (7, 224, 37, 32, False), (33, 576, 100, 64, True),
                   (70, 640, 48, 128, False), (300, 1280, 40, 128, True),
                   (1030, 64, 20, 32, False), (7, 37, 5, -1, False),
                   (5, 5632, 40, 64, False), (20, 640, 48, 128, False),
                   (15, 128, 230, 64, False), (11, 384, 100, 128, True),
                   (16, 128, 37, 32, False), (8, 9024, 40, 32, True),
                   (15, 6144, 20, 32, False)]  # fmt: skip


@pytest.mark.parametrize("m,k,n,g,sym", FP32_TILE_CASES)
def test_gemm_w4_fp32_tiles(isa, m, k, n, g, sym, gen, c_ref):
    """The fp32 form of the AMX-BF16 tiles (gemm_w4.h run_fp32_tiles): rows in three exact bf16
    parts against the exact integers q - z, every product exact, each group's sums times its
    scales in fp32 (the grouped form). Rows mixing magnitudes 2^-20 .. 2^20: the error against
    fp64 within the register kernel's and 4x torch's fp32 GEMM's (weights rounded to bf16
    would be off by 2^-9 relative). Row blocks past M, a lone 16-column block (n = 33, 37, 48), zero
    points, k chunks of the row parts at 300 rows (a 256-row pass: 640 + 640 of 1280) and of a
    lone row block (5 rows, k = 5632), rows in passes (1030 = 4 x 256 + 6). A group size that
    is no multiple of 32 (37), another CPU or a lower forced path: the register kernel, bit for
    bit. Up to 15 rows the few-row kernel (run_amx_fp32_rows: passes of 5 rows, three parts
    each in the A tiles' rows, 7 and 8 rows in 2 passes over 1-2 blocks side by side, 11 and
    15 rows in 3 passes over one block; 8 x 9024 and 15 x 6144 in two k chunks), from 16 the
    grouped form."""
    x, q, s, z, G, b, p = make(m, k, n, g, sym, gen)
    x *= torch.exp2(torch.randint(-20, 21, x.shape, generator=gen).float())
    if m >= 7:
        x[2, 5], x[4, 0] = float("inf"), float("nan")

    y, y_fma = (native_w4(fn, x, p, G, n, b) for fn in (_C.gemm_w4_fp32_tiles, _C.gemm_w4))
    if not (isa == "amx" and _C.has_amx_bf16() and G % 32 == 0):
        torch.testing.assert_close(y, y_fma, rtol=0, atol=0, equal_nan=True)  # bit for bit
        return
    w = dequantize_int4(q, s, z, G)
    rows = [r for r in range(m) if x[r].isfinite().all()]
    y64 = x[rows].double() @ w.double().t() + b.double()
    scale = x[rows].double().abs() @ w.double().abs().t() + b.double().abs()
    err = lambda t: ((t.double() - y64).abs() / scale).max().item()  # noqa: E731
    torch_err = err(F.linear(x[rows], w, b))
    assert err(y[rows]) <= max(err(y_fma[rows]), 4 * torch_err, 2**-22)
    if m >= 7:
        # non-finite rows stay so (inf times a weight's hi and lo parts may make NaN where the
        # register kernel has inf: both non-finite, as inf times a zero weight is there)
        assert not y[2].isfinite().any() and y[4].isnan().all()


@pytest.mark.parametrize("m", [1, 2, 33])
def test_gemm_w4_bf16_half_inputs_and_auto_choice(m, gen, c_ref):
    """bf16 activations in, bf16 out, the same bits as widening first; from BF16_MIN_ROWS rows
    on a CPU with AVX512-BF16 (one row where it has no AMX: a decode step) the op takes this
    kernel for bf16 activations by itself, and fp32 activations keep the fp32 kernels."""
    k, n, G = 256, 40, 128
    x, q, s, z, G, b, p = make(m, k, n, G, False, gen)
    xb = x.bfloat16()
    y = gemm_w4_cpu(xb, p.codes, p.scale, p.zero, b, n, G, False, bf16=True)
    assert y.dtype == torch.bfloat16
    y32 = gemm_w4_cpu(xb.float(), p.codes, p.scale, p.zero, b, n, G, False, bf16=True)
    assert torch.equal(y, y32.bfloat16())
    auto = gemm_w4_cpu(xb, p.codes, p.scale, p.zero, b, n, G, False)
    assert torch.equal(
        auto,
        y
        if BF16_MIN_ROWS is not None and m >= BF16_MIN_ROWS["w4"]
        else gemm_w4_cpu(xb, p.codes, p.scale, p.zero, b, n, G, False, bf16=False),
    )
    fp32 = gemm_w4_cpu(x, p.codes, p.scale, p.zero, b, n, G, False)
    assert torch.equal(fp32, gemm_w4_cpu(x, p.codes, p.scale, p.zero, b, n, G, False, bf16=False))
    # the layers' prepared call chooses the same way
    run = cpu_runner_w4(p.codes, p.scale, p.zero, n, k, G, False, None)
    assert torch.equal(run(xb, b), auto) and torch.equal(run(x, b), fp32)


@pytest.mark.parametrize("g,k", [(128, 256), (32, 256), (-1, 100)])  # G = 128, 32, 104
def test_bf16_rows_take_their_kernel_by_rows_and_group_size(g, k, gen, kernel_spy):
    """A layer's bf16 rows (ops/gemm_w4.py cpu_runner_w4): the register kernel below
    BF16_MIN_ROWS[bf16_key(G)] rows (on AMX-BF16 CPUs 2 rows for G = 128, 3 for G = 32, the
    scaled form's rows for G = 104: the few-row tiles need whole 32-k steps), then the group
    form below the scaled form's rows (w4_tiles: 17 there, 8 for G = 104), then the scaled
    form."""
    calls = kernel_spy("gemm_w4", "gemm_w4_bf16", "gemm_w4_bf16_tiles")
    n = 40
    fmt = Int4Format.from_float(torch.randn(n, k, generator=gen), tersor.W4Config(group_size=g))
    G = fmt.G
    for m in range(1, 19):
        x = torch.randn(m, k, generator=gen).bfloat16()
        calls.clear()
        y = fmt.cpu_call(x, None)
        if BF16_MIN_ROWS is None or m < BF16_MIN_ROWS[bf16_key(G)]:
            want = "gemm_w4"
        else:
            want = "gemm_w4_bf16_tiles" if w4_tiles(m, G) else "gemm_w4_bf16"
        assert calls == [want], (m, G)
        assert y.dtype == torch.bfloat16 and y.shape == (m, n)
        if want == "gemm_w4_bf16" and _C.has_amx_bf16():  # (the C++ rows agree)
            assert _C.gemm_w4_bf16_on_tiles(m, G), (m, G)


@pytest.mark.parametrize("m", [1, 33])
@pytest.mark.parametrize("precision", ["medium", "high", "highest"])
def test_fp32_rows_take_bf16_only_under_medium_matmul_precision(precision, m, gen):
    """fp32 activations take the bf16 kernels (rows rounded to bf16) from FP32_BF16_MIN_ROWS
    rows (8 at the least: a decode step keeps the fp32 kernels) only when
    torch.set_float32_matmul_precision("medium") allows bf16 for fp32 matmuls, on a CPU with
    bf16 arithmetic; "high" and the default "highest" keep the fp32 kernels."""
    k, n, G = 256, 40, 128
    x, q, s, z, G, b, p = make(m, k, n, G, False, gen)
    args = (p.codes, p.scale, p.zero, b, n, G, False)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        auto = gemm_w4_cpu(x, *args)
    finally:
        torch.set_float32_matmul_precision(old)
    bf16 = precision == "medium" and BF16_MIN_ROWS is not None and m >= FP32_BF16_MIN_ROWS["w4"]
    assert torch.equal(auto, gemm_w4_cpu(x, *args, bf16=bf16))
    if bf16:
        assert not torch.equal(auto, gemm_w4_cpu(x, *args, bf16=False))
        assert torch.equal(auto, gemm_w4_cpu(x.bfloat16().float(), *args, bf16=True))


@pytest.mark.parametrize("a8", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepared_call_is_the_general_call(isa, a8, dtype, gen):
    """The layers' prepared int4 call (ops/gemm_w4.py cpu_runner_w4: fewer rows than the bf16
    and dense paths go straight to the register kernel) gives gemm_w4_cpu's bits, with a kept
    input scale and zero points, at 0, 1, 7, 33 rows and past the other paths' rows."""
    k, n, G = 192, 40, 64
    cfg = (tersor.W4A8Config if a8 else tersor.W4Config)(group_size=G)
    w, b = torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    s = torch.rand(k, generator=gen) + 0.5
    fmt = Int4Format.from_float(w, cfg).with_input_scale(s)
    run = fmt.cpu_call
    for m in (0, 1, 7, 33, 400):
        x = torch.randn(m, k, generator=gen).to(dtype)
        want = gemm_w4_cpu(x, fmt.codes, fmt.scale, fmt.zero, b, n, G, a8, s)
        got = run(x, b)
        assert got.dtype == dtype and torch.equal(got, want), m


def test_bf16_dot_is_used_where_the_cpu_has_it(isa):
    """has_bf16_dot() says which code ran above: the vdpbf16ps kernel exactly on the AVX-512
    paths of a CPU with AVX512-BF16 (Zen 4, Sapphire Rapids), the C ref otherwise."""
    feat = tersor.cpu_info()["features"].get("avx512bf16", False)
    assert _C.has_bf16_dot() == (feat and isa in ("avx512", "amx"))


@pytest.mark.parametrize("m", [1, 3, 4, 5])
def test_gemm_w4a8_repeated_calls(isa, m, int8_decode_nta, gen, c_ref):
    """A decode step's weight prefetch (gemm_w4a8_avx2.cpp): a call after a cache's worth of
    other weights streams it (non-temporal hint; on AVX-512 up to 4 rows take the stream tile
    where int8_decode_nta allows it: forced off and on here, whatever the vendor), a second at
    once finds it cached (T0; on AVX-512 the register tile); all are the C ref's result."""
    x, q, s, z, G, b, p = make(m, 1024, 37, 32, False, gen)  # 128 lines per block
    want = c_ref(lambda: gemm_w4a8(x, p.codes, p.scale, p.zero, b, 37, G))
    llc = tersor.cpu_info()["llc_bytes"]
    for i in range(3):
        if i == 0:  # common/weight_stream.h: a cache's worth streamed since its last read
            _C.weight_stream_nta(p.codes.data_ptr() + (1 << 40), llc + 1)
        assert torch.equal(gemm_w4a8(x, p.codes, p.scale, p.zero, b, 37, G), want)
