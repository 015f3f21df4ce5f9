"""``tersor::spmm_block_f32`` / ``tersor::spmm_block_w8a8``: y = x W^T + b with a block-sparse
weight (formats/sparse_block.py): fp32 16 x 1 blocks, or int8 16 x 4 blocks x per-row int8
activations. Layout of every family module: ops/_common.py."""

from __future__ import annotations

from typing import Optional

import torch

from tersor import _C
from tersor.ops import gpu
from tersor.ops._common import NATIVE, check, eager, no_row_amax, out_2d, ptr, rows_view


def spmm_block_cpu(
    x, bptr, kidx, values, colsum, scale, bias, n: int, row_amax=None
) -> torch.Tensor:
    k = x.shape[-1]
    x2 = rows_view(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if m:
        fn = _C.spmm_block_w8a8 if values.dtype == torch.int8 else _C.spmm_block_f32
        fn(
            x2.data_ptr(),
            m,
            k,
            x2.stride(0),
            n,
            bptr.data_ptr(),
            kidx.data_ptr(),
            values.data_ptr(),
            ptr(colsum),
            ptr(scale),
            ptr(bias),
            y.data_ptr(),
            n,
            torch.get_num_threads(),
            ptr(row_amax),
        )
    return out_2d(x, y, n)


def linear_block(
    x, bptr, kidx, values, colsum, scale, bias, n: int, kernel_pref: str = "auto", row_amax=None
) -> torch.Tensor:
    if eager(x, kernel_pref):
        return spmm_block_cpu(x, bptr, kidx, values, colsum, scale, bias, n, row_amax)
    no_row_amax(row_amax, "tersor::spmm_block")
    return spmm_block(x, bptr, kidx, values, colsum, scale, bias, n, kernel_pref)


def _check(op, x, bptr, kidx, values, colsum, scale, bias, n):
    k = x.shape[-1]
    int8 = values.dtype == torch.int8
    bk = 4 if int8 else 1
    np_ = (n + 15) // 16 * 16
    check(
        x.dtype == torch.float32 or (not x.is_cpu and x.is_floating_point()),
        f"{op}: x must be float32, got {x.dtype}",
    )
    check(k <= 65536, f"{op}: K={k} > 65536")
    check(
        bptr.dtype == torch.int64 and bptr.shape == (np_ // 16 + 1,),
        f"{op}: ptr must be int64 [{np_ // 16 + 1}], got {bptr.dtype} {tuple(bptr.shape)}",
    )
    nb = int(bptr[-1])
    check(
        kidx.dtype == torch.uint16 and kidx.numel() == nb,
        f"{op}: kidx must be uint16 [{nb}], got {kidx.dtype} {tuple(kidx.shape)}",
    )
    shape = (nb, 16, 4) if int8 else (nb, 16)
    check(
        values.dtype in (torch.float32, torch.int8) and tuple(values.shape) == shape,
        f"{op}: values must be {'int8' if int8 else 'float32'} {shape}, got {values.dtype} "
        f"{tuple(values.shape)}",
    )
    check(
        nb == 0 or int(kidx.to(torch.int32).max()) < (k + bk - 1) // bk,
        f"{op}: block indices exceed in_features={k}",
    )
    if int8:
        check(
            colsum is not None
            and scale is not None
            and colsum.dtype == torch.int32
            and scale.dtype == torch.float32
            and colsum.shape == (np_,)
            and scale.shape == (np_,),
            f"{op}: int8 blocks need colsum int32 / scale float32 [{np_}]",
        )
    if bias is not None:
        check(
            bias.dtype == torch.float32 and bias.shape == (n,), f"{op}: bias must be float32 [{n}]"
        )


def _block_device(x, bptr, kidx, values, scale, bias, n, kernel_pref):
    from tersor.formats.sparse_block import unpack_block

    def dense():
        w = unpack_block(bptr.cpu(), kidx.cpu(), values.cpu(), n, x.shape[-1])
        return w.to(x.device)

    s = None if values.dtype != torch.int8 else scale[:n]
    return gpu.reference_linear(
        x,
        lambda: gpu.forms(values, dense),
        bias,
        n,
        kernel_pref,
        "tersor::spmm_block",
        int8_scale=s,
    )


@torch.library.custom_op("tersor::spmm_block", mutates_args=())
def spmm_block(
    x: torch.Tensor,
    bptr: torch.Tensor,
    kidx: torch.Tensor,
    values: torch.Tensor,
    colsum: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    out_features: int,
    kernel_pref: str = "auto",
) -> torch.Tensor:
    """Any device: the torch reference on the dense weight (no GPU kernel_pref)."""
    _check("tersor::spmm_block", x, bptr, kidx, values, colsum, scale, bias, out_features)
    return _block_device(x, bptr, kidx, values, scale, bias, out_features, kernel_pref)


@spmm_block.register_kernel("cpu")
def _(x, bptr, kidx, values, colsum, scale, bias, out_features, kernel_pref="auto"):
    _check("tersor::spmm_block", x, bptr, kidx, values, colsum, scale, bias, out_features)
    if kernel_pref in NATIVE:
        return spmm_block_cpu(x, bptr, kidx, values, colsum, scale, bias, out_features)
    return _block_device(x, bptr, kidx, values, scale, bias, out_features, kernel_pref)


@spmm_block.register_fake
def _(x, bptr, kidx, values, colsum, scale, bias, out_features, kernel_pref="auto"):
    return x.new_empty((*x.shape[:-1], out_features))
