#include "common/cpu_features.h"
#include "dequant/dequant.h"

namespace tersor::dequant {

void w8(const W8Args& a) {
  if (a.N == 0 || a.K == 0) return;
  switch (active_isa()) {
#if defined(TERSOR_X86)
    case Isa::Amx:
    case Isa::Avx512: return w8_avx512(a);
    case Isa::Avx2: return w8_avx2(a);
#endif
    default: return w8_ref(a);
  }
}

void w4t(const W4TArgs& a) {
  if (a.N == 0 || a.K == 0) return;
  switch (active_isa()) {
#if defined(TERSOR_X86)
    case Isa::Amx:
    case Isa::Avx512: return w4t_avx512(a);
    case Isa::Avx2: return w4t_avx2(a);
#endif
    default: return w4t_ref(a);
  }
}

}  // namespace tersor::dequant
