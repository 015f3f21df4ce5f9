"""The thread governor (csrc/common/team_governor.h): kernels give up threads while other work
keeps the cores busy, and take them back when it has gone.

Its decisions are tested on a governor of its own driven with made-up times; the kernels'
reports on the real one. That a busy process beside a decode really gets faster is shown by
``python -m tersor.bench --family busy`` (timing, not a unit test)."""

import pytest
import torch

import tersor
from tersor import _C

G = _C.TeamGovernor
MS = 1_000_000


def balanced(g, t0, n=2, dur=2 * MS):
    """One region of n threads that all finish together; returns its end."""
    g.report(t0, [t0 + dur] * n)
    return t0 + dur


def stalled(g, t0, n=2, dur=1 * MS, late=3 * MS):
    """One region whose last thread finishes `late` after the others (it was off the CPU)."""
    g.report(t0, [t0 + dur] * (n - 1) + [t0 + dur + late])
    return t0 + dur + late


def run(g, region, t, until, **kw):
    while t < until:
        t = region(g, t, **kw)
    return t


def one_window(g, region, t, **kw):
    """Regions until the governor decides once; returns the time of that decision."""
    windows = g.stats()["windows"]
    while g.stats()["windows"] == windows:
        t = region(g, t, **kw)
    return t


def test_balanced_regions_keep_every_thread():
    g = G()
    t = run(g, balanced, 0, 10 * G.WINDOW_NS)
    s = g.stats()
    assert s["windows"] >= 9 and s["regions"] >= 90 and s["stalled_regions"] == 0
    assert s["cuts"] == 0 and g.size_at(2, t) == 2 and g.size_at(8, t) == 8


def test_uneven_split_is_not_a_stall():
    """A static split of 3 chunks over 2 threads ends one thread at twice the other's time."""
    g = G()
    t = 0
    while t < 5 * G.WINDOW_NS:
        g.report(t, [t + MS, t + 2 * MS])
        t += 2 * MS
    assert g.stats()["stalled_regions"] == 0 and g.size_at(2, t) == 2


def test_short_late_start_is_not_a_stall():
    """A worker woken from sleep starts tens of microseconds late: under STALL_NS, not a stall."""
    g = G()
    t = 0
    while t < 5 * G.WINDOW_NS:
        g.report(t, [t + 10_000, t + 10_000 + G.STALL_NS - 1000])
        t += 200_000
    assert g.stats()["stalled_regions"] == 0 and g.size_at(2, t) == 2


def test_stalls_give_up_a_thread_then_try_it_again():
    g = G()
    t = one_window(g, stalled, 0)
    assert g.stats()["cuts"] == 1
    assert g.size_at(2, t) == 1  # within the back-off
    assert g.size_at(2, t + G.BACKOFF_MIN_NS - 1) == 1
    t += G.BACKOFF_MIN_NS
    assert g.size_at(2, t) == 2  # the try
    assert g.stats()["tries"] == 1
    # the try stalls: the thread goes again, and the next try waits twice as long
    t = one_window(g, stalled, t)
    assert g.stats()["cuts"] == 2
    assert g.size_at(2, t + 2 * G.BACKOFF_MIN_NS - 1) == 1
    t += 2 * G.BACKOFF_MIN_NS
    assert g.size_at(2, t) == 2
    # the load has gone: the try passes and every thread stays
    t = run(g, balanced, t, t + 3 * G.WINDOW_NS)
    assert g.size_at(2, t) == 2 and g.stats()["threads_given_up"] == 0


def test_back_off_grows_to_its_limit_and_is_forgotten():
    g = G()
    t, waits = 0, []
    for _ in range(8):  # lasting load: every try stalls
        t = one_window(g, stalled, t)
        start = t
        while g.size_at(2, t) == 1:
            t += G.BACKOFF_MIN_NS // 4
        waits.append(t - start)
    assert waits[0] <= G.BACKOFF_MIN_NS + G.BACKOFF_MIN_NS // 4
    assert waits == sorted(waits) and G.BACKOFF_MAX_NS <= waits[-1] <= G.BACKOFF_MAX_NS * 1.2
    # calm for longer than the forget time with every thread: back to the shortest back-off
    t = run(g, balanced, t, t + 2 * G.BACKOFF_MAX_NS)
    t = one_window(g, stalled, t)
    assert g.size_at(2, t + G.BACKOFF_MIN_NS) == 2


def test_steps_down_one_thread_at_a_time_never_below_one():
    g = G()
    t = 0
    for n in (4, 3, 2):
        assert g.size_at(4, t) == n
        t = one_window(g, stalled, t, n=n)
    assert g.size_at(4, t) == 1 and g.stats()["threads_given_up"] == 3
    assert g.size_at(2, t) == 1 and g.size_at(1, t) == 1 and g.size_at(0, t) == 1


def test_disabled_governor_gives_what_is_asked():
    g = G()
    t = one_window(g, stalled, 0)
    assert g.size_at(2, t) == 1
    g.set_enabled(False)  # gives back every thread, and ignores reports
    t = run(g, stalled, 0, 3 * G.WINDOW_NS)
    assert g.size_at(2, t) == 2 and g.stats()["adaptive"] is False
    g.set_enabled(True)
    assert g.size_at(2, t) == 2


def test_public_switch_and_cpu_info():
    was = tersor.set_adaptive_threads(False)
    try:
        info = tersor.cpu_info()
        assert info["adaptive_threads"] is False and info["threads_given_up"] == 0
        assert tersor.set_adaptive_threads(True) is False
        assert tersor.cpu_info()["adaptive_threads"] is True
    finally:
        tersor.set_adaptive_threads(was)


CONFIGS = {
    "w8a8": lambda: tersor.W8A8Config(),
    "w4a8": lambda: tersor.W4A8Config(group_size=32),
    "w4": lambda: tersor.W4Config(group_size=128),
    "w8": lambda: tersor.W8Config(),
}


@pytest.mark.parametrize("scheme", sorted(CONFIGS))
@pytest.mark.parametrize("rows", [1, 33])
def test_kernels_report_their_regions(isa, scheme, rows):
    """Every ISA path's GEMM regions report to the governor (the portable ref does not: it is
    the oracle, not a path for speed)."""
    if isa == "ref":
        pytest.skip("the portable path's regions are not timed")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 384))
    tersor.quantize_(model, CONFIGS[scheme](), progress=False)
    x = torch.randn(rows, 512)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    was = tersor.set_adaptive_threads(True)
    try:
        before = _C.team_stats()["regions"]
        model(x)
        after = _C.team_stats()["regions"]
    finally:
        torch.set_num_threads(threads)
        tersor.set_adaptive_threads(was)
    assert after > before
