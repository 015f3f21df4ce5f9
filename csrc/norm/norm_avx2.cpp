// AVX2 build of norm_impl.h (the same bits as norm_ref.cpp).
#include "common/lanes.h"
#include "norm/norm_impl.h"

namespace tersor::norm {

void rms_norm_avx2(const RmsArgs& a) { rms_norm_impl<Avx2Lanes8>(a); }

}  // namespace tersor::norm
