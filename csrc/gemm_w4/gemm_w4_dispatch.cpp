#include "common/cpu_features.h"
#include "gemm_w4/gemm_w4.h"

namespace tersor::gemm_w4 {

void run(const PackedW4LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512));
}

bool takes_half_rows(int64_t M) {
#if defined(TERSOR_X86)
  return active_isa() >= Isa::Avx512 && !dequantized_rows(M);
#else
  return false;
#endif
}

bool bf16_rows_on_tiles(int64_t M, int64_t group_size) {
#if defined(TERSOR_X86)
  return amx_bf16_available() && group_size % 32 == 0 && M <= kFewRowsMax;
#else
  return false;
#endif
}

void run_bf16(const PackedW4LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
#if defined(TERSOR_X86)
  if (bf16_rows_on_tiles(a.M, a.group_size)) return run_amx_bf16_rows(a);
  if (bf16_dot_available()) return run_avx512bf16(a);
#endif
  run_bf16_ref(a);
}

void run_bf16_tiles(const PackedW4LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
#if defined(TERSOR_X86)
  if (amx_bf16_available() && a.group_size % 32 == 0) return run_amx_bf16(a);
  if (bf16_dot_available()) return run_avx512bf16_scaled(a);
#endif
  run_bf16_scaled_ref(a);
}

void run_fp32_tiles(const PackedW4LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
#if defined(TERSOR_X86)
  if (amx_bf16_available() && a.group_size % 32 == 0)
    return a.M <= kFp32FewRowsMax ? run_amx_fp32_rows(a) : run_amx_fp32(a);
#endif
  run(a);
}

}  // namespace tersor::gemm_w4
