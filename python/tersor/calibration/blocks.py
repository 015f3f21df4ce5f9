"""Block-by-block calibration: memory holds one block's activations, not the model's.

    calibration batches --model--> inputs of block 0 (captured, the forward stopped there)
    for each block:  run it on its inputs, hooks sum each target layer's x^T x  (Hessians)
                     solve its layers; their weights become the solved (quantized) ones
                     run it again: its outputs are the next block's inputs
    layers outside the blocks (lm_head, a classifier): one pass of the whole model, whose
    blocks are already quantized, gives their Hessians (each block answers with the output
    it computed in its own pass when it meets the same input; the pass stops at the last of
    those layers' inputs)

Blocks are the children of the model's largest nn.ModuleList that holds target layers (the
decoder / encoder layers of a transformer). The next block takes the previous block's first
output in place of its first argument, the other arguments as block 0 got them (attention
masks, rotary embeddings); a KV cache argument is dropped (re-running a block would append to
it). A model without such a list (a CNN, an MLP) is one pass: every layer's Hessian from the
float model's inputs.

The float weights are swapped for the solved ones while the driver runs and restored at the
end, error or not: the caller builds the compressed layers from the solved results, so the
model is unchanged until it installs them.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import nn

from tersor.calibration import data


class _Stop(Exception):
    pass


def find_blocks(model: nn.Module, layers: list) -> list:
    """The children of the ModuleList holding the most target layers (see the module doc)."""
    ids = {id(m) for m in layers}
    best, most = [], 0
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1:
            n = sum(1 for b in mod for x in b.modules() if id(x) in ids)
            if n > most:
                best, most = list(mod), n
    return best


SAMPLE_ROWS = 1024  # input rows kept per layer for scale searches (AWQ)
SAMPLE_PER_CALL = 128


class _Hessians:
    """Forward pre-hooks summing x^T x (float64 would double the time; the sum over a few
    thousand rows stays well within float32) for each target layer; with stats, also each
    input channel's mean and max |x| and a sample of input rows (evenly spaced in each call,
    at most SAMPLE_ROWS) for the input-scale methods (calibration/smooth.py)."""

    def __init__(self, layers: list, stats: bool = False):
        self.h, self.rows, self.hooks = {}, {}, []
        self.stats = stats
        self.abs_sum, self.abs_max, self.sample = {}, {}, {}
        for m in layers:
            self.hooks.append(m.register_forward_pre_hook(self._hook))

    def _hook(self, m, args):
        if isinstance(m, nn.Conv2d):
            x = conv_patches(m, args[0].detach().to(torch.float32))
        else:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
        k = id(m)
        if k not in self.h:
            self.h[k] = torch.zeros(x.shape[1], x.shape[1])
            self.rows[k] = 0
            if self.stats:
                self.abs_sum[k], self.abs_max[k] = torch.zeros(x.shape[1]), torch.zeros(x.shape[1])
                self.sample[k] = []
        self.h[k].addmm_(x.t(), x)
        self.rows[k] += x.shape[0]
        if self.stats and x.shape[0]:
            a = x.abs()
            self.abs_sum[k] += a.sum(0)
            torch.maximum(self.abs_max[k], a.amax(0), out=self.abs_max[k])
            have = sum(t.shape[0] for t in self.sample[k])
            take = min(SAMPLE_PER_CALL, x.shape[0], SAMPLE_ROWS - have)
            if take > 0:
                pick = torch.linspace(0, x.shape[0] - 1, take).long()
                self.sample[k].append(x[pick].clone())

    def input_stats(self, m) -> tuple:
        """(mean |x| [K], max |x| [K], sampled rows [R, K]) of layer m's inputs."""
        k = id(m)
        return self.abs_sum[k] / max(self.rows[k], 1), self.abs_max[k], torch.cat(self.sample[k])

    def close(self):
        for h in self.hooks:
            h.remove()


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The GEMM rows a Conv2d multiplies: x [B, C, H, W] -> patches [B * L, kh * kw * C] in
    the NHWC patch order of its packed weight (nn/qconv.py gemm_weight)."""
    kh, kw = conv.kernel_size
    pad = conv.padding
    if pad == "valid":
        pad = (0, 0)
    elif pad == "same":
        pad = tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    if x.dim() == 3:
        x = x[None]
    cols = torch.nn.functional.unfold(x, (kh, kw), conv.dilation, pad, conv.stride)
    b, _, n_pos = cols.shape  # [B, C * kh * kw, positions], C-major
    cols = cols.view(b, x.shape[1], kh * kw, n_pos).permute(0, 3, 2, 1)
    return cols.reshape(b * n_pos, kh * kw * x.shape[1])


def _drop_cache(kwargs: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        if type(v).__name__.endswith("Cache"):
            continue
        out[k] = v
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, tuple):
        return tuple(_clone(x) for x in v)
    if isinstance(v, list):
        return [_clone(x) for x in v]
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    return v


def _capture_inputs(model, block, fns, opaque) -> list:
    got = []

    def hook(mod, args, kwargs):
        got.append((_clone(args), _drop_cache(_clone(kwargs))))
        if not opaque:
            raise _Stop

    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for fn in fns:
                try:
                    fn(model)
                except _Stop:
                    pass
    finally:
        h.remove()
    if not got:
        raise ValueError("the calibration batches never reached the model's first block")
    return got


def _run_block(block, inputs: list, replay: Optional[list] = None) -> list:
    """The next block's inputs; replay (a list) receives (input, whole output) per batch."""
    outs = []
    with torch.no_grad():
        for args, kwargs in inputs:
            whole = block(*args, **kwargs)
            out = whole[0] if isinstance(whole, (tuple, list)) else whole
            outs.append(((out,) + tuple(args[1:]), kwargs))
            if replay is not None:
                replay.append((args[0], whole))
    return outs


