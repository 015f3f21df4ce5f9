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

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and
                                not torch.cuda.is_available(),
                                reason="no GPU and TRITON_INTERPRET is not 1")


@pytest.mark.parametrize("m,k", [(1, 5), (7, 70), (3, 300)])
def test_quantize_rows_matches_the_cpu_rules(m, k, gen):
    x = torch.randn(m, k, generator=gen) * 3
    q = torch.empty(m, k, dtype=torch.int8)
    s = torch.empty(m)
    tw8.quantize_rows_kernel[(m,)](x, q, s, k, x.stride(0), BLOCK_K=128)
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
