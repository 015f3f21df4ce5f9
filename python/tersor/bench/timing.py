"""Side-by-side timing: implementations interleaved in rounds, medians, machine ceilings."""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings

import torch

# An untimed pause before each block of calls (time_interleaved), so no thread pool spins into
# the next implementation's block (below), then untimed calls for WARM_S at least.
POOL_QUIET_S = 0.05
WARM_S = 0.03


def time_interleaved(
    fns: dict,
    x,
    rounds: int = 9,
    target_s: float = 0.02,
    gap_s: float = POOL_QUIET_S,
    warm_s: float = WARM_S,
) -> dict:
    """Median seconds per call of each fn(x, i), measured in alternating blocks of calls.

    Blocks (not single calls) alternate so each implementation's thread pool is warm for its own
    calls, while slow drifts of this shared machine hit every implementation alike. gap_s: an
    untimed pause before each block, long enough for the previous implementation's thread pool
    to stop spinning (OpenVINO's TBB workers spin on after a call returns and took a core from
    the next implementation's threads: tersor's ResNet-18 at batch 1 timed 27 ms after
    OpenVINO's calls, 15.5 ms after torch.ao's, in one interleaved run on 2 cores; a 2048x512
    layer at 32 rows: tersor W8A8 589 us after OpenVINO's fp32-activation calls, 515 us with
    the pause, Zen 3). After the pause untimed calls run for warm_s (one at least): without
    them the first call of a block woke the sleeping threads (and vCPUs), and a 2048x512 layer
    at one row read 0.2-5 ms per call in some runs instead of 0.08. One call was not always
    enough: after OpenVINO's blocks (its 64 threads of 32 compiled copies), the next
    implementation's first 2-3 calls of a 4096x4096 layer at 128 rows (7 ms each) took 10-13 ms
    whatever the pause (0.05-1 s; AMX Xeon, family 6 model 167), and with one call a block
    that implementation timed 1.6x slow in whichever block followed OpenVINO's.

    Every call is timed on its own and the median over all of an implementation's calls is its
    time. The median of block means it replaced let one stall of the host (a 2-5 ms pause every
    few seconds on the Zen 5 VM) decide a small layer's figure: calls of 8-17 us (medians over
    3000 back-to-back calls: tersor, torch int4pack) read 80 us in whichever block met a stall,
    a different implementation in each run.
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
    clock = time.perf_counter
    for _ in range(rounds):
        for name, fn in fns.items():
            n = calls[name]
            if gap_s:  # then calls untimed: its threads (and this VM's idle vCPUs) wake up
                time.sleep(gap_s)
                t_end = clock() + warm_s
                while True:
                    fn(x, counters[name])
                    counters[name] += 1
                    if clock() >= t_end:
                        break
            got = samples[name]
            for _ in range(n):
                t0 = clock()
                fn(x, counters[name])
                got.append(clock() - t0)
                counters[name] += 1
    return {name: statistics.median(s) for name, s in samples.items()}


def bandwidth_buffer(nbytes: int = 1 << 30) -> torch.Tensor:
    """The probe's buffer, in the pages our packed weights use (formats/huge_pages.py: 2 MiB
    where the host grants them): with 4 KiB pages the probe read ~6% slower on Zen 3 than the
    weights can stream, and the floor would flatter the kernels by that much."""
    from tersor.formats import huge_pages

    return huge_pages.empty((nbytes // 4,), torch.float32).fill_(1.0)


def measure_bandwidth(nbytes: int = 1 << 30, buf=None) -> float:
    """Read bandwidth (bytes/s) of a streaming reduction over a buffer 3x the L3 (``buf``: one
    from an earlier call, for probes in a loop)."""
    buf = bandwidth_buffer(nbytes) if buf is None else buf
    nbytes = buf.numel() * 4
    buf.sum()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def measure_compute_peak() -> float:
    """The best multiply-add rate torch reaches here (ops/s, 2 per MAC), on a compute-bound
    shape: torch._int_mm (oneDNN int8: VNNI / AMX) or fp32 torch.mm, whichever is faster. On a
    CPU without VNNI torch._int_mm falls back to a slow loop (1 GOP/s on Zen 3), and the fp32
    GEMM is the roof that matters."""

    def rate(fn, a, b):
        # the fastest of five calls: one run's mean read 114 GOP/s on Zen 3 where the same
        # probe reads 171-175 a minute later, and a low peak flatters every compute-bound cell
        fn(a, b)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            fn(a, b)
            best = min(best, time.perf_counter() - t0)
        return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best

    fp32 = rate(torch.mm, torch.randn(512, 4096), torch.randn(4096, 4096))
    if not has_vnni():
        return fp32
    a = torch.randint(-127, 127, (512, 4096), dtype=torch.int8)
    b = torch.randint(-127, 127, (4096, 4096), dtype=torch.int8)
    return max(fp32, rate(torch._int_mm, a, b))


def has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI (int8 dot products without int16 saturation)."""
    import tersor

    return bool(tersor.cpu_info()["features"].get("avx512vnni"))


@contextlib.contextmanager
def quiet_baselines():
    """A warnings context for the CLI runs: torch.ao (deprecated upstream in favour of torchao)
    and torch's beta sparse formats warn on every use, and they are the *baselines* here; their
    warnings would bury the tables. Our own warnings still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*")
        warnings.filterwarnings("ignore", module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r"Sparse (CSR|BSR) tensor support is in beta")
        yield
