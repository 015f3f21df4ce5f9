"""``tersor::silu_mul``: SwiGLU's gate y = silu(g) * u, elementwise, fp32 / bf16 / fp16 (g, u, y
of one dtype; fp32 arithmetic, a half result rounded once; csrc/act/act.h). The direct ``_C``
call serves eager CPU use; the custom op (+ fake) lets torch.compile trace it, and runs the
torch reference off the CPU.
"""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import IO_CODE, empty_rows, rows_view

OP = "tersor::silu_mul"


def silu_mul_problem(g: torch.Tensor, u: torch.Tensor) -> Optional[str]:
    """What is wrong with the arguments, or None (messages built only on failure)."""
    if g.dtype not in IO_CODE:
        return f"g must be float32, bfloat16 or float16, got {g.dtype}"
    if u.dtype != g.dtype:
        return f"u is {u.dtype}, g is {g.dtype}"
    if u.shape != g.shape or g.dim() < 1:
        return f"g and u must have one shape, got {tuple(g.shape)} and {tuple(u.shape)}"
    if u.device != g.device:
        return f"u is on {u.device}, g on {g.device}"
    return None


def silu_mul_cpu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The native kernel on validated CPU tensors."""
    n = g.shape[-1]
    g2, u2 = rows_view(g, n), rows_view(u, n)
    y = empty_rows(g, g.shape[-1])
    _C.silu_mul(
        g2.data_ptr(), u2.data_ptr(), g2.shape[0], n, g2.stride(0), u2.stride(0), y.data_ptr(), n,
        IO_CODE[g.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return y


def silu_mul_ref(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (torch.nn.functional.silu(g.float()) * u.float()).to(g.dtype)


@torch.library.custom_op(OP, mutates_args=())
def silu_mul_op(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u (module docstring); the torch reference off the CPU."""
    return silu_mul_ref(g, u)


@silu_mul_op.register_kernel("cpu")
def _(g, u):
    problem = silu_mul_problem(g, u)
    if problem is not None:
        raise ValueError(f"{OP}: {problem}")
    return silu_mul_cpu(g, u)


@silu_mul_op.register_fake
def _(g, u):
    return torch.empty_like(g, memory_format=torch.contiguous_format)


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Validated; the direct native call in eager CPU use, else the custom op."""
    problem = silu_mul_problem(g, u)
    if problem is not None:
        raise ValueError(f"{OP}: {problem}")
    if g.is_cpu and not torch.compiler.is_compiling():
        return silu_mul_cpu(g, u)
    return silu_mul_op(g, u)
