import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tersor.formats.int8 import pack_int8, quantize_per_channel_int8, unpack_int8


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    s = torch.rand(n, generator=g) + 0.01
    p = pack_int8(q, s)
    assert p.packed.shape == ((n + 15) // 16, (k + 3) // 4, 16, 4)
    q2, s2 = unpack_int8(p.packed, p.scale, n, k)
    assert torch.equal(q2, q) and torch.equal(s2, s)
    assert torch.equal(p.colsum[:n], q.int().sum(1))
    assert not p.colsum[n:].any() and not p.scale[n:].any()


def test_layout_matches_diagram():
    n, k = 20, 10
    q = torch.arange(n * k).reshape(n, k).remainder(251).sub(125).to(torch.int8)
    p = pack_int8(q, torch.ones(n))
    for nn_ in (0, 5, 16, 19):
        for kk in (0, 3, 4, 9):
            assert p.packed[nn_ // 16, kk // 4, nn_ % 16, kk % 4] == q[nn_, kk]
    assert p.packed[1, 2, 4, 2] == 0  # padding (n = 20, k = 10) is zero


def test_quantize_per_channel_properties():
    w = torch.randn(33, 70) * torch.logspace(-3, 3, 33)[:, None]
    w[5] = 0.0
    q, s = quantize_per_channel_int8(w)
    assert q.dtype == torch.int8 and int(q.min()) >= -127
    assert s[5] == 0 and not q[5].any()
    assert q.abs().amax(1)[torch.arange(33) != 5].eq(127).all()  # each row uses the full range
    err = (q.float() * s[:, None] - w).abs()
    assert (err <= s[:, None] / 2 + 1e-6 * w.abs()).all()


def test_weight_bits_7_layers():
    """W8A8Config(weight_bits=7): codes in [-63, 63], each row reaching 63; the narrow-weight
    hint set from the codes (so a state_dict load finds it again, and 8-bit codes loaded into
    the layer clear it); the output is the call's without the hint, bit for bit; the report
    says so; a bad value is refused."""
    import pytest

    import tersor
    from tersor.ops.gemm_w8a8 import gemm_w8a8_cpu

    g = torch.Generator().manual_seed(7)
    lin = torch.nn.Linear(70, 33)
    q7 = tersor.nn.QLinear.from_float(lin, tersor.W8A8Config(weight_bits=7))
    q8 = tersor.nn.QLinear.from_float(lin, tersor.W8A8Config())
    codes = q7.state_dict()["weight_int8"]
    assert int(codes.abs().max()) == 63 and codes.abs().amax(1).eq(63).all()
    assert q7.fmt.narrow_w and not q8.fmt.narrow_w
    assert "7-bit weights" in q7.fmt.describe()
    x = torch.randn(9, 70, generator=g)
    f = q7.fmt
    plain = gemm_w8a8_cpu(x, f.packed, f.colsum, f.scale, q7.bias, 33)
    assert torch.equal(q7(x), plain)
    err7 = (q7(x) - lin(x)).norm() / lin(x).norm()
    err8 = (q8(x) - lin(x)).norm() / lin(x).norm()
    assert err8 < err7 < 4 * err8  # one bit less: about twice the weight rounding error

    fresh = tersor.nn.QLinear.from_float(torch.nn.Linear(70, 33), tersor.W8A8Config())
    fresh.load_state_dict(q7.state_dict())
    assert fresh.fmt.narrow_w and torch.equal(fresh(x), q7(x))
    q7.load_state_dict(q8.state_dict())  # 8-bit codes: the hint goes
    assert not q7.fmt.narrow_w and torch.equal(q7(x), q8(x))
    w8 = tersor.nn.QLinear.from_float(lin, tersor.W8Config())
    assert not w8.fmt.narrow_w  # fp32 activations: no such kernel

    compiled = torch.compile(fresh, fullgraph=True)  # the op takes the hint too
    with torch.no_grad():
        assert torch.equal(compiled(x), fresh(x))

    for bad in (6, 16, True):
        for cfg in (tersor.W8A8Config, tersor.W8A8StaticConfig):
            with pytest.raises(ValueError, match=f"{cfg.__name__}.weight_bits must be 8 or 7"):
                cfg(weight_bits=bad)


def test_native_pack_padding_range_and_unpack_ignore_padding():
    """csrc/repack: every padded byte 0, colsum and the codes' range in the same pass, and
    unpacking reads only k < K of rows < N (garbage in the padding does not leak)."""
    g = torch.Generator().manual_seed(3)
    for n, k in [(1, 1), (7, 13), (33, 1030), (48, 64)]:
        q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        q[0, 0] = -127  # the range's ends are known
        p = pack_int8(q, torch.rand(n) + 0.01)
        assert p.code_absmax == 127
        full = torch.zeros(p.packed.shape[0] * 16, p.packed.shape[1] * 4, dtype=torch.int8)
        full[:n, :k] = q
        want = full.view(-1, 16, full.shape[1] // 4, 4).permute(0, 2, 1, 3)
        assert torch.equal(p.packed, want)
        assert torch.equal(p.colsum[:n], q.int().sum(1)) and not p.colsum[n:].any()
        assert torch.equal(unpack_int8(p.packed, p.scale, n, k)[0], q)
        pad = torch.ones_like(full, dtype=torch.bool)
        pad[:n, :k] = False
        pad = pad.view(-1, 16, full.shape[1] // 4, 4).permute(0, 2, 1, 3)
        noise = torch.randint(-128, 128, p.packed.shape, generator=g, dtype=torch.int8)
        noisy = torch.where(pad, noise, p.packed)
        assert torch.equal(unpack_int8(noisy, p.scale, n, k)[0], q)
    narrow = torch.randint(-64, 65, (9, 20), generator=g, dtype=torch.int8)
    assert pack_int8(narrow, torch.ones(9)).code_absmax <= 64
    with pytest.raises(ValueError, match="int8 codes: expected int8"):
        pack_int8(narrow.to(torch.int16), torch.ones(9))
    p = pack_int8(narrow, torch.ones(9))
    with pytest.raises(ValueError, match="int8 codes: expected int8 tiles for"):
        unpack_int8(p.packed, p.scale, 9, 24)  # K past the tiles
