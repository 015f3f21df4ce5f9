"""Block-sparse fp32 (16 x 1 blocks) and int8 (16 x 4): format, pruner, every ISA path against
the C ref (bit for bit), the dense product on the pruned weight (fp32) and the exact integer
dot product (int8), the module, sparsify_ / quantize_."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tersor.formats.int8 import quantize_per_channel_int8
from tersor.formats.sparse_block import (
    check_block,
    pack_block_f32,
    pack_block_int8,
    prune_block,
    unpack_block,
)
from tersor.ops.spmm_block import spmm_block
from tersor.ref import quantize_rows_ref

SHAPES_KN = [(1, 1), (3, 5), (37, 33), (130, 70), (257, 49)]
DENSITIES = [0.0, 0.35, 1.0]


def pruned(n, k, density, gen, block=(1, 1)):
    w = torch.randn(n, k, generator=gen)
    if density == 1.0:
        return w
    if density == 0.0:
        w[: n // 2] = 0  # all-zero panels beside dense ones
        return w
    return prune_block(w, 1 - density, block)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 41), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = prune_block(torch.randn(n, k, generator=g), 0.6, (1, 1))
    p = pack_block_f32(w)
    assert torch.equal(unpack_block(p.ptr, p.kidx, p.values, n, k), w)
    q, s = quantize_per_channel_int8(w)
    p8 = pack_block_int8(q, s)
    assert torch.equal(unpack_block(p8.ptr, p8.kidx, p8.values, n, k), q)


def test_pruner_reaches_the_block_sparsity(gen):
    w = prune_block(torch.randn(64, 96, generator=gen), 0.75, (16, 4))
    blocks = (w.view(4, 16, 24, 4) != 0).any(3).any(1)
    assert int(blocks.sum()) == 24  # exactly 25% of the 96 blocks kept
    assert float((w == 0).float().mean()) == 0.75
    with pytest.raises(ValueError, match=r"block \(16, 5\) does not divide the weight \[64, 96\]"):
        check_block((16, 5), 64, 96)


@pytest.mark.parametrize("m", [1, 2, 7, 33])
@pytest.mark.parametrize("k,n", SHAPES_KN)
@pytest.mark.parametrize("density", DENSITIES)
def test_spmm_block_f32_every_isa(isa, m, k, n, density, gen, c_ref):
    w = pruned(n, k, density, gen)
    p = pack_block_f32(w)
    x = torch.randn(m, k + 3, generator=gen)[:, 1 : 1 + k]
    b = torch.randn(n, generator=gen)
    args = (p.ptr, p.kidx, p.values, None, None, b, n)
    y = spmm_block(x, *args)
    assert torch.equal(y, c_ref(lambda: spmm_block(x.contiguous(), *args)))
    y64 = x.double() @ w.double().t() + b.double()
    assert (y.double() - y64).abs().max() <= 1e-5 * (y64.abs().max() + 1)


@pytest.mark.parametrize("m", [1, 2, 7, 33])
@pytest.mark.parametrize("k,n", SHAPES_KN)
@pytest.mark.parametrize("density", DENSITIES)
def test_spmm_block_w8a8_every_isa_exact(isa, m, k, n, density, gen, c_ref):
    q, s = quantize_per_channel_int8(
        pruned(n, k, density, gen, block=(1, 4) if k % 4 == 0 else (1, 1))
    )
    p = pack_block_int8(q, s)
    x = (torch.randn(m, k + 3, generator=gen) * 3)[:, 1 : 1 + k]
    b = torch.randn(n, generator=gen)
    args = (p.ptr, p.kidx, p.values, p.colsum, p.scale)
    y = spmm_block(x, *args, b, n)
    assert torch.equal(y, c_ref(lambda: spmm_block(x.contiguous(), *args, b, n)))
    y0 = spmm_block(x, *args, None, n)
    qx, sx = quantize_rows_ref(x)
    acc = qx.double() @ q.double().t()
    assert torch.equal(y0, (acc * (sx[:, None] * s[None, :]).double()).float())


def test_opcheck_and_errors(gen):
    p = pack_block_f32(prune_block(torch.randn(20, 24, generator=gen), 0.5, (4, 4)))
    x = torch.randn(3, 24, generator=gen)
    torch.library.opcheck(spmm_block, (x, p.ptr, p.kidx, p.values, None, None, None, 20))
    with pytest.raises(ValueError, match=r"ptr must be int64 \[3\]"):
        spmm_block(x, p.ptr[:2], p.kidx, p.values, None, None, None, 20)
    with pytest.raises(ValueError, match="block indices exceed in_features=8"):
        spmm_block(torch.randn(3, 8), p.ptr, p.kidx, p.values, None, None, None, 20)


def test_global_block_scope_is_one_threshold_over_the_layers():
    """scope="global": one threshold over every layer's (16, 4) block sums, so the layer of
    small weights loses more blocks; exactly `sparsity` of all blocks go, the survivors are
    the largest sums (computed here from the whole weights)."""
    from torch import nn

    import tersor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 64))
    with torch.no_grad():
        model[1].weight.mul_(0.2)
    sums = [
        m.weight.detach().abs().view(m.out_features // 16, 16, -1, 4).sum((1, 3)) for m in model
    ]
    everything = torch.cat([s.flatten() for s in sums])
    thr = everything.sort().values[int(round(0.6 * everything.numel())) - 1]
    tersor.sparsify_(
        model, tersor.SparseConfig(0.6, block=(16, 4), scope="global", dense_below=0.0)
    )
    kept = [
        (m.dequantized_weight().view(m.out_features // 16, 16, -1, 4) != 0).any(3).any(1)
        for m in model
    ]
    assert sum(int(k.sum()) for k in kept) == everything.numel() - int(
        round(0.6 * everything.numel())
    )
    for k, s in zip(kept, sums):
        assert torch.equal(k, s > thr)
    assert float(kept[1].float().mean()) < float(kept[0].float().mean())
