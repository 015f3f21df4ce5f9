"""Unstructured sparse fp32: pruner, CSR/ELL packing, every ISA path against the C ref (bit for
bit) and the dense product, at densities 0, in between and 1; module and sparsify_."""

import io

import pytest
import torch
from torch import nn

import tersor
from tersor.formats.sparse_csr import from_csr, pack_csr, prune_unstructured, to_csr
from tersor.nn import CsrLinear
from tersor.ops.spmm_csr import spmm_csr


def packed(w):
    n, k = w.shape
    p = pack_csr(*to_csr(w), n, k)
    return (p.rowptr, p.col, p.val, p.ell_val, p.ell_col, p.ell_cnt, p.ell_off, p.perm)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97, 1.0])
def test_pruner_and_csr_round_trip(sparsity, gen):
    w = torch.randn(33, 70, generator=gen)
    p = prune_unstructured(w, sparsity) if 0 < sparsity < 1 else w * (sparsity == 0.0)
    assert abs(float((p == 0).float().mean()) - sparsity) < 1e-3
    kept = p != 0
    if 0 < sparsity < 1:  # the survivors are the largest magnitudes
        assert w.abs()[kept].min() >= w.abs()[~kept].max()
    rp, col, val = to_csr(p)
    assert torch.equal(from_csr(rp, col, val, 33, 70), p)


@pytest.mark.parametrize("m", [1, 2, 3, 7, 13, 30, 33, 70])  # (lockstep: 4-32 rows; 70: 2 passes)
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 0.9, 1.0])
@pytest.mark.parametrize("k,n", [(1, 1), (37, 33), (130, 70)])
def test_spmm_csr_every_isa(isa, m, sparsity, k, n, gen, c_ref):
    w = torch.randn(n, k, generator=gen)
    w = prune_unstructured(w, sparsity) if 0 < sparsity < 1 else w * (sparsity == 0.0)
    w[n // 2] = 0.0  # an all-zero output channel
    x = torch.randn(m, k + 2, generator=gen)[:, 1 : 1 + k]  # strided rows
    b = torch.randn(n, generator=gen)
    args = packed(w)
    y = spmm_csr(x, *args, None, b, n)
    assert torch.equal(y, c_ref(lambda: spmm_csr(x.contiguous(), *args, None, b, n)))
    y64 = x.double() @ w.double().t() + b.double()
    assert (y.double() - y64).abs().max() <= 1e-5 * (y64.abs().max() + 1)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_spmm_csr_padded_lanes_leave_no_trace(isa, m, gen, c_ref):
    """Channels of very different counts share an ELL block, so most lanes run past their
    count: those steps must not touch the sum (an FMA with a padding weight of 0 would turn
    inf * 0 into NaN). x holds inf at a k only one channel reads."""
    n, k = 37, 50
    w = torch.zeros(n, k)
    w[0] = torch.randn(k, generator=gen)  # a full channel: every other lane is padded
    w[1:, 10:12] = torch.randn(n - 1, 2, generator=gen)
    x = torch.randn(m, k, generator=gen)
    x[:, 0] = float("inf")  # read by channel 0 alone
    args = packed(w)
    y = spmm_csr(x, *args, None, None, n)
    assert torch.equal(y, c_ref(lambda: spmm_csr(x, *args, None, None, n)))
    assert torch.isinf(y[:, 0]).all() and torch.isfinite(y[:, 1:]).all()


def test_opcheck_and_errors(gen):
    w = prune_unstructured(torch.randn(20, 37, generator=gen), 0.8)
    args = packed(w)
    x = torch.randn(4, 37, generator=gen)
    torch.library.opcheck(spmm_csr, (x, *args, None, None, 20))
    with pytest.raises(ValueError, match="column indices exceed in_features=30"):
        spmm_csr(torch.randn(4, 30), *args, None, None, 20)
    with pytest.raises(ValueError, match="sparsity must lie in"):
        tersor.SparseConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="block must be None or a pair of positive ints"):
        tersor.SparseConfig(block=(4, 0))
    with pytest.raises(ValueError, match="scope must be 'layer' or 'global'"):
        tersor.SparseConfig(scope="model")
    bad = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():
        bad[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="converting '0' failed.*NaN or Inf"):
        tersor.sparsify_(bad, tersor.SparseConfig())
    assert isinstance(bad[0], nn.Linear)


