"""pytest-benchmark suite: one case per (family, model shape, M, implementation).

Correctness is checked once before timing; baselines are timed in the same session; GB/s and
GOP/s go to extra_info. With --benchmark-disable (CI) each case runs once and weights are not
rotated, so the suite stays fast and cannot rot.
"""

import functools

import pytest

from tersor.bench.impls import linear_impls, make_linear


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a benchmark case")


@pytest.fixture(scope="session")
def rotate(request):
    return not request.config.getoption("benchmark_disable", False)


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, rotate):
    lin = make_linear(k, n)
    return lin, {im.name: im for im in linear_impls(lin, rotate)}


@pytest.fixture
def linear_case(rotate):
    return lambda k, n: _impls_for(k, n, rotate)
