"""Unstructured sparse fp32 Linear at 75 / 90 / 95% zeros against torch fp32 dense and torch's
CSR matmul on the same pruned weight."""
import functools

import pytest

from bench_common import BATCHES, time_linear_case
from tersor.bench.impls import make_linear, unstructured_impls

SHAPES = {"llama7b.q_proj": (4096, 4096), "llama7b.up_proj": (4096, 11008)}
SPARSITY = [0.75, 0.9, 0.95]
IMPLS = ["tersor", "torch fp32 dense (pruned)", "torch CSR"]


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, sparsity, rotate):
    impls = {im.name: im for im in unstructured_impls(make_linear(k, n), rotate, sparsity)}
    return impls["torch fp32 dense (pruned)"], impls


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("sparsity", SPARSITY)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_spmm_csr(benchmark, rotate, shape, sparsity, m, impl):
    k, n = SHAPES[shape]
    dense, impls = _impls_for(k, n, sparsity, rotate)
    name = f"tersor unstructured {round(sparsity * 100)}%" if impl == "tersor" else impl

    class Ref:  # the reference is the dense product on the pruned weight
        in_features, out_features = k, n

        def __call__(self, x):
            return dense.fn(x, 0)

    time_linear_case(benchmark, Ref(), impls[name], m,
                     f"unstructured {round(sparsity * 100)}% {shape} M={m}", tol=1e-4)
