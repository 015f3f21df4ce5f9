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
