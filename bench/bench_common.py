"""Shared by the bench files: named model-layer shapes (K = in_features, N = out_features),
batch sizes, and the check-then-time body of a Linear case."""

import itertools

import pytest
import torch

LINEAR_SHAPES = {
    "llama7b.q_proj": (4096, 4096),
    "llama7b.up_proj": (4096, 11008),
    "llama7b.down_proj": (11008, 4096),
    "minilm.ffn_up": (384, 1536),
    "minilm.ffn_down": (1536, 384),
}
BATCHES = [1, 8, 32, 128, 512]


def time_linear_case(benchmark, lin, im, m: int, group: str, tol: float) -> None:
    """Check impl `im` against fp32 once, then time it with its weight copies rotated."""
    if im.unavailable:
        pytest.skip(im.unavailable)
    k, n = lin.in_features, lin.out_features
    # a seed of the case's own: the check must not depend on which tests ran before
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1000 * m + k))
    ref = lin(x).detach()
    y = im.fn(x, 0)
    assert ((y - ref).norm() / ref.norm()).item() < tol, f"{im.name} is wrong before timing"
    if im.prepare is not None:
        im.prepare(x)
    counter = itertools.count()
    benchmark.group = group
    benchmark.extra_info.update(weight_bytes=im.weight_bytes, copies=im.copies, M=m, K=k, N=n)
    benchmark(lambda: im.fn(x, next(counter)))
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        t = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = im.weight_bytes / t / 1e9
        benchmark.extra_info["GOP/s"] = 2 * m * k * n / t / 1e9


def time_sparse_case(
    benchmark, impls: dict, ref_name: str, name: str, m: int, k: int, n: int, group: str
) -> None:
    """A sparse case: the reference is impl `ref_name` (the dense product on the same pruned
    weight); int8 impls carry their own tolerance (im.tol)."""
    ref = impls[ref_name]

    class Ref:
        in_features, out_features = k, n

        def __call__(self, x):
            return ref.fn(x, 0)

    im = impls[name]
    time_linear_case(benchmark, Ref(), im, m, group, tol=im.tol or 1e-4)
