"""HF Llama-family RMSNorm modules on ``tersor::rms_norm`` (csrc/norm/norm.h).

Eager PyTorch runs the norm as 7 ops per call (~30 us at one row); a 1B Llama's decode step
calls it 33 times. The module's class is swapped for a subclass whose ``forward`` calls the
kernel when the call is plain inference on the CPU (no autograd, not compiling, x and the
weight of one dtype) and the model's own ``forward`` otherwise; each module is checked
against its own forward when it is swapped (tersor/llm/_swap.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tersor.llm._swap import fast_subclass, swap_if_same
from tersor.ops._common import IO_CODE
from tersor.ops.norm import rms_norm_cpu


class FastRMSNorm:
    """Mixed into a swapped RMSNorm class."""

    def forward(self, hidden_states):
        x, w = hidden_states, self.weight
        if (
            x.is_cpu
            and x.dtype is w.dtype
            and x.dtype in IO_CODE
            and x.dim() >= 1
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        ):
            return rms_norm_cpu(x, w, self.variance_epsilon)
        return super().forward(hidden_states)


def is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm")


def unsupported(module: nn.Module) -> Optional[str]:
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or not hasattr(module, "variance_epsilon"):
        return "not a Llama-style RMSNorm (weight [N], variance_epsilon)"
    return None


def swap_rms_norm(module: nn.Module) -> Optional[str]:
    """Gives the module the native forward; the reason it was left as it was, or None."""
    if isinstance(module, FastRMSNorm):
        return None
    reason = unsupported(module)
    if reason is not None:
        return reason
    w = module.weight
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, w.shape[0], generator=gen) * 3).to(w.dtype)
    return swap_if_same(module, fast_subclass(type(module), FastRMSNorm), x, "RMSNorm")
