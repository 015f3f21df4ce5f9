"""Faster decoding for Hugging Face causal LMs: the work of a decode step or a prefill outside
the linear layers (attention with the KV cache, RMSNorm, the SwiGLU gate), on tersor kernels.

    tersor.quantize_(model, tersor.W4A8Config())
    report = tersor.optimize_decoding_(model)   # then model.generate(...) as usual
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import nn

from tersor.llm.attention import FastDecodeAttention, swap_attention
from tersor.llm.layer import FastDecoderLayer, is_decoder_layer, swap_layer
from tersor.llm.mlp import FastSwiGLU, is_mlp, swap_mlp
from tersor.llm.norm import FastRMSNorm, is_rms_norm, swap_rms_norm
from tersor.llm.stack import FastDecoderStack, _natively_stepped, is_decoder_stack, swap_stack

__all__ = [
    "DecodingReport",
    "FastDecodeAttention",
    "FastDecoderLayer",
    "FastDecoderStack",
    "FastRMSNorm",
    "FastSwiGLU",
    "optimize_decoding_",
]


@dataclass
class DecodingReport:
    attention: list = field(default_factory=list)  # names of the blocks on the fast path
    norms: list = field(default_factory=list)  # RMSNorm modules on the native forward
    mlps: list = field(default_factory=list)  # MLPs whose silu(gate) * up is native
    layers: list = field(default_factory=list)  # decoder layers with the lean decode step
    stacks: list = field(default_factory=list)  # decoder stacks stepping in one native call
    left: dict = field(default_factory=dict)  # name -> why it was left as it was
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [
            f"tersor.optimize_decoding_: {len(self.attention)} attention blocks on the "
            f"decode kernel, {len(self.norms)} RMSNorms and {len(self.mlps)} MLP gates native, "
            f"{len(self.layers)} decoder layers on the lean decode step, "
            f"{len(self.stacks)} decoder stacks in one native call, "
            f"{len(self.left)} modules left as they were ({self.seconds:.2f} s)"
        ]
        lines += [f"  left {name}: {why}" for name, why in self.left.items()]
        return "\n".join(lines)


def _is_attention(name: str, module: nn.Module) -> bool:
    return type(module).__name__.endswith("Attention") or (
        hasattr(module, "q_proj") and hasattr(module, "o_proj")
    )


def optimize_decoding_(model: nn.Module) -> DecodingReport:
    """Gives every Llama-style attention block of ``model`` (Llama, Mistral without a sliding
    window, Qwen2 / Qwen3, Phi-3 with its fused qkv_proj, ...: q/k/v/o projections, rotary
    embedding, a ``DynamicCache``; and GPT-2's, without rotary) the native decode step of
    ``tersor.llm.attention``, every Llama-style RMSNorm the native norm of ``tersor.llm.norm``
    and every SwiGLU MLP the native gate of ``tersor.llm.mlp``, in place; then every decoder
    layer whose parts all took theirs the lean decode step of ``tersor.llm.layer``, and every
    decoder stack whose layers all step natively the one-call step of ``tersor.llm.stack``.
    Each block is checked against its own forward first; blocks that do not qualify stay as
    they were, with the reason in the report. Outputs equal the model's own to fp32 rounding
    (the kernel computes in fp32, also for bf16 / fp16 models)."""
    t0 = time.perf_counter()
    report = DecodingReport()
    for name, module in model.named_modules():
        if is_rms_norm(module):
            swap, done = swap_rms_norm, report.norms
        elif is_mlp(module):
            swap, done = swap_mlp, report.mlps
        elif _is_attention(name, module):
            swap, done = swap_attention, report.attention
        else:
            continue
        reason = swap(module)
        if reason is None:
            done.append(name)
        else:
            report.left[name] = reason
    # (after their parts: a layer's lean step runs the parts' native forwards)
    for name, module in model.named_modules():
        if is_decoder_layer(module):
            reason = swap_layer(module)
            if reason is None:
                report.layers.append(name)
            else:
                report.left[name] = reason
    # (after the layers: a stack steps their native layers; a stack of float or W8 weight-only
    # layers keeps its forward, each layer stepping in Python, which the report's layers say)
    for name, module in model.named_modules():
        if is_decoder_stack(module) and _natively_stepped(module):
            reason = swap_stack(module)
            if reason is None:
                report.stacks.append(name)
            else:
                report.left[name] = reason
    report.seconds = time.perf_counter() - t0
    return report
