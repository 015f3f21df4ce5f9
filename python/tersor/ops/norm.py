"""``tersor::rms_norm``: HF Llama-family RMSNorm rows, y = w * (x / sqrt(mean(x^2) + eps)),
fp32 / bf16 / fp16 (x, w, y of one dtype; each product rounded to it as HF's ops do;
csrc/norm/norm.h). The direct ``_C`` call serves eager CPU use; the custom op (+ fake) lets
torch.compile trace it, and runs the torch reference off the CPU.
"""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops._common import IO_CODE, empty_rows

OP = "tersor::rms_norm"


def rms_norm_problem(x: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    """What is wrong with the arguments, or None (messages built only on failure)."""
    if x.dtype not in IO_CODE:
        return f"x must be float32, bfloat16 or float16, got {x.dtype}"
    if weight.dtype != x.dtype:
        return f"weight is {weight.dtype}, x is {x.dtype}"
    if weight.dim() != 1 or x.dim() < 1 or weight.shape[0] != x.shape[-1]:
        return f"weight must be [{x.shape[-1]}] for x {tuple(x.shape)}, got {tuple(weight.shape)}"
    if weight.device != x.device:
        return f"weight is on {weight.device}, x on {x.device}"
    return None


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The native kernel on validated CPU tensors (x viewed as rows; weight contiguous)."""
    n = x.shape[-1]
    x2 = x if x.dim() == 2 else x.reshape(-1, n)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < n):
        x2 = x2.contiguous()
    w = weight if weight.is_contiguous() else weight.contiguous()
    y = empty_rows(x, n)
    _C.rms_norm(
        x2.data_ptr(), x2.shape[0], n, x2.stride(0), w.data_ptr(), eps, y.data_ptr(), n,
        IO_CODE[x.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return y


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm.forward."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@torch.library.custom_op(OP, mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm (module docstring); the torch reference off the CPU."""
    return rms_norm_ref(x, weight, eps)


@rms_norm_op.register_kernel("cpu")
def _(x, weight, eps):
    problem = rms_norm_problem(x, weight)
    if problem is not None:
        raise ValueError(f"{OP}: {problem}")
    return rms_norm_cpu(x, weight, eps)


@rms_norm_op.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Validated; the direct native call in eager CPU use, else the custom op."""
    problem = rms_norm_problem(x, weight)
    if problem is not None:
        raise ValueError(f"{OP}: {problem}")
    if x.is_cpu and not torch.compiler.is_compiling():
        return rms_norm_cpu(x, weight, eps)
    return rms_norm_op(x, weight, eps)
