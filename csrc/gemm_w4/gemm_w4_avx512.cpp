// AVX-512 W4 weight-only GEMM (rules in gemm_w4.h).
//
// Lane c of a W4Tile holds k = 8t + i of column c at bits 8i (i < 4) and 8(i - 4) + 4 (i >= 4).
// vpermps looks up only the low 4 bits of each index lane, so one shift and one permute of a
// 16-entry table {-8, ..., 7} turn k = 8t + i of all 16 columns into exact floats (q - 8): no
// mask, no convert, no per-weight scale. Scales and zero points are applied once per 32-k chunk.
// Register tile: MR rows x NB blocks (NB = 4 for M = 1: bandwidth-bound, more streams).
#include <immintrin.h>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "common/slab_gemm_avx512.h"
#include "gemm_w4/gemm_w4.h"
#include "half_io/half_avx512.h"

namespace tersor::gemm_w4 {
namespace {

constexpr int kMR = 4;
// Each of the NB weight streams prefetched this many 64-byte W4Tiles ahead. The streams of a
// small layer are short (K / 8 tiles) and the hardware prefetcher ramps up late on them: one row
// 0.91-1.00x the time on 384x1536 .. 4096x4096, weights from DRAM (Sapphire Rapids, 2 threads);
// 16 ahead was no better, the next tile whole up front worse (0.93-1.06x, 1.12-1.50x). The 2-15
// row tiles too (below the slabs): 1.05-1.25x faster at 2-4 rows, 1.0-1.1x at 8-12 (Zen 5,
// 4096x4096 / 2048x8192 from DRAM).
constexpr int64_t kPrefetchTiles = 8;

constexpr int shift_of(int i) { return i < 4 ? 8 * i : 8 * (i - 4) + 4; }

template <int MR, int NB>
void tile(const PackedW4LinearArgs& a, const float* X, int64_t nchunks, int64_t m0, int64_t nb0) {
  const int64_t G = a.group_size, block_bytes = a.ngroups * G * 8;
  const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  const float* x = a.x + m0 * a.ldx;
  __m512 acc[MR][NB], part[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) acc[r][j] = part[r][j] = _mm512_setzero_ps();
  const int64_t k8_end = (a.K + 7) / 8;
  for (int64_t t = 0; t < k8_end; ++t) {
    __m512i v[NB];
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) v[j] = _mm512_loadu_si512(a.w + (nb0 + j) * block_bytes + t * 64);
    {  // near a stream's end, the start of the same stream of the next tile's blocks
      const int64_t ta = t + kPrefetchTiles;
      const uint8_t* ahead =
          ta < k8_end ? a.w + nb0 * block_bytes + ta * 64 : a.w + (nb0 + NB) * block_bytes +
                                                                 (ta - k8_end) * 64;
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(ahead + j * block_bytes), _MM_HINT_T0);
    }
    auto step = [&](int i) {
      __m512 q[NB];
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j)
        q[j] = _mm512_permutexvar_ps(i == 0 ? v[j] : _mm512_srli_epi32(v[j], shift_of(i)), lut);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 xb = _mm512_set1_ps(x[r * a.ldx + 8 * t + i]);
TERSOR_UNROLL
        for (int j = 0; j < NB; ++j) part[r][j] = _mm512_fmadd_ps(xb, q[j], part[r][j]);
      }
    };
    const int kn = a.K - 8 * t >= 8 ? 8 : static_cast<int>(a.K - 8 * t);
    if (kn == 8) {
TERSOR_UNROLL
      for (int i = 0; i < 8; ++i) step(i);  // constant shifts
    } else {
      for (int i = 0; i < kn; ++i) step(i);  // the last, partial tile of K
    }
    if (t % (kChunk / 8) == kChunk / 8 - 1 || t == k8_end - 1) {  // close a 32-k chunk
      const int64_t c = t / (kChunk / 8), g = 8 * t / G;
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) {
        const int64_t meta = ((nb0 + j) * a.ngroups + g) * 16;
        const __m512 s =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
        const __m512 zc = a.zero ? _mm512_sub_ps(_mm512_set1_ps(8.0f),
                                                 _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                                         a.zero + meta)))))
                                 : _mm512_setzero_ps();
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          const __m512 tv = _mm512_fmadd_ps(zc, _mm512_set1_ps(X[r * nchunks + c]), part[r][j]);
          acc[r][j] = _mm512_fmadd_ps(tv, s, acc[r][j]);
          part[r][j] = _mm512_setzero_ps();
        }
      }
    }
  }
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (nb0 + j) * 16;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __mmask16 mask = tail_mask16(left);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      half_io::store_y16(a, m0 + r, n, mask, _mm512_add_ps(acc[r][j], b));
  }
}

