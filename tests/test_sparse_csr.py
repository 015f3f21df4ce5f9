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


@pytest.mark.parametrize("m", [1, 2, 3, 7, 33])
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 0.9, 1.0])
@pytest.mark.parametrize("k,n", [(1, 1), (37, 33), (130, 70)])
def test_spmm_csr_every_isa(isa, m, sparsity, k, n, gen, c_ref):
    w = torch.randn(n, k, generator=gen)
    w = prune_unstructured(w, sparsity) if 0 < sparsity < 1 else w * (sparsity == 0.0)
    w[n // 2] = 0.0  # an all-zero output channel
    x = torch.randn(m, k + 2, generator=gen)[:, 1:1 + k]  # strided rows
    b = torch.randn(n, generator=gen)
    args = packed(w)
    y = spmm_csr(x, *args, b, n)
    assert torch.equal(y, c_ref(lambda: spmm_csr(x.contiguous(), *args, b, n)))
    y64 = x.double() @ w.double().t() + b.double()
    assert (y.double() - y64).abs().max() <= 1e-5 * (y64.abs().max() + 1)


def test_opcheck_and_errors(gen):
    w = prune_unstructured(torch.randn(20, 37, generator=gen), 0.8)
    args = packed(w)
    x = torch.randn(4, 37, generator=gen)
    torch.library.opcheck(spmm_csr, (x, *args, None, 20))
    with pytest.raises(ValueError, match="column indices exceed in_features=30"):
        spmm_csr(torch.randn(4, 30), *args, None, 20)
    with pytest.raises(ValueError, match="sparsity must lie in"):
        tersor.SparseConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="block-sparse formats are not implemented yet"):
        tersor.SparseConfig(block=(4, 4))
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
