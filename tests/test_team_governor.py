"""The thread governor (csrc/common/team_governor.h): kernels give up threads while other work
keeps the cores busy, and take them back when it has gone.

Its decisions are tested on a governor of its own, on made-up times and switch counts; that the
kernels ask it, on the real one. That a decode beside a busy process really gets faster is
shown by ``python -m tersor.bench --family busy`` (timing, not a unit test)."""

import subprocess
import sys
import time

import pytest
import torch

import tersor
from tersor import _C

G = _C.TeamGovernor
MS = 1_000_000


class Clock:
    """Kernel calls every millisecond on a governor, with the process's involuntary context
    switches growing at `rate` per second."""

    def __init__(self, g):
        self.g, self.t, self.switches = g, 0, 0.0

    def run(self, ns, rate, requested=2):
        """Calls for `ns`; returns the team sizes they got."""
        sizes = []
        for _ in range(ns // MS):
            self.t += MS
            self.switches += rate / 1000
            self.g.set_switches(int(self.switches))
            sizes.append(self.g.size_at(requested, self.t))
        return sizes


CALM, BUSY = 30, 200  # switches / s decoding on 2 threads, idle cores / one busy process (Zen 3)


def test_calm_cores_keep_every_thread():
    g = G()
    sizes = Clock(g).run(10 * G.WINDOW_NS, CALM)
    s = g.stats()
    assert set(sizes) == {2} and s["windows"] >= 9 and s["cuts"] == 0
    assert s["regions"] == len(sizes) and 20 < s["switches_per_s"] < 40


def one_thread_stretches(sizes):
    """Lengths (calls) of the stretches on one thread that ended within `sizes`."""
    runs, n = [], 0
    for s in sizes:
        if s == 1:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_busy_cores_give_up_a_thread_then_try_it_again():
    g = G()
    c = Clock(g)
    assert set(c.run(G.WINDOW_NS, BUSY)) == {2}  # judged at the window's end
    # given up for the back-off, tried for a window: the load is still there, so given up
    # again, and the next try waits twice as long
    sizes = c.run(2 * G.WINDOW_NS + 3 * G.BACKOFF_MIN_NS, BUSY)
    assert one_thread_stretches(sizes) == [G.BACKOFF_MIN_NS // MS, 2 * G.BACKOFF_MIN_NS // MS]
    assert g.stats()["cuts"] == 2 and g.stats()["tries"] == 2
    # the load goes as that try's window ends (it is still judged busy): the try after keeps
    # its thread
    sizes = c.run(10 * G.WINDOW_NS, CALM)
    assert one_thread_stretches(sizes) == [4 * G.BACKOFF_MIN_NS // MS]
    assert sizes[-1] == 2 and g.stats()["threads_given_up"] == 0
    assert g.stats()["cuts"] == 3 and g.stats()["tries"] == 3


def test_switches_without_another_process_keep_every_thread():
    """Threads of this process preempting each other (a tokenizer pool spinning after its batch)
    count as switches too; with no other process's thread waiting to run when a window is
    judged, no thread is given up. One waiting: the switches decide again."""
    g = G()
    g.set_others_runnable(0)
    c = Clock(g)
    assert set(c.run(10 * G.WINDOW_NS, BUSY)) == {2}
    s = g.stats()
    assert s["cuts"] == 0 and s["windows"] >= 9 and s["others_runnable"] == 0
    g.set_others_runnable(1)
    sizes = c.run(2 * G.WINDOW_NS, BUSY)
    assert 1 in sizes and g.stats()["cuts"] >= 1 and g.stats()["others_runnable"] == 1


def test_others_runnable_sees_a_busy_process():
    """The real count (/proc): a busy-looping child process is seen waiting or running."""
    if _C.others_runnable() < 0:
        pytest.skip("/proc/loadavg or /proc/self/task cannot be read here")
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        seen = []
        for _ in range(100):  # up to ~1 s: the child may not have started yet
            seen.append(_C.others_runnable())
            if seen[-1] >= 1:
                break
            time.sleep(0.01)
        assert max(seen) >= 1, seen
    finally:
        child.kill()
        child.wait()


def test_back_off_grows_to_its_limit_and_is_forgotten():
    g = G()
    c = Clock(g)
    runs = one_thread_stretches(c.run(8 * G.BACKOFF_MAX_NS, BUSY))
    assert runs[0] == G.BACKOFF_MIN_NS // MS
    assert runs == sorted(runs) and runs[-1] == G.BACKOFF_MAX_NS // MS
    # every thread and no switches for longer than FORGET_NS: back to the shortest back-off
    c.run(G.BACKOFF_MAX_NS + G.FORGET_NS + 2 * G.WINDOW_NS, 0)
    assert g.stats()["threads_given_up"] == 0
    runs = one_thread_stretches(c.run(2 * G.WINDOW_NS + G.BACKOFF_MIN_NS, BUSY))
    assert runs == [G.BACKOFF_MIN_NS // MS]


def test_steps_down_one_thread_at_a_time_never_below_one():
    g = G()
    c = Clock(g)
    sizes = c.run(4 * G.WINDOW_NS, 10 * BUSY, requested=4)
    assert sizes[0] == 4 and sorted(set(sizes), reverse=True) == [4, 3, 2, 1]
    assert g.stats()["threads_given_up"] == 3
    assert g.size_at(2, c.t) == 1 and g.size_at(1, c.t) == 1 and g.size_at(0, c.t) == 1


def test_disabled_governor_gives_what_is_asked():
    g = G()
    c = Clock(g)
    c.run(G.WINDOW_NS + MS, BUSY)
    assert g.size_at(2, c.t) == 1
    g.set_enabled(False)  # gives back every thread, and counts nothing
    assert set(c.run(5 * G.WINDOW_NS, BUSY)) == {2} and g.stats()["adaptive"] is False
    g.set_enabled(True)
    assert g.size_at(8, c.t) == 8


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
def test_kernels_ask_the_governor(isa, scheme, rows):
    """Every ISA path's regions take their size from the governor."""
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


# ---- parallel_team (common/parallel.h): a team of one runs without an OpenMP region ----------


def test_team_of_one_runs_on_the_calling_thread_without_a_region():
    """A region of one thread costs ~1 us in GNU OpenMP (a team allocated and freed, a futex
    wake per barrier), so parallel_team(1) calls its body directly: nesting level 0, and the
    body's `omp for` still runs every item (here 37, no whole number per thread)."""
    assert _C.parallel_team_probe(1, 1, 37) == [[0, 1, 37]]
    assert _C.parallel_team_probe(0, 1, 5) == [[0, 1, 5]]
    level, size, ran = _C.parallel_team_probe(2, 1, 37)[0]
    assert level == 1 and size in (1, 2) and ran == 37  # a real region of up to two threads


@pytest.mark.parametrize("nt", [1, 2])
def test_team_inside_an_active_team_keeps_a_region_of_its_own(nt):
    """Called by each thread of a caller's active team, the body's worksharing must bind to a
    team of its own (not the caller's, which would split the items between the callers):
    every caller runs all 37 items."""
    seen = _C.parallel_team_probe(nt, 2, 37)
    assert len(seen) == 2
    for level, size, ran in seen:
        assert level == 2 and size == 1 and ran == 37, seen
