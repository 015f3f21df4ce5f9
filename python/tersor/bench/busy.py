"""``python -m tersor.bench --family busy``: decode speed while other processes keep cores busy.

A kernel's threads share its work statically and meet at its end, so when another process
holds a core, every call waits for the thread the OS has taken off it. tersor's kernels give
up threads while that lasts (``tersor.set_adaptive_threads``, csrc/common/team_governor.h).
This runs the LLM bench's W4A8 g32 model alone and beside busy-loop processes (one per two of
torch's threads), with the governor on and off and on one thread (what the governor can reach
on 2 cores), and llama.cpp Q4_0 on the same weights when llama-cpp-python is installed; rounds
interleave (the machine is shared).
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import tersor
from tersor.bench.generation import time_generation, warm_up


@contextlib.contextmanager
def busy_processes(n: int):
    """n processes that spin on a core each until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.3)  # started and spinning
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _adaptive(on: bool):
    def timer(model, prompt, new_tokens):
        was = tersor.set_adaptive_threads(on)
        try:
            return time_generation(model, prompt, new_tokens)
        finally:
            tersor.set_adaptive_threads(was)

    return timer


def _one_thread(model, prompt, new_tokens):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return time_generation(model, prompt, new_tokens)
    finally:
        torch.set_num_threads(threads)


def run_busy(shape: str = "1b", prompt_len: int = 32, new_tokens: int = 32, rounds: int = 3):
    from tersor.bench import llamacpp, llm

    busy = max(1, torch.get_num_threads() // 2)
    model = llm.build(shape)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=gen)
    engines, skipped = {}, []
    why = llamacpp.unavailable()
    if why:
        skipped.append(("llama.cpp Q4_0", why))
    else:
        with tempfile.TemporaryDirectory() as d:
            for row, engine in llamacpp.prepare(model, prompt, new_tokens, d, prompt[:, :16]):
                if row["impl"].endswith("Q4_0"):
                    engines[row["impl"]] = (engine, llamacpp.time_generation)
    m = llm.sharing_weights(model)
    tersor.quantize_(m, tersor.W4A8Config(group_size=32), progress=False)
    tersor.optimize_decoding_(m)
    del model
    with torch.inference_mode():  # checked once against its own weights dequantized
        out = m(prompt[:, :16]).logits
        with llm.dequantized(m):
            deq = m(prompt[:, :16]).logits
    err = ((out - deq).norm() / deq.norm()).item()
    if not err < 0.35:  # int8 activations' noise over the layers (the LLM bench's bound)
        raise SystemExit(f"tersor W4A8 g32: logits {err:.3g} off its dequantized weights")
    warm_up(m, prompt)
    engines = {
        "tersor W4A8 g32": (m, _adaptive(True)),
        "tersor W4A8 g32, fixed threads": (m, _adaptive(False)),
        "tersor W4A8 g32, one thread": (m, _one_thread),
        **engines,
    }
    # The governor rows set it on / off per timing, which also clears its state: each busy
    # phase starts from every thread, as when a busy process appears.
    samples = {(name, b): [] for name in engines for b in (0, busy)}
    cuts0 = tersor._C.team_stats()["cuts"]
    for _ in range(rounds):
        for b in (0, busy):
            with busy_processes(b):
                for name, (engine, timer) in engines.items():
                    got = timer(engine, prompt, new_tokens)
                    samples[(name, b)].append(got["decode_tok_s"])
    rows = []
    print(
        f"Llama ({shape} shape), decode of {new_tokens} tokens at batch 1, "
        f"{torch.get_num_threads()} threads, alone and beside {busy} busy-loop process(es), "
        f"medians of {rounds} interleaved rounds"
    )
    print(f"{'engine':<32}{'alone tok/s':>12}{'busy tok/s':>12}{'busy / alone':>14}")
    for name in engines:
        alone = statistics.median(samples[(name, 0)])
        loaded = statistics.median(samples[(name, busy)])
        rows.append(
            dict(
                impl=name,
                kind="baseline" if "llama" in name else "ours",
                busy_processes=busy,
                decode_tok_s=alone,
                busy_decode_tok_s=loaded,
            )
        )
        print(f"{name:<32}{alone:>12.1f}{loaded:>12.1f}{loaded / alone:>13.2f}x")
    ours = rows[0]
    ours["ratios"] = {
        r["impl"]: ours["busy_decode_tok_s"] / r["busy_decode_tok_s"] for r in rows[1:]
    }
    for name, v in ours["ratios"].items():
        print(f"busy: tersor W4A8 g32 vs {name}: {v:.2f}x")
    print(f"threads given up {tersor._C.team_stats()['cuts'] - cuts0} times")
    for name, why in skipped:
        print(f"{name:<32}unavailable: {why}")
    return rows
