// W8A8 GEMM: y = dequant(quant_row(x) . W8^T) + b, fp32 in and out.
//
// Activations are quantized per row inside the call (quant_act.h), weights are the packed
// symmetric per-channel int8 of common/formats.h. Accumulation is int32 and exact; the epilogue
// is, for every ISA path,  y = fma(float(acc), scale_x[m] * scale_w[n], bias[n])  so all paths
// agree bit for bit with the ref.
//
// K is limited to 65536 so that the VNNI accumulator (sum of (q+128)*w) cannot overflow int32.
#pragma once
#include <functional>

#include "common/linear_args.h"

namespace tersor::gemm_w8a8 {

constexpr int64_t kMaxK = 65536;
constexpr int64_t kAmxMinRows = 4;  // measured: AMX wins from 4 rows (4096x4096)

void run_ref(const PackedW8LinearArgs& a);
void run_avx2(const PackedW8LinearArgs& a);
void run_avx512(const PackedW8LinearArgs& a);
void run_amx(const PackedW8LinearArgs& a);  // AMX-INT8 tiles from kAmxMinRows rows, else avx512
void run(const PackedW8LinearArgs& a);  // per-call ISA dispatch

// Where the activation rows come from. run() quantizes the rows of a.x; the conv family instead
// gathers rows of codes from an input quantized once (a.x unused). fill(m, dst, group_stride,
// xor_mask) writes row m's s8 codes, byte k at dst[(k / 4) * group_stride + k % 4] XOR
// xor_mask, codes K..round_up(K, 4)-1 zero, and returns the row's scale.
using RowFill = std::function<float(int64_t m, uint8_t* dst, int64_t group_stride,
                                    uint8_t xor_mask)>;
void run_rows_ref(const PackedW8LinearArgs& a, const RowFill& fill);
void run_rows_avx2(const PackedW8LinearArgs& a, const RowFill& fill);
void run_rows_avx512(const PackedW8LinearArgs& a, const RowFill& fill);
void run_rows_amx(const PackedW8LinearArgs& a, const RowFill& fill);
void run_rows(const PackedW8LinearArgs& a, const RowFill& fill);  // per-call ISA dispatch

// AMX building blocks for callers that quantize activations themselves (the conv family).
// A is s8 [round_up(M, 32)][lda], zero beyond K and in the padding rows; sx its row scales.
// Row stride lda = round_up(K, 64) + 64: whole 64-k tiles, and off a power of two (with a
// power-of-two stride the 16 rows of an A tile share one L1 set: 4-10x slower at K = 4096).
static inline int64_t amx_lda(int64_t K) { return (K + 63) / 64 * 64 + 64; }
// Loads the tile configuration every AMX kernel here uses: tmm0..3 (C) 16 rows x 64 bytes,
// tmm4..5 (A) 16 rows x k_bytes, tmm6..7 (B) k_bytes / 4 rows x 64 bytes; k_bytes a multiple
// of 4 up to 64 (below 64: the convolution's narrow steps, conv/conv_w8a8_implicit.h).
void amx_configure_tiles(int64_t k_bytes = 64);
// tmm0..7 as rows[t] x colsb[t] bytes (palette 1), the others unused
void amx_configure_tile_shapes(const uint8_t rows[8], const uint16_t colsb[8]);
// Call inside an OpenMP parallel region: threads split the column pairs; writes a.y.
void amx_gemm_quantized(const PackedW8LinearArgs& a, const int8_t* aq, int64_t lda,
                        const float* sx);

}  // namespace tersor::gemm_w8a8
