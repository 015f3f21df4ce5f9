"""Conv2d at ResNet layer shapes, batch 8, channels_last: tersor W8A8 against torch fp32
F.conv2d (oneDNN) and torch.ao's quantized conv (x86 engine), fp32 in and out.

Inputs are what these layers see inside a ResNet: the body convolutions take a ReLU's output
(non-negative: on CPUs without VNNI our int8 tile then skips the sign trick, see
csrc/gemm_w8a8/tile_avx2.h), the stem a normalized image (signed). ``TERSOR_BENCH_SIGNED=1``
feeds signed inputs to every layer."""
import functools
import os

import pytest
import torch
from torch import nn

from tersor.bench.impls import conv_impls

LAYERS = {  # name: (C_in, C_out, H=W, kernel, stride)
    "res2.3x3": (64, 64, 56, 3, 1), "res3.3x3": (128, 128, 28, 3, 1),
    "res4.3x3": (256, 256, 14, 3, 1), "res5.3x3": (512, 512, 7, 3, 1),
    "res2.1x1.up": (64, 256, 56, 1, 1), "res2.1x1.down": (256, 64, 56, 1, 1),
    "stem.7x7": (3, 64, 224, 7, 2),
}
IMPLS = ["tersor W8A8 conv", "torch fp32 conv", "torch.ao quantized conv"]
BATCH = 8


@functools.lru_cache(maxsize=1)
def _case(name):
    ci, co, hw, k, s = LAYERS[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(ci, co, k, s, k // 2).eval()
    x = torch.randn(BATCH, ci, hw, hw).contiguous(memory_format=torch.channels_last)
    if not name.startswith("stem") and not os.environ.get("TERSOR_BENCH_SIGNED"):
        x = x.relu()  # a body layer's input: a ReLU's output
    return conv, x, {im.name: im for im in conv_impls(conv, x)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", list(LAYERS))
def bench_conv(benchmark, layer, impl):
    conv, x, impls = _case(layer)
    im = impls[impl]
    if im.unavailable:
        pytest.skip(im.unavailable)
    with torch.inference_mode():
        ref = conv(x)
        y = im.fn(x, 0)
        assert ((y - ref).norm() / ref.norm()).item() < 0.05, f"{impl} is wrong before timing"
        benchmark.group = f"conv {layer} batch {BATCH}"
        ci, co, hw, k, s = LAYERS[layer]
        benchmark(im.fn, x, 0)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        ops = 2 * BATCH * ref.shape[2] * ref.shape[3] * co * ci * k * k
        benchmark.extra_info["GOP/s"] = ops / benchmark.stats.stats.median / 1e9
