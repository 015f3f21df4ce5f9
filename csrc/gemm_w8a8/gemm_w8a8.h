// W8A8 GEMM: y = dequant(quant_row(x) . W8^T) + b, fp32 in and out.
//
// Activations are quantized per row inside the call (quant_act.h), weights are the packed
// symmetric per-channel int8 of common/formats.h. Accumulation is int32 and exact; the epilogue
// is, for every ISA path,  y = fma(float(acc), scale_x[m] * scale_w[n], bias[n])  so all paths
// agree bit for bit with the ref.
//
// K is limited to 65536 so that the VNNI accumulator (sum of (q+128)*w) cannot overflow int32.
#pragma once
#include "common/linear_args.h"

namespace tersor::gemm_w8a8 {

constexpr int64_t kMaxK = 65536;
constexpr int64_t kAmxMinRows = 4;  // measured: AMX wins from 4 rows (4096x4096)

void run_ref(const PackedW8LinearArgs& a);
void run_avx2(const PackedW8LinearArgs& a);
void run_avx512(const PackedW8LinearArgs& a);
void run_amx(const PackedW8LinearArgs& a);  // AMX-INT8 tiles from kAmxMinRows rows, else avx512
void run(const PackedW8LinearArgs& a);  // per-call ISA dispatch

}  // namespace tersor::gemm_w8a8
