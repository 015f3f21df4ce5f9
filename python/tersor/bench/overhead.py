"""Per-call eager overhead of QLinear above the bare kernel (DESIGN decision 2: <= ~5 us)."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import tersor
from tersor import _C
from tersor.bench.impls import make_linear
from tersor.nn import QLinear


def _median_us(fn, n=2000, rounds=7):
    for _ in range(200):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out)


def measure_overhead(k: int = 384, n: int = 384) -> dict:
    lin = make_linear(k, n)
    q = QLinear.from_float(lin, tersor.W8A8Config())
    x = torch.randn(1, k)
    y = torch.empty(1, n)
    threads = torch.get_num_threads()
    args = (
        x.data_ptr(),
        1,
        k,
        k,
        q.fmt.packed.data_ptr(),
        q.fmt.colsum.data_ptr(),
        q.fmt.scale.data_ptr(),
        n,
        q.bias.data_ptr(),
        y.data_ptr(),
        n,
        threads,
    )
    kernel = _median_us(lambda: _C.gemm_w8a8(*args))
    qlin = _median_us(lambda: q(x))
    flin = _median_us(lambda: F.linear(x, lin.weight, lin.bias))
    return dict(qlinear_us=qlin, kernel_us=kernel, overhead_us=qlin - kernel, flinear_us=flin)
