import os

import pytest
import torch

import tersor
from tersor import _C
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8
from tersor.ops import gemm_w8a8


def test_cpu_info_reports_paths():
    info = tersor.cpu_info()
    assert "ref" in info["available"]
    assert info["best"] in info["available"]
    assert info["active"] == info["best"] or info["override"] != "auto"
    assert info["threads"] == torch.get_num_threads()
    # the CPUID vendor string (x86: 12 characters; the large-M thresholds of ops/dense_path.py
    # depend on it); empty on other architectures
    assert isinstance(info["vendor"], str) and len(info["vendor"]) in (0, 12)
    assert info["vendor"] or "avx2" not in info["available"]


def test_override_is_read_per_call(isa):
    assert tersor.cpu_info()["active"] == isa


def test_bad_override_is_a_clear_error(monkeypatch):
    q, s = quantize_per_channel_int8(torch.randn(8, 8))
    p = pack_int8(q, s)
    monkeypatch.setenv("TERSOR_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="TERSOR_CPU_ISA='sse9'"):
        gemm_w8a8(torch.randn(2, 8), p.packed, p.colsum, p.scale, None, 8)


def test_unavailable_override_is_a_clear_error(monkeypatch):
    missing = [i for i in ("avx2", "avx512", "amx") if i not in tersor.available_isas()]
    if not missing:
        pytest.skip("every ISA path is available on this CPU")
    monkeypatch.setenv("TERSOR_CPU_ISA", missing[0])
    with pytest.raises(RuntimeError, match="not available"):
        tersor.cpu_info()


@pytest.mark.skipif("TERSOR_WEIGHT_STREAM" in os.environ, reason="the hint is forced")
def test_weight_stream_hint_follows_reuse_distance():
    """common/weight_stream.h: the non-temporal prefetch for a weight read for the first time or
    after more weight bytes than the last-level cache holds; T0 when it is still cached."""
    llc = tersor.cpu_info()["llc_bytes"]
    assert 64 << 10 <= llc <= 4 << 30
    w = 0x7F0000000000 + (id(llc) & 0xFFFFF) * 64  # addresses only recorded, never read
    assert _C.weight_stream_nta(w, 4096)  # first read
    assert not _C.weight_stream_nta(w, 4096)  # again at once: its lines are in the cache
    _C.weight_stream_nta(w + (1 << 30), llc // 2)
    assert not _C.weight_stream_nta(w, 4096)  # half the cache streamed between: still there
    _C.weight_stream_nta(w + (1 << 30), llc)
    assert _C.weight_stream_nta(w, 4096)  # a cache's worth between: gone


def test_int8_decode_nta_by_vendor():
    """common/weight_stream.h: the int8 decode tiles' non-temporal hint on AMD only, unless a
    test forces it."""
    amd = tersor.cpu_info()["vendor"] in ("AuthenticAMD", "HygonGenuine")
    assert _C.int8_decode_nta() == amd
    try:
        _C.set_int8_decode_nta(1)
        assert _C.int8_decode_nta()
        _C.set_int8_decode_nta(0)
        assert not _C.int8_decode_nta()
    finally:
        _C.set_int8_decode_nta(-1)
    assert _C.int8_decode_nta() == amd


@pytest.mark.parametrize(
    "vendor, features, kind",
    [
        # Sapphire Rapids class, tiles granted by the OS / not granted (an older kernel)
        ("GenuineIntel", dict(avx512bf16=True, amx_bf16=True, os_amx=True), "amx"),
        ("GenuineIntel", dict(avx512bf16=True, amx_bf16=True, os_amx=False), None),
        ("GenuineIntel", dict(avx512bf16=True), None),  # Cooper Lake: vdpbf16ps at half rate
        ("GenuineIntel", dict(avx512vnni=True), None),  # Ice Lake / Cascade Lake
        ("AuthenticAMD", dict(avx512bf16=True), "vdpbf16ps"),  # Zen 4 / 5
        ("AuthenticAMD", dict(avx2=True), None),  # Zen 3
    ],
)
def test_bf16_dot_kind_per_cpu(vendor, features, kind):
    from tersor.ops.gemm_w4 import _bf16_min_rows, _tiles_min_rows, bf16_dot_kind

    got = bf16_dot_kind({"vendor": vendor, "features": features})
    assert got == kind
    # without a fast bf16 dot product, bf16 rows take the fp32 kernels at every row count
    assert (_bf16_min_rows(got) is None) == (kind is None)
    assert (_tiles_min_rows(got) is None) == (kind is None)
    if kind == "amx":  # W4's group form on the tiles below the scaled form's rows (G % 32 == 0)
        rows, tiles = _bf16_min_rows(got), _tiles_min_rows(got)
        assert rows["w8"] == tiles["w8"] and rows["w4_odd"] == tiles["w4_odd"]
        assert 1 < rows["w4"] <= rows["w4_g32"] <= tiles["w4"]


def test_bf16_rows_follow_this_cpus_kind():
    from tersor.ops.gemm_w4 import BF16_MIN_ROWS, bf16_dot_kind

    kind = bf16_dot_kind()
    assert (BF16_MIN_ROWS is None) == (kind is None)
    info = _C.cpu_info()
    if info["features"].get("amx_bf16") and info["features"].get("os_amx"):
        assert kind == "amx"
