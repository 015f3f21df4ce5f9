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


def _interleaved_us(fns: dict, n=2000, rounds=15) -> dict:
    """Per-call time of each fn (us): the median over rounds in which every fn runs n calls
    back to back, one after the other. Interleaved, so the drift of a shared machine (the bare
    kernel read 3.3 and 3.8 us a minute apart here) lands on every fn alike; and the gap
    between two of them is the median of the per-round gaps ("gap_us")."""
    for fn in fns.values():
        for _ in range(200):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n * 1e6)
    out = {name: statistics.median(t) for name, t in times.items()}
    out["gap_us"] = statistics.median(a - b for a, b in zip(times["qlinear"], times["kernel"]))
    return out


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
    t = _interleaved_us(
        {
            "kernel": lambda: _C.gemm_w8a8(*args),
            "qlinear": lambda: q(x),
            "flinear": lambda: F.linear(x, lin.weight, lin.bias),
        }
    )
    return dict(
        qlinear_us=t["qlinear"],
        kernel_us=t["kernel"],
        overhead_us=t["gap_us"],
        flinear_us=t["flinear"],
    )
