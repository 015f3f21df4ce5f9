"""Projections that read the same input (q/k/v, gate/up) run as one packed call.

At M = 1 a decode step makes one call per projection; each pays a fixed cost (the activation
quantization pass, waking the thread team, the Python call) that rivals the weight bytes of a
small layer: measured on Zen 3 (AVX2, 2 threads), Llama-3.2-1B's q/k/v (2048x2048 + 2 x
2048x512) take 275 us as three W4A8 calls and 202 us as one (1.36x; W8A8 1.58x), while gate/up
(2 x 8192x2048) gain nothing. So ``fuse_projections`` fuses groups of small layers by default.

The module tree stays the model's: q_proj, k_proj, v_proj remain three layers, and each still
works alone. Their packed weights become views into one concatenation along N (no extra
memory), so the group's single kernel call produces every member's output. Only inside one
forward of their parent module (the attention block: forward hooks arm and clear the group)
does the first member called compute all of them; the others take theirs if called with the
very same input tensor (same object, not modified since, where torch tracks versions), else
compute their own. Called outside the parent, a member runs alone. Fusion changes no numbers:
every output column is the same dot product in the same order.

    fused packed weight (N-leading tensors, 16-column blocks):
    [ q blocks (2048 / 16) | k blocks (512 / 16) | v blocks (512 / 16) ]
       q_proj.fmt.codes = view [0:128)   k_proj = view [128:160)   v_proj = view [160:192)
"""

from __future__ import annotations

import copy
import threading
from typing import Optional

import torch
from torch import nn

from tersor.formats import Int4Format, Int8Format, huge_pages
from tersor.ops._common import NATIVE

# sibling names that read the same input in the common architectures
GROUPS = (
    ("q_proj", "k_proj", "v_proj"),  # Llama, Mistral, Qwen, Gemma
    ("gate_proj", "up_proj"),  # their MLPs
    ("query", "key", "value"),  # BERT / MiniLM
    ("w1", "w3"),  # Mixtral-style experts
)
FUSABLE = (Int8Format, Int4Format)  # formats whose every tensor is N-leading
BLOCK_N = 16
AUTO_MAX_MEAN_WEIGHTS = 1 << 23  # "auto" fuses groups of small layers (the measured gain)