REPLAY_BYTES = 2 << 30  # the most the solved blocks' inputs and outputs may hold for replay


class _Replay:
    """During the last pass (the layers outside the blocks), each solved block answers with
    the output it computed in its own pass when it gets the very input it had then (checked:
    the same tensor, or equal values), instead of running again; any other input runs the
    block. Saves a third of the forward work of a 1B LLM's calibration."""

    def __init__(self, blocks: list, records: list):
        self.blocks, self.records = blocks, records
        self.next = [0] * len(blocks)
        # a forward set on the instance (accelerate's hooks do that) is wrapped and put back
        self.own = [b.__dict__.get("forward") for b in blocks]
        for i, b in enumerate(blocks):
            b.forward = self._answer(i, b.forward)

    def _answer(self, i: int, forward):
        def run(*args, **kwargs):
            j = self.next[i]
            self.next[i] += 1
            if j < len(self.records[i]) and args:
                x, whole = self.records[i][j]
                a = args[0]
                if a is x or (
                    isinstance(a, torch.Tensor) and a.shape == x.shape and torch.equal(a, x)
                ):
                    return whole
            return forward(*args, **kwargs)

        return run

    def close(self):
        for b, own in zip(self.blocks, self.own):
            if own is None:
                del b.forward  # the class's forward again
            else:
                b.forward = own


def calibrate(
    model: nn.Module,
    layers: list,
    calibration,
    solve: Callable,
    progress=None,
    scales: Optional[Callable] = None,
):
    """Solve every layer in `layers` (nn.Linear, transformers Conv1D, nn.Conv2d on its
    patches) block by block;
    ``solve(layer, hessian, rows) -> float weight`` in the layer's own weight layout, which
    stands in for the layer in the rest of the pass. scales: the input-scale methods' step
    before a block's layers are solved, ``scales(block, layers, hessians, inputs)`` (block
    and inputs None for the layers outside the blocks; hessians.input_stats(layer) holds the
    statistics). Returns the seconds spent."""
    from tersor.api import _progress

    t0 = time.perf_counter()
    targets = list(layers)
    fns, opaque = data.calls(calibration)
    # tersor.distributed.DataParallel: Hessians summed over the ranks before each solve
    reduce = getattr(calibration, "reduce_hessians", lambda hs, ms: None)
    blocks = find_blocks(model, targets)
    in_blocks = {id(x) for b in blocks for x in b.modules()}
    outside = [m for m in targets if id(m) not in in_blocks]
    originals = {}

    def solve_all(ms, hs):
        for m in ms:
            if id(m) not in hs.h:
                raise ValueError(
                    f"the calibration batches never reached a {type(m).__name__} "
                    f"{tuple(m.weight.shape)}; its Hessian is unknown"
                )
            w = solve(m, hs.h[id(m)], hs.rows[id(m)])
            originals.setdefault(id(m), (m, m.weight.data))
            m.weight.data = w.to(m.weight.dtype)

    try:
        records = None
        if blocks:
            inputs = _capture_inputs(model, blocks[0], fns, opaque)
            wanted = {id(t) for t in targets}
            size = sum(a[0].numel() * a[0].element_size() for a, _ in inputs)
            records = [] if outside and 2 * size * len(blocks) <= REPLAY_BYTES else None
            for block in _progress(blocks, "calibrate", progress):
                mine = [x for x in block.modules() if id(x) in wanted]
                hs = _Hessians(mine, stats=scales is not None)
                try:
                    _run_block(block, inputs)
                finally:
                    hs.close()
                reduce(hs, mine)
                if scales is not None:
                    scales(block, mine, hs, inputs)
                solve_all(mine, hs)
                del hs
                if records is not None:
                    records.append([])
                inputs = _run_block(block, inputs, None if records is None else records[-1])
        if outside:
            hs = _Hessians(outside, stats=scales is not None)
            # the pass stops once every outside layer has had its input (unless the user's
            # callable runs the model: it might catch the stop): lm_head's own product, 2048
            # tokens x 128256 x 2048 on a 1B LLM, is never needed
            seen: set = set()

            def stop_when_all_seen(m, args):
                seen.add(id(m))
                if not opaque and len(seen) == len(outside):
                    raise _Stop

            stops = [m.register_forward_pre_hook(stop_when_all_seen) for m in outside]
            replay = _Replay(blocks, records) if blocks and records else None
            try:
                with torch.no_grad():
                    for fn in fns:
                        seen.clear()
                        try:
                            fn(model)
                        except _Stop:
                            pass
            finally:
                hs.close()
                for h in stops:
                    h.remove()
                if replay is not None:
                    replay.close()
            reduce(hs, outside)
            if scales is not None:
                scales(None, outside, hs, None)
            solve_all(outside, hs)
    finally:
        for m, w in originals.values():
            m.weight.data = w
    return time.perf_counter() - t0
