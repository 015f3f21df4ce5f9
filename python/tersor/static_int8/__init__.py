"""The static int8 pipeline for CNNs: ``tersor.quantize_static(model, W8A8StaticConfig(),
calibration=batches)`` returns the model rewritten (torch.fx) so that activations stay int8
between layers:

- weights int8 per output channel; activation scales calibrated once (observers ``minmax``,
  ``percentile``, ``mse``: static_int8/observers.py), one per tensor, symmetric s8 codes;
- convolutions (dense, grouped, depthwise) and linears read codes and write the next layer's
  codes, with bias, ReLU / ReLU6 / clamp and a following residual add fused in the epilogue
  (csrc/conv/requant.h); BatchNorm folded first;
- max / average / adaptive-average pooling, adds, concatenation, flatten / view / dropout run on
  the codes (csrc/int8_ops);
- anything else runs in fp32 on a dequantized input, correct and listed in the report.

``profile_static(model, x)`` times each step of the native program (the network in one call) for
x's shape: [(step, seconds)].

Why a graph rewrite: static_int8/convert.py. The modules of the result: static_int8/modules.py.
"""

from tersor.static_int8.convert import StaticReport, quantize_static
from tersor.static_int8.program import profile as profile_static

__all__ = ["StaticReport", "profile_static", "quantize_static"]
