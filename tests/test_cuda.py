"""CUDA kernels against the references, on a GPU (``-m cuda``; skipped with the reason on a
machine without one, like this project's CI). bench/gpu_check.sh runs these first."""

import pytest
import torch
from torch import nn

import tersor
from tersor.formats.sparse24 import prune_24
from tersor.nn import QLinear, SparseLinear
from tersor.ops import device

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


def _needs_ext():
    ext, why = device.cuda_extension()
    if ext is None:
        pytest.skip(why)


def _layer(cfg, k, n, seed=0):
    torch.manual_seed(seed)
    return QLinear.from_float(nn.Linear(k, n), cfg, name="fc")


@pytest.mark.parametrize("m", [1, 7, 33, 300])
@pytest.mark.parametrize("k,n", [(64, 40), (4096, 1000)])
@pytest.mark.parametrize("kernel", ["cuda", "triton"])
def test_w8a8_on_gpu_matches_the_cpu_kernel(m, k, n, kernel):
    if kernel == "cuda":
        _needs_ext()
    cpu = _layer(tersor.W8A8Config(), k, n)
    gpu = _layer(tersor.W8A8Config(kernel=kernel), k, n).cuda()
    x = torch.randn(m, k)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m", [1, 16, 64, 300])
@pytest.mark.parametrize("k,n,g", [(128, 40, 32), (4096, 1000, 128)])
@pytest.mark.parametrize("kernel", ["cuda", "triton"])
def test_w4_fp16_on_gpu(m, k, n, g, kernel):
    if kernel == "cuda":
        _needs_ext()
    lay = _layer(tersor.W4Config(group_size=g, kernel=kernel), k, n).cuda()
    x = torch.randn(m, k, device="cuda").half()
    ref = x.double() @ lay.dequantized_weight().cuda().double().t() + lay.bias.double()
    y = lay(x)
    assert y.dtype == torch.float16
    assert (y.double() - ref).abs().max() <= 2e-3 * ref.abs().max() + 1e-2


@pytest.mark.parametrize("m", [1, 64, 300])
@pytest.mark.parametrize("k,n", [(64, 40), (4096, 1000)])
def test_spmm_24_sparse_tensor_cores(m, k, n):
    _needs_ext()
    torch.manual_seed(0)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(prune_24(lin.weight))
    lay = SparseLinear.from_float(lin, tersor.Sparse24Config()).cuda()
    x = torch.randn(m, k, device="cuda").half()
    ref = x.double() @ lin.weight.cuda().double().t() + lin.bias.cuda().double()
    y = lay(x)
    assert (y.double() - ref).abs().max() <= 2e-3 * ref.abs().max() + 1e-2


def test_cuda_errors_name_the_kernel():
    _needs_ext()
    ext = device.cuda_extension()[0]
    with pytest.raises(Exception, match="gemm_w8a8 \\(cuda\\): K must be a multiple of 16"):
        ext.gemm_w8a8(0, 0, 0, 0, 0, 0, False, 1, 1, 17, 0)