def test_sparsify_unstructured_report_state_dict_compile():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    ref_w = prune_unstructured(model[0].weight, 0.9)
    report = tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.9))
    assert isinstance(model[0], CsrLinear) and len(report.converted) == 2
    assert torch.equal(model[0].dense_weight(), ref_w)
    assert abs(model[0].density - 0.1) < 0.01
    x = torch.randn(5, 64)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = nn.Sequential(CsrLinear(64, 96), nn.ReLU(), CsrLinear(96, 10))
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x), model(x))
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_too_dense_layers_stay_dense_and_say_so():
    model = nn.Sequential(nn.Linear(64, 32))
    report = tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.5))
    assert isinstance(model[0], nn.Linear)
    assert "too dense to gain (sparsity 0.50 < measured break-even 0.70)" in report.layers[0].reason
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("sparsity", [0.75, 0.9])  # 0.75: a dense copy from 256 rows
def test_prepared_call_is_the_general_call(isa, sparsity, gen):
    """The layer's eager fast path (ops/spmm_csr.py cpu_runner_csr) gives the general op's
    result bit for bit: 2-d and 3-d rows, strided rows (which it hands on), rows past the
    dense copy's threshold, no bias."""
    model = nn.Sequential(nn.Linear(70, 45))
    tersor.sparsify_(model, tersor.SparseConfig(sparsity=sparsity))
    layer, f = model[0], model[0].fmt
    xs = [
        torch.randn(1, 70, generator=gen),
        torch.randn(3, 5, 70, generator=gen),
        torch.randn(70, 9, generator=gen).t(),
        torch.randn(300, 70, generator=gen),
    ]
    for bias in (layer.bias, None):
        for x in xs:
            y = f.cpu_call(x, bias)
            general = f.linear(x.reshape(-1, 70), bias, "auto").view(*x.shape[:-1], 45)
            assert torch.equal(y, general)
    assert torch.equal(layer(xs[0]), f.linear(xs[0], layer.bias, "auto"))


def test_dense_fallback_at_large_m_is_reported_and_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48))
    report = tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.75))
    layer = model[0]
    assert isinstance(layer, CsrLinear) and layer.dense_from_rows == 256
    assert "dense fp32 from 256 rows" in report.layers[0].reason
    w = layer.dense_weight()
    for rows in (7, 300):  # sparse kernel below the threshold, dense copy above
        x = torch.randn(rows, 64)
        torch.testing.assert_close(layer(x), x @ w.t() + layer.bias, rtol=1e-5, atol=1e-5)
    fresh = nn.Sequential(CsrLinear(64, 48))
    fresh.load_state_dict(model.state_dict())
    assert fresh[0].dense_from_rows == 256 and fresh[0].fmt.dense_w is not None
    # sparse enough to win at every M: no dense copy
    m90 = nn.Sequential(nn.Linear(64, 48))
    tersor.sparsify_(m90, tersor.SparseConfig(sparsity=0.9))
    assert m90[0].fmt.dense_w is None
    m_off = nn.Sequential(nn.Linear(64, 48))
    tersor.sparsify_(m_off, tersor.SparseConfig(sparsity=0.75, dense_fallback=False))
    assert m_off[0].fmt.dense_w is None


def test_global_scope_spreads_sparsity_by_magnitude():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[1].weight.mul_(10)  # the second layer's weights all outrank the first's
    total = sum(m.weight.numel() for m in model)
    tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.5, scope="global", dense_below=0.0))
    kept = [int((m.dense_weight() != 0).sum()) for m in model]
    assert kept[0] < 0.15 * 4096 and kept[1] > 0.85 * 4096  # per layer it would be 50% each
    assert sum(kept) == pytest.approx(total / 2, abs=2)


def test_wanda_scores_use_the_calibration_batch():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    x = torch.randn(64, 32)
    x[:, :8] *= 100  # the first 8 input features carry the energy
    model = nn.Sequential(lin)
    w = lin.weight.detach().clone()
    report = tersor.sparsify_(
        model, tersor.SparseConfig(sparsity=0.75, dense_below=0.0), calibration=x
    )
    kept = model[0].dense_weight() != 0
    assert torch.equal(kept, prune_unstructured(w, 0.75, score=w.abs() * x.norm(dim=0)) != 0)
    assert kept[:, :8].float().mean() > 0.95  # nearly every weight on a loud feature stays
    assert (prune_unstructured(w, 0.75)[:, :8] != 0).float().mean() < 0.5  # |w| alone: not
    assert report.layers[0].scheme == "unstructured"
    # 2:4 with Wanda: the loud features win within each group of 4
    m24 = nn.Sequential(nn.Linear(32, 16))
    w24 = m24[0].weight.detach().clone()
    x24 = torch.randn(64, 32)
    x24[:, 0::4] *= 100
    x24[:, 1::4] *= 100  # positions 0 and 1 of every group are loud
    tersor.sparsify_(m24, tersor.Sparse24Config(), calibration=x24)
    kept24 = m24[0].dense_weight().view(16, 8, 4) != 0
    assert kept24[:, :, :2].float().mean() > 0.95
    from tersor.formats.sparse24 import prune_24

    assert torch.equal(m24[0].dense_weight(), prune_24(w24, w24.abs() * x24.norm(dim=0)))
    # a calibration batch that never reaches a layer is an error, model unchanged
    branch = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)})
    branch.forward = lambda t: branch["a"](t)
    with pytest.raises(ValueError, match="did not reach 1 layer.*model is unchanged"):
        tersor.sparsify_(branch, tersor.SparseConfig(), calibration=torch.randn(2, 4))
    assert isinstance(branch["b"], nn.Linear)


