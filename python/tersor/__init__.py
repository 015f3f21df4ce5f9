"""tersor: native kernels that make compressed PyTorch models run faster.

import tersor
report = tersor.quantize_(model, tersor.W8A8Config())
print(report)
"""

from tersor import distributed
from tersor._backend import available_isas, cpu_info, set_adaptive_threads
from tersor.api import LayerReport, Report, quantize_, register_handler, sparsify_
from tersor.checkpoint import load_pretrained, save_pretrained
from tersor.configs import (
    Config,
    Sparse24Config,
    SparseConfig,
    W4A8Config,
    W4Config,
    W8A8Config,
    W8A8StaticConfig,
    W8Config,
)
from tersor.distill import distill_
from tersor.importers import empty_weights, from_pretrained
from tersor.llm import DecodingReport, optimize_decoding_
from tersor.nn import BlockSparseLinear, CsrLinear, PackedLinear, QConv2d, QLinear, SparseLinear
from tersor.nn.fused import fuse_projections
from tersor.static_int8 import StaticReport, quantize_static

__version__ = "0.1.0"

__all__ = [
    "BlockSparseLinear",
    "Config",
    "CsrLinear",
    "DecodingReport",
    "LayerReport",
    "PackedLinear",
    "QConv2d",
    "QLinear",
    "Report",
    "StaticReport",
    "Sparse24Config",
    "SparseConfig",
    "SparseLinear",
    "W4A8Config",
    "W4Config",
    "W8A8Config",
    "W8A8StaticConfig",
    "W8Config",
    "available_isas",
    "cpu_info",
    "distill_",
    "distributed",
    "empty_weights",
    "from_pretrained",
    "fuse_projections",
    "quantize_",
    "quantize_static",
    "set_adaptive_threads",
    "load_pretrained",
    "optimize_decoding_",
    "register_handler",
    "save_pretrained",
    "sparsify_",
]
