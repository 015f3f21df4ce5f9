"""int4 format: packing round trips, the documented layout, RTN quantization, and GPTQ / AWQ
imports checked against unpackers written here from the formats' documentation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tersor.formats.int4 import (
    Int4Format,
    _gather_columns,
    dequantize_int4,
    from_awq,
    from_gptq,
    from_nibbles,
    pack_int4,
    quantize_int4,
    to_nibbles,
    unpack_int4,
)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    groups=st.integers(1, 4),
    g=st.sampled_from([8, 32, 64]),
    sym=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_round_trip(n, groups, g, sym, seed):
    gen = torch.Generator().manual_seed(seed)
    k = groups * g
    q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    s = torch.rand(n, groups, generator=gen).half()
    z = None if sym else torch.randint(0, 16, (n, groups), generator=gen, dtype=torch.uint8)
    p = pack_int4(q, s, z, g)
    assert p.codes.shape == ((n + 15) // 16, k // 8, 16, 4)
    q2, s2, z2 = unpack_int4(p.codes, p.scale, p.zero, n, k)
    assert torch.equal(q2, q) and torch.equal(s2, s)
    assert (z2 is None) if sym else torch.equal(z2, z)
    assert torch.equal(from_nibbles(to_nibbles(q), k), q)


def test_layout_matches_diagram():
    n, k = 20, 24
    q = (torch.arange(n * k).reshape(n, k) * 7 % 16).to(torch.uint8)
    p = pack_int4(q, torch.ones(n, 1).half(), None, 24)
    for c in (0, 7, 16, 19):
        for kk in (0, 3, 4, 7, 9, 23):
            t, r = divmod(kk, 8)
            byte = int(p.codes[c // 16, t, c % 16, r % 4])
            assert (byte & 0xF if r < 4 else byte >> 4) == int(q[c, kk])


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("g", [32, 64, 128, -1])
def test_quantize_rtn_error_bound(g, sym):
    w = torch.randn(33, 256) * torch.logspace(-2, 1, 33)[:, None]
    w[3] = 0.0
    q, s, z, G = quantize_int4(w, g, sym)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and s.dtype == torch.float16
    assert G == (g if g > 0 else 256) and (z is None) == sym
    deq = dequantize_int4(q, s, z, G)
    step = s.float().repeat_interleave(G, dim=1)[:, :256]
    assert ((deq - w).abs() <= step * 0.51 + 1e-6).all()  # half a step (fp16-rounded scale)
    assert not deq[3].any()


def test_group_size_errors():
    with pytest.raises(ValueError, match="in_features=100 is not a multiple of group_size=32"):
        quantize_int4(torch.randn(4, 100), 32)
    with pytest.raises(ValueError, match=r"group_size must be one of \(32, 64, 128, -1\)"):
        quantize_int4(torch.randn(4, 96), 48)


# ---- GPTQ / AWQ, unpacked here from the documentation, element by element -------------------


def _pack_gptq(q_kn, zeros_gn, v1):
    """q [K, N] -> qweight int32 [K/8, N] (8 codes along K: k = 8r + i in bits 4i);
    zeros [G, N] -> qzeros int32 [G, N/8] along N (n = 8c + i in bits 4i), v1: zero - 1."""
    k, n = q_kn.shape
    qw = torch.zeros(k // 8, n, dtype=torch.int64)
    for i in range(8):
        qw |= q_kn[i::8].to(torch.int64) << (4 * i)
    z = (zeros_gn.to(torch.int64) - (1 if v1 else 0)) & 0xF
    qz = torch.zeros(z.shape[0], n // 8, dtype=torch.int64)
    for i in range(8):
        qz |= z[:, i::8] << (4 * i)
    to32 = lambda t: torch.where(t >= 2**31, t - 2**32, t).to(torch.int32)  # noqa: E731
    return to32(qw), to32(qz)


def _gptq_dequant_doc(qweight, qzeros, scales, g_idx, v1):
    """W[n, k] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n], looping as the docs describe."""
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    w = torch.zeros(n, k)
    for kk in range(k):
        g = int(g_idx[kk])
        for nn in range(n):
            q = (int(qweight[kk // 8, nn]) >> (4 * (kk % 8))) & 0xF
            z = (int(qzeros[g, nn // 8]) >> (4 * (nn % 8))) & 0xF
            z = (z + 1) & 0xF if v1 else z
            w[nn, kk] = (q - z) * float(scales[g, nn])
    return w


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("v1", [True, False])
def test_gptq_import(act_order, v1):
    gen = torch.Generator().manual_seed(7)
    k, n, g = 64, 16, 32
    q = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (k // g, n), generator=gen)
    scales = (torch.rand(k // g, n, generator=gen) + 0.1).half()
    g_idx = torch.arange(k, dtype=torch.int32) // g
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    qweight, qzeros = _pack_gptq(q, zeros, v1)
    want = _gptq_dequant_doc(qweight, qzeros, scales, g_idx, v1)
    qc, s, z, G, perm = from_gptq(qweight, qzeros, scales, g_idx, version=1 if v1 else 2)
    assert G == g and (perm is not None) == act_order
    got = dequantize_int4(qc, s, z, G)
    if perm is not None:  # stored in act-order: column j of got is input perm[j]
        got = got[:, torch.argsort(perm)]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_gptq_errors():
    qw, qz = _pack_gptq(
        torch.zeros(64, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64), True
    )
    s = torch.ones(2, 16).half()
    with pytest.raises(ValueError, match="qweight must be int32"):
        from_gptq(qw.float(), qz, s)
    with pytest.raises(ValueError, match=r"qzeros must be int32 \[2, 2\]"):
        from_gptq(qw, qz[:1], s)
    with pytest.raises(ValueError, match=r"g_idx values must lie in \[0, 2\)"):
        from_gptq(qw, qz, s, torch.full((64,), 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="exactly 32 inputs in every group"):
        from_gptq(qw, qz, s, torch.cat([torch.zeros(40), torch.ones(24)]).int())
    with pytest.raises(ValueError, match=r"g_idx must be an integer tensor \[64\]"):
        from_gptq(qw, qz, s, torch.zeros(63, dtype=torch.int32))


def test_awq_import():
    gen = torch.Generator().manual_seed(3)
    k, n, g = 64, 16, 32
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # AWQ packs column 8c + order[i] into nibble i
    q = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (k // g, n), generator=gen)
    scales = (torch.rand(k // g, n, generator=gen) + 0.1).half()

    def pack(t):
        out = torch.zeros(t.shape[0], n // 8, dtype=torch.int64)
        for c in range(n // 8):
            for i in range(8):
                out[:, c] |= t[:, 8 * c + order[i]].to(torch.int64) << (4 * i)
        return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)

    want = torch.zeros(n, k)
    for kk in range(k):
        for nn in range(n):
            want[nn, kk] = (int(q[kk, nn]) - int(zeros[kk // g, nn])) * float(scales[kk // g, nn])
    qc, s, z, G = from_awq(pack(q), pack(zeros), scales, g)
    torch.testing.assert_close(dequantize_int4(qc, s, z, G), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="group_size 48 must be 32, 64 or 128"):
        from_awq(pack(q), pack(zeros), scales, 48)


@pytest.mark.parametrize(("n", "k"), [(1, 8), (40, 64), (33, 96)])
def test_packing_from_nibble_bytes_equals_packing_the_codes(n, k):
    """Checkpoint loading packs the canonical nibble bytes directly (codes_to_tiles): the
    same kernel codes as unpacking them to one byte per code first."""
    from tersor.formats.int4 import codes_to_tiles, from_nibbles, pack_int4, to_nibbles

    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    b = to_nibbles(q)
    assert torch.equal(from_nibbles(b, k), q)
    scale = torch.rand(n, k // 8).to(torch.float16)
    assert torch.equal(codes_to_tiles(b, n, k, k, True), pack_int4(q, scale, None, 8).codes)


@pytest.mark.parametrize("n", [1, 7, 16, 33])
@pytest.mark.parametrize("k,kp", [(8, 8), (13, 16), (24, 32), (40, 40), (129, 136), (96, 128)])
@pytest.mark.parametrize("nibbles", [False, True])
def test_native_repack_matches_torch(n, k, kp, nibbles):
    """csrc/repack (save / load / conversion) against the torch path (other devices), both
    ways; past K and past N the tiles hold 0, an odd K's last high nibble is 0."""
    from tersor.formats.int4 import (
        _codes_to_tiles_torch,
        _tiles_to_codes_torch,
        codes_to_tiles,
        tiles_to_codes,
    )

    gen = torch.Generator().manual_seed(n * 1000 + k)
    q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    rows = to_nibbles(q) if nibbles else q
    tiles = codes_to_tiles(rows, n, k, kp, nibbles)
    assert tiles.shape == ((n + 15) // 16, kp // 8, 16, 4)
    assert torch.equal(tiles, _codes_to_tiles_torch(rows, n, k, kp, nibbles))
    back = tiles_to_codes(tiles, n, k, nibbles)
    assert torch.equal(back, rows)
    assert torch.equal(back, _tiles_to_codes_torch(tiles, n, k, nibbles))
    # garbage in the padding must not leak into the rows
    noisy = tiles.clone().view(-1, kp // 8, 16, 4)
    full = torch.randint(0, 256, noisy.shape, generator=gen, dtype=torch.uint8)
    mask = _codes_to_tiles_torch(torch.full_like(rows, 0xFF), n, k, kp, nibbles)
    noisy = torch.where(mask.bool(), noisy, full)
    assert torch.equal(tiles_to_codes(noisy, n, k, nibbles), rows)
    with pytest.raises(ValueError, match="int4 codes: expected uint8"):
        codes_to_tiles(rows[:, :-1], n, k, kp, nibbles)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 37), (7, 384), (3, 33, 130), (300, 5)])
