"""The layers a tensor-parallel model runs: each rank's shard plus the collective around it.

    column-wise, output sharded      the shard itself (a PackedLinear / nn.Linear of N / world
                                     outputs): no communication; q/k/v and gate/up shards fuse
                                     as usual (nn/fused.py)
    column-wise, output replicated   ColwiseLinear: the shard, then all_gather of the columns
    row-wise                         RowwiseLinear: the shard on this rank's inputs, then the
                                     sum of the [M, N] partial sums over ranks, then the bias

Row-wise layers with int8 activations (W8A8, W4A8, 2:4 / block / CSR + W8A8) quantize their
slice of each row with the *whole* row's scale, as the unsharded layer does: the ranks first
take the max of the rows' amax over ranks (M floats), and the kernel takes it as a floor
(``row_amax``, csrc/quant_act/quant_act.h). The integer codes are then those of the unsharded
layer, and only the order of the final float sum differs. ``act_scale="local"`` skips that
exchange: each rank quantizes with its own slice's scale (finer, one collective fewer per
layer, but not the unsharded layer's numbers).

The partial sums are all-reduced in fp32 whatever x's dtype, and rounded to bf16 / fp16 once,
after the bias: the rounding the unsharded layer does.

Inference layers: the collectives are not differentiable. ``COMM`` counts the time and bytes
of every collective (the tensor-parallel benchmark reports them).
"""

from __future__ import annotations

import time
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from tersor.nn.linear import PackedLinear

_A8 = ("w8a8", "w4a8", "2:4+w8a8", "block+w8a8", "unstructured+w8a8")


class CommStats:
    """Seconds, bytes and calls of the collectives the tensor-parallel layers ran."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.seconds, self.bytes, self.calls = 0.0, 0, 0

    def run(self, t: torch.Tensor, fn, *args, **kw):
        """fn(*args, **kw), counted as one collective of this rank's tensor t."""
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        self.seconds += time.perf_counter() - t0
        self.bytes += t.numel() * t.element_size()
        self.calls += 1
        return out


COMM = CommStats()

# Below this many elements a sum (or max) over ranks is an all_gather plus a local reduction:
# gloo's all_reduce of a small tensor took 0.6-2.8 ms where all_gather took 0.35-0.8 ms
# (2 processes on one 2-core Zen 3, 16 .. 65536 floats); from 1M floats all_reduce wins. The
# local reduction runs in rank order, so every rank gets the same bits.
GATHER_MAX_ELEMENTS = 1 << 18


def reduce_(t: torch.Tensor, group, op: str = "sum") -> torch.Tensor:
    """t summed (or maxed) over the ranks of `group`, through torch.distributed."""
    if t.numel() > GATHER_MAX_ELEMENTS:
        red = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
        COMM.run(t, dist.all_reduce, t, op=red, group=group)
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    COMM.run(t, dist.all_gather, parts, t.contiguous(), group=group)
    out = parts[0]
    for p in parts[1:]:
        out = out.add_(p) if op == "sum" else torch.maximum(out, p, out=out)
    return out


def _label(name: str, cls: str) -> str:
    return f"layer '{name}'" if name else cls


