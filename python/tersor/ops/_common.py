"""Helpers shared by the op modules: the eager-or-op choice, 2-D views, pointer passing,
validation messages.

Every family module has the same three parts:
  ``<family>_cpu(...)``  the direct ``_C`` call on validated CPU tensors (~1-2 us);
  ``<family>(...)``      the custom op ``tersor::<family>`` (+ fake): the native CPU kernel
                         registered for "cpu", the device path (ops/gpu.py: CUDA extension ->
                         Triton -> torch reference) for every other device and for
                         kernel_pref="cuda" | "triton" | "ref" (the layer's kernel=; not
                         called `kernel`, which inductor's fallback kernels reserve);
  ``linear_<...>(...)``  what a format calls: the eager CPU call when nothing needs the op
                         (``eager``), else the op, so torch.compile traces the op on any device.
"""

from __future__ import annotations

from typing import Optional

import torch

# kernel= values served by the native CPU kernels ("auto" also picks the best GPU kernel)
NATIVE = ("auto", "native")
_is_compiling = torch.compiler.is_compiling

# The int8 code range of every scheme, weights and activations: symmetric [-127, 127] (-128 is
# never used, so negating a code is exact and the VNNI u8 x s8 products cannot saturate).
QMAX = 127


def no_row_amax(row_amax, op: str) -> None:
    """row_amax (fp32 [M] floors under the rows' amax, csrc/quant_act/quant_act.h) is an
    argument of the native CPU kernels only."""
    if row_amax is not None:
        raise NotImplementedError(f"{op}: row_amax is taken by the native CPU kernel only")


def eager(x: torch.Tensor, kernel: str) -> bool:
    """True when a call may skip the custom op (10+ us in eager mode) and call _C directly:
    a CPU tensor, a native kernel, and no tracing. The layers have validated x already."""
    return x.is_cpu and kernel in NATIVE and not _is_compiling()


# the `io` argument of the dense GEMM bindings: bf16 / fp16 rows go in and come out as they are
# (staged through fp32 inside the native call, csrc/half_io/half_io.h)
IO_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def takes_half(run):
    """Marks a format's prepared CPU call as taking bf16 / fp16 rows itself (see IO_CODE)."""
    run.takes_half = True
    return run


def rows_window(run, window_run, k: int, lo: int, hi: Optional[int] = None):
    """A layer's CPU call that hands x of [lo, hi) rows to window_run and other x to run (both
    fn(x, bias) -> y or None): sparse int8 formats with a dense W8A8 copy for the batches where
    the dense kernel wins (formats/sparse_csr.py, formats/sparse24.py)."""
    hi = 1 << 62 if hi is None else hi

    def call(x, bias):
        if x.dim() == 0 or x.shape[-1] != k:
            return None
        return window_run(x, bias) if lo <= x.numel() // k < hi else run(x, bias)

    return call


def empty_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """An uninitialized [..., n] of x's leading dims, dtype and device: x.new_empty with int
    arguments, which torch's argument parser takes ~3x faster than a torch.Size or a dtype=
    keyword (Zen 2: ~2 against ~6 us; the eager layers' fast path pays it on every call)."""
    s = x.shape
    d = len(s)
    if d == 2:
        return x.new_empty(s[0], n)
    if d == 3:
        return x.new_empty(s[0], s[1], n)
    return x.new_empty(*s[:-1], n)


def out_2d(x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """y [M, N] viewed as x's leading dims + [N] (no view call for 2-D x: ~1 us saved)."""
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)


def rows_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [..., K] -> [M, K] with unit column stride and row stride >= K (a view when possible)."""
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < k):
        x2 = x2.contiguous()
    return x2


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def check_packed_int8(op: str, x, packed, colsum, scale, bias, n: int) -> None:
    """Full argument validation for direct callers of the ops (QLinear checks only its input)."""
    check(
        x.dtype == torch.float32 or (not x.is_cpu and x.is_floating_point()),
        f"{op}: x must be float32 (float16 / bfloat16 also on a GPU), got {x.dtype}",
    )
    check(x.dim() >= 1, f"{op}: x must have at least 1 dimension")
    k = x.shape[-1]
    check(
        packed.dtype == torch.int8 and packed.dim() == 4 and packed.shape[2:] == (16, 4),
        f"{op}: packed weight must be int8 [Np/16, Kp/4, 16, 4], got {packed.dtype} "
        f"{tuple(packed.shape)}",
    )
    np_ = packed.shape[0] * 16
    check(
        packed.shape[1] == (k + 3) // 4,
        f"{op}: packed weight holds K={packed.shape[1] * 4} (padded) but x has K={k}",
    )
    check(np_ >= n > np_ - 16, f"{op}: out_features={n} does not match the packed weight ({np_})")
    check(
        scale.dtype == torch.float32 and scale.shape == (np_,),
        f"{op}: weight scale must be float32 [{np_}], got {scale.dtype} {tuple(scale.shape)}",
    )
    if colsum is not None:
        check(
            colsum.dtype == torch.int32 and colsum.shape == (np_,),
            f"{op}: colsum must be int32 [{np_}], got {colsum.dtype} {tuple(colsum.shape)}",
        )
    if bias is not None:
        check(
            bias.dtype == torch.float32 and bias.shape == (n,),
            f"{op}: bias must be float32 [{n}], got {bias.dtype} {tuple(bias.shape)}",
        )
    devs = {t.device for t in (x, packed, scale, colsum, bias) if t is not None}
    check(len(devs) == 1, f"{op}: all tensors must be on one device, got {sorted(map(str, devs))}")
    for t in (packed, scale, colsum, bias):
        if t is not None:
            check(t.is_contiguous(), f"{op}: weight tensors must be contiguous")
