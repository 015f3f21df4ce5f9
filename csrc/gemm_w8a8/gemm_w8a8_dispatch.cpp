#include <stdexcept>

#include "common/cpu_features.h"
#include "gemm_w8a8/gemm_w8a8.h"

namespace tersor::gemm_w8a8 {

void run(const PackedW8LinearArgs& a) {
  if (a.K > kMaxK) throw std::invalid_argument("gemm_w8a8: K > 65536 is not supported");
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512),
               TERSOR_X86_FN(run_amx));
}

void run_rows(const PackedW8LinearArgs& a, const RowFill& fill) {
  if (a.K > kMaxK) throw std::invalid_argument("gemm_w8a8: K > 65536 is not supported");
  if (a.M == 0 || a.N == 0) return;
  switch (active_isa()) {
#if defined(TERSOR_X86)
    case Isa::Amx: return run_rows_amx(a, fill);
    case Isa::Avx512: return run_rows_avx512(a, fill);
    case Isa::Avx2: return run_rows_avx2(a, fill);
#endif
    default: return run_rows_ref(a, fill);
  }
}

}  // namespace tersor::gemm_w8a8
