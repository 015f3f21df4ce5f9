"""How ``optimize_decoding_`` attaches its forwards: the module's class is swapped for a
subclass of it with a mixin in front (same instance, children and state_dict keys: the module
tree the user sees stays the model's), after the subclass is checked against the module's own
forward on random input."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

_SUBCLASSES: dict = {}


def fast_subclass(cls: type, mixin: type, **attrs) -> type:
    """The (cached) class `mixin` + `cls`, named after cls."""
    key = (cls, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(
            f"{mixin.__name__}{cls.__name__}",
            (mixin, cls),
            {"__module__": mixin.__module__, **attrs},
        )
    return _SUBCLASSES[key]


def run_as(module: nn.Module, cls: type, fn):
    """fn() with the module's class temporarily `cls`."""
    orig = type(module)
    module.__class__ = cls
    try:
        return fn()
    finally:
        module.__class__ = orig


def relative_error(want: torch.Tensor, got: torch.Tensor) -> float:
    want, got = want.float(), got.float()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def swap_if_same(module: nn.Module, fast: type, x: torch.Tensor, what: str) -> Optional[str]:
    """Swaps the module to `fast` when both forwards agree on x (fp32: to 1e-5 relative, the
    kernels' summation order; halves: 2e-2, a rounding step); else the reason."""
    with torch.inference_mode():
        want = module(x)
        got = run_as(module, fast, lambda: module(x))
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    err = relative_error(want, got)
    if got.dtype != want.dtype or not err <= tol:
        return f"native {what} differs from the module's own ({err:.2g})"
    module.__class__ = fast
    return None
