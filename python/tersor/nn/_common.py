"""Checks shared by the layer classes' from_float constructors."""
import torch


def check_float_weight(weight: torch.Tensor, label: str) -> None:
    """A float32 weight without NaN/Inf, or an error naming the layer."""
    if weight.dtype != torch.float32:
        raise TypeError(f"{label}: weight must be float32, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{label}: weight holds NaN or Inf; cannot convert it")