def test_block_sparsify_quantize_state_dict_compile():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    report = tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.75, block=(16, 4)))
    assert [r.scheme for r in report.layers] == ["block", "block"]
    assert "kernel blocks (16, 1) kept 0.250" in report.layers[0].reason
    layer = model[0]
    assert isinstance(layer, tersor.BlockSparseLinear)
    assert float((layer.dense_weight() == 0).float().mean()) == 0.75
    x = torch.randn(5, 64)
    y = model(x)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = nn.Sequential(
        tersor.BlockSparseLinear(64, 96), nn.ReLU(), tersor.BlockSparseLinear(96, 32)
    )
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x), y)
    # already block sparse: sparsify_ again keeps it (prune=False accepts it too)
    again = nn.Linear(64, 96)
    with torch.no_grad():
        again.weight.copy_(layer.dense_weight())
    tersor.sparsify_(nn.Sequential(again), tersor.SparseConfig(0.75, block=(16, 4), prune=False))
    # then int8: 16 x 4 kernel blocks, exactly the pruned ones
    rep = tersor.quantize_(model, tersor.W8A8Config())
    assert [r.scheme for r in rep.layers] == ["block+w8a8"] * 2
    assert model[0].density == pytest.approx(0.25)
    assert (model(x) - y).norm() <= 0.05 * y.norm()
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_block_errors_leave_model_unchanged():
    # a layer the block does not divide (a 30-output head) is left dense and reported
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 30))
    report = tersor.sparsify_(model, tersor.SparseConfig(block=(16, 4)))
    assert isinstance(model[0], tersor.BlockSparseLinear) and isinstance(model[1], nn.Linear)
    head = report.layers[1]
    assert (head.fqn, head.scheme, head.status) == ("1", "dense", "dense")
    assert "block (16, 4) does not divide the weight [30, 96]" in head.reason
    with pytest.raises(ValueError, match=r"layer 'h': block \(16, 4\) does not divide"):
        tersor.BlockSparseLinear.from_float(
            nn.Linear(96, 30), tersor.SparseConfig(block=(16, 4)), name="h"
        )
    with pytest.raises(
        ValueError,
        match=r"only 0.0% of the \(16, 4\) blocks are zero.*"
        r"prune=False",
    ):
        tersor.sparsify_(
            nn.Sequential(nn.Linear(64, 96)), tersor.SparseConfig(block=(16, 4), prune=False)
        )


# ---- unstructured + int8 (W8A8) ---------------------------------------------------------------
from tersor.formats.int8 import quantize_per_channel_int8  # noqa: E402
from tersor.ref import quantize_rows_ref  # noqa: E402


def packed_int8(w):
    q, s = quantize_per_channel_int8(w)
    rp, col, _ = to_csr(w)
    p = pack_csr(rp, col, q[w != 0], *w.shape)
    return (
        q * (w != 0),
        s,
        (p.rowptr, p.col, p.val, p.ell_val, p.ell_col, p.ell_cnt, p.ell_off, p.perm),
    )