class RowwiseLinear(nn.Module):
    """Row-wise shard: y = all_reduce(x[..., inputs of this rank] W_r^T) + b.

    input: "shard" (x holds this rank's inputs [lo, hi), what a column-wise layer before it
    gives) or "replicate" (x holds every input; the rank takes its columns). input_index: the
    inputs an act-order int4 shard reads, out of the whole row (then a sharded x is gathered
    first: see slicing.py)."""

    def __init__(
        self,
        shard: nn.Module,
        bias: Optional[torch.Tensor],
        group,
        in_range: tuple,
        in_features: int,
        *,
        input: str = "shard",
        input_index: Optional[torch.Tensor] = None,
        act_scale: str = "global",
        name: str = "",
    ):
        super().__init__()
        if input not in ("shard", "replicate"):
            raise ValueError(f"input must be 'shard' or 'replicate', got {input!r}")
        if act_scale not in ("global", "local"):
            raise ValueError(f"act_scale must be 'global' or 'local', got {act_scale!r}")
        self.shard, self.group, self.name = shard, group, name
        self.in_range, self.in_features = tuple(in_range), in_features
        self.out_features = shard.out_features
        self.input, self.act_scale = input, act_scale
        self.register_buffer("input_index", input_index)
        if bias is not None:
            bias = bias.detach().to(torch.float32, copy=True)
        self.register_buffer("bias", bias)
        self._a8 = isinstance(shard, PackedLinear) and shard.scheme in _A8

    def _local_input(self, x2: torch.Tensor) -> torch.Tensor:
        lo, hi = self.in_range
        idx = self.input_index
        if self.input == "shard":
            if x2.shape[-1] != hi - lo:
                raise ValueError(
                    f"{_label(self.name, 'RowwiseLinear')}: expected this rank's inputs "
                    f"[..., {hi - lo}] (inputs {lo}..{hi} of {self.in_features}), got "
                    f"{tuple(x2.shape)}"
                )
            if idx is None:
                return x2
            parts = [torch.empty_like(x2) for _ in range(dist.get_world_size(self.group))]
            x2 = x2.contiguous()
            COMM.run(x2, dist.all_gather, parts, x2, group=self.group)
            x2 = torch.cat(parts, dim=-1)
        elif x2.shape[-1] != self.in_features:
            raise ValueError(
                f"{_label(self.name, 'RowwiseLinear')}: expected input [..., "
                f"{self.in_features}], got {tuple(x2.shape)}"
            )
        return x2.index_select(-1, idx) if idx is not None else x2[:, lo:hi]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = self._local_input(x.reshape(-1, shape[-1]))
        x2 = x2.to(torch.float32).contiguous()  # partial sums in fp32 (rounded once, below)
        if self._a8:
            amax = None
            if self.act_scale == "global":
                if not x2.is_cpu:
                    raise NotImplementedError(
                        f"{_label(self.name, 'RowwiseLinear')}: act_scale='global' needs the "
                        f"CPU kernels (the whole row's scale is their row_amax argument); on "
                        f"{x2.device} parallelize with act_scale='local'"
                    )
                # the whole row's amax of what the kernels quantize (x times the input scale):
                # the ranks' inputs partition the row, so it is the max of their own maxima
                xs = self.shard.fmt.input_scale
                amax = (x2 if xs is None else x2 * xs).abs().amax(dim=-1)
                amax = reduce_(amax, self.group, "max")
            y = self.shard.fmt.linear(x2, None, self.shard.kernel, row_amax=amax)
        elif isinstance(self.shard, PackedLinear):
            y = self.shard(x2)
        else:  # a dense shard computes in its own dtype, as the unsharded layer did
            y = self.shard(x2.to(self.shard.weight.dtype)).float()
        y = reduce_(y, self.group, "sum")
        if self.bias is not None:
            y += self.bias
        y = y.view(*shape[:-1], self.out_features)
        return y if dtype is torch.float32 else y.to(dtype)

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shard)

    def extra_repr(self) -> str:
        lo, hi = self.in_range
        return (
            f"row-wise: inputs {lo}..{hi} of {self.in_features}, out_features="
            f"{self.out_features}, input={self.input}, act_scale={self.act_scale}"
        )


class ColwiseLinear(nn.Module):
    """Column-wise shard whose output is gathered: y = cat over ranks of x W_r^T + b_r (every
    rank holds N / world outputs)."""

    def __init__(self, shard: nn.Module, group, out_features: int, name: str = ""):
        super().__init__()
        self.shard, self.group, self.name = shard, group, name
        self.out_features = out_features
        self.in_features = shard.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shard(x).contiguous()
        parts = [torch.empty_like(y) for _ in range(dist.get_world_size(self.group))]
        COMM.run(y, dist.all_gather, parts, y, group=self.group)
        return torch.cat(parts, dim=-1)

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shard)

    def extra_repr(self) -> str:
        return f"column-wise, output gathered: out_features={self.out_features}"


def _nbytes(m: nn.Module) -> int:
    if isinstance(m, PackedLinear):
        return m.nbytes
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())
