"""Kernel choice off the CPU (DESIGN: one op per family, dispatch by device).

On a CUDA tensor each family runs, in order of preference,
    "cuda"   the compiled extension tersor._C_cuda (built with TERSOR_CUDA, sm_80+)
    "triton" the Triton kernels (tersor.triton_kernels)
    "ref"    the torch reference (exact, slow)
and a layer's ``kernel=`` ("auto", "native", "cuda", "triton", "ref") narrows the choice: a
requested kernel that cannot run is an error naming the op (the layer adds its name) and the
reason, never a silent
fallback. "triton" also runs on CPU tensors under TRITON_INTERPRET=1 (how CI tests this path).

The ops' device path (ops/gpu.py) hands the GPU kernels forms built from the canonical
weights, once per packed tensor (``gpu.forms``): int8 [N, K]; int4 nibbles [N, K/2] + fp16
scales [N, K/G] + zeros; the CUDA W4 kernel's fragment-shuffled words (formats/int4.py
``shuffle_w4_mma``).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

CUDA_MIN_ARCH = (8, 0)  # mma.sync int8 / fp16 and cp.async


@functools.lru_cache(maxsize=1)
def cuda_extension():
    """(module, "") or (None, why): tersor._C_cuda is optional and loaded on first use."""
    try:
        return importlib.import_module("tersor._C_cuda"), ""
    except ImportError as e:
        return None, (
            f"the CUDA extension is not built ({e}); rebuild with "
            f"CMAKE_ARGS=-DTERSOR_CUDA=on where nvcc is installed"
        )


def cuda_unavailable(x: torch.Tensor) -> str:
    if not x.is_cuda:
        return "the input is not a CUDA tensor"
    ext, why = cuda_extension()
    if ext is None:
        return why
    cap = torch.cuda.get_device_capability(x.device)
    if cap < CUDA_MIN_ARCH:
        return f"compute capability {cap} < {CUDA_MIN_ARCH} (mma.sync / cp.async)"
    return ""


def triton_unavailable(x: torch.Tensor) -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    return ""


def pick(pref: str, x: torch.Tensor, has: tuple, what: str) -> str:
    """The kernel a device call runs: the first of `has` (the family's kernels among "cuda",
    "triton") that `pref` allows and that can run on x, else "ref"."""
    if pref == "ref":
        return "ref"
    order = {
        "auto": ("cuda", "triton"),
        "native": ("cuda",),
        "cuda": ("cuda",),
        "triton": ("triton",),
    }[pref]
    reasons = []
    for k in order:
        if k not in has:
            reasons.append(f"no {k} kernel for this scheme")
            continue
        why = cuda_unavailable(x) if k == "cuda" else triton_unavailable(x)
        if not why:
            return k
        reasons.append(f"{k}: {why}")
    if pref != "auto":
        raise RuntimeError(f"{what}: kernel={pref!r} cannot run here ({'; '.join(reasons)})")
    return "ref"


def stream_of(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
