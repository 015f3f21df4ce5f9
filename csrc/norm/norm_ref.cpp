// Portable build of norm_impl.h (the oracle), and the per-call dispatch.
#include "common/cpu_features.h"
#include "common/lanes.h"
#include "norm/norm_impl.h"

namespace tersor::norm {

void rms_norm_ref(const RmsArgs& a) { rms_norm_impl<Lanes8>(a); }

void rms_norm(const RmsArgs& a) {
  dispatch_isa(a, rms_norm_ref, TERSOR_X86_FN(rms_norm_avx2), nullptr);
}

}  // namespace tersor::norm
