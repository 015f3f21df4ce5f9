// Portable repacking loops (repack.h). Each thread takes whole 16-row blocks, so every tile
// byte is written by one thread and the work is split the same way for any thread count.
#include "repack/repack.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/parallel.h"

namespace tersor::repack {
namespace {

constexpr int64_t kBlockN = 16;
constexpr int64_t kInt4K = 8;  // k per W4Tile lane (4 bytes)
constexpr int64_t kInt8K = 4;  // k per W8Tile lane

// Code k of canonical row r (0 past K).
inline uint8_t code_at(const uint8_t* r, int64_t k, int64_t K, bool nibbles) {
  if (k >= K) return 0;
  if (!nibbles) return r[k];
  const uint8_t b = r[k >> 1];
  return (k & 1) ? (b >> 4) : (b & 0x0F);
}

// One row's tiles t in [0, Kp/8): out points at lane c of tile 0; tiles are 64 bytes apart.
void row_to_tiles(const uint8_t* r, uint8_t* out, int64_t K, int64_t Kp, bool nibbles) {
  const int64_t full = K / kInt4K;  // tiles whose 8 codes all lie below K
  int64_t t = 0;
  if (nibbles) {
    for (; t < full; ++t) {
      const uint8_t* b = r + 4 * t;
      uint8_t* o = out + 64 * t;
      o[0] = (b[0] & 0x0F) | (b[2] << 4);
      o[1] = (b[0] >> 4) | (b[2] & 0xF0);
      o[2] = (b[1] & 0x0F) | (b[3] << 4);
      o[3] = (b[1] >> 4) | (b[3] & 0xF0);
    }
  } else {
    for (; t < full; ++t) {
      const uint8_t* q = r + kInt4K * t;
      uint8_t* o = out + 64 * t;
      for (int j = 0; j < 4; ++j) o[j] = (q[j] & 0x0F) | (q[j + 4] << 4);
    }
  }
  for (; t < Kp / kInt4K; ++t) {  // the tail tile, then the padding (codes 0)
    uint8_t* o = out + 64 * t;
    for (int j = 0; j < 4; ++j) {
      const int64_t k = kInt4K * t + j;
      o[j] = code_at(r, k, K, nibbles) | (code_at(r, k + 4, K, nibbles) << 4);
    }
  }
}

void tiles_to_row(const uint8_t* in, uint8_t* r, int64_t K, bool nibbles) {
  const int64_t full = K / kInt4K;
  int64_t t = 0;
  if (nibbles) {
    for (; t < full; ++t) {
      const uint8_t* o = in + 64 * t;
      uint8_t* b = r + 4 * t;
      b[0] = (o[0] & 0x0F) | (o[1] << 4);
      b[1] = (o[2] & 0x0F) | (o[3] << 4);
      b[2] = (o[0] >> 4) | (o[1] & 0xF0);
      b[3] = (o[2] >> 4) | (o[3] & 0xF0);
    }
    if (t * kInt4K < K) {  // the tail: ceil((K - 8t) / 2) bytes, high nibbles past K zero
      const uint8_t* o = in + 64 * t;
      for (int64_t k = kInt4K * t; k < K; k += 2) {
        uint8_t v = 0;
        for (int64_t kk = k; kk < k + 2 && kk < K; ++kk) {
          const int64_t i = kk - kInt4K * t;
          const uint8_t c = (i < 4) ? (o[i] & 0x0F) : (o[i - 4] >> 4);
          v |= static_cast<uint8_t>(c << (4 * (kk - k)));
        }
        r[k >> 1] = v;
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t* o = in + 64 * (k / kInt4K);
      const int64_t i = k % kInt4K;
      r[k] = (i < 4) ? (o[i] & 0x0F) : (o[i - 4] >> 4);
    }
  }
}

// fn(n, lane) for every row n < Np = 16 ceil(N / 16): lane = the byte offset of row n's lane
// in tile 0 of its block (its tiles follow 64 bytes apart). A thread takes whole blocks.
template <typename Fn>
void for_each_lane(int64_t N, int64_t tiles_per_lane, int nthreads, Fn&& fn) {
  const int64_t nblocks = (N + kBlockN - 1) / kBlockN;
  parallel_team(team(nthreads), [&] {
    int64_t b0, b1;
    thread_range(nblocks, &b0, &b1);
    for (int64_t nb = b0; nb < b1; ++nb)
      for (int64_t c = 0; c < kBlockN; ++c)
        fn(nb * kBlockN + c, (nb * tiles_per_lane * kBlockN + c) * 4);
  });
}

}  // namespace

void int4_rows_to_tiles(const Int4Args& a) {
  const int64_t tiles_per_lane = a.Kp / kInt4K;
  for_each_lane(a.N, tiles_per_lane, a.nthreads, [&](int64_t n, int64_t lane) {
    if (n < a.N) {
      row_to_tiles(a.rows + n * a.ld, a.tiles + lane, a.K, a.Kp, a.nibbles);
    } else {
      for (int64_t t = 0; t < tiles_per_lane; ++t) std::memset(a.tiles + lane + 64 * t, 0, 4);
    }
  });
}

void int4_tiles_to_rows(const Int4Args& a) {
  for_each_lane(a.N, a.Kp / kInt4K, a.nthreads, [&](int64_t n, int64_t lane) {
    if (n < a.N) tiles_to_row(a.tiles + lane, a.rows + n * a.ld, a.K, a.nibbles);
  });
}

Int8Range int8_rows_to_tiles(const Int8Args& a) {
  const int64_t tiles_per_lane = a.Kp / kInt8K, full = a.K / kInt8K;
  std::vector<int8_t> row_lo(a.N), row_hi(a.N);  // each row's range, reduced after
  for_each_lane(a.N, tiles_per_lane, a.nthreads, [&](int64_t n, int64_t lane_at) {
    int8_t* lane = a.tiles + lane_at;
    if (n >= a.N) {
      for (int64_t t = 0; t < tiles_per_lane; ++t) std::memset(lane + 64 * t, 0, 4);
      a.colsum[n] = 0;
      return;
    }
    const int8_t* r = a.rows + n * a.ld;
    int32_t sum = 0;
    int lo = 127, hi = -128;
    for (int64_t k = 0; k < a.K; ++k) {  // (vectorized: one pass over a cached row)
      const int v = r[k];
      sum += v;
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    a.colsum[n] = sum;
    row_lo[n] = static_cast<int8_t>(lo);
    row_hi[n] = static_cast<int8_t>(hi);
    int64_t t = 0;
    for (; t < full; ++t) std::memcpy(lane + 64 * t, r + kInt8K * t, 4);
    for (; t < tiles_per_lane; ++t)
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t k = kInt8K * t + j;
        lane[64 * t + j] = k < a.K ? r[k] : 0;
      }
  });
  if (a.N == 0 || a.K == 0) return Int8Range{0, 0};
  return Int8Range{*std::min_element(row_lo.begin(), row_lo.end()),
                   *std::max_element(row_hi.begin(), row_hi.end())};
}

void int8_tiles_to_rows(const Int8Args& a) {
  const int64_t full = a.K / kInt8K;
  for_each_lane(a.N, a.Kp / kInt8K, a.nthreads, [&](int64_t n, int64_t lane_at) {
    if (n >= a.N) return;
    const int8_t* lane = a.tiles + lane_at;
    int8_t* r = a.rows + n * a.ld;
    int64_t t = 0;
    for (; t < full; ++t) std::memcpy(r + kInt8K * t, lane + 64 * t, 4);
    for (int64_t k = kInt8K * t; k < a.K; ++k) r[k] = lane[64 * t + (k - kInt8K * t)];
  });
}

template <typename T>
void gather_rows(const T* x, int64_t M, int64_t K, int64_t ldx, const int64_t* perm, T* y,
                 int64_t ldy, int nthreads) {
  const int nt = M * K < (int64_t(1) << 15) ? 1 : nthreads;
  parallel_team(::tersor::team(nt), [&] {
    int64_t m0, m1;
    thread_range(M, &m0, &m1);
    for (int64_t m = m0; m < m1; ++m) {
      const T* xr = x + m * ldx;
      T* yr = y + m * ldy;
      for (int64_t k = 0; k < K; ++k) yr[k] = xr[perm[k]];
    }
  });
}

void gather_columns(const void* x, int64_t M, int64_t K, int64_t ldx, const int64_t* perm,
                    void* y, int64_t ldy, int bytes, int nthreads) {
  if (bytes == 4)
    gather_rows(static_cast<const uint32_t*>(x), M, K, ldx, perm, static_cast<uint32_t*>(y),
                ldy, nthreads);
  else
    gather_rows(static_cast<const uint16_t*>(x), M, K, ldx, perm, static_cast<uint16_t*>(y),
                ldy, nthreads);
}

}  // namespace tersor::repack
