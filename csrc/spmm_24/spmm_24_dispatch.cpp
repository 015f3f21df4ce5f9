#include "common/cpu_features.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {

void run(const Args& a) {
  if (a.M == 0 || a.N == 0) return;
  switch (active_isa()) {
#if defined(TERSOR_X86)
    case Isa::Amx:
    case Isa::Avx512: return run_avx512(a);
    case Isa::Avx2: return run_avx2(a);
#endif
    default: return run_ref(a);
  }
}

}  // namespace tersor::spmm_24
