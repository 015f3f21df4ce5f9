"""2:4 sparse fp32: format, pruner, every ISA path against the C ref (bit for bit) and the dense
product on the pruned weight, the module and sparsify_."""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tersor
from tersor.formats.sparse24 import (
    Sparse24Format,
    compress_24,
    decompress_24,
    is_24,
    pack_24,
    prune_24,
    unpack_24,
)
from tersor.nn import SparseLinear
from tersor.ops.spmm_24 import spmm_24


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 41), seed=st.integers(0, 2**31 - 1))
def test_prune_compress_pack_round_trip(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = prune_24(torch.randn(n, k, generator=g))
    assert is_24(w)
    v, m = compress_24(w)
    assert torch.equal(decompress_24(v, m, k), w)
    p = pack_24(v, m, k)
    v2, m2 = unpack_24(p.values, p.meta, n, k)
    assert torch.equal(v2, v) and torch.equal(m2, m)


def test_pruner_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5, 0.0, 0.0, 0.0, 2.0, 9.0]])
    p = prune_24(w)
    assert p.tolist() == [[0.0, -5.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 9.0]]
    assert is_24(p) and not is_24(w)
    with pytest.raises(ValueError, match="does not satisfy the 2:4 pattern"):
        compress_24(w)


def test_compress_meta_of_every_pattern():
    """All 16 nonzero patterns of a group: the 11 with at most 2 nonzeros keep them, topped up
    with the lowest zero slots, positions ascending; the other 5 are refused. NaN counts as
    nonzero."""
    for bits in range(16):
        nz = [p for p in range(4) if bits >> p & 1]
        w = torch.zeros(1, 4)
        w[0, nz] = torch.tensor([float("nan"), -2.0, 3.0, 4.0][: len(nz)])
        if len(nz) > 2:
            assert not is_24(w)
            with pytest.raises(ValueError, match="does not satisfy the 2:4 pattern"):
                compress_24(w)
            continue
        v, m = compress_24(w)
        want = sorted(nz + [p for p in range(4) if p not in nz][: 2 - len(nz)])
        assert m.tolist() == [[want[0] | want[1] << 2]], bits
        assert torch.equal(v.nan_to_num(7.0), w[:, want].nan_to_num(7.0)), bits


