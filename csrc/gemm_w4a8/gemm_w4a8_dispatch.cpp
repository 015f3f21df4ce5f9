#include "common/cpu_features.h"
#include "gemm_w4a8/gemm_w4a8.h"

namespace tersor::gemm_w4a8 {

void run(const PackedW4LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  switch (active_isa()) {
#if defined(TERSOR_X86)
    case Isa::Amx: return run_amx(a);
    case Isa::Avx512: return run_avx512(a);
    case Isa::Avx2: return run_avx2(a);
#endif
    default: return run_ref(a);
  }
}

}  // namespace tersor::gemm_w4a8
