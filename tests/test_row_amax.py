"""row_amax: the int8-activation kernels' floor under each row's amax (a tensor-parallel
shard quantizes its slice of a row with the whole row's scale, tersor/distributed/). Every
A8 format, every ISA path bit for bit with the C ref; the exact rule on the dense kernel."""

import pytest
import torch
from torch import nn

import tp_workers
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8
from tersor.ops.gemm_w8a8 import gemm_w8a8_cpu
from tersor.ref import quantize_rows_ref

A8 = (
    "w8a8",
    "w4a8",
    "w8a8-input-scale",
    "w4a8-input-scale",
    "2:4+w8a8",
    "unstructured+w8a8",
    "block+w8a8",
)
K_OF = {"w8a8": 37, "w4a8": 96, "2:4+w8a8": 38, "unstructured+w8a8": 37, "block+w8a8": 36}


def _layer(scheme, gen):
    k = K_OF[scheme.split("-")[0]]
    torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=gen)))
    return tp_workers.compress(nn.Linear(k, 40), scheme, seed=5)


def _own_amax(fmt, x):
    xs = fmt.input_scale
    return (x if xs is None else x * xs).abs().amax(dim=-1)


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("scheme", A8)
def test_row_amax_every_isa_matches_ref(isa, scheme, m, gen, c_ref):
    layer = _layer(scheme, gen)
    fmt, bias = layer.fmt, layer.bias
    x = torch.randn(m, fmt.in_features, generator=gen) * 3
    floor = _own_amax(fmt, x) * (1 + torch.rand(m, generator=gen))
    if m > 1:  # a zero row: its floor alone sets the (unused) scale
        x[m // 2], floor[m // 2] = 0.0, 2.5
    y = fmt.linear(x, bias, "auto", row_amax=floor)
    assert torch.equal(y, c_ref(lambda: fmt.linear(x, bias, "auto", row_amax=floor)))
    plain = fmt.linear(x, bias, "auto")
    assert not torch.equal(y, plain)  # a higher floor changes the codes
    # a floor at or below the row's own amax changes nothing
    low = _own_amax(fmt, x) * 0.5
    assert torch.equal(fmt.linear(x, bias, "auto", row_amax=low), plain)


@pytest.mark.parametrize("m", [1, 7, 33])
def test_gemm_w8a8_row_amax_exact(isa, m, gen):
    """y = fl(acc * fl(sx * sw)), acc the exact integer dot product of the codes quantized
    with amax = max(own amax, floor)."""
    k, n = 70, 33
    x = torch.randn(m, k, generator=gen) * 3
    q, s = quantize_per_channel_int8(torch.randn(n, k, generator=gen))
    p = pack_int8(q, s)
    floor = x.abs().amax(dim=1) * (0.5 + torch.rand(m, generator=gen))  # some rows above
    y = gemm_w8a8_cpu(x, p.packed, p.colsum, p.scale, None, n, row_amax=floor)
    qx, sx = quantize_rows_ref(x, floor)
    expect = ((qx.double() @ q.double().t()) * (sx[:, None] * s[None, :]).double()).float()
    assert torch.equal(y, expect)


def test_row_amax_follows_rows_through_staging(isa, gen):
    """With an input scale the rows are staged (x * s) in blocks of rows (csrc/half_io); each
    block takes its own rows' floors (a K this large makes several blocks)."""
    k, n, m = 32768, 16, 300
    x = torch.randn(m, k, generator=gen) * 2
    xs = torch.rand(k, generator=gen) + 0.5
    q, s = quantize_per_channel_int8(torch.randn(n, k, generator=gen))
    p = pack_int8(q, s)
    floor = (x * xs).abs().amax(dim=1) * (0.5 + torch.rand(m, generator=gen))
    y = gemm_w8a8_cpu(x, p.packed, p.colsum, p.scale, None, n, x_scale=xs, row_amax=floor)
    qx, sx = quantize_rows_ref(x * xs, floor)
    expect = ((qx.double() @ q.double().t()) * (sx[:, None] * s[None, :]).double()).float()
    assert torch.equal(y, expect)


def test_row_amax_is_refused_off_the_native_kernel(gen):
    layer = _layer("w8a8", gen)
    x = torch.randn(2, layer.in_features, generator=gen)
    with pytest.raises(NotImplementedError, match="row_amax is taken by the native CPU kernel"):
        layer.fmt.linear(x, None, "ref", row_amax=x.abs().amax(-1))
