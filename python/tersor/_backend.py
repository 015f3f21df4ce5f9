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
    """Features detected (CPUID + XCR0), ISA paths available, and the active one.

    ``TERSOR_CPU_ISA`` (``auto`` or one of ``ISAS``) is read on every kernel call, so it can be
    changed at run time (tests force each path that way).
    """
    info = dict(_C.cpu_info())
    info["override"] = os.environ.get("TERSOR_CPU_ISA", "auto")
    info["threads"] = torch.get_num_threads()
    return info


def available_isas() -> list[str]:
    return list(_C.cpu_info()["available"])
