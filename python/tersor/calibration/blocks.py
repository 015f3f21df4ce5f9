"""Block-by-block calibration: memory holds one block's activations, not the model's.

    calibration batches --model--> inputs of block 0 (captured, the forward stopped there)
    for each block:  run it on its inputs, hooks sum each target layer's x^T x  (Hessians)
                     solve its layers; their weights become the solved (quantized) ones
                     run it again: its outputs are the next block's inputs
    layers outside the blocks (lm_head, a classifier): one pass of the whole model, whose
    blocks are already quantized, gives their Hessians

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
from typing import Callable

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


class _Hessians:
    """Forward pre-hooks summing x^T x (float64 would double the time; the sum over a few
    thousand rows stays well within float32) for each target layer."""

    def __init__(self, layers: list):
        self.h, self.rows, self.hooks = {}, {}, []
        for m in layers:
            self.hooks.append(m.register_forward_pre_hook(self._hook))

    def _hook(self, m, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
        k = id(m)
        if k not in self.h:
            self.h[k] = torch.zeros(x.shape[1], x.shape[1])
            self.rows[k] = 0
        self.h[k].addmm_(x.t(), x)
        self.rows[k] += x.shape[0]

    def close(self):
        for h in self.hooks:
            h.remove()


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


def _run_block(block, inputs: list) -> list:
    outs = []
    with torch.no_grad():
        for args, kwargs in inputs:
            out = block(*args, **kwargs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            outs.append(((out,) + tuple(args[1:]), kwargs))
    return outs


def calibrate(model: nn.Module, layers: list, calibration, solve: Callable, progress=None):
    """Solve every layer in `layers` (nn.Linear / transformers Conv1D; convolutions are left
    to the caller) block by block;
    ``solve(layer, hessian, rows) -> float weight`` in the layer's own weight layout, which
    stands in for the layer in the rest of the pass. Returns the seconds spent."""
    from tersor.api import _progress

    t0 = time.perf_counter()
    targets = [m for m in layers if not isinstance(m, nn.Conv2d)]
    fns, opaque = data.calls(calibration)
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
        if blocks:
            inputs = _capture_inputs(model, blocks[0], fns, opaque)
            wanted = {id(t) for t in targets}
            for block in _progress(blocks, "calibrate", progress):
                mine = [x for x in block.modules() if id(x) in wanted]
                hs = _Hessians(mine)
                try:
                    _run_block(block, inputs)
                finally:
                    hs.close()
                solve_all(mine, hs)
                del hs
                inputs = _run_block(block, inputs)
        if outside:
            hs = _Hessians(outside)
            try:
                with torch.no_grad():
                    for fn in fns:
                        fn(model)
            finally:
                hs.close()
            solve_all(outside, hs)
    finally:
        for m, w in originals.values():
            m.weight.data = w
    return time.perf_counter() - t0
