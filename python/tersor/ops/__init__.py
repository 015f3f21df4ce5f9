"""torch.library custom ops (``tersor::<family>``), one module per kernel family."""

from tersor.ops.conv import conv_w8a8
from tersor.ops.dequant import dequant_w8
from tersor.ops.gemm_w4 import dequant_w4t, gemm_w4, gemm_w4_cpu, gemm_w4a8
from tersor.ops.gemm_w8 import gemm_w8, gemm_w8_cpu
from tersor.ops.gemm_w8a8 import gemm_w8a8, gemm_w8a8_cpu
from tersor.ops.quant_act import quantize_rows

__all__ = [
    "conv_w8a8",
    "dequant_w4t",
    "dequant_w8",
    "gemm_w4",
    "gemm_w4_cpu",
    "gemm_w4a8",
    "gemm_w8",
    "gemm_w8_cpu",
    "gemm_w8a8",
    "gemm_w8a8_cpu",
    "quantize_rows",
]
