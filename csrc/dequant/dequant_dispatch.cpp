#include "common/cpu_features.h"
#include "dequant/dequant.h"

namespace tersor::dequant {

void w8(const W8Args& a) {
  if (a.N == 0 || a.K == 0) return;
  dispatch_isa(a, w8_ref, TERSOR_X86_FN(w8_avx2), TERSOR_X86_FN(w8_avx512));
}

void w4t(const W4TArgs& a) {
  if (a.N == 0 || a.K == 0) return;
  dispatch_isa(a, w4t_ref, TERSOR_X86_FN(w4t_avx2), TERSOR_X86_FN(w4t_avx512));
}

}  // namespace tersor::dequant
