// Portable build of act_impl.h (the oracle), and the per-call dispatch.
#include "act/act_impl.h"
#include "common/cpu_features.h"
#include "common/lanes.h"

namespace tersor::act {

void silu_mul_ref(const SwigluArgs& a) { silu_mul_impl<Lanes8>(a); }

void silu_mul(const SwigluArgs& a) {
  dispatch_isa(a, silu_mul_ref, TERSOR_X86_FN(silu_mul_avx2), nullptr);
}

}  // namespace tersor::act