@pytest.mark.parametrize("m", [1, 2, 3, 7, 33])
@pytest.mark.parametrize("k,n", [(1, 1), (3, 5), (37, 33), (130, 70), (257, 49)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_spmm_csr_w8a8_every_isa_exact(isa, m, k, n, density, gen, c_ref):
    w = torch.randn(n, k, generator=gen)
    w = w * (torch.rand(n, k, generator=gen) < density)
    q, s, args = packed_int8(w)
    x = (torch.randn(m, k + 3, generator=gen) * 3)[:, 1 : 1 + k]
    b = torch.randn(n, generator=gen)
    y = spmm_csr(x, *args, s, b, n)
    assert torch.equal(y, c_ref(lambda: spmm_csr(x.contiguous(), *args, s, b, n)))
    y0 = spmm_csr(x, *args, s, None, n)
    qx, sx = quantize_rows_ref(x)
    acc = qx.double() @ q.double().t()
    assert torch.equal(y0, (acc * (sx[:, None] * s[None, :]).double()).float())


@pytest.mark.parametrize("m", [1, 9])
def test_spmm_csr_w8a8_exact_past_the_fp32_chunk(isa, m, gen):
    """Rows with 3000 nonzeros of the largest magnitude: partial sums far past 2^24."""
    k = 3000
    w = torch.full((3, k), 1.0)
    w[1] = -1.0
    w[2, ::2] = -1.0
    q, s, args = packed_int8(w)
    x = torch.ones(m, k)
    y = spmm_csr(x, *args, s, None, 3)
    expect = torch.tensor([127.0 * 127 * k, -127.0 * 127 * k, 0.0]) * s * (1 / 127)
    torch.testing.assert_close(y, expect.expand(m, 3), rtol=0, atol=0)


def test_unstructured_int8_rows_window_by_isa_sparsity_and_k(monkeypatch):
    """Where the dense W8A8 copy runs, decided at conversion for the active ISA path: with VNNI
    from 2 rows below 95% zeros, from 4 above, from one row with fewer than 64 nonzeros an
    output (K x density) or below 85% zeros; on AVX2 / the ref below 32 rows when sparse enough."""
    from tersor.formats.sparse_csr import int8_rows_window

    cases = [(1536, 0.1), (1536, 0.05), (4096, 0.0501), (384, 0.1), (384, 0.05), (4096, 0.2)]
    for isa in tersor.available_isas():
        monkeypatch.setenv("TERSOR_CPU_ISA", isa)
        got = [int8_rows_window(k, d) for k, d in cases]
        if isa in ("avx512", "amx"):
            want = [(2, None), (4, None), (4, None), (1, None), (1, None), (1, None)]
        else:
            want = [(1, 32)] * 5 + [(1, None)]
        assert got == want, isa
    model = nn.Sequential(nn.Linear(384, 40))  # 38 nonzeros an output at 90% zeros
    tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.9))
    tersor.quantize_(model, tersor.W8A8Config())
    assert model[0].dense_from_rows == int8_rows_window(384, model[0].fmt.density)[0]


def test_unstructured_int8_rows_window_without_vnni(monkeypatch, gen, kernel_spy):
    """Converted for the AVX2 path, a 90% sparse int8 layer runs the dense W8A8 copy below
    INT8_AVX2_SPARSE_FROM_ROWS rows and the sparse kernel from there (the same integers, so the
    same outputs); the window survives a state_dict round trip and shows in the report."""
    from tersor.configs import INT8_AVX2_SPARSE_FROM_ROWS as back

    monkeypatch.setenv("TERSOR_CPU_ISA", "avx2" if "avx2" in tersor.available_isas() else "ref")
    model = nn.Sequential(nn.Linear(64, 48))
    tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.9))
    rep = tersor.quantize_(model, tersor.W8A8Config())
    layer = model[0]
    assert (layer.dense_from_rows, layer.sparse_from_rows) == (1, back)
    assert f"dense W8A8 from 1 to {back - 1} rows" in rep.layers[0].reason
    calls = kernel_spy(*("gemm_w8a8", "spmm_csr_w8a8"))
    layer.set_dense_fallback(1, back)  # rebuilt: its lean call binds the (spied) kernel now
    x = torch.randn(back + 3, 64, generator=gen)
    with torch.no_grad():
        y_few, y_many = layer(x[: back - 1]), layer(x)
    assert calls == ["gemm_w8a8", "spmm_csr_w8a8"]
    layer.set_dense_fallback(None)  # the sparse kernel alone: the same outputs
    with torch.no_grad():
        assert torch.equal(layer(x[: back - 1]), y_few) and torch.equal(layer(x), y_many)
    layer.set_dense_fallback(1, back)
    fresh = nn.Sequential(CsrLinear(64, 48, scheme="unstructured+w8a8"))
    fresh.load_state_dict(model.state_dict())
    assert (fresh[0].dense_from_rows, fresh[0].sparse_from_rows) == (1, back)
    sd = model.state_dict()
    sd["0._extra_state"] = {"dense_from_rows": 1, "sparse_from_rows": "32"}
    with pytest.raises(RuntimeError, match=r"0._extra_state: sparse_from_rows must be None or a"):
        fresh.load_state_dict(sd)
    assert (fresh[0].dense_from_rows, fresh[0].sparse_from_rows) == (1, back)  # unchanged


