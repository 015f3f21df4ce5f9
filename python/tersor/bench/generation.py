"""Timing a Hugging Face ``generate``: prefill ms and decode tokens/s, as the LLM bench reports
them for every engine that speaks HF's API (HF itself, tersor's layers, optimum-intel's
OpenVINO models). Imports nothing of tersor: bench/openvino.py loads this file by path in
another interpreter (the one optimum-intel is installed in)."""

from __future__ import annotations

import time

import torch

# Exactly max_new_tokens, as llama.cpp's loop decodes them: no end-of-sequence token to stop at.
# (min_new_tokens would do it by masking EOS in the logits every step: HF builds the mask with
# torch.isin over the whole vocabulary, ~1 ms per token at 128256 on Zen 2, which no engine pays.)
_NO_EOS = dict(eos_token_id=None, pad_token_id=0)


class _TokenTimes:
    """A generate streamer that only notes when each token arrives (put: the prompt, then one
    call per new token)."""

    def __init__(self):
        self.times = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def time_generation(model, prompt: torch.Tensor, new_tokens: int, precision=None) -> dict:
    """Prefill ms (one forward of the prompt, the last position's logits only, as generate
    and llama.cpp compute them) and decode tokens/s (greedy generate of new_tokens: from its
    first new token to its last, as each arrives, so the prefill inside generate does not
    count; subtracting a separately timed prefill made a short demo run's decode figure swing
    with that one call's noise); precision: torch's float32 matmul precision while timed
    (None: as it is)."""
    if precision is not None:
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(precision)
        try:
            return time_generation(model, prompt, new_tokens)
        finally:
            torch.set_float32_matmul_precision(old)
    stamps = _TokenTimes()
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(prompt, logits_to_keep=1)
        prefill = time.perf_counter() - t0
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),  # batch 1, no padding: HF warns without
            **_NO_EOS,
            max_new_tokens=new_tokens,
            do_sample=False,
            streamer=stamps,
        )
    if out.shape[-1] != prompt.shape[-1] + new_tokens or len(stamps.times) != new_tokens + 1:
        raise RuntimeError(f"generate decoded {out.shape[-1] - prompt.shape[-1]} of {new_tokens}")
    per_token = max(stamps.times[-1] - stamps.times[1], 1e-9) / max(new_tokens - 1, 1)
    return dict(prefill_ms=prefill * 1e3, decode_tok_s=1.0 / per_token, s_per_token=per_token)


def warm_up(model, prompt) -> None:
    with torch.inference_mode():
        p = prompt[:, :8]
        model.generate(
            p,
            attention_mask=torch.ones_like(p),
            **_NO_EOS,
            max_new_tokens=2,
            do_sample=False,
        )
