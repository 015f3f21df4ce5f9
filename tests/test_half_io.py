"""bf16 / fp16 activations taken by the dense int8 / int4 kernels themselves (csrc/half_io):
the staging conversions against torch's own, on every ISA path, and whole calls bit for bit
equal to `layer(x.float()).to(dtype)`, the rule the layers document."""

import pytest
import torch
from torch import nn

import tersor
from tersor import _C
from tersor.ops._common import IO_CODE

HALVES = (torch.bfloat16, torch.float16)


def _special_floats() -> torch.Tensor:
    """Values where rounding goes wrong: ties at both halves' last bit, subnormals of fp16,
    the fp16 overflow edge, Inf / NaN, signed zeros, plus random values of every magnitude."""
    f = torch.tensor(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            1e6,
            2.0**-14,
            2.0**-24,
            2.0**-25,
            1.5 * 2.0**-25,
            2.0**-26,
            3.0 * 2.0**-25,
            6e-8,
            -6e-8,
            1e-40,
            float("inf"),
            float("-inf"),
            float("nan"),
        ]
    )
    ties = torch.tensor([1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-11, 1 + 3 * 2.0**-11])
    gen = torch.Generator().manual_seed(5)
    rand = torch.randn(300, generator=gen) * torch.exp2(
        torch.randint(-30, 20, (300,), generator=gen)
    )
    return torch.cat([f, ties, -ties, rand])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN payloads aside (torch's scalar and vector converters differ on those)."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    return torch.equal(a[~nan].view(torch.int16), b[~nan].view(torch.int16))


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("k", [1, 7, 8, 33])
def test_conversions_match_torch(isa, dtype, k):
    v = _special_floats()
    rows = v.numel() // k
    src = v[: rows * k].reshape(rows, k)
    wide = torch.empty(rows, k + 3)  # strided destination: row stride k + 3
    src_wide = torch.zeros(rows, k + 5)
    src_wide[:, :k] = src
    half = torch.empty(rows, k + 2, dtype=dtype)
    _C.convert_rows(
        src_wide.data_ptr(), rows, k, k + 5, half.data_ptr(), k + 2, IO_CODE[dtype], True
    )
    assert _same(half[:, :k], src.to(dtype)), "narrowing differs from torch's .to()"
    _C.convert_rows(half.data_ptr(), rows, k, k + 2, wide.data_ptr(), k + 3, IO_CODE[dtype], False)
    back = half[:, :k].float()
    nan = back.isnan()
    assert torch.equal(wide[:, :k].isnan(), nan)
    assert torch.equal(wide[:, :k][~nan], back[~nan]), "widening is not exact"


CONFIGS = {
    "w8a8": lambda: tersor.W8A8Config(),
    "w8": lambda: tersor.W8Config(),
    "w4a8 g32": lambda: tersor.W4A8Config(group_size=32),
    "w4 g32 asym": lambda: tersor.W4Config(group_size=32, symmetric=False),
}


def _layer(name: str, k: int, n: int, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(k, n))
    tersor.quantize_(model, CONFIGS[name](), progress=False)
    layer = model[0]
    assert isinstance(layer, tersor.nn.PackedLinear) and layer.fmt.cpu_half
    return layer


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("m", [1, 7, 33])
def test_layer_half_is_float_call_rounded(isa, name, dtype, m):
    layer = _layer(name, 96, 53)  # N not a multiple of the 16-column blocks
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(2, m, 96, generator=gen).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (2, m, 53)
    xs = torch.randn(m, 130, generator=gen).to(dtype)[:, 10:106]  # row stride 130
    for inp, out in ((x, y), (xs, layer(xs))):
        ref = layer(inp.float())
        if _w4_tiles(isa, name, dtype, inp.numel() // 96):
            # bf16 rows of W4 on AMX-BF16 tiles or in the scaled form (the weights widened to
            # bf16 with their scales; csrc/gemm_w4/gemm_w4.h): fp32 sums in another order, or
            # other weights, so not the float call's bits: its error bound
            assert (out.float() - ref).norm() <= 2**-7 * ref.norm()
        else:
            assert _same(out, ref.to(dtype))


def _w4_tiles(isa, name, dtype, rows):
    """Whether a W4 g32 layer's bf16 call of `rows` rows runs the scaled form (chosen by the
    CPU, on every path) or the group form on AMX-BF16 tiles here."""
    from tersor.ops.gemm_w4 import BF16_MIN_ROWS, bf16_key, w4_tiles

    if not (name.startswith("w4 ") and dtype == torch.bfloat16):
        return False
    group_form = BF16_MIN_ROWS is not None and rows >= BF16_MIN_ROWS[bf16_key(32)]
    return w4_tiles(rows, 32) or (group_form and _C.gemm_w4_bf16_on_tiles(rows, 32))


def test_half_rows_staged_in_blocks():
    """A call whose rows x (K + N) exceed the staging buffer (8M floats) runs in row blocks."""
    layer = _layer("w8a8", 40, (1 << 21) + 7)
    x = torch.randn(9, 40, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    assert _same(layer(x), layer(x.float()).to(torch.bfloat16))


def test_half_rows_staged_in_balanced_blocks():
    """2100 bf16 rows of K + N = 4096 floats, staged in two blocks (half_io.h staged_rows
    balances them in whole 32-row tile blocks: 1056 + 1044): each row bit for bit what one call
    of all the rows in fp32 gives it (the bf16 kernels of an int4 weight)."""
    from tersor.formats.int4 import pack_int4, quantize_int4
    from tersor.ops.gemm_w4 import gemm_w4_cpu

    gen = torch.Generator().manual_seed(5)
    k = n = 2048
    q, s, z, g = quantize_int4(torch.randn(n, k, generator=gen), 128, False)
    p = pack_int4(q, s, z, g)
    b = torch.randn(n, generator=gen)
    x = torch.randn(2100, k, generator=gen).bfloat16()
    args = (p.codes, p.scale, p.zero, b, n, g, False)
    y = gemm_w4_cpu(x, *args, bf16=True)
    assert torch.equal(y, gemm_w4_cpu(x.float(), *args, bf16=True).bfloat16())


@pytest.mark.parametrize("rows", [1, 3])
def test_half_staging_split_over_threads(rows):
    """Blocks of 64K elements and more are converted by all threads: by rows, or by columns
    when there are fewer rows than threads (one row of a large vocabulary's lm_head)."""
    layer = _layer("w4a8 g32", 64, 70001)
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows)) * 3
    for dtype in HALVES:
        assert _same(layer(x.to(dtype)), layer(x.to(dtype).float()).to(dtype))


def test_half_nan_row_stays_nan():
    layer = _layer("w4a8 g32", 64, 32)
    x = torch.randn(3, 64).to(torch.bfloat16)
    x[1, 5] = float("nan")
    y = layer(x)
    assert y[1].isnan().all() and not y[0].isnan().any() and not y[2].isnan().any()
