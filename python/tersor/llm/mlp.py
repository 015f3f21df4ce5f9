"""HF Llama-family MLPs (down(silu(gate(x)) * up(x)); Phi-3's fused gate_up_proj too) with the
gate on ``tersor::silu_mul``
(csrc/act/act.h): one native pass over the MLP's widest rows instead of two torch ops (~90 us
per layer at one row of 8192, measured in a 1B Llama decode step on Zen 3). Swapped and
checked on random input like the norms (tersor/llm/_swap.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tersor.llm._swap import fast_subclass, swap_if_same
from tersor.ops._common import IO_CODE
from tersor.ops.act import silu_mul_cpu


class FastSwiGLU:
    """Mixed into a swapped MLP class."""

    def forward(self, x):
        if not x.is_cpu or torch.compiler.is_compiling() or x.dtype not in IO_CODE:
            return super().forward(x)
        fused = getattr(self, "gate_up_proj", None)
        if fused is None:
            g, u = self.gate_proj(x), self.up_proj(x)
        else:  # Phi-3: [gate | up] in one output row, read as two strided views
            g, u = fused(x).chunk(2, dim=-1)
        if (
            g.dtype is not u.dtype
            or g.shape != u.shape
            or (torch.is_grad_enabled() and (g.requires_grad or u.requires_grad))
        ):  # (autograd: float projections' weights, or x, need the gradient)
            return self.down_proj(_act(self)(g) * u)
        return self.down_proj(silu_mul_cpu(g, u))


def _act(module: nn.Module):
    return getattr(module, "act_fn", None) or module.activation_fn


def is_mlp(module: nn.Module) -> bool:
    return all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")) or all(
        hasattr(module, n) for n in ("gate_up_proj", "down_proj", "activation_fn")
    )


def unsupported(module: nn.Module) -> Optional[str]:
    act = _act(module)
    if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return f"activation {type(act).__name__}, not SiLU"
    return None


def swap_mlp(module: nn.Module) -> Optional[str]:
    """Gives the MLP the native gate; the reason it was left as it was, or None."""
    if isinstance(module, FastSwiGLU):
        return None
    reason = unsupported(module)
    if reason is not None:
        return reason
    p = next(module.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    first = getattr(module, "gate_up_proj", None) or module.gate_proj
    x = torch.randn(3, first.in_features, generator=gen).to(dtype)
    return swap_if_same(module, fast_subclass(type(module), FastSwiGLU), x, "gate")
