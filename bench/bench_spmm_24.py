"""2:4 sparse fp32 Linear against torch fp32 dense on the same pruned weight."""
import functools

import pytest

from bench_common import BATCHES, time_linear_case
from tersor.bench.impls import make_linear, sparse24_impls

SHAPES = {"llama7b.q_proj": (4096, 4096), "llama7b.up_proj": (4096, 11008)}
IMPLS = ["tersor 2:4 fp32", "torch fp32 dense (pruned)"]


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, rotate):
    lin = make_linear(k, n)
    impls = {im.name: im for im in sparse24_impls(lin, rotate)}
    return impls["torch fp32 dense (pruned)"], impls


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_spmm_24(benchmark, rotate, shape, m, impl):
    k, n = SHAPES[shape]
    dense, impls = _impls_for(k, n, rotate)

    class Ref:  # the reference is the dense product on the pruned weight
        in_features, out_features = k, n

        def __call__(self, x):
            return dense.fn(x, 0)

    time_linear_case(benchmark, Ref(), impls[impl], m, f"2:4 {shape} {k}x{n} M={m}", tol=1e-4)