using TileFn = void (*)(const PackedW4LinearArgs&, const float*, int64_t, int64_t, int64_t);
template <int MR>
constexpr TileFn pick_wide(int nb) {
  return nb == 1 ? tile<MR, 1> : nb == 2 ? tile<MR, 2> : nb == 3 ? tile<MR, 3> : tile<MR, 4>;
}
template <int MR>
constexpr TileFn pick_narrow(int nb) { return nb == 1 ? tile<MR, 1> : tile<MR, 2>; }
TileFn pick(int mr, int nb, bool wide) {
  if (wide) return pick_wide<1>(nb);
  switch (mr) {
    case 1: return pick_narrow<1>(nb);
    case 2: return pick_narrow<2>(nb);
    case 3: return pick_narrow<3>(nb);
    default: return pick_narrow<4>(nb);
  }
}

// Rows in batches where the dequantized rules apply (gemm_w4.h): the dequantized columns of
// blocks nb0 .. nb0 + nb - 1, k in [k0, k1) (k0 a multiple of 8) -> panel[(k - k0) * 64 +
// 16 j + c] (common/slab_gemm_avx512.h), whole W4Tiles (the codes past K are zero padding).
// Per 16 weights: a shift, the table lookup (q - 8), minus z - 8 and times s, all exact.
void widen_slab_dequantized(const PackedW4LinearArgs& a, int64_t nb0, int nb, int64_t k0,
                            int64_t k1, float* panel) {
  const int64_t block_bytes = a.ngroups * a.group_size * 8;
  const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  for (int j = 0; j < nb; ++j) {
    const uint8_t* wb = a.w + (nb0 + j) * block_bytes;
    for (int64_t t = k0 / 8; t < (k1 + 7) / 8; ++t) {
      const int64_t meta = ((nb0 + j) * a.ngroups + 8 * t / a.group_size) * 16;
      const __m512 s =
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
      const __m512 zc =  // z - 8
          a.zero ? _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                     reinterpret_cast<const __m128i*>(a.zero + meta)))),
                                 _mm512_set1_ps(8.0f))
                 : _mm512_setzero_ps();
      const __m512i v = _mm512_loadu_si512(wb + t * 64);
      prefetch_next_slab(wb + t * 64, slab_avx512::kSlabK / 8);
      float* out = panel + (8 * t - k0) * slab_avx512::kCols + 16 * j;
TERSOR_UNROLL
      for (int i = 0; i < 8; ++i) {
        const __m512 q = _mm512_permutexvar_ps(i == 0 ? v : _mm512_srli_epi32(v, shift_of(i)), lut);
        _mm512_store_ps(out + i * slab_avx512::kCols, _mm512_mul_ps(_mm512_sub_ps(q, zc), s));
      }
    }
  }
}

}  // namespace

void run_avx512(const PackedW4LinearArgs& a) {
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  if (dequantized_rows(a.M)) {
    slab_avx512::run(
        a.x, a.ldx, a.M, a.K, n_blocks, threads_for_work(double(a.M) * a.N * a.K, a.nthreads),
        [&](int64_t nb0, int nb, int64_t k0, int64_t k1, float* p) {
          widen_slab_dequantized(a, nb0, nb, k0, k1, p);
        },
        [&](int64_t nb0, int nb, int64_t r0, int64_t r1, const float* acc) {
          slab_avx512::store_plus_bias(a.y, a.ldy, a.N, a.bias, nb0, nb, r0, r1, acc);
        });
    return;
  }
  const int64_t nbw = a.M == 1 ? 4 : 2;  // 4 x 2 accumulators fit in 32 zmm only for 1 row
  const int64_t nks = (a.K + kChunk - 1) / kChunk;
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  const int team_size = ::tersor::team(nt);
  // per thread: the rows' chunk sums, then (half rows) the rows widened
  const int64_t sums_floats = round_up(a.M * nks, 16);
  const int64_t per_thread = sums_floats + (a.x_io ? round_up(a.M * a.K, 16) : 0);
  auto scratch = alloc_scratch<float>(team_size * per_thread);
  parallel_team(team_size, [&] {
    // every thread sums (and widens) all rows itself, M * K adds against its M * K * N / nt
    // multiply-adds: no barrier between the sums and the tiles
    float* X = scratch.get() + thread_index() * per_thread;
    PackedW4LinearArgs t = a;
    if (a.x_io) {
      float* rows = X + sums_floats;
      a.x_widen({a.x, a.M, a.K, a.ldx, rows, a.K, a.x_io});
      t.x = rows;
      t.ldx = a.K;
      t.x_io = 0;
    }
    for (int64_t m = 0; m < a.M; ++m) chunk_sums(t.x + m * t.ldx, a.K, X + m * nks);
    for_each_tile(n_blocks, nbw, a.M, kMR, [&](int64_t nb0, int nb, int64_t m0, int mr) {
      pick(mr, nb, nbw == 4)(t, X + m0 * nks, nks, m0, nb0);
    });
  });
}

}  // namespace tersor::gemm_w4
