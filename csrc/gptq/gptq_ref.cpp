// GPTQ's block pass (gptq.h), portable.
#include "gptq/gptq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/parallel.h"

namespace tersor::gptq {
namespace {

// Rows per tile: the block's 128 columns x 256 rows of w stay in L2 (128 KiB) while every
// column's rank-1 update sweeps them.
constexpr int64_t kRowTile = 256;

// round_half_even(v) for |v| < 2^22 (every in-range code; a larger v is clamped to the same
// end either way): v + 1.5 * 2^23 lands where the float spacing is 1, so the add rounds v to
// an integer, nearest even, and the subtract is exact. Vectorizes at the baseline ISA, where
// nearbyint is a library call per element (SSE4.1's roundps is not baseline).
inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

// One group's grid from its range (the rules in gptq.h): (scale, safe, zero).
inline void int4_grid(float lo, float hi, bool symmetric, float* scale, float* safe, float* z) {
  if (symmetric) {
    *scale = round_to_fp16(std::max(-lo, hi) / 7.0f);
  } else {
    lo = std::min(lo, 0.0f);
    hi = std::max(hi, 0.0f);
    *scale = round_to_fp16((hi - lo) / 15.0f);
  }
  *safe = *scale > 0.0f ? *scale : 1.0f;
  *z = symmetric ? 8.0f : std::min(std::max(std::nearbyint(-lo / *safe), 0.0f), 15.0f);
}

// kPruneTwoOfFour: for each row of the tile, the bits (1 << j) of the columns i + j that go.
void choose_two_of_four(const BlockArgs& a, int64_t i, int64_t r0, int64_t r1, uint8_t* drops) {
  const int cols = static_cast<int>(std::min<int64_t>(4, a.B - i));
  const int go = std::max(cols - 2, 0);  // a tail of 1-2 columns keeps them
  float d2[4];
  for (int j = 0; j < cols; ++j) {
    const float u = a.u[(i + j) * a.ldu + i + j];
    d2[j] = u * u;
  }
  for (int64_t r = r0; r < r1; ++r) {
    float score[4];
    for (int j = 0; j < cols; ++j) {
      const float w = a.w[(i + j) * a.ldw + r];
      score[j] = w * w / d2[j];
    }
    uint8_t bits = 0;
    for (int n = 0; n < go; ++n) {  // the smallest not yet taken; ties: the lower column
      int best = -1;
      for (int j = 0; j < cols; ++j)
        if (!(bits & (1 << j)) && (best < 0 || score[j] < score[best])) best = j;
      bits = static_cast<uint8_t>(bits | (1 << best));
    }
    drops[r - r0] = bits;
  }
}

// One tile of rows [r0, r1) through the whole block.
void tile_pass(const BlockArgs& a, int64_t r0, int64_t r1, float* safe_g, float* zero_g,
               uint8_t* drops) {
  const int64_t nr = r1 - r0;
  // the grid of row r is safe[r - off], zero[r - off]: the fixed one (off 0), or the tile's
  // group grid (off r0)
  const float* safe = a.safe;
  const float* zero = a.zero;
  int64_t off = 0;
  for (int64_t i = 0; i < a.B; ++i) {
    float* wi = a.w + i * a.ldw;
    if (a.group > 0 && i % a.group == 0) {  // the group's grid, from the current weights
      const int64_t gi = i / a.group, g_end = std::min(i + a.group, a.B);
      for (int64_t r = 0; r < nr; ++r) {
        float lo = wi[r0 + r], hi = lo;
        for (int64_t j = i + 1; j < g_end; ++j) {
          const float v = a.w[j * a.ldw + r0 + r];
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
        float scale, s, z;
        int4_grid(lo, hi, a.symmetric, &scale, &s, &z);
        safe_g[r] = s;
        zero_g[r] = z;
        a.group_scale[gi * a.n + r0 + r] = scale;
        a.group_zero[gi * a.n + r0 + r] = z;
      }
      safe = safe_g;
      zero = zero_g;
      off = r0;
    }
    if (a.mode == kPruneTwoOfFour && i % 4 == 0) choose_two_of_four(a, i, r0, r1, drops);
    const float d = a.u[i * a.ldu + i];
    float* ei = a.err + i * a.n;
    float* qi = a.q ? a.q + i * a.ldq : nullptr;
    float* vi = a.deq + i * a.ldq;
    const uint8_t* keep = a.keep ? a.keep + i * a.ldk : nullptr;
    if (a.mode == kQuantize) {
      for (int64_t r = r0; r < r1; ++r) {
        const float x = wi[r];
        const float s = safe[r - off], z = zero[r - off];
        float c = round_even(x / s) + z;
        c = std::min(std::max(c, a.qlo), a.qhi);
        if (keep && !keep[r]) c = 0.0f;
        const float v = (c - z) * s;
        if (qi) qi[r] = c;
        vi[r] = v;
        ei[r] = (x - v) / d;
      }
    } else {
      const int bit = 1 << (i % 4);
      for (int64_t r = r0; r < r1; ++r) {
        const float x = wi[r];
        const bool go = a.mode == kPruneKept ? !keep[r] : (drops[r - r0] & bit) != 0;
        vi[r] = go ? 0.0f : x;
        ei[r] = go ? x / d : 0.0f;
      }
    }
    for (int64_t j = i + 1; j < a.B; ++j) {  // the rank-1 update of the later columns
      const float uij = a.u[i * a.ldu + j];
      float* wj = a.w + j * a.ldw;
      for (int64_t r = r0; r < r1; ++r) wj[r] -= uij * ei[r];
    }
  }
}

}  // namespace

void rtn_int4(const float* w, int64_t N, int64_t K, int64_t group, bool symmetric, float* out,
              int nthreads) {
  parallel_team(team(nthreads), [&] {
    int64_t r0, r1;
    thread_range(N, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr = w + r * K;
      float* o = out + r * K;
      for (int64_t k0 = 0; k0 < K; k0 += group) {
        const int64_t k1 = std::min(k0 + group, K);
        float lo = wr[k0], hi = wr[k0];
        for (int64_t k = k0 + 1; k < k1; ++k) {
          lo = std::min(lo, wr[k]);
          hi = std::max(hi, wr[k]);
        }
        float scale, safe, z;
        int4_grid(lo, hi, symmetric, &scale, &safe, &z);
        for (int64_t k = k0; k < k1; ++k) {
          const float q = std::min(std::max(round_even(wr[k] / safe) + z, 0.0f), 15.0f);
          o[k] = (q - z) * scale;
        }
      }
    }
  });
}

float round_to_fp16(float f) {
  const float m = std::fabs(f);
  if (!(m < 65520.0f)) return std::isnan(f) ? f : std::copysign(INFINITY, f);  // fp16 overflow
  if (m < 6.103515625e-05f)  // below fp16's normal range: multiples of 2^-24
    return std::nearbyint(f * 16777216.0f) / 16777216.0f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0xFFFu + ((u >> 13) & 1u)) & ~0x1FFFu;  // 10 mantissa bits, nearest even
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

void block_pass(const BlockArgs& a) {
  const int64_t tiles = (a.n + kRowTile - 1) / kRowTile;
  parallel_team(team(a.nthreads), [&] {
    int64_t t0, t1;
    thread_range(tiles, &t0, &t1);
    std::vector<float> grid(a.group > 0 ? 2 * kRowTile : 0);
    std::vector<uint8_t> drops(a.mode == kPruneTwoOfFour ? kRowTile : 0);
    for (int64_t t = t0; t < t1; ++t)
      tile_pass(a, t * kRowTile, std::min((t + 1) * kRowTile, a.n), grid.data(),
                grid.data() + (grid.empty() ? 0 : kRowTile), drops.data());
  });
}

}  // namespace tersor::gptq
