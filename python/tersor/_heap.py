"""Freed heap pages back to the OS after a conversion or a load.

glibc keeps the pages of freed blocks below its mmap threshold (which rises to 32 MiB as large
blocks are freed) inside the heap, between the long-lived packed tensors, where they stay in
the process's resident set. A conversion's per-layer temporaries (the fp32 weight's scaled and
rounded copies, the pruning masks) are such blocks: measured on a 1B Llama (Zen 3), quantize_
left RSS 1.2-1.7 GB above the packed weights' own bytes (W8A8 +2.5 GB for 1.24 GB of weights;
2:4 W8A8 +2.0 for 0.78) until malloc_trim(0) returned them, in 70-190 ms. Loading a checkpoint
held ~4.5x the compressed size without it.
"""

from __future__ import annotations

_libc = None


def release_freed_memory() -> None:
    """malloc_trim(0) where the C library has it (glibc); else nothing."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