def test_native_column_gather_is_index_select(dtype, shape):
    """The act-order input permutation (formats/int4.py _gather_columns): x[..., perm] bit for
    bit, on strided rows too, large enough for both threads."""
    g = torch.Generator().manual_seed(3)
    k = shape[-1]
    perm = torch.randperm(k, generator=g)
    wide = torch.randn(*shape[:-1], k + 3, generator=g).to(dtype)
    for x in (wide[..., :k].contiguous(), wide[..., 2 : 2 + k]):
        assert torch.equal(_gather_columns(x, perm), x.index_select(-1, perm))


def test_act_order_layer_matches_permuting_first_and_rejects_a_bad_permutation():
    g = torch.Generator().manual_seed(4)
    n, k = 20, 64
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    s = torch.rand(n, 2, generator=g).half() / 10 + 0.01
    z = torch.randint(0, 16, (n, 2), dtype=torch.uint8, generator=g)
    perm = torch.randperm(k, generator=g)
    scale = torch.rand(k, generator=g) + 0.5
    for a8 in (False, True):
        for xs in (None, scale):  # a kept input scale (AWQ): x * s, then the permutation
            fmt = Int4Format(q, s, z, 32, act_int8=a8, perm=perm).with_input_scale(xs)
            plain = Int4Format(q, s, z, 32, act_int8=a8)
            plain = plain.with_input_scale(None if xs is None else xs[perm])
            for x in (torch.randn(5, k, generator=g), torch.randn(2, 3, k, generator=g)):
                want = plain.linear(x.index_select(-1, perm).reshape(-1, k), None, "auto")
                want = want.view(*x.shape[:-1], n)
                assert torch.equal(fmt.linear(x.reshape(-1, k), None, "auto").view_as(want), want)
                assert torch.equal(fmt.cpu_runner()(x, None), want)  # the layers' lean call
    for bad in (perm.clone().fill_(0), torch.arange(k) + 1, torch.arange(k - 1)):
        with pytest.raises(ValueError, match="act-order input permutation"):
            Int4Format(q, s, z, 32, perm=bad)


