"""Triton kernels, installed as ``tersor.triton_kernels`` (Triton itself owns the top-level name
``triton_kernels``). Importing a kernel module needs triton; on CPU tensors the kernels run under
TRITON_INTERPRET=1 (the CI checks), on CUDA tensors natively.

    gemm_w8a8.py   per-row int8 quantization + int8 tl.dot GEMM with the scale epilogue
    gemm_w4.py     float (fp32/fp16/bf16) x int4 group-wise GEMM, dequantize fused in the K loop,
                   split-K for small M, autotuned tiles on a GPU
    dequant.py     whole-weight int8 / int4 -> fp16/bf16/fp32 (the large-M path)
"""

# Every launch names its floating-point contraction (Triton 3.9 warns when a launch leaves it to
# the default, which 3.10 changes): fused multiply-adds on in the GEMMs and dequantization, off
# where a rounding must match the CPU kernels' (gemm_w8a8.quantize_rows).
FP_FUSION = {"enable_fp_fusion": True}
