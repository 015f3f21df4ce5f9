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
