"""The Triton kernels on CPU tensors under TRITON_INTERPRET=1 (no GPU here or in CI), against the
torch references, on small odd shapes. Kept small: the interpreter is slow."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined
triton = pytest.importorskip("triton", reason="triton is not installed (pip install '.[test]')")

from tersor.formats.int4 import dequantize_int4, quantize_int4, to_nibbles  # noqa: E402
from tersor.formats.int8 import quantize_per_channel_int8  # noqa: E402
from tersor.ref import gemm_w8a8_ref, quantize_rows_ref  # noqa: E402
from tersor.triton_kernels import gemm_w4 as tw4  # noqa: E402
from tersor.triton_kernels import gemm_w8a8 as tw8  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="no GPU and TRITON_INTERPRET is not 1",
)


@pytest.mark.parametrize("m,k", [(1, 5), (7, 70), (3, 300)])
def test_quantize_rows_matches_the_cpu_rules(m, k, gen):
    x = torch.randn(m, k, generator=gen) * 3
    q, s = tw8.quantize_rows(x)
    qr, sr = quantize_rows_ref(x)
    assert torch.equal(q, qr) and torch.equal(s, sr)


@pytest.mark.parametrize("m,k,n", [(1, 37, 5), (7, 70, 33), (20, 130, 40)])
def test_gemm_w8a8(m, k, n, gen):
    x = torch.randn(m, k, generator=gen)
    q, s = quantize_per_channel_int8(torch.randn(n, k, generator=gen))
    b = torch.randn(n, generator=gen)
    y = tw8.gemm_w8a8(x, q, s, b)
    torch.testing.assert_close(y, gemm_w8a8_ref(x, q, s, b), rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("m,k,n,g", [(1, 64, 5, 32), (7, 128, 33, 64), (17, 256, 20, 128)])
def test_gemm_w4(m, k, n, g, sym, gen):
    x = torch.randn(m, k, generator=gen)
    q, s, z, G = quantize_int4(torch.randn(n, k, generator=gen), g, sym)
    b = torch.randn(n, generator=gen)
    y = tw4.gemm_w4(x, to_nibbles(q), s, z, G, b)
    ref = x.double() @ dequantize_int4(q, s, z, G).double().t() + b.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="must nest"):
        tw4.gemm_w4(x, to_nibbles(q), s, z, G, b, block_k=48)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(
    "m,k,n,g,split_k", [(1, 128, 5, 32, 4), (3, 256, 33, 64, 3), (18, 64, 20, 32, 1)]
)
def test_gemm_w4_half_inputs_and_split_k(m, k, n, g, split_k, dtype, gen):
    x = torch.randn(m, k, generator=gen).to(dtype)
    q, s, z, G = quantize_int4(torch.randn(n, k, generator=gen), g, False)
    b = torch.randn(n, generator=gen)
    y = tw4.gemm_w4(x, to_nibbles(q), s, z, G, b, split_k=split_k)
    assert y.dtype == dtype
    ref = x.double() @ dequantize_int4(q, s, z, G).double().t() + b.double()
    tol = 1e-4 if dtype == torch.float32 else 2e-2 * float(ref.abs().max())
    torch.testing.assert_close(y.double(), ref, rtol=1e-3, atol=tol)


def test_split_k_choice():
    assert tw4.split_k_for(1, 8192, 64, 64, 132) == 2  # 128 tiles for 132 SMs
    assert tw4.split_k_for(1, 4096, 32, 64, 132) == 4
    assert tw4.split_k_for(512, 8192, 64, 64, 132) == 1  # enough tiles


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("k,n", [(5, 3), (70, 33), (130, 17)])
def test_dequant_w8(k, n, dtype, gen):
    from tersor.triton_kernels import dequant as tdq

    q, s = quantize_per_channel_int8(torch.randn(n, k, generator=gen))
    out = tdq.dequant_w8(q, s, dtype)
    assert torch.equal(out, (q.float() * s[:, None]).to(dtype))


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("k,n,g", [(64, 5, 32), (128, 33, 64), (256, 20, 128)])
def test_dequant_w4(k, n, g, sym, gen):
    from tersor.triton_kernels import dequant as tdq

    q, s, z, G = quantize_int4(torch.randn(n, k, generator=gen), g, sym)
    out = tdq.dequant_w4(to_nibbles(q), s, z, G, k, torch.float32)
    assert torch.equal(out, dequantize_int4(q, s, z, G))
