"""``python -m tersor.bench``: our kernels against the baselines, side by side, as tables.

python -m tersor.bench                       # every shape and M of the foundation issue
python -m tersor.bench --shapes 4096x4096 --m 1,8 --json out.json
python -m tersor.bench --family int4 --shapes real --m 1,32   # real models' layer shapes
python -m tersor.bench --quick               # small subset, a minute or so
python -m tersor.bench --family int4         # 4-bit weights against torch / onnxruntime int4
python -m tersor.bench --family sparse24     # 2:4 sparse fp32 against dense on the same weight
python -m tersor.bench --family sparse90     # unstructured 90% (also sparse75, sparse95)
python -m tersor.bench --family block90      # block-sparse (16, 4) 90% (also block75)
python -m tersor.bench --family conv         # W8A8 Conv2d at ResNet layers (--signed-inputs)
python -m tersor.bench --family llm          # Llama-3.2-1B shape: prefill + decode tokens/s
python -m tersor.bench --family llm-step     # a decode step inside / outside the tersor layers
python -m tersor.bench --family busy         # decode beside busy processes (thread governor)
python -m tersor.bench --family tp           # 2 gloo processes x 1 thread vs 1 x 2 threads
python -m tersor.bench --family cnn          # MobileNetV2 / ResNet-18 layouts, W8A8 vs fp32
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import platform
import sys

import torch

import tersor
from tersor.bench.impls import (
    CONV_LAYERS,
    DENSE,
    block_impls,
    conv_case,
    conv_impls,
    int4_impls,
    linear_impls,
    make_linear,
    sparse24_impls,
    unstructured_impls,
)
from tersor.bench.overhead import measure_overhead
from tersor.bench.timing import (
    measure_bandwidth,
    measure_compute_peak,
    quiet_baselines,
    time_interleaved,
)
from tersor.formats import huge_pages

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (384, 1536), (1536, 384)]  # (K, N)
MS = [1, 8, 32, 128, 512]
# `--shapes real`: hidden sizes 1536-8192 that are not all powers of two, with each model's MLP
# width (ratios 2.7-4): the square attention projection, the MLP's up and its down (K, N)
REAL_MODELS = {
    "GPT-2 XL": (1600, 6400),
    "Qwen2-1.5B": (1536, 8960),
    "Phi-2": (2560, 10240),
    "Llama-3.2-3B": (3072, 8192),
    "Falcon-7B": (4544, 18176),
    "Mistral-7B": (4096, 14336),
    "Llama-2-13B": (5120, 13824),
    "Llama-3-70B": (8192, 28672),
}
REAL_SHAPES = [s for h, f in REAL_MODELS.values() for s in ((h, h), (h, f), (f, h))]


FAMILIES = {  # impl factory, tolerated relative error, the impl that is the reference (None:
    "int8": (linear_impls, 0.05, None),  # fp32 on the unpruned weight; RTN int4 on random
    "int4": (int4_impls, 0.15, None),  # gaussian weights is ~7-10% off fp32 by itself)
    "sparse24": (sparse24_impls, 1e-4, DENSE),
    **{
        f"sparse{p}": (functools.partial(unstructured_impls, sparsity=p / 100), 1e-4, DENSE)
        for p in (75, 90, 95)
    },
    **{
        f"block{p}": (functools.partial(block_impls, sparsity=p / 100), 1e-4, DENSE)
        for p in (75, 90)
    },
}


def check_correct(impls, lin, x, tol, ref_name=None):
    ref = next(im for im in impls if im.name == ref_name).fn(x, 0) if ref_name else lin(x).detach()
    for im in impls:
        y = im.fn(x, 0)
        err = ((y - ref).norm() / ref.norm()).item()
        if not err < (im.tol or tol):
            raise SystemExit(f"{im.name}: relative error {err:.3g} against fp32; not timing it")


def same_group(ours: str, baseline: str) -> bool:
    """Compare a g32 kernel with g32 baselines (and with group-less ones), not with g128."""

    def group(name):
        return next((w for w in name.split() if w[:1] == "g" and w[1:].isdigit()), None)

    gb = group(baseline)
    return gb is None or gb == group(ours)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_linear(family, shapes, ms, rotate, rounds, bw, peak):
    """peak: [compute peak], raised in place by a probe before each shape: a shared host's GEMM
    rate swings (one start read 114 of ~170 GOP/s), and a low peak flatters every compute-bound
    cell's roofline, so each shape's rows use the highest rate probed so far."""
    make_impls, tol, ref_name = FAMILIES[family]
    rows = []
    for k, n in shapes:
        peak[0] = compute_peak = max(peak[0], measure_compute_peak())
        lin = make_linear(k, n)
        impls = make_impls(lin, rotate)
        ready = [im for im in impls if not im.unavailable]
        for im in impls:
            if im.unavailable:
                print(f"  skipped {im.name}: {im.unavailable}")
        print(
            f"\nK={k} N={n}: compute peak so far {compute_peak / 1e9:.0f} GOP/s; weight copies "
            "rotated: " + ", ".join(f"{im.name} x{im.copies}" for im in ready)
        )
        header = (
            f"{'M':>4}  {'implementation':<30}{'us':>10}{'GB/s':>8}{'GOP/s':>8}"
            f"{'roofline':>10}  ratios (baseline time / ours)"
        )
        print(header)
        for m in ms:
            x = torch.randn(m, k)
            check_correct(ready, lin, x, tol, ref_name)
            for im in ready:
                if im.prepare is not None:
                    im.prepare(x)
            times = time_interleaved({im.name: im.fn for im in ready}, x, rounds=rounds)
            baselines = {im.name: times[im.name] for im in ready if im.kind == "baseline"}
            acts = {im.name: im.act for im in ready}
            for im in ready:
                t = times[im.name]
                floor = max(im.weight_bytes / bw, 2 * m * k * n / compute_peak)
                ratios = (
                    {
                        b: bt / t
                        for b, bt in baselines.items()
                        if same_group(im.name, b)
                        and (not im.vs or b in im.vs)
                        and (not im.act or not acts[b] or acts[b] == im.act)
                    }
                    if im.kind == "ours"
                    else {}
                )
                rows.append(
                    dict(
                        family=family,
                        K=k,
                        N=n,
                        M=m,
                        impl=im.name,
                        kind=im.kind,
                        us=t * 1e6,
                        gbps=im.weight_bytes / t / 1e9,
                        gops=2 * m * k * n / t / 1e9,
                        roofline=floor / t,
                        ratios=ratios,
                    )
                )
                rtxt = "  ".join(f"{r:5.2f}x {b}" for b, r in ratios.items())
                print(
                    f"{m:>4}  {im.name:<30}{t * 1e6:>10.0f}{im.weight_bytes / t / 1e9:>8.1f}"
                    f"{2 * m * k * n / t / 1e9:>8.0f}{100 * floor / t:>9.0f}%  {rtxt}"
                )
        # this shape's weight copies go before the next shape's are made: held across the
        # next make_impls they doubled the peak (`--shapes real` ran a 24 GiB host out of
        # memory at its fifth 7B-size shape)
        del impls, ready, times, baselines
        gc.collect()
    return rows


def run_conv(rounds, signed, layers=None):
    """The ResNet layers of the Conv2d issue and MobileNetV2's depthwise ones (or `layers` of
    them), ours and the baselines interleaved."""
    rows = []
    print(
        f"\n{'layer':<15}{'implementation':<26}{'ms':>9}{'GOP/s':>8}  ratios (baseline time / "
        f"ours); inputs: {'signed' if signed else 'a ReLU output (body), signed (stem)'}"
    )
    for name in layers or CONV_LAYERS:
        conv, x = conv_case(name, signed)
        ci, k = conv.in_channels // conv.groups, conv.kernel_size[0]
        impls = [im for im in conv_impls(conv, x) if not im.unavailable]
        with torch.inference_mode():
            ref = conv(x)
            for im in impls:
                err = ((im.fn(x, 0) - ref).norm() / ref.norm()).item()
                if not err < 0.05:
                    raise SystemExit(f"{name} {im.name}: relative error {err:.3g}; not timing it")
            times = time_interleaved({im.name: im.fn for im in impls}, x, rounds=rounds)
        ops = 2 * ref.numel() * ci * k * k
        ours = next(im.name for im in impls if im.kind == "ours")
        for im in impls:
            t = times[im.name]
            ratios = (
                {b.name: times[b.name] / t for b in impls if b.kind == "baseline"}
                if im.kind == "ours"
                else {}
            )
            rows.append(
                dict(
                    family="conv",
                    layer=name,
                    impl=im.name,
                    kind=im.kind,
                    us=t * 1e6,
                    gops=ops / t / 1e9,
                    ratios=ratios,
                    signed=signed,
                )
            )
            rtxt = "  ".join(f"{r:5.2f}x {b}" for b, r in ratios.items())
            print(
                f"{name if im.name == ours else '':<15}{im.name:<26}{t * 1e3:>9.2f}"
                f"{ops / t / 1e9:>8.0f}  {rtxt}"
            )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tersor.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shapes",
        help="comma list of KxN, or 'real' (the square, up and down layers of 8 models with "
        "hidden sizes 1536-8192: REAL_MODELS); default: the five issue shapes",
    )
    p.add_argument("--m", help="comma list of batch sizes M (default 1,8,32,128,512)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--no-rotate", action="store_true", help="one weight copy (cache-flattered)")
    p.add_argument("--quick", action="store_true", help="4096x4096 and 384x1536, M in 1,32")
    p.add_argument(
        "--family",
        choices=[*FAMILIES, "conv", "llm", "llm-step", "busy", "tp", "cnn", "all"],
        default="int8",
    )
    p.add_argument("--llm-shape", choices=["1b", "tiny"], default="1b", help="llm: model shape")
    p.add_argument("--new-tokens", type=int, default=64, help="llm: tokens decoded")
    p.add_argument(
        "--signed-inputs",
        action="store_true",
        help="conv: signed inputs for every layer (default: a ReLU's output)",
    )
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    with quiet_baselines():
        return _run(a)


def _run(a) -> int:
    shapes = (
        SHAPES
        if not a.shapes
        else REAL_SHAPES
        if a.shapes == "real"
        else [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    )
    ms = MS if not a.m else [int(v) for v in a.m.split(",")]
    if a.quick:
        shapes, ms, a.rounds = [(4096, 4096), (384, 1536)], [1, 32], 5

    info = tersor.cpu_info()
    bw, peak = measure_bandwidth(), measure_compute_peak()
    pages = "2 MiB" if huge_pages.enabled() else "4 KiB"  # the weights' pages too
    print(
        f"tersor {tersor.__version__} bench, {datetime.date.today()}, {cpu_name()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, ISA {info['active']}"
    )
    print(
        f"measured: read bandwidth {bw / 1e9:.1f} GB/s ({pages} pages), compute peak (best of "
        f"torch._int_mm and fp32 torch.mm, probed again before each shape) {peak / 1e9:.0f} "
        f"GOP/s; roofline = max(bytes / bandwidth, ops / compute peak), so above 100% = faster "
        f"than the best torch GEMM rate here"
    )
    families = [*FAMILIES, "conv"] if a.family == "all" else [a.family]
    rows = []
    for fam in families:
        if fam == "llm":
            from tersor.bench.llm import run_llm

            print("\n=== LLM, Hugging Face eager ===")
            rows += run_llm(a.llm_shape, new_tokens=a.new_tokens, bandwidth=bw)
            continue
        if fam == "llm-step":
            from tersor.bench.llm import run_llm_step

            print("\n=== LLM decode step: inside and outside the tersor layers ===")
            rows += run_llm_step(a.llm_shape)
            continue
        if fam == "busy":
            from tersor.bench.busy import run_busy

            print("\n=== LLM decode beside busy processes ===")
            rows += run_busy(a.llm_shape, new_tokens=min(a.new_tokens, 32))
            continue
        if fam == "cnn":
            from tersor.bench.cnn import run_cnn

            print("\n=== whole CNNs (torchvision layouts) ===")
            rows += run_cnn(rounds=a.rounds)
            continue
        if fam == "tp":
            from tersor.bench.tp import run_tp

            print("\n=== tensor parallel (tersor.distributed, gloo) ===")
            rows += run_tp(a.llm_shape, steps=a.new_tokens // 2)
            continue
        if fam == "conv":
            print("\n=== W8A8 Conv2d, ResNet layers, batch 8, channels_last ===")
            rows += run_conv(a.rounds, a.signed_inputs)
            continue
        print(f"\n=== {fam} weights ===")
        peak_box = [peak]
        rows += run_linear(fam, shapes, ms, not a.no_rotate, a.rounds, bw, peak_box)
        peak = peak_box[0]
    ov = measure_overhead()
    print(
        f"\nper-call overhead, 384x384 at M=1: QLinear {ov['qlinear_us']:.1f} us, bare kernel "
        f"{ov['kernel_us']:.1f} us -> {ov['overhead_us']:.1f} us above the kernel; "
        f"F.linear fp32 {ov['flinear_us']:.1f} us"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                dict(
                    date=str(datetime.date.today()),
                    cpu=cpu_name(),
                    info=info,
                    bandwidth=bw,
                    compute_peak=peak,
                    rows=rows,
                    overhead=ov,
                ),
                f,
                indent=1,
            )
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
