"""4-bit weights: tersor W4 / W4A8 (g32, g128) against torch fp32, torch's int4pack CPU op,
onnxruntime MatMulNBits (accuracy_level 0 and 4) and our W8A8."""
import functools
import itertools

import pytest
import torch

from bench_shapes import BATCHES, LINEAR_SHAPES
from tersor.bench.impls import int4_impls, make_linear

IMPLS = ["tersor W4 g32", "tersor W4A8 g32", "tersor W4 g128", "tersor W4A8 g128",
         "torch int4pack g32", "torch int4pack g128", "ort MatMulNBits g32 acc0",
         "ort MatMulNBits g32 acc4", "ort MatMulNBits g128 acc0", "ort MatMulNBits g128 acc4",
         "torch fp32", "tersor W8A8"]


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, rotate):
    lin = make_linear(k, n)
    return lin, {im.name: im for im in int4_impls(lin, rotate)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("shape", list(LINEAR_SHAPES))
def bench_linear_int4(benchmark, rotate, shape, m, impl):
    k, n = LINEAR_SHAPES[shape]
    lin, impls = _impls_for(k, n, rotate)
    im = impls[impl]
    if im.unavailable:
        pytest.skip(im.unavailable)
    x = torch.randn(m, k)
    ref = lin(x).detach()
    y = im.fn(x, 0)
    assert ((y - ref).norm() / ref.norm()).item() < 0.15, f"{impl} is wrong before timing"
    counter = itertools.count()
    benchmark.group = f"int4 {shape} {k}x{n} M={m}"
    benchmark.extra_info.update(weight_bytes=im.weight_bytes, copies=im.copies, M=m, K=k, N=n)
    benchmark(lambda: im.fn(x, next(counter)))
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        t = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = im.weight_bytes / t / 1e9
        benchmark.extra_info["GOP/s"] = 2 * m * k * n / t / 1e9
