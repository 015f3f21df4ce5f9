// AVX2 build of attention_impl.h: the lanes are one __m256 (the same bits as the portable
// build, attention_ref.cpp).
#include "attention/attention_impl.h"
#include "common/lanes.h"

namespace tersor::attention {

void decode_avx2(const DecodeArgs& a) { decode_impl<Avx2Lanes8>(a); }

}  // namespace tersor::attention
