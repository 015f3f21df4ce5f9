"""2:4 sparse Linear: fp32 against torch fp32 dense, int8 (2:4+w8a8) against our dense W8A8
(AMX, and VNNI only), all on the same pruned weight."""

import functools

import pytest

from bench_common import BATCHES, time_sparse_case
from tersor.bench.impls import DENSE, W8A8_DENSE, W8A8_VNNI, make_linear, sparse24_impls

SHAPES = {"llama7b.q_proj": (4096, 4096), "llama7b.up_proj": (4096, 11008)}
IMPLS = ["tersor 2:4 fp32", DENSE, "tersor 2:4+w8a8", W8A8_DENSE, W8A8_VNNI]


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, rotate):
    return {im.name: im for im in sparse24_impls(make_linear(k, n), rotate)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_spmm_24(benchmark, rotate, shape, m, impl):
    k, n = SHAPES[shape]
    time_sparse_case(
        benchmark, _impls_for(k, n, rotate), DENSE, impl, m, k, n, f"2:4 {shape} {k}x{n} M={m}"
    )
