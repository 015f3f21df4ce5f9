#include "common/cpu_features.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {

void run(const PackedW8LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512));
}

void run_bf16(const PackedW8LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
#if defined(TERSOR_X86)
  if (bf16_dot_available()) return run_avx512bf16(a);
#endif
  run_bf16_ref(a);
}

void run_bf16_tiles(const PackedW8LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
#if defined(TERSOR_X86)
  if (amx_bf16_available()) return run_amx_bf16(a);
#endif
  run_bf16(a);
}

void run_fp32_tiles(const PackedW8LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
#if defined(TERSOR_X86)
  if (amx_bf16_available()) return run_amx_fp32(a);
#endif
  run(a);
}

}  // namespace tersor::gemm_w8
