"""``python -m tersor.bench.gpu``: our GPU kernels against torch.matmul fp16 (cuBLAS), side by
side, on one CUDA GPU (bench/gpu_check.sh runs it). Ratios = cuBLAS time / ours; every kernel is
checked against the fp16 product once before timing. Needs a CUDA GPU and tersor._C_cuda."""

from __future__ import annotations

import sys

import torch
from torch import nn

SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672)]  # (K, N)
MS = [1, 16, 64, 256, 1024, 4096]


def cuda_time(fn, reps=20) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3  # us


def graph_time(fn, reps=20) -> float:
    """The GPU time alone: fn captured once in a CUDA graph and replayed (no Python, no launch
    gaps). Kernels that cannot be captured give nan."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            fn()  # warm-up outside the capture: caches (GPU weight forms) filled, Triton compiled
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
    except RuntimeError as e:
        print(f"  (graph capture failed: {str(e).splitlines()[0][:100]})")
        return float("nan")
    return cuda_time(g.replay, reps)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU: the GPU figures are not measured here")
        return 1
    import tersor
    from tersor.formats.sparse24 import prune_24
    from tersor.nn import QLinear, SparseLinear

    print(f"tersor GPU bench on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(
        f"{'K':>6}{'N':>7}{'M':>6}{'fp16 us':>10}  {'W4 g128':>9}{'W8A8':>9}{'2:4 fp16':>10}"
        f"  |{'graph us':>10}  {'W4 g128':>9}{'W8A8':>9}{'2:4 fp16':>10}{'W4 GB/s':>9}"
    )
    print("ratio = cuBLAS fp16 time / ours; left: eager calls, right: CUDA graph replay (GPU only)")
    for k, n in SHAPES:
        torch.manual_seed(0)
        lin = nn.Linear(k, n).half().cuda()
        w4 = QLinear.from_float(nn.Linear(k, n), tersor.W4Config(group_size=128)).cuda()
        w8 = QLinear.from_float(nn.Linear(k, n), tersor.W8A8Config()).cuda()
        sp = nn.Linear(k, n)
        with torch.no_grad():
            sp.weight.copy_(prune_24(sp.weight))
        s24 = SparseLinear.from_float(sp, tersor.Sparse24Config()).cuda()
        mods = (("W4", w4), ("W8A8", w8), ("2:4", s24))
        dense = {name: mod.dequantized_weight().cuda().t() for name, mod in mods}
        w4_bytes = k * n / 2 + (k // 128) * n * 4  # int4 codes + fp16 scale and zero per group
        for m in MS:
            x = torch.randn(m, k, device="cuda").half()
            for name, mod in mods:
                # against the fp32 product on the layer's own (dequantized) weight
                want = x.float() @ dense[name] + mod.bias.float()
                err = float((mod(x).float() - want).norm() / want.norm())
                if not err < 0.02:
                    raise SystemExit(
                        f"{name} K={k} N={n} M={m}: relative error {err:.3g}; not timing it"
                    )
            t = cuda_time(lambda: lin(x))
            r = [t / cuda_time(lambda: mod(x)) for _, mod in mods]
            tg = graph_time(lambda: lin(x))
            g = [graph_time(lambda: mod(x)) for _, mod in mods]
            rg = [tg / v for v in g]
            print(
                f"{k:>6}{n:>7}{m:>6}{t:>10.1f}  {r[0]:>8.2f}x{r[1]:>8.2f}x{r[2]:>9.2f}x"
                f"  |{tg:>10.1f}  {rg[0]:>8.2f}x{rg[1]:>8.2f}x{rg[2]:>9.2f}x"
                f"{w4_bytes / g[0] / 1e3:>9.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
