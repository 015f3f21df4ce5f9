import os

import pytest
import torch

import tersor

ISAS = tersor.available_isas()
ALL_ISAS = tersor._backend.ISAS  # every path the build knows; absent ones skip


@pytest.fixture(params=ALL_ISAS)
def isa(request, monkeypatch):
    """Force one CPU path through TERSOR_CPU_ISA; paths this CPU lacks are skipped (reason)."""
    if request.param not in ISAS:
        pytest.skip(f"{request.param} is not available on this CPU/build: {ISAS}")
    monkeypatch.setenv("TERSOR_CPU_ISA", request.param)
    return request.param


@pytest.fixture(params=[0, 1], ids=["t0", "nta"])
def int8_decode_nta(request):
    """The W8A8 / W4A8 AVX-512 decode tiles' non-temporal hint forced off / on
    (common/weight_stream.h: by vendor otherwise), so both run on every machine."""
    tersor._C.set_int8_decode_nta(request.param)
    yield request.param
    tersor._C.set_int8_decode_nta(-1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def c_ref():
    """c_ref(fn): fn() run under the portable C ref path (the oracle), then the caller's ISA."""

    def run(fn):
        old = os.environ.get("TERSOR_CPU_ISA")
        os.environ["TERSOR_CPU_ISA"] = "ref"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["TERSOR_CPU_ISA"]
            else:
                os.environ["TERSOR_CPU_ISA"] = old

    return run


@pytest.fixture
def kernel_spy(monkeypatch):
    """kernel_spy(*names): from then on, the list of the tersor._C kernels of those names that
    ran, in order; direct calls and the layers' prepared calls (_C.int_partial of them) alike."""

    def install(*names):
        calls, real_of = [], {}
        for name in names:
            real = getattr(tersor._C, name)
            spy = lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)  # noqa: E731
            real_of[spy] = (name, real)
            monkeypatch.setattr(tersor._C, name, spy)
        real_partial = tersor._C.int_partial

        def partial(fn, **bound):
            if fn not in real_of:
                return real_partial(fn, **bound)
            name, real = real_of[fn]
            call = real_partial(real, **bound)
            return lambda *a, **k: calls.append(name) or call(*a, **k)

        monkeypatch.setattr(tersor._C, "int_partial", partial)
        return calls

    return install