def test_unstructured_int8_via_quantize_and_state_dict(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    tersor.sparsify_(model, tersor.SparseConfig(sparsity=0.75))
    x = torch.randn(300, 64, generator=gen)  # past the dense fallback threshold too
    y_fp32 = model(x)
    rep = tersor.quantize_(model, tersor.W8A8Config())
    assert [r.scheme for r in rep.layers] == ["unstructured+w8a8"] * 2
    assert "dense W8A8 from 1 rows" in rep.layers[0].reason  # 75%: int8 sparse never pays
    layer = model[0]
    assert (layer.dense_weight() != 0).sum() <= int(0.25 * 64 * 96) + 1
    y = model(x)
    assert (y - y_fp32).norm() <= 0.05 * y_fp32.norm()
    # the dense W8A8 fallback computes exactly what the sparse int8 kernel does
    layer.set_dense_fallback(None)
    sparse_out = layer(x[:7])
    layer.set_dense_fallback(1)
    assert torch.equal(layer(x[:7]), sparse_out)
    fresh = nn.Sequential(
        CsrLinear(64, 96, scheme="unstructured+w8a8"),
        nn.ReLU(),
        CsrLinear(96, 10, scheme="unstructured+w8a8"),
    )
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x), y)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(fresh, fullgraph=True)(x[:5]), y[:5])


def test_wanda_calibration_may_be_a_callable():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    a, b = nn.Sequential(nn.Linear(32, 16)), nn.Sequential(nn.Linear(32, 16))
    b.load_state_dict(a.state_dict())
    tersor.sparsify_(a, tersor.SparseConfig(0.8, dense_below=0.0), calibration=x)
    tersor.sparsify_(b, tersor.SparseConfig(0.8, dense_below=0.0), calibration=lambda m: m(x))
    assert torch.equal(a[0].dense_weight(), b[0].dense_weight())


def _csr_whole(w):
    """The plain CSR of a dense weight: torch's nonzero over the whole of it."""
    nz = w.nonzero()
    rowptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(nz[:, 0], minlength=w.shape[0]).cumsum(0)
    return rowptr, nz[:, 1].to(torch.int32), w[w != 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_blocked_prune_csr_ell_and_int8_values_equal_the_whole_ones(monkeypatch, gen, dtype):
    """sparsify_ prunes straight into CSR a row block at a time, packs ELL and takes int8
    values a row block at a time: the same arrays as the whole-weight computations, bf16
    weights as their fp32 widening."""
    from tersor.formats import base
    from tersor.formats.sparse_csr import CsrFormat

    w = torch.randn(70, 45, generator=gen).to(dtype)
    w[3, :9] = 0.0
    w[5, :7] = 0.25  # ties at the threshold
    whole = prune_unstructured(w.float(), 0.6)
    model = nn.Sequential(nn.Linear(45, 70, bias=False, dtype=dtype))
    with torch.no_grad():
        model[0].weight.copy_(w)
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 3 * 45)  # blocks of 3 rows
    assert torch.equal(prune_unstructured(w, 0.6), whole)
    tersor.sparsify_(model, tersor.SparseConfig(0.6, dense_fallback=False, dense_below=0.5))
    layer = model[0].fmt
    for got, want in zip((layer.rowptr, layer.col, layer.val), _csr_whole(whole)):
        assert torch.equal(got, want)
    assert torch.equal(layer.dense_weight(), whole)
    ref = CsrFormat(*_csr_whole(whole), 70, 45)  # packed in one block
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 1 << 22)
    for name in ("ell_val", "ell_col", "ell_cnt", "ell_off", "perm"):
        assert torch.equal(getattr(layer, name), getattr(ref, name)), name
    q, s = quantize_per_channel_int8(whole)
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 3 * 45)
    tersor.quantize_(model, tersor.W8A8Config())
    got = model[0].fmt
    assert torch.equal(got.val, q[whole != 0]) and torch.equal(got.scale[:70], s)


def test_ell_columns_past_int16(gen):
    """Columns >= 32768 go through int16 storage and come back as uint16 unchanged."""
    n, k = 5, 40000
    w = torch.zeros(n, k)
    cols = torch.tensor([0, 32767, 32768, 39999])
    w[:, cols] = torch.randn(n, 4, generator=gen)
    p = pack_csr(*to_csr(w), n, k)
    assert sorted(p.ell_col[p.ell_col.to(torch.int32) > 0].to(torch.int32).unique().tolist()) == [
        32767,
        32768,
        39999,
    ]
    x = torch.randn(3, k, generator=gen)
    args = (p.rowptr, p.col, p.val, p.ell_val, p.ell_col, p.ell_cnt, p.ell_off, p.perm)
    torch.testing.assert_close(spmm_csr(x, *args, None, None, n), x @ w.t())