def test_pruner_ties_nan_scores_and_sparse_groups():
    """Ties go to the lower position, a NaN score ranks highest, and a group of at most 2
    nonzeros stays as it is whatever its scores (here the zeros' scores are the largest)."""
    w = torch.tensor([[1.0, -1.0, 1.0, 0.5, 0.0, 5.0, 0.0, 3.0, 1.0, 2.0, 3.0, 4.0]])
    score = torch.tensor([[2.0, 2.0, 2.0, 2.0, 9.0, 0.0, 9.0, 1.0, 1.0, float("nan"), 0.0, 5.0]])
    assert prune_24(w).tolist() == [[1.0, -1.0, 0, 0, 0, 5.0, 0, 3.0, 0, 0, 3.0, 4.0]]
    assert prune_24(w, score).tolist() == [[1.0, -1.0, 0, 0, 0, 5.0, 0, 3.0, 0, 2.0, 0, 4.0]]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 41),
    seed=st.integers(0, 2**31 - 1),
    scored=st.sampled_from(["abs", "score", "nan score"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_native_conversion_matches_the_torch_passes(n, k, seed, scored, dtype):
    """Sparse24Format.from_float (csrc/repack s24_prune_to_tiles) gives the tiles of prune_24 +
    compress_24 + pack_24 exactly, and with_int8_values (s24_tiles_to_int8) those of
    quantize_24_int8 + pack_24_int8: weights from a few values (ties in every group), some
    groups already sparse, rows whose small values round to code 0 (their slots freed)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-3, 4, (n, k), generator=g).to(dtype) * 0.25
    w[:, 0] *= 1000.0  # the rest of row 0's codes round to 0 or +-1
    score = None
    if scored != "abs":
        score = torch.randint(0, 3, (n, k), generator=g).float()
        if scored == "nan score":
            score[torch.rand(n, k, generator=g) < 0.2] = float("nan")
    fmt = Sparse24Format.from_float(w, tersor.Sparse24Config(), score=score)
    pruned = prune_24(w.float(), score)
    ref = pack_24(*compress_24(pruned), k)
    assert torch.equal(fmt.values, ref.values) and torch.equal(fmt.meta, ref.meta)
    q = fmt.with_int8_values(tersor.W8A8Config())
    r8 = pack_24_int8(*quantize_24_int8(pruned), k)
    for name in ("values", "meta", "colsum", "scale"):
        got, want = getattr(q, name), getattr(r8, name)
        assert torch.equal(got, want)


def test_native_conversion_refuses_what_the_torch_passes_refused():
    w = torch.randn(20, 12)
    w[17, 5] = float("nan")
    with pytest.raises(ValueError, match="layer 'x': weight holds NaN or Inf"):
        Sparse24Format.from_float(w, tersor.Sparse24Config(), what="layer 'x'")
    with pytest.raises(ValueError, match=r"not 2:4 sparse \(row 0\).*prune=False"):
        Sparse24Format.from_float(torch.ones(3, 8), tersor.Sparse24Config(False))
    with pytest.raises(
        ValueError, match=r"score must be \[20, 12\] like the weight, got \(20, 8\)"
    ):
        Sparse24Format.from_float(w, tersor.Sparse24Config(), score=torch.ones(20, 8))
    ok = Sparse24Format.from_float(prune_24(torch.randn(20, 12)), tersor.Sparse24Config(False))
    ok.values[1, 2, 0, 3] = float("inf")  # row 19
    with pytest.raises(ValueError, match="values of row 19 hold NaN or Inf"):
        ok.with_int8_values(tersor.W8A8Config())


@pytest.mark.parametrize("m", [1, 7, 33])  # 33: the AVX2 slabs
@pytest.mark.parametrize("k,n", [(1, 1), (3, 5), (37, 33), (130, 70), (256, 17)])
def test_spmm_24_every_isa(isa, m, k, n, gen, c_ref):
    w = prune_24(torch.randn(n, k, generator=gen))
    x = torch.randn(m, k + 3, generator=gen)[:, 1 : 1 + k]  # strided rows
    b = torch.randn(n, generator=gen)
    p = pack_24(*compress_24(w), k)
    y = spmm_24(x, p.values, p.meta, b, n)
    assert torch.equal(y, c_ref(lambda: spmm_24(x.contiguous(), p.values, p.meta, b, n)))
    y64 = x.double() @ w.double().t() + b.double()
    assert (y.double() - y64).abs().max() <= 1e-5 * (y64.abs().max() + 1)


@pytest.mark.parametrize(
    "m,k,n", [(16, 600, 21), (300, 37, 40), (25, 300, 70), (130, 261, 33), (1057, 45, 20)]
)
def test_spmm_24_batches(isa, m, k, n, gen, c_ref):
    """The batch kernels, x transposed. AVX2 (16 rows and more): passes of up to 96 rows (300:
    four of 80 -> 10 vectors; 130: 72 + 58; 1057: eleven of 96 and one row), K in chunks of 64
    with a tail mid-group (37, 261, 300), K over ten chunks (600), one column block per thread
    and a lone one (n = 21, 33).
    AVX-512 (25 rows and more): passes of 64 rows and a tail of 2 (130) or one partial pass
    (25), K in chunks of 128. Bit for bit the rules' result, also with an Inf or NaN at a pruned
    position, which the sparse kernels never read."""
    w = prune_24(torch.randn(n, k, generator=gen))
    x = torch.randn(m, k, generator=gen)
    b = torch.randn(n, generator=gen)
    p = pack_24(*compress_24(w), k)
    y = spmm_24(x, p.values, p.meta, b, n)
    assert torch.equal(y, c_ref(lambda: spmm_24(x, p.values, p.meta, b, n)))
    x[3, 5], x[5, 30] = float("inf"), float("nan")
    y = spmm_24(x, p.values, p.meta, b, n)
    torch.testing.assert_close(
        y, c_ref(lambda: spmm_24(x, p.values, p.meta, b, n)), rtol=0, atol=0, equal_nan=True
    )
    for row, col in ((3, 5), (5, 30)):  # outputs that prune that k stay finite
        skip = w[:, col] == 0
        assert skip.any() and torch.isfinite(y[row, skip]).all()


@pytest.mark.parametrize("m", range(16, 97, 8))
def test_spmm_24_transposed_every_register_tile(isa, m, gen, c_ref):
    """Passes of 16 .. 96 rows reach every register tile of the AVX2 transposed kernel (2 .. 12
    vectors of 8 rows, 4 .. 1 columns); m - 3 rows leave the last vector partial."""
    k, n = 75, 37
    w = prune_24(torch.randn(n, k, generator=gen))
    b = torch.randn(n, generator=gen)
    p = pack_24(*compress_24(w), k)
    for rows in (m - 3, m):
        x = torch.randn(rows, k, generator=gen)
        y = spmm_24(x, p.values, p.meta, b, n)
        assert torch.equal(y, c_ref(lambda: spmm_24(x, p.values, p.meta, b, n)))


def test_all_zero_and_dense_rows(gen):
    w = torch.zeros(20, 16)
    w[3, :] = torch.tensor([1.0, 2.0, 0.0, 0.0] * 4)  # density 1/2 (the most 2:4 allows)
    p = pack_24(*compress_24(w), 16)
    x = torch.randn(4, 16, generator=gen)
    torch.testing.assert_close(spmm_24(x, p.values, p.meta, None, 20), x @ w.t())
    torch.library.opcheck(spmm_24, (x, p.values, p.meta, None, 20))


def test_sparsify_module_state_dict_compile():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(37, 64), nn.ReLU(), nn.Linear(64, 10))
    pruned = [prune_24(model[0].weight), prune_24(model[2].weight)]
    report = tersor.sparsify_(model, tersor.Sparse24Config())
    assert isinstance(model[0], SparseLinear) and len(report.converted) == 2
    assert torch.equal(model[0].dense_weight(), pruned[0])
    x = torch.randn(5, 37)
    ref = torch.relu(x @ pruned[0].t() + model[0].bias) @ pruned[1].t() + model[2].bias
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = nn.Sequential(SparseLinear(37, 64), nn.ReLU(), SparseLinear(64, 10))
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x), model(x))
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_sparsify_errors_leave_model_unchanged():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="converting '0' failed.*not 2:4 sparse.*prune=False"):
        tersor.sparsify_(model, tersor.Sparse24Config(prune=False))
    assert all(isinstance(m, nn.Linear) for m in model)
    with pytest.raises(
        TypeError, match=r"config must be one of \['Sparse24Config', 'SparseConfig'\]"
    ):
        tersor.sparsify_(model, tersor.W8A8Config())
    with pytest.raises(ValueError, match="prune must be one of"):
        tersor.Sparse24Config(prune="yes")
    layer = SparseLinear.from_float(nn.Linear(8, 4), tersor.Sparse24Config(), name="s")
    with pytest.raises(
        TypeError, match=r"layer 's' \(2:4, in_features=8\): expected a float32 input"
    ):
        layer(torch.ones(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 8\], got \(2, 7\)"):
        layer(torch.ones(2, 7))


# ---- 2:4 + int8 (W8A8) ------------------------------------------------------------------------
from tersor.formats.sparse24 import pack_24_int8, quantize_24_int8, unpack_24_int8  # noqa: E402
from tersor.ops.spmm_24 import spmm_24_w8a8  # noqa: E402
from tersor.ref import quantize_rows_ref  # noqa: E402


def make_24_int8(n, k, gen):
    return make_24_int8_of(prune_24(torch.randn(n, k, generator=gen)), k)


def make_24_int8_of(w, k):
    v, m, s = quantize_24_int8(w)
    return v, m, s, pack_24_int8(v, m, s, k)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 41), seed=st.integers(0, 2**31 - 1))
def test_int8_pack_round_trip(n, k, seed):
    v, m, s, p = make_24_int8(n, k, torch.Generator().manual_seed(seed))
    v2, m2, s2 = unpack_24_int8(p.values, p.meta, p.scale, n, k)
    assert torch.equal(v2, v) and torch.equal(m2, m) and torch.equal(s2, s)
    assert torch.equal(p.colsum[:n], v.to(torch.int32).sum(1, dtype=torch.int32))


@pytest.mark.parametrize("m", [1, 2, 3, 7, 33])
@pytest.mark.parametrize("k,n", [(1, 1), (3, 5), (12, 16), (37, 33), (130, 70), (257, 49)])
def test_spmm_24_w8a8_every_isa_exact(isa, m, k, n, gen, c_ref):
    v, meta, s, p = make_24_int8(n, k, gen)
    x = (torch.randn(m, k + 3, generator=gen) * 3)[:, 1 : 1 + k]  # strided rows
    b = torch.randn(n, generator=gen)
    args = (p.values, p.meta, p.colsum, p.scale)
    y = spmm_24_w8a8(x, *args, b, n)
    assert torch.equal(y, c_ref(lambda: spmm_24_w8a8(x.contiguous(), *args, b, n)))
    # integer accumulation exact: y = fl(acc * fl(sx * sw)) without bias
    y0 = spmm_24_w8a8(x, *args, None, n)
    qx, sx = quantize_rows_ref(x)
    q = decompress_24(v.to(torch.float32), meta, k)
    acc = qx.double() @ q.double().t()
    assert torch.equal(y0, (acc * (sx[:, None] * s[None, :]).double()).float())


@pytest.mark.parametrize("m", [8, 13, 33])
@pytest.mark.parametrize("k,n", [(1030, 19), (2053, 40)])
def test_spmm_24_w8a8_extreme_codes_exact(isa, m, k, n, gen, c_ref):
    """From 8 rows AVX2 folds the sign of w into the activation selection (|w| x a, or x ~a
    where w < 0, accumulators starting at each column's sum of |w| over its negative values):
    columns all at -127 and half at -127, +-127 alternating, codes at +-127 against them (the
    largest pair sums), K long enough that the sums pass int16."""
    w = prune_24(torch.randn(n, k, generator=gen))
    kept = (w != 0).float()
    w[0] = -kept[0]  # every kept value -127 after quantization
    w[1, : k // 2] = -kept[1, : k // 2]
    w[1, k // 2 :] = kept[1, k // 2 :] * 0.5
    alt = torch.ones(k)
    alt[1::2] = -1
    w[2] = kept[2] * alt
    v, meta, s, p = make_24_int8_of(w, k)
    assert (v[0][v[0] != 0] == -127).all() and (v[2] == 127).any() and (v[2] == -127).any()
    x = torch.randn(m, k, generator=gen)
    x[:, ::7] = 9.0  # codes at 127 ...
    x[:, 3::7] = -9.0  # ... and at -127
    args = (p.values, p.meta, p.colsum, p.scale)
    y = spmm_24_w8a8(x, *args, None, n)
    assert torch.equal(y, c_ref(lambda: spmm_24_w8a8(x, *args, None, n)))
    qx, sx = quantize_rows_ref(x)
    assert (qx == 127).any() and (qx == -127).any()
    acc = qx.double() @ decompress_24(v.to(torch.float32), meta, k).double().t()  # exact
    assert torch.equal(y, (acc.float().double() * (sx[:, None] * s[None, :]).double()).float())


def test_int8_24_dense_copy(monkeypatch, gen, kernel_spy):
    """A 2:4 int8 layer converted with a dense W8A8 copy (AMX CPUs: formats/sparse24.py) runs
    the 2:4 kernel below dense_from_rows rows and the dense kernel from there, eager and through
    the op; the same integers and epilogue, so the same bits as the 2:4 kernel. The threshold
    survives a state_dict round trip and shows in the report."""
    from tersor.formats import sparse24

    monkeypatch.setattr(sparse24, "dense_from_rows_24_int8", lambda n, k: 5)
    model = nn.Sequential(nn.Linear(70, 37))
    tersor.sparsify_(model, tersor.Sparse24Config())
    rep = tersor.quantize_(model, tersor.W8A8Config())
    layer = model[0]
    assert layer.fmt.dense_from_rows == 5 and "dense W8A8 from 5 rows" in rep.layers[0].reason
    calls = kernel_spy(*("gemm_w8a8", "spmm_24_w8a8"))
    layer.fmt._finish()  # its lean call binds the (spied) kernels now
    x = torch.randn(33, 70, generator=gen)
    with torch.no_grad():
        few, many = layer(x[:4]), layer(x)
        assert calls == ["spmm_24_w8a8", "gemm_w8a8"]
        strided = layer(torch.randn(33, 71, generator=gen)[:, :70])  # not contiguous: the op
        assert calls[-1] == "gemm_w8a8"
    f = layer.fmt
    for rows, y in ((x[:4], few), (x, many)):
        want = spmm_24_w8a8(rows, f.values, f.meta, f.colsum, f.scale, layer.bias, 37)
        assert torch.equal(y, want)
    assert strided.shape == (33, 37)
    fresh = nn.Sequential(SparseLinear(70, 37, scheme="2:4+w8a8"))
    fresh.load_state_dict(model.state_dict())
    assert fresh[0].fmt.dense_from_rows == 5 and torch.equal(
        fresh[0].fmt.dense_packed, f.dense_packed
    )
    sd = model.state_dict()
    sd["0._extra_state"] = {"dense_from_rows": 0}
    with pytest.raises(RuntimeError, match=r"0._extra_state: dense_from_rows must be None or a"):
        fresh.load_state_dict(sd)


def test_int8_24_dense_copy_only_on_amx(monkeypatch):
    """The copy is decided for the active ISA path: kept only where AMX tiles run the dense
    kernel (the 2:4 VNNI kernel runs level with dense VNNI / AVX2 elsewhere)."""
    from tersor.formats.sparse24 import dense_from_rows_24_int8

    for isa in tersor.available_isas():
        monkeypatch.setenv("TERSOR_CPU_ISA", isa)
        rows = dense_from_rows_24_int8(4096, 4096), dense_from_rows_24_int8(384, 1536)
        assert rows == ((10, 5) if isa == "amx" else (None, None)), isa


def test_spmm_24_w8a8_opcheck_and_errors(gen):
    _, _, _, p = make_24_int8(20, 24, gen)
    x = torch.randn(3, 24, generator=gen)
    torch.library.opcheck(spmm_24_w8a8, (x, p.values, p.meta, p.colsum, p.scale, None, 20))
    with pytest.raises(ValueError, match=r"values must be int8 \[Np/16, 2, 16, 4\]"):
        spmm_24_w8a8(torch.randn(3, 16), p.values, p.meta, p.colsum, p.scale, None, 20)


def test_sparsify_then_quantize_gives_sparse_int8_layers(gen):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 25, 33),
        nn.ReLU(),
        nn.Linear(33, 10),
    )
    tersor.sparsify_(model, tersor.Sparse24Config())
    pruned = model[3].dense_weight()
    x = torch.randn(3, 8, 5, 5, generator=gen)
    y_fp32 = model(x)
    report = tersor.quantize_(model, tersor.W8A8Config())
    assert [r.scheme for r in report.layers] == ["2:4+w8a8"] * 3
    assert isinstance(model[3], SparseLinear) and model[3].scheme == "2:4+w8a8"
    assert model[0].gemm.scheme == "2:4+w8a8"
    copies = sum(  # the dense W8A8 copies kept on AMX CPUs (formats/sparse24.py)
        t.numel() * t.element_size()
        for f in (model[0].gemm.fmt, model[3].fmt, model[5].fmt)
        for t in (f.dense_packed, f.dense_colsum, f.dense_scale)
        if t is not None
    )
    assert report.bytes_after - copies < 0.4 * report.bytes_before
    # the int8 layer's weight is the per-channel quantization of the 2:4 fp32 weight
    v, m, s = model[3].canonical_weight()
    q = decompress_24(v.float(), m, 400)
    assert torch.equal((q != 0), (pruned != 0) & (q != 0))  # no new nonzeros
    torch.testing.assert_close(q * s[:, None], pruned, atol=float(s.max()) / 2 + 1e-7, rtol=0)
    y = model(x)
    assert (y - y_fp32).norm() <= 0.05 * y_fp32.norm()
    # state_dict round trip into fresh int8 layers, then torch.compile
    fresh = nn.Sequential(
        tersor.nn.QConv2d(8, 16, 3, padding=1, scheme="2:4+w8a8"),
        nn.ReLU(),
        nn.Flatten(),
        SparseLinear(400, 33, scheme="2:4+w8a8"),
        nn.ReLU(),
        SparseLinear(33, 10, scheme="2:4+w8a8"),
    )
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x), y)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(fresh, fullgraph=True)(x), y)
    # other schemes do not combine with sparsity: left as they are, with the reason
    model2 = nn.Sequential(nn.Linear(16, 16))
    tersor.sparsify_(model2, tersor.Sparse24Config())
    rep = tersor.quantize_(model2, tersor.W4Config(group_size=-1))
    kept = rep.layers[0]
    assert (kept.scheme, kept.status) == ("2:4", "already compressed")
    assert "W8A8Config only" in kept.reason and isinstance(model2[0], SparseLinear)
    assert model2[0].scheme == "2:4"
    rep = tersor.quantize_(model2, tersor.W8A8Config(weight_bits=7))  # int8 values: 8-bit only
    kept = rep.layers[0]
    assert kept.status == "already compressed" and "8-bit only" in kept.reason
    assert model2[0].scheme == "2:4"
