"""W8A8 / W8 Linear against torch fp32, torch.ao dynamic int8 and onnxruntime dynamic int8."""
import itertools

import pytest
import torch

from bench_shapes import BATCHES, LINEAR_SHAPES

IMPLS = ["tersor W8A8", "tersor W8", "torch fp32", "torch.ao dyn int8", "onnxruntime dyn int8"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("shape", list(LINEAR_SHAPES))
def bench_linear(benchmark, linear_case, shape, m, impl):
    k, n = LINEAR_SHAPES[shape]
    lin, impls = linear_case(k, n)
    im = impls[impl]
    if im.unavailable:
        pytest.skip(im.unavailable)
    x = torch.randn(m, k)
    ref = lin(x).detach()
    y = im.fn(x, 0)
    assert ((y - ref).norm() / ref.norm()).item() < 0.05, f"{impl} is wrong before timing"
    counter = itertools.count()
    benchmark.group = f"{shape} {k}x{n} M={m}"
    benchmark.extra_info.update(weight_bytes=im.weight_bytes, copies=im.copies, M=m, K=k, N=n)
    benchmark(lambda: im.fn(x, next(counter)))
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        t = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = im.weight_bytes / t / 1e9
        benchmark.extra_info["GOP/s"] = 2 * m * k * n / t / 1e9