class FusedGroup:
    """One packed call for a group of PackedLinear layers (see the module docstring)."""

    def __init__(self, parent: nn.Module, layers: list):
        self.layers = list(layers)
        fmts = [m.fmt for m in self.layers]
        fused = copy.copy(fmts[0])
        for name in fused.tensor_names:
            parts = [getattr(f, name) for f in fmts]
            if parts[0] is None or name in fused.input_tensor_names:  # shared (equal), kept
                continue
            # in huge pages (when large) before the members take views of it: they share them
            rows = sum(p.shape[0] for p in parts)
            whole = huge_pages.empty((rows, *parts[0].shape[1:]), parts[0].dtype)
            torch.cat(parts, dim=0, out=whole)
            setattr(fused, name, whole)
            start = 0
            for f, p in zip(fmts, parts):  # members now read views of the concatenation
                setattr(f, name, whole.narrow(0, start, p.shape[0]))
                start += p.shape[0]
        fused.out_features = sum(f.out_features for f in fmts)
        if isinstance(fused, Int8Format):  # the kernels' hint must hold for every member
            fused.narrow_w = all(f.narrow_w for f in fmts)
        self.fmt = fused._finish()
        for f in fmts:
            f._finish()  # their prepared calls point at the views
        biases = [m._buffers["bias"] for m in self.layers]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [b if b is not None else torch.zeros(f.out_features) for b, f in zip(biases, fmts)]
            )
        self.bounds, start = [], 0
        for f in fmts:
            self.bounds.append((start, start + f.out_features))
            start += f.out_features
        self.index = {id(m): i for i, m in enumerate(self.layers)}
        self.local = threading.local()  # armed flag and pending outputs are per thread
        self.enabled, self.wasted = True, 0
        for m in self.layers:
            m._fused = self
        self.hooks = [
            parent.register_forward_pre_hook(self._arm),
            parent.register_forward_hook(self._disarm),
        ]

    # (under torch.compile the members run their own ops: the hooks do nothing there)
    def _arm(self, module, args) -> None:
        if not torch.compiler.is_compiling():
            self.local.pending = {}

    def _disarm(self, module, args, out) -> None:
        if not torch.compiler.is_compiling():
            self.local.pending = None

    def __call__(self, layer, x: torch.Tensor) -> Optional[torch.Tensor]:
        """layer's output from the group's call, or None (the layer runs alone)."""
        run = self.fmt.cpu_call
        if (
            run is None
            or not x.is_cpu
            or x.requires_grad
            or x.dtype not in (torch.float32, torch.bfloat16, torch.float16)
            or torch.compiler.is_compiling()
        ):
            return None
        pending = getattr(self.local, "pending", None)
        if pending is None:  # not inside the parent's forward: the member runs alone
            return None
        i = self.index[id(layer)]
        version = None if x.is_inference() else x._version  # inference tensors have none
        if pending:
            got = pending.pop(i, None)
            if got is not None and got[0] is x and got[1] == version:
                return got[2]
            self.wasted += 1  # results computed for a member that never came for them
            if self.wasted > 2:  # members do not share their input here (cross-attention)
                self.enabled = False
        outs = self.outputs(x.reshape(-1, x.shape[-1]).contiguous())
        if outs is None:
            return None
        outs = [o.view(*x.shape[:-1], o.shape[-1]) for o in outs]
        if x.dim() > 1 and x.numel() != x.shape[-1]:
            outs = [o.contiguous() for o in outs]
        self.local.pending = {j: (x, version, o) for j, o in enumerate(outs) if j != i}
        return outs[i]

    def outputs(self, x2: torch.Tensor) -> Optional[list]:
        """Every member's output for rows x2 [M, K] (float32, or bf16 / fp16: FUSABLE formats'
        kernels stage them natively), views of one call's [M, N total]; None where the group's
        prepared call does not take them."""
        run = self.fmt.cpu_call
        y = None if run is None else run(x2, self.bias)
        return None if y is None else [y[:, a:b] for a, b in self.bounds]

    def __getstate__(self) -> dict:  # copies and pickles: the per-thread results stay behind
        return {k: v for k, v in self.__dict__.items() if k != "local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.local = threading.local()
        self.index = {id(m): i for i, m in enumerate(self.layers)}

    def dissolve(self) -> None:
        """Members go back to their own calls (they keep their weights)."""
        self.enabled = False
        for m in self.layers:
            m._fused = None
        for h in self.hooks:
            h.remove()


def _why_not(layers) -> str:
    f0 = layers[0].fmt
    for m in layers:
        f = m.fmt
        if not isinstance(f, FUSABLE):
            return f"{m.scheme} layers are not fused"
        if type(f) is not type(f0) or f.options() != f0.options() or f.scheme != f0.scheme:
            return "members differ in scheme or options"
        if f.in_features != f0.in_features or f.device != f0.device or not f.on_cpu:
            return "members differ in input width or device"
        if getattr(f, "perm", None) is not None:
            return "act-order layers (input permutations) are not fused"
        if (f.input_scale is None) != (f0.input_scale is None) or (
            f.input_scale is not None and not torch.equal(f.input_scale, f0.input_scale)
        ):
            return "members differ in input scale"
        if m.kernel not in NATIVE:
            return f"kernel={m.kernel!r} pins another path than the native CPU kernel"
    if any(m.out_features % BLOCK_N for m in layers[:-1]):
        return f"out_features not a multiple of {BLOCK_N} (the packed blocks)"
    return ""


def fuse_projections(model: nn.Module, mode="auto") -> dict:
    """Fuse the model's sibling projection groups (GROUPS) of tersor layers; returns
    {member fqn: note} for the report. mode: "auto" (groups of small layers, where fusing was
    measured faster), True (every group that can), False (undo any fusion)."""
    from tersor.nn.linear import PackedLinear

    if mode not in ("auto", True, False):
        raise ValueError(f"fuse_projections must be 'auto', True or False, got {mode!r}")
    notes = {}
    for prefix, parent in model.named_modules():
        for names in GROUPS:
            layers = [getattr(parent, n, None) for n in names]
            if not all(isinstance(m, PackedLinear) for m in layers):
                continue
            for m in layers:
                if m._fused is not None:
                    m._fused.dissolve()
            if mode is False:
                continue
            why = _why_not(layers)
            mean = sum(m.in_features * m.out_features for m in layers) / len(layers)
            if not why and mode == "auto" and mean > AUTO_MAX_MEAN_WEIGHTS:
                why = "large layers: one call is not faster (measured)"
            if why:
                continue
            FusedGroup(parent, layers)
            for n in names:
                fqn = f"{prefix}.{n}" if prefix else n
                notes[fqn] = "one call with " + ", ".join(o for o in names if o != n)
    return notes
