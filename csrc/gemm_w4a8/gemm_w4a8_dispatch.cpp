#include "common/cpu_features.h"
#include "gemm_w4a8/gemm_w4a8.h"

namespace tersor::gemm_w4a8 {

void run(const PackedW4LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512),
               TERSOR_X86_FN(run_amx));
}

}  // namespace tersor::gemm_w4a8
