#include <memory>

#include "common/cpu_features.h"
#include "half_io/half_io.h"

namespace tersor::half_io {

// Conversions have no AVX-512 path of their own: AVX2 + F16C is already far below the GEMM's
// cost (the AVX-512 and AMX paths run the AVX2 conversion).
void widen(const RowsArgs& a) {
  if (a.M == 0 || a.K == 0) return;
  dispatch_isa(a, widen_ref, TERSOR_X86_FN(widen_avx2), nullptr);
}

void narrow(const RowsArgs& a) {
  if (a.M == 0 || a.K == 0) return;
  dispatch_isa(a, narrow_ref, TERSOR_X86_FN(narrow_avx2), nullptr);
}

void scale_columns(const ScaleArgs& a) {
  if (a.M == 0 || a.K == 0) return;
  dispatch_isa(a, scale_columns_ref, TERSOR_X86_FN(scale_columns_avx2), nullptr);
}

float* scratch(int64_t floats) {
  // per thread: layers called from several Python threads at once each stage their own rows
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t size = 0;
  if (floats > size) {
    buf.reset(new float[floats]);
    size = floats;
  }
  return buf.get();
}

}  // namespace tersor::half_io
