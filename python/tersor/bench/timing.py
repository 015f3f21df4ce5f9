"""Side-by-side timing: implementations interleaved in rounds, medians, machine ceilings."""
from __future__ import annotations

import statistics
import time

import torch


def time_interleaved(fns: dict, x, rounds: int = 9, target_s: float = 0.02) -> dict:
    """Median seconds per call of each fn(x, i), measured in alternating blocks of calls.

    Blocks (not single calls) alternate so each implementation's thread pool is warm for its own
    calls, while slow drifts of this shared machine hit every implementation alike.
    """
    counters = {name: 0 for name in fns}
    calls = {}
    for name, fn in fns.items():  # warm up and size the blocks
        t0 = time.perf_counter()
        fn(x, counters[name])
        counters[name] += 1
        single = time.perf_counter() - t0
        calls[name] = max(1, min(64, int(target_s / max(single, 1e-7))))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = calls[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn(x, counters[name])
                counters[name] += 1
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure_bandwidth(nbytes: int = 1 << 30) -> float:
    """Read bandwidth (bytes/s) of a streaming reduction over a buffer 3x the L3."""
    buf = torch.ones(nbytes // 4)
    buf.sum()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def measure_int8_peak() -> float:
    """int8 ops/s of torch._int_mm (oneDNN VNNI) on a compute-bound shape."""
    a = torch.randint(-127, 127, (512, 4096), dtype=torch.int8)
    b = torch.randint(-127, 127, (4096, 4096), dtype=torch.int8)
    torch._int_mm(a, b)
    t0 = time.perf_counter()
    for _ in range(3):
        torch._int_mm(a, b)
    return 3 * 2 * 512 * 4096 * 4096 / (time.perf_counter() - t0)
