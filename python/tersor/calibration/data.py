"""What ``calibration=`` may be, turned into calls of the model.

- a tensor: ``model(t)``; a tuple: ``model(*t)``; a dict: ``model(**d)`` (one batch);
- a list of such batches;
- any other iterable (a DataLoader): its batches, where a tuple / list batch is taken as
  (input, label, ...) and only its first element goes in (``model(batch[0])``);
- a callable: run as ``calibration(model)`` (e.g. ``lambda m: m.encode(texts)`` for a wrapper
  model); it is opaque, so the calibration driver cannot stop it early.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _call(batch, labelled: bool) -> Callable:
    if isinstance(batch, torch.Tensor):
        return lambda m: m(batch)
    if isinstance(batch, dict):
        return lambda m: m(**batch)
    if isinstance(batch, (tuple, list)):
        if labelled:
            return lambda m: m(batch[0])
        return lambda m: m(*batch)
    raise TypeError(
        f"calibration: a batch must be a tensor, a tuple of arguments or a dict of keyword "
        f"arguments, got {type(batch).__name__}"
    )


def calls(calibration) -> tuple[list, bool]:
    """([fn(model)], opaque): one call per batch; opaque when it is the user's callable."""
    if calibration is None:
        raise ValueError("calibration is required here and was not given")
    if hasattr(calibration, "reduce_hessians"):  # tersor.distributed.DataParallel
        return calls(calibration.batches)
    if isinstance(calibration, (torch.Tensor, dict, tuple)):
        return [_call(calibration, False)], False
    if isinstance(calibration, list):
        if not calibration:
            raise ValueError("calibration: the list of batches is empty")
        return [_call(b, False) for b in calibration], False
    if callable(calibration) and not isinstance(calibration, nn.Module):
        return [calibration], True
    try:
        it = iter(calibration)
    except TypeError:
        raise TypeError(
            f"calibration must be a tensor, tuple, dict, list of batches, iterable (DataLoader) "
            f"or callable, got {type(calibration).__name__}"
        ) from None
    out = [_call(b, True) for b in it]
    if not out:
        raise ValueError("calibration: the iterable gave no batch")
    return out, False


def run_all(model: nn.Module, calibration) -> None:
    """Every calibration call through `model`, without gradients."""
    fns, _ = calls(calibration)
    with torch.no_grad():
        for fn in fns:
            fn(model)
