"""Large packed weights in transparent huge pages (2 MiB), for the kernels that stream them.

A decode step (one row) reads every weight once from DRAM. With 4 KiB pages that stream takes a
TLB miss every 4 KiB (and the hardware prefetchers start over at each page); with 2 MiB pages,
one per 2 MiB. Most Linux hosts run transparent huge pages (THP) in ``madvise`` mode (only
regions that ask get them) and torch's allocator never asks, so the packing loops write the
large tensors into a mapping that does (``empty``), and a format's other large CPU tensors are
copied into one when they are placed (``place``, from ``WeightFormat._finish``):

    mmap (nbytes + 2 MiB, virtual only)
    |<- pad ->|<------------- tensor: whole 2 MiB pages ------------->|<- tail, 4 KiB ->|
              ^ 2 MiB aligned; madvise(MADV_HUGEPAGE) on these pages only

The tail stays in 4 KiB pages so a tensor never holds more than its own bytes; the pad is never
touched (no memory behind it). Zen 3, one row, weights from DRAM, in-process pairs of layers:
W8A8 1.04-1.07x, W4A8 g32 1.03-1.06x, W4 / W8 / 2:4 1.02-1.03x (the bare W8A8 kernel 1.03-1.10x)
on 4096 x 4096, 4096 x 11008 and 11008 x 4096; a 1B Llama's decode 1.00-1.08x.

Where the kernel grants no huge pages (THP "never", not Linux) or TERSOR_HUGE_PAGES=0, tensors
stay where they are. The values never change: only where they live.
"""

from __future__ import annotations

import functools
import math
import mmap
import os

import torch

HUGE_PAGE = 2 << 20
# below this a weight is read from the caches in a loop, or too small for the TLB to matter
MIN_BYTES = 4 << 20


def enabled() -> bool:
    return os.environ.get("TERSOR_HUGE_PAGES", "1") != "0" and _kernel_grants()


@functools.cache
def _kernel_grants() -> bool:
    """Whether madvise(MADV_HUGEPAGE) can get huge pages here: THP in "always" or "madvise"
    mode (under "never", or without THP, the copy would buy nothing)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def in_huge_pages(t: torch.Tensor) -> bool:
    """Whether t's storage is a mapping this module made."""
    return isinstance(getattr(t.untyped_storage(), "_tersor_huge", None), bool)


def empty(shape, dtype) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype), in huge pages where place() would move it (the packing
    loops write their output here: no copy later)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or not enabled():
        return torch.empty(shape, dtype=dtype)
    return _mapped(nbytes, shape, dtype, None)


def place(t):
    """t itself, or a copy of it (same values, shape, dtype) whose whole 2 MiB pages are huge
    pages: for large contiguous CPU tensors when enabled()."""
    if (
        not t.is_cpu
        or t.requires_grad
        or not t.is_contiguous()
        or t.numel() * t.element_size() < MIN_BYTES
        or not enabled()
        or in_huge_pages(t)
    ):
        return t
    return _mapped(t.numel() * t.element_size(), t.shape, t.dtype, t)


def _mapped(nbytes: int, shape, dtype, src):
    """A tensor of `shape` in a fresh mapping (huge_pages.py's layout), src's values copied in;
    src itself (or, with no src, a plain torch.empty) where the mapping cannot be made."""
    fallback = src if src is not None else torch.empty(shape, dtype=dtype)
    try:
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return fallback
    raw = torch.frombuffer(region, dtype=torch.uint8)  # holds `region` until the tensor dies
    pad = -raw.data_ptr() % HUGE_PAGE
    try:
        region.madvise(mmap.MADV_HUGEPAGE, pad, nbytes // HUGE_PAGE * HUGE_PAGE)
    except OSError:  # a kernel without THP: the mapping would buy nothing
        return fallback
    out = raw[pad : pad + nbytes].view(dtype).view(shape)
    if src is not None:
        out.copy_(src)
    out.untyped_storage()._tersor_huge = True
    return out
