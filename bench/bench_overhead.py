"""Per-call eager overhead: QLinear on a 384x384 layer at M = 1, against F.linear and the bare
kernel call (the difference is what tersor's Python layer costs; budget 5 us)."""

import torch
import torch.nn.functional as F

import tersor
from tersor import _C
from tersor.bench.impls import make_linear
from tersor.nn import QLinear


def _setup():
    lin = make_linear(384, 384)
    q = QLinear.from_float(lin, tersor.W8A8Config())
    x = torch.randn(1, 384)
    torch.testing.assert_close(q(x), lin(x), rtol=0.05, atol=0.05)
    return lin, q, x


def bench_overhead_qlinear(benchmark):
    _, q, x = _setup()
    benchmark.group = "overhead 384x384 M=1"
    benchmark(q, x)


def bench_overhead_bare_kernel(benchmark):
    _, q, x = _setup()
    y = torch.empty(1, 384)
    args = (
        x.data_ptr(),
        1,
        384,
        384,
        q.fmt.packed.data_ptr(),
        q.fmt.colsum.data_ptr(),
        q.fmt.scale.data_ptr(),
        384,
        q.bias.data_ptr(),
        y.data_ptr(),
        384,
        torch.get_num_threads(),
    )
    benchmark.group = "overhead 384x384 M=1"
    benchmark(_C.gemm_w8a8, *args)
    torch.testing.assert_close(y, q(x))


def bench_overhead_flinear(benchmark):
    lin, _, x = _setup()
    benchmark.group = "overhead 384x384 M=1"
    benchmark(F.linear, x, lin.weight, lin.bias)
