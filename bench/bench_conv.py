"""Conv2d at ResNet and MobileNetV2 (depthwise) layer shapes, batch 8, channels_last: tersor
W8A8 against torch fp32 F.conv2d (oneDNN) and torch.ao's quantized conv (x86 engine), fp32 in
and out.

Inputs are what these layers see inside a ResNet (tersor.bench.impls.conv_case): a ReLU's
output for the body layers, a signed image for the stem; ``TERSOR_BENCH_SIGNED=1`` feeds signed
inputs to every layer. ``python -m tersor.bench --family conv`` times the same layers
interleaved and prints the ratios."""

import functools
import os

import pytest
import torch

from tersor.bench.impls import CONV_BATCH as BATCH
from tersor.bench.impls import CONV_LAYERS as LAYERS
from tersor.bench.impls import conv_case, conv_impls

IMPLS = ["tersor W8A8 conv", "torch fp32 conv", "torch.ao quantized conv"]


@functools.lru_cache(maxsize=1)
def _case(name):
    conv, x = conv_case(name, signed=bool(os.environ.get("TERSOR_BENCH_SIGNED")))
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
        benchmark(im.fn, x, 0)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        ci = conv.in_channels // conv.groups  # inputs per output (1 for a depthwise layer)
        k = conv.kernel_size[0]
        ops = 2 * BATCH * ref.shape[2] * ref.shape[3] * conv.out_channels * ci * k * k
        benchmark.extra_info["GOP/s"] = ops / benchmark.stats.stats.median / 1e9
