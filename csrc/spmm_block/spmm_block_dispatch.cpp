#include "common/cpu_features.h"
#include "spmm_block/spmm_block.h"

namespace tersor::spmm_block {

void run_f32(const Args& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, f32_ref, TERSOR_X86_FN(f32_avx2), TERSOR_X86_FN(f32_avx512));
}

void run_w8a8(const Args& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, w8a8_ref, TERSOR_X86_FN(w8a8_avx2), TERSOR_X86_FN(w8a8_avx512));
}

}  // namespace tersor::spmm_block
