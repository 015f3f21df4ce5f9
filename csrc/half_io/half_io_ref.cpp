// Portable bf16 / fp16 <-> fp32 rows: the oracle of half_io_avx2.cpp (same bits).
#include <cstring>

#include "common/half.h"
#include "half_io/half_io.h"

namespace tersor::half_io {
namespace {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// IEEE binary16, nearest even, overflow -> Inf, NaN -> quiet NaN (the payload's top bits kept,
// as vcvtps2ph does).
inline uint16_t f16_from(float f) {
  const uint32_t u = bits_of(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (a >= 0x38800000u) {                                 // normal half (>= 2^-14)
    const uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);    // nearest even at bit 13
    return uint16_t(sign | ((r - 0x38000000u) >> 13));
  }
  if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): +-0
  // subnormal half: value = a's significand (with its implicit 1) shifted right
  const uint32_t e = a >> 23, mant = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14 + (113 - e): places the result's lsb at bit 0
  const uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
  const uint32_t up = rem > halfway || (rem == halfway && (q & 1u));
  return uint16_t(sign | (q + up));
}

}  // namespace

void widen_ref(const RowsArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    const uint16_t* s = static_cast<const uint16_t*>(a.src) + m * a.lds;
    float* d = static_cast<float*>(a.dst) + m * a.ldd;
    if (a.dtype == BF16) {
      for (int64_t k = 0; k < a.K; ++k) {
        const uint32_t u = uint32_t(s[k]) << 16;
        std::memcpy(d + k, &u, 4);
      }
    } else {
      for (int64_t k = 0; k < a.K; ++k) d[k] = half_to_float(s[k]);
    }
  }
}

void narrow_ref(const RowsArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    const float* s = static_cast<const float*>(a.src) + m * a.lds;
    uint16_t* d = static_cast<uint16_t*>(a.dst) + m * a.ldd;
    if (a.dtype == BF16) {
      for (int64_t k = 0; k < a.K; ++k) d[k] = bf16_from(s[k]);
    } else {
      for (int64_t k = 0; k < a.K; ++k) d[k] = f16_from(s[k]);
    }
  }
}

void scale_columns_ref(const ScaleArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    const float* s = a.src + m * a.lds;
    float* d = a.dst + m * a.ldd;
    for (int64_t k = 0; k < a.K; ++k) d[k] = s[k] * a.s[k];
  }
}

}  // namespace tersor::half_io
