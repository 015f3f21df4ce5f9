"""torch.library.opcheck on every op, and the ops' own argument validation."""

import pytest
import torch

from tersor.formats.int8 import pack_int8, quantize_per_channel_int8
from tersor.ops import dequant_w8, gemm_w8, gemm_w8a8, quantize_rows


@pytest.fixture
def packed(gen):
    q, s = quantize_per_channel_int8(torch.randn(20, 37, generator=gen))
    return pack_int8(q, s)


def test_opcheck_gemm_w8a8(packed, gen):
    x = torch.randn(3, 5, 37, generator=gen)
    torch.library.opcheck(
        gemm_w8a8,
        (x, packed.packed, packed.colsum, packed.scale, torch.randn(20, generator=gen), 20),
    )
    torch.library.opcheck(gemm_w8a8, (x[0], packed.packed, packed.colsum, packed.scale, None, 20))


def test_opcheck_gemm_w8(packed, gen):
    x = torch.randn(7, 37, generator=gen)
    torch.library.opcheck(gemm_w8, (x, packed.packed, packed.scale, None, 20))


def test_opcheck_dequant_and_quantize(packed, gen):
    torch.library.opcheck(dequant_w8, (packed.packed, packed.scale, 20, 37))
    torch.library.opcheck(quantize_rows, (torch.randn(7, 37, generator=gen),))


def test_op_argument_errors(packed):
    x = torch.randn(2, 37)
    with pytest.raises(ValueError, match="x must be float32"):
        gemm_w8a8(x.double(), packed.packed, packed.colsum, packed.scale, None, 20)
    with pytest.raises(ValueError, match="x has K=36"):
        gemm_w8a8(x[:, :36], packed.packed, packed.colsum, packed.scale, None, 20)
    with pytest.raises(ValueError, match="out_features=40"):
        gemm_w8(x, packed.packed, packed.scale, None, 40)
    with pytest.raises(ValueError, match=r"bias must be float32 \[20\]"):
        gemm_w8(x, packed.packed, packed.scale, torch.zeros(21), 20)
    with pytest.raises(ValueError, match="colsum must be int32"):
        gemm_w8a8(x, packed.packed, packed.colsum.float(), packed.scale, None, 20)
