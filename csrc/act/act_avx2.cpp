// AVX2 build of act_impl.h (the same bits as act_ref.cpp).
#include "act/act_impl.h"
#include "common/lanes.h"

namespace tersor::act {

void silu_mul_avx2(const SwigluArgs& a) { silu_mul_impl<Avx2Lanes8>(a); }

}  // namespace tersor::act
