"""W8A8 / W8 Linear against torch fp32, torch.ao dynamic int8, onnxruntime dynamic int8,
torchao's compiled int8 dynamic and OpenVINO INT8 (NNCF; int8 and fp32 activations); a peer
that is not installed is skipped with the reason."""

import pytest

from bench_common import BATCHES, LINEAR_SHAPES, time_linear_case

IMPLS = [
    "tersor W8A8",
    "tersor W7A8",  # W8A8Config(weight_bits=7)
    "tersor W8",
    "torch fp32",
    "torch.ao dyn int8",
    "onnxruntime dyn int8",
    "torchao int8 dyn (compiled)",
    "OpenVINO INT8 i8",
    "OpenVINO INT8 f32",
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("shape", list(LINEAR_SHAPES))
def bench_linear(benchmark, linear_case, shape, m, impl):
    k, n = LINEAR_SHAPES[shape]
    lin, impls = linear_case(k, n)
    time_linear_case(benchmark, lin, impls[impl], m, f"{shape} {k}x{n} M={m}", tol=0.05)
