// Portable oracle for per-row activation quantization (see quant_act.h for the exact rules).
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "common/cpu_features.h"
#include "common/formats.h"
#include "half_io/half_io.h"
#include "quant_act/quant_act.h"

namespace tersor::quant_act {

namespace {

// A row's codes by the rules (quant_act.h): the high plane's (the one-plane codes), or with lo
// the low plane's. Returns the plane's scale.
float quantize_plane_ref(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                         uint8_t xor_mask, float amax_floor, bool lo) {
  bool finite;
  const float amax = std::fmax(absmax_ref(x, K, &finite), amax_floor);
  const int64_t Kp = round_up(K, 4);
  auto put = [&](int64_t k, int8_t v) {
    dst[(k / 4) * group_stride + (k % 4)] = static_cast<uint8_t>(v) ^ xor_mask;
  };
  if (!finite || amax == 0.0f) {
    for (int64_t k = 0; k < Kp; ++k) put(k, 0);
    return finite ? 0.0f : NAN;
  }
  const float inv = 127.0f / amax;
  for (int64_t k = 0; k < K; ++k) {
    const float t = x[k] * inv;
    const float h = std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(t)));  // half to even
    put(k, static_cast<int8_t>(lo ? std::nearbyint((t - h) * 254.0f) : h));
  }
  for (int64_t k = K; k < Kp; ++k) put(k, 0);
  return lo ? amax / 127.0f / 254.0f : amax / 127.0f;
}

}  // namespace

float quantize_row_ref(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                       uint8_t xor_mask, float amax_floor) {
  return quantize_plane_ref(x, K, dst, group_stride, xor_mask, amax_floor, false);
}

float quantize_row_lo_ref(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                          uint8_t xor_mask, float amax_floor) {
  return quantize_plane_ref(x, K, dst, group_stride, xor_mask, amax_floor, true);
}

static float* row_buffer(int64_t K) {  // this thread's, overwritten by its next row
  thread_local std::vector<float> row;
  if (static_cast<int64_t>(row.size()) < K) row.resize(K);
  return row.data();
}

const float* scaled_row(const float* x, const float* s, int64_t K) {
  float* out = row_buffer(K);
  for (int64_t k = 0; k < K; ++k) out[k] = x[k] * s[k];
  return out;
}

const float* widened_row(const void* x, int io, half_io::RowsFn widen, const float* s,
                         int64_t K) {
  float* out = row_buffer(K);
  widen({x, 1, K, K, out, K, io});
  if (s)
    for (int64_t k = 0; k < K; ++k) out[k] *= s[k];
  return out;
}

float absmax_ref(const float* x, int64_t n, bool* finite) {
  float amax = 0.0f;
  *finite = true;
  for (int64_t k = 0; k < n; ++k) {
    if (!std::isfinite(x[k])) *finite = false;
    amax = std::fmax(amax, std::fabs(x[k]));
  }
  return amax;
}

void quantize_scaled_ref(const float* x, int64_t n, float inv, int8_t* dst) {
  for (int64_t k = 0; k < n; ++k) {
    const float v = std::nearbyint(x[k] * inv);  // default rounding mode: half to even
    dst[k] = static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, v)));
  }
}

float quantize_row_grouped(RowQuantizer quantize, const float* x, int64_t K, int64_t G,
                           int64_t ngroups, uint8_t* dst, int64_t panel_rows, int32_t* gsum,
                           float amax_floor) {
  const int64_t gs = 4 * panel_rows;  // bytes between consecutive 4-k groups of one row
  const float scale = quantize(x, K, dst, gs, 0, amax_floor);
  for (int64_t k4 = round_up(K, 4) / 4; k4 < ngroups * G / 4; ++k4)
    for (int i = 0; i < 4; ++i) dst[k4 * gs + i] = 0;
  for (int64_t g = 0; g < ngroups; ++g) {
    int32_t sum = 0;
    for (int64_t k4 = g * G / 4; k4 < (g + 1) * G / 4; ++k4)
      for (int i = 0; i < 4; ++i) sum += static_cast<int8_t>(dst[k4 * gs + i]);
    gsum[g] = sum;
  }
  return scale;
}

void quantize_rows(const float* x, int64_t M, int64_t K, int64_t ldx, int8_t* q, float* scales,
                   int nthreads) {
  // Row-major output means group_stride 4, Kp == K only if K % 4 == 0: use a scratch-free path
  // that writes exactly K codes per row by quantizing into a padded temporary.
  const Isa isa = active_isa();
  const int64_t Kp = round_up(K, 4);
  parallel_team(::tersor::team(clamp_threads(M >= 8 ? nthreads : 1)), [&] {
    uint8_t* tmp = new uint8_t[Kp];
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * ldx;
      float s;
      switch (isa) {
#if defined(TERSOR_X86)
        case Isa::Amx:
        case Isa::Avx512: s = quantize_row_avx512(xr, K, tmp, 4, 0); break;
        case Isa::Avx2: s = quantize_row_avx2(xr, K, tmp, 4, 0); break;
#endif
        default: s = quantize_row_ref(xr, K, tmp, 4, 0); break;
      }
      scales[m] = s;
      for (int64_t k = 0; k < K; ++k) q[m * K + k] = static_cast<int8_t>(tmp[k]);
    }
    delete[] tmp;
  });
}

}  // namespace tersor::quant_act
