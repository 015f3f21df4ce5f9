"""Block-sparse Linear pruned in (16, 4) blocks at 75 / 90%: fp32 (16 x 1 kernel blocks)
against torch fp32 dense and torch's BSR matmul, int8 (16 x 4) against our dense W8A8."""

import functools

import pytest

from bench_common import BATCHES, time_sparse_case
from tersor.bench.impls import DENSE, W8A8_DENSE, W8A8_VNNI, block_impls, make_linear

SHAPES = {"llama7b.q_proj": (4096, 4096), "llama7b.up_proj": (4096, 11008)}
SPARSITY = [0.75, 0.9]
IMPLS = ["tersor block {}", "tersor block+w8a8 {}", DENSE, "torch BSR 4x4", W8A8_DENSE, W8A8_VNNI]


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, sparsity, rotate):
    return {im.name: im for im in block_impls(make_linear(k, n), rotate, sparsity)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("sparsity", SPARSITY)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_spmm_block(benchmark, rotate, shape, sparsity, m, impl):
    k, n = SHAPES[shape]
    tag = f"{round(sparsity * 100)}%"
    time_sparse_case(
        benchmark,
        _impls_for(k, n, sparsity, rotate),
        DENSE,
        impl.format(tag),
        m,
        k,
        n,
        f"block {tag} {shape} M={m}",
    )
