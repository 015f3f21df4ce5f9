#include <algorithm>
#include <cstring>
#include <memory>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "half_io/half_io.h"

namespace tersor::half_io {

// The AMX path runs the AVX-512 conversions. A large block is split over the threads (rows,
// or columns when there are fewer rows than threads): run single-threaded, a bf16 layer's
// staging left the second core idle for ~2-3% of a 128-row W4A8 GEMM (Zen 5).
namespace {

template <typename Fn>
void split(const RowsArgs& a, int64_t src_bytes, int64_t dst_bytes, Fn fn) {
  constexpr int64_t kMinElements = int64_t(1) << 16;  // below: the team's wake-up costs more
  const int nt = a.M * a.K < kMinElements ? 1 : std::max(1, a.nthreads);
  if (nt == 1) return fn(a);
  parallel_team(::tersor::team(nt), [&] {
#if defined(_OPENMP)
    const bool by_rows = a.M >= omp_get_num_threads();
#else
    const bool by_rows = true;
#endif
    int64_t i0, i1;
    thread_range(by_rows ? a.M : a.K, &i0, &i1);
    if (i1 > i0) {
      RowsArgs b = a;
      const int64_t s = by_rows ? i0 * a.lds : i0, d = by_rows ? i0 * a.ldd : i0;
      b.src = static_cast<const char*>(a.src) + s * src_bytes;
      b.dst = static_cast<char*>(a.dst) + d * dst_bytes;
      (by_rows ? b.M : b.K) = i1 - i0;
      fn(b);
    }
  });
}

void widen_one(const RowsArgs& a) {
  dispatch_isa(a, widen_ref, TERSOR_X86_FN(widen_avx2), TERSOR_X86_FN(widen_avx512));
}
void narrow_one(const RowsArgs& a) {
  dispatch_isa(a, narrow_ref, TERSOR_X86_FN(narrow_avx2), TERSOR_X86_FN(narrow_avx512));
}

}  // namespace

Converters converters() {
  switch (active_isa()) {
#if defined(TERSOR_X86)
    case Isa::Amx:
    case Isa::Avx512: return {widen_avx512, narrow_avx512};
    case Isa::Avx2: return {widen_avx2, narrow_avx2};
#endif
    default: return {widen_ref, narrow_ref};
  }
}

void Converters::widen(const void* src, int64_t n, float* dst, int dtype) const {
  if (dtype == F32)
    std::memcpy(dst, src, size_t(n) * 4);
  else if (n > 0)
    widen_rows({src, 1, n, n, dst, n, dtype});
}

void Converters::narrow(const float* src, int64_t n, void* dst, int dtype) const {
  if (dtype == F32)
    std::memcpy(dst, src, size_t(n) * 4);
  else if (n > 0)
    narrow_rows({src, 1, n, n, dst, n, dtype});
}

bool a8_writes_half_rows() {
#if defined(TERSOR_X86)
  return active_isa() >= Isa::Avx512;
#else
  return false;
#endif
}

void widen(const RowsArgs& a) {
  if (a.M == 0 || a.K == 0) return;
  split(a, 2, 4, widen_one);
}

void narrow(const RowsArgs& a) {
  if (a.M == 0 || a.K == 0) return;
  split(a, 4, 2, narrow_one);
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
