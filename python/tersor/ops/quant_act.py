"""``tersor::quantize_rows``: fp32 [M, K] -> (int8 [M, K], fp32 scales [M]), the activation
quantizer the W8A8 kernels fuse, exposed on its own for tests and tools."""

from __future__ import annotations

import torch

from tersor import _C
from tersor.ops._common import check, rows_view


@torch.library.custom_op("tersor::quantize_rows", mutates_args=())
def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check(
        x.dtype == torch.float32 and x.dim() == 2 and x.device.type == "cpu",
        f"tersor::quantize_rows: x must be a 2-D float32 CPU tensor, got {x.dtype} "
        f"{tuple(x.shape)} on {x.device}",
    )
    m, k = x.shape
    x2 = rows_view(x, k)
    q = torch.empty((m, k), dtype=torch.int8)
    s = torch.empty((m,), dtype=torch.float32)
    if m:
        _C.quantize_rows(
            x2.data_ptr(), m, k, x2.stride(0), q.data_ptr(), s.data_ptr(), torch.get_num_threads()
        )
    return q, s


@quantize_rows.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:1])
