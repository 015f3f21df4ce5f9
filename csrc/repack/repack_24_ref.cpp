// 2:4 conversion passes (repack.h): prune + compress + pack, and fp32 -> int8 values. Each
// thread takes whole 16-row blocks; every output byte is written by one thread.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "repack/repack.h"

namespace tersor::repack {
namespace {

constexpr int64_t kBlockN = 16;
constexpr uint8_t kPadMeta = 1 << 2;  // positions (0, 1)

// meta byte of a group's nonzero pattern (bit p: slot p nonzero, at most 2 set): its
// nonzeros topped up with its lowest zero slots, in order (formats/sparse24.py
// _meta_of_pattern).
const std::array<uint8_t, 16>& meta_of_pattern() {
  static const std::array<uint8_t, 16> table = [] {
    std::array<uint8_t, 16> t{};
    for (unsigned bits = 0; bits < 16; ++bits) {
      int p[2], n = 0;
      for (int q = 0; q < 4 && n < 2; ++q)
        if (bits >> q & 1) p[n++] = q;
      for (int q = 0; q < 4 && n < 2; ++q)
        if (!(bits >> q & 1)) p[n++] = q;
      t[bits] = static_cast<uint8_t>(std::min(p[0], p[1]) | std::max(p[0], p[1]) << 2);
    }
    return t;
  }();
  return table;
}

// The pruning's order of a score as an integer: |s|'s bits (monotonic for non-negative
// floats), every NaN above +inf and equal to each other (torch's sort: NaN highest).
inline uint32_t rank_key(float s) {
  uint32_t u;
  std::memcpy(&u, &s, 4);
  u &= 0x7FFFFFFFu;
  return u > 0x7F800000u ? 0x7FC00000u : u;
}

// Bits of the 2 slots of largest key, ties to the lower slot.
inline unsigned top2(const uint32_t (&key)[4]) {
  int a = 0;
  for (int q = 1; q < 4; ++q) a = key[q] > key[a] ? q : a;
  int b = a == 0 ? 1 : 0;
  for (int q = b + 1; q < 4; ++q) b = q != a && key[q] > key[b] ? q : b;
  return 1u << a | 1u << b;
}

// Whether n floats are all finite (one vectorizable pass; the group loop branches).
inline bool all_finite(const float* r, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::fabs(r[i]) <= 3.40282347e38f;
  return ok;
}

// fn(nb, thread's first-found slot) over the blocks of n rows, split over the threads;
// returns the smallest row any call reported through its `found` (or -1).
template <typename Fn>
int64_t for_each_block(int64_t N, int nthreads, Fn&& fn) {
  const int64_t nblocks = (N + kBlockN - 1) / kBlockN;
  std::vector<int64_t> found(nblocks, -1);
  parallel_team(team(nthreads), [&] {
    int64_t b0, b1;
    thread_range(nblocks, &b0, &b1);
    for (int64_t nb = b0; nb < b1; ++nb) fn(nb, &found[nb]);
  });
  for (int64_t f : found)
    if (f >= 0) return f;  // blocks in row order: the first is the smallest
  return -1;
}

inline void note(int64_t* found, int64_t row) {
  if (*found < 0) *found = row;
}

}  // namespace

S24Rows s24_prune_to_tiles(const S24PruneArgs& a) {
  const int64_t G = (a.K + 3) / 4, G4 = (G + 3) / 4 * 4;
  const auto& meta_of = meta_of_pattern();
  std::vector<int64_t> dense((a.N + kBlockN - 1) / kBlockN, -1);
  const int64_t nonfinite = for_each_block(a.N, a.nthreads, [&](int64_t nb, int64_t* found) {
    float* vb = a.values + nb * G * 2 * kBlockN;  // [G][2][16]
    uint8_t* mb = a.meta + nb * G4 * kBlockN;      // [G4][16]
    for (int64_t c = 0; c < kBlockN; ++c) {
      const int64_t n = nb * kBlockN + c;
      if (n >= a.N) {  // padding rows
        for (int64_t g = 0; g < 2 * G; ++g) vb[g * kBlockN + c] = 0.0f;
        for (int64_t g = 0; g < G4; ++g) mb[g * kBlockN + c] = kPadMeta;
        continue;
      }
      const float* r = a.rows + n * a.ld;
      const float* s = a.score ? a.score + n * a.ld_score : nullptr;
      if (!all_finite(r, a.K)) note(found, n);
      for (int64_t g = 0; g < G; ++g) {
        float w[4];
        unsigned bits = 0;
        for (int j = 0; j < 4; ++j) {
          const int64_t k = 4 * g + j;
          w[j] = k < a.K ? r[k] : 0.0f;
          bits |= (w[j] != 0.0f) << j;
        }
        if (__builtin_popcount(bits) > 2) {
          if (!a.prune) {
            note(&dense[nb], n);
          } else {
            uint32_t key[4];
            for (int j = 0; j < 4; ++j) {
              const int64_t k = 4 * g + j;
              key[j] = rank_key(!s ? w[j] : k < a.K ? s[k] : 0.0f);
            }
            bits &= top2(key);
          }
        }
        const uint8_t m = meta_of[bits & 15];
        // (an unpruned group of > 2 nonzeros is refused by the caller; its bytes are moot)
        vb[(2 * g) * kBlockN + c] = bits >> (m & 3) & 1 ? w[m & 3] : 0.0f;
        vb[(2 * g + 1) * kBlockN + c] = bits >> (m >> 2) & 1 ? w[m >> 2] : 0.0f;
        mb[g * kBlockN + c] = m;
      }
      for (int64_t g = G; g < G4; ++g) mb[g * kBlockN + c] = kPadMeta;
    }
  });
  int64_t first_dense = -1;
  for (int64_t d : dense)
    if (d >= 0) {
      first_dense = d;
      break;
    }
  return S24Rows{nonfinite, first_dense};
}

int64_t s24_tiles_to_int8(const S24Int8Args& a) {
  const int64_t G = (a.K + 3) / 4, G4 = (G + 3) / 4 * 4, K8 = (G + 1) / 2;
  const auto& meta_of = meta_of_pattern();
  return for_each_block(a.N, a.nthreads, [&](int64_t nb, int64_t* found) {
    const float* vb = a.values + nb * G * 2 * kBlockN;
    const uint8_t* mb = a.meta + nb * G4 * kBlockN;
    int8_t* qb = a.values8 + nb * K8 * kBlockN * 4;  // [K8][16][4]
    uint8_t* m8 = a.meta8 + nb * K8 * kBlockN;        // [K8][16]
    for (int64_t c = 0; c < kBlockN; ++c) {
      const int64_t n = nb * kBlockN + c;
      int8_t* lane = qb + 4 * c;
      if (n >= a.N) {
        for (int64_t t = 0; t < K8; ++t) {
          for (int j = 0; j < 4; ++j) lane[t * 64 + j] = 0;
          m8[t * kBlockN + c] = kPadMeta | kPadMeta << 4;
        }
        a.colsum[n] = 0;
        a.scale[n] = 0.0f;
        continue;
      }
      float amax = 0.0f;  // max |v| (torch: max(-min, max) over the dense row, zeros included)
      for (int64_t g = 0; g < G; ++g)
        for (int j = 0; j < 2; ++j) {
          const float v = vb[(2 * g + j) * kBlockN + c];
          if (!std::isfinite(v)) note(found, n);
          amax = std::fmax(amax, std::fabs(v));
        }
      const float scale = amax / 127.0f, safe = scale > 0.0f ? scale : 1.0f;
      int32_t sum = 0;
      for (int64_t g = 0; g < 2 * K8; ++g) {
        int8_t code[4] = {0, 0, 0, 0};
        uint8_t m = kPadMeta;
        if (g < G) {  // codes at the fp32 positions; the meta of the nonzero codes
          const uint8_t m32 = mb[g * kBlockN + c];
          unsigned bits = 0;
          for (int j = 0; j < 2; ++j) {
            const int p = j ? m32 >> 2 : m32 & 3;
            // round half to even (the default rounding mode), as torch's round_()
            const float q = std::nearbyint(vb[(2 * g + j) * kBlockN + c] / safe);
            code[p] = static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, q)));
            bits |= (code[p] != 0) << p;
          }
          m = meta_of[bits];
        }
        const int8_t v0 = code[m & 3], v1 = code[m >> 2];
        sum += v0 + v1;
        int8_t* out = lane + (g / 2) * 64 + 2 * (g % 2);
        out[0] = v0;
        out[1] = v1;
        uint8_t& mm = m8[(g / 2) * kBlockN + c];
        mm = g % 2 ? static_cast<uint8_t>(mm | m << 4) : m;
      }
      a.colsum[n] = sum;
      a.scale[n] = scale;
    }
  });
}

}  // namespace tersor::repack
