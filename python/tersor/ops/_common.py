"""Helpers shared by the op modules: 2-D views, pointer passing, validation messages."""
from __future__ import annotations

import torch


def rows_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [..., K] -> [M, K] with unit column stride and row stride >= K (a view when possible)."""
    x2 = x.reshape(-1, k)
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
    check(x.dtype == torch.float32, f"{op}: x must be float32, got {x.dtype}")
    check(x.dim() >= 1, f"{op}: x must have at least 1 dimension")
    k = x.shape[-1]
    check(packed.dtype == torch.int8 and packed.dim() == 4 and packed.shape[2:] == (16, 4),
          f"{op}: packed weight must be int8 [Np/16, Kp/4, 16, 4], got {packed.dtype} "
          f"{tuple(packed.shape)}")
    np_ = packed.shape[0] * 16
    check(packed.shape[1] == (k + 3) // 4,
          f"{op}: packed weight holds K={packed.shape[1] * 4} (padded) but x has K={k}")
    check(np_ >= n > np_ - 16, f"{op}: out_features={n} does not match the packed weight ({np_})")
    check(scale.dtype == torch.float32 and scale.shape == (np_,),
          f"{op}: weight scale must be float32 [{np_}], got {scale.dtype} {tuple(scale.shape)}")
    if colsum is not None:
        check(colsum.dtype == torch.int32 and colsum.shape == (np_,),
              f"{op}: colsum must be int32 [{np_}], got {colsum.dtype} {tuple(colsum.shape)}")
    if bias is not None:
        check(bias.dtype == torch.float32 and bias.shape == (n,),
              f"{op}: bias must be float32 [{n}], got {bias.dtype} {tuple(bias.shape)}")
    devs = {t.device for t in (x, packed, scale, colsum, bias) if t is not None}
    check(len(devs) == 1, f"{op}: all tensors must be on one device, got {sorted(map(str, devs))}")
    for t in (packed, scale, colsum, bias):
        if t is not None:
            check(t.is_contiguous(), f"{op}: weight tensors must be contiguous")