@pytest.mark.parametrize("m", [1, 5, 6, 7, 33])
@pytest.mark.parametrize("shape", [(), (3,)])
def test_act_bits_16_layer_takes_the_planes_up_to_their_rows(m, shape):
    """W4A8Config(act_bits=16): up to PLANES_MAX_ROWS rows the layer is the planes op, above it
    the float-activation W4 layer on the same codes; bf16 rows give that, rounded once."""
    import tersor
    from tersor.nn import QLinear
    from tersor.ops import gemm_w4a8
    from tersor.ops.gemm_w4 import PLANES_MAX_ROWS

    torch.manual_seed(m)
    lin = torch.nn.Linear(96, 37)
    q16 = QLinear.from_float(lin, tersor.W4A8Config(group_size=32, act_bits=16))
    assert q16.fmt.act_bits == 16 and q16.fmt.options()["act_bits"] == 16
    assert "act_bits=16" in repr(q16)
    f = q16.fmt
    w4 = QLinear.wrap(Int4Format(*f.canonical(), 32, act_int8=False, nibbles_k=None), q16.bias)
    x = torch.randn(*shape, m, 96)
    rows = x.numel() // 96
    y = q16(x)
    if rows <= PLANES_MAX_ROWS:
        want = gemm_w4a8(x, f.codes, f.scale, f.zero, q16.bias, 37, f.G, "auto", 2)
    else:
        want = w4(x)
    assert y.shape == (*shape, m, 37) and torch.equal(y, want)
    assert torch.equal(q16(x.bfloat16()), q16(x.bfloat16().float()).bfloat16())
    with torch.no_grad():
        assert torch.equal(q16._checked(x), y)  # the checked path: the same choice


def test_act_bits_errors():
    import tersor

    with pytest.raises(ValueError, match="act_bits must be 8 or 16"):
        tersor.W4A8Config(act_bits=12)
    with pytest.raises(ValueError, match="act_bits=16 applies to int8 activations"):
        Int4Format.empty(16, 64, act_int8=False, group_size=32, act_bits=16)


def test_act_bits_16_saves_and_loads(tmp_path):
    import tersor

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    tersor.quantize_(net, tersor.W4A8Config(group_size=32, act_bits=16), progress=False)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = net(x)
    manifest = tersor.save_pretrained(net, str(tmp_path))
    assert manifest["layers"]["0"]["options"]["act_bits"] == 16
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    tersor.load_pretrained(fresh, str(tmp_path))
    assert fresh[0].fmt.act_bits == 16 and fresh[2].fmt.act_bits == 16
    with torch.no_grad():
        assert torch.equal(fresh(x), want)
