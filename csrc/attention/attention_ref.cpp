// Portable build of attention_impl.h (the oracle: 8 fp32 lanes as a plain array), and the
// per-call dispatch.
#include "attention/attention_impl.h"
#include "common/cpu_features.h"
#include "common/lanes.h"

namespace tersor::attention {

void decode_ref(const DecodeArgs& a) { decode_impl<Lanes8>(a); }

void decode(const DecodeArgs& a) {
  dispatch_isa(a, decode_ref, TERSOR_X86_FN(decode_avx2), nullptr);
}

}  // namespace tersor::attention
