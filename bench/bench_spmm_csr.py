"""Unstructured sparse Linear at 75 / 90 / 95% zeros: fp32 against torch fp32 dense and torch's
CSR matmul, int8 against our dense W8A8, all on the same pruned weight (75%: also the layer
sparsify_ builds, dense from 256 rows)."""

import functools

import pytest

from bench_common import BATCHES, time_sparse_case
from tersor.bench.impls import DENSE, W8A8_DENSE, W8A8_VNNI, make_linear, unstructured_impls

SHAPES = {"llama7b.q_proj": (4096, 4096), "llama7b.up_proj": (4096, 11008)}
SPARSITY = [0.75, 0.9, 0.95]
IMPLS = [
    "tersor unstructured {}",
    "tersor unstructured+w8a8 {}",
    DENSE,
    "torch CSR",
    W8A8_DENSE,
    W8A8_VNNI,
]
# the layer sparsify_ builds (a dense copy kept only below the large-M break-even), at 75%
SPARSIFY = "tersor unstructured {} (sparsify_)"
# Ordered so that every M of a (shape, sparsity) runs before the next sparsity: the cache below
# holds one pruned layer's impls (building them is most of this file's time)
CASES = [
    pytest.param(shape, m, s, impl, id=f"{shape}-{m}-{s}-{impl}")
    for shape in SHAPES
    for s in SPARSITY
    for m in BATCHES
    for impl in IMPLS + ([SPARSIFY] if s == 0.75 else [])
]


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, sparsity, rotate):
    return {im.name: im for im in unstructured_impls(make_linear(k, n), rotate, sparsity)}


@pytest.mark.parametrize("shape,m,sparsity,impl", CASES)
def bench_spmm_csr(benchmark, rotate, shape, m, sparsity, impl):
    k, n = SHAPES[shape]
    impls = _impls_for(k, n, sparsity, rotate)
    tag = f"{round(sparsity * 100)}%"
    time_sparse_case(
        benchmark, impls, DENSE, impl.format(tag), m, k, n, f"unstructured {tag} {shape} M={m}"
    )
