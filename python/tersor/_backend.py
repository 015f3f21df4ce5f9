"""Loads the native module and tells which CPU paths exist.

torch is imported first on purpose: its wheel ships ``libgomp.so.1``, and loading it before
``tersor._C`` makes our OpenMP regions share torch's runtime instead of starting a second one.
"""

from __future__ import annotations

import os

import torch

from tersor import _C

ISAS = tuple(_C.ISAS)  # worst to best; the one list lives in csrc/common/cpu_features.h


def cpu_info() -> dict:
    """CPU vendor and features detected (CPUID + XCR0), ISA paths available, and the active one.

    ``TERSOR_CPU_ISA`` (``auto`` or one of ``ISAS``) is read on every kernel call, so it can be
    changed at run time (tests force each path that way).
    """
    info = dict(_C.cpu_info())
    info["override"] = os.environ.get("TERSOR_CPU_ISA", "auto")
    info["threads"] = torch.get_num_threads()
    team = _C.team_stats()
    info["adaptive_threads"] = team["adaptive"]
    info["threads_given_up"] = team["threads_given_up"]
    return info


def set_adaptive_threads(enabled: bool) -> bool:
    """Whether tersor's kernels may run on fewer threads than ``torch.get_num_threads()`` while
    other work keeps the cores busy; returns the previous setting. On by default
    (``TERSOR_ADAPTIVE_THREADS=0`` turns it off at start-up).

    A kernel's threads share its work statically and meet at its end, so one thread that the OS
    takes off a busy core stalls every call. While kernels run on more than one thread, the
    process's involuntary context switches are counted over 100 ms windows; above 100 per
    second a thread is given up, and tried again after 0.1-1.6 s (csrc/common/team_governor.h).
    Results do not depend on it. ``cpu_info()["threads_given_up"]`` says how many are given up
    now.
    """
    return bool(_C.set_adaptive_threads(bool(enabled)))


def available_isas() -> list[str]:
    return list(_C.cpu_info()["available"])
