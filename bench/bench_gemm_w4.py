"""4-bit weights: tersor W4 / W4A8 / W4 a16 (16-bit activations as two int8 planes; g32,
g128) against torch fp32, torch's int4pack CPU op, onnxruntime MatMulNBits (accuracy_level 0
and 4), OpenVINO INT4 (NNCF; int8, fp32 and bf16 activations; skipped with the reason when not
installed) and our W8A8."""

import functools

import pytest

from bench_common import BATCHES, LINEAR_SHAPES, time_linear_case
from tersor.bench.impls import int4_impls, make_linear

IMPLS = [
    "tersor W4 g32",
    "tersor W4A8 g32",
    "tersor W4 g128",
    "tersor W4A8 g128",
    "tersor W4 g32 a16",
    "tersor W4 g128 a16",
    "torch int4pack g32",
    "torch int4pack g128",
    "ort MatMulNBits g32 acc0",
    "ort MatMulNBits g32 acc4",
    "ort MatMulNBits g128 acc0",
    "ort MatMulNBits g128 acc4",
    *(f"OpenVINO INT4 g{g} {act}" for g in (32, 128) for act in ("i8", "f32", "bf16")),
    "torch fp32",
    "tersor W8A8",
]


@functools.lru_cache(maxsize=1)
def _impls_for(k, n, rotate):
    lin = make_linear(k, n)
    return lin, {im.name: im for im in int4_impls(lin, rotate)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("shape", list(LINEAR_SHAPES))
def bench_linear_int4(benchmark, rotate, shape, m, impl):
    k, n = LINEAR_SHAPES[shape]
    lin, impls = _impls_for(k, n, rotate)
    # RTN int4 on random gaussian weights is ~7-10% off fp32 by itself
    time_linear_case(benchmark, lin, impls[impl], m, f"int4 {shape} {k}x{n} M={m}", tol=0.15)
