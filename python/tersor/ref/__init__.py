"""Plain torch math: the oracle for tests and the last-resort fallback on any device."""

from tersor.ref.int4 import gemm_w4_ref, gemm_w4a8_ref
from tersor.ref.int8 import (
    dequant_w8_ref,
    gemm_w8_ref,
    gemm_w8a8_ref,
    quantize_planes_ref,
    quantize_rows_ref,
)
from tersor.ref.sparse import spmm_24_ref, spmm_block_ref, spmm_csr_ref

__all__ = [
    "dequant_w8_ref",
    "gemm_w4_ref",
    "gemm_w4a8_ref",
    "gemm_w8_ref",
    "gemm_w8a8_ref",
    "quantize_planes_ref",
    "quantize_rows_ref",
    "spmm_24_ref",
    "spmm_block_ref",
    "spmm_csr_ref",
]
