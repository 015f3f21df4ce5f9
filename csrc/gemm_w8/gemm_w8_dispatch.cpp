#include "common/cpu_features.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {

void run(const PackedW8LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512));
}

}  // namespace tersor::gemm_w8
