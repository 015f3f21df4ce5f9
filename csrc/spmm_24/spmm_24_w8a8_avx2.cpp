// AVX2 2:4 sparse int8 GEMM (CPUs without VNNI; rules in spmm_24.h, layout S24I8Tile).
// The same vpshufb selection as the AVX-512 path, 8 lanes per ymm (a 16-column block is two
// halves); vpmaddubsw multiplies, vpmaddwd with ones widens its int16 pairs to int32. Two tiles:
//  - calls of up to 7 rows (a decode step, bound by the weight stream): the meta decoded in the
//    tile and gemm_w8a8_avx2's sign trick, |a| * sign(w, a) == a * w (|a|, |w| <= 127 cannot
//    saturate).
//  - from 8 rows: the sign folded into the selection. A thread stages each column block once
//    (StagedBlock): |w|, and the vpshufb indices with 8 added where w < 0. Each row j-step of
//    8 codes is stored as 16 bytes, the codes and their complements ~a = -a - 1:
//
//      row2[m][j] = | a(8j) .. a(8j+7) | ~a(8j) .. ~a(8j+7) |     (vbroadcasti128 to both lanes)
//
//    so one vpshufb hands a lane a where w >= 0 and ~a where w < 0, and
//    |w| * ~a = |w| * (-a - 1) = a * w - |w|: the accumulators start at each column's sum of
//    |w| over its negative values and the sum comes out exact (|w| <= 127 against any s8 code
//    cannot saturate). Per row and 8 k of 16 columns that is 2 vpshufb, 2 vpmaddubsw, 2 vpmaddwd
//    and 2 adds, where the sign trick's tile also decodes the meta and spends 2 vpsignb and a
//    vpabsb (vpsignb shares the two multiply ports with vpmaddubsw / vpmaddwd on Zen).
#include <immintrin.h>

#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/weight_stream.h"
#include "quant_act/quant_act.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {
namespace {

// 8 meta bytes -> 8 lanes of 4 vpshufb indices (see decode_meta in the AVX-512 file).
inline __m256i decode_meta8(const uint8_t* meta) {
  const __m256i m =
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(meta)));
  const __m256i t = _mm256_or_si256(_mm256_or_si256(m, _mm256_slli_epi32(m, 6)),
                                    _mm256_or_si256(_mm256_slli_epi32(m, 12),
                                                    _mm256_slli_epi32(m, 18)));
  return _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(0x03030303)),
                         _mm256_set1_epi32(0x04040000));
}

constexpr int kMR = 4;
// Calls of this many rows and more take the folded-sign tiles. Staging a block costs about what
// one 4-row tile does, and where the weights come from DRAM the staging pass reads them without
// the tiles' compute to hide it: Zen 3, 2 threads, 4096x4096 (DRAM) 0.6-0.8x the speed at 2-4
// rows, even at 5-6, 1.28x at 8; 384x1536 (L3) even at 4-6, 1.58x at 8.
constexpr int64_t kStagedFromRows = 8;

// Calls of up to kPrefetchMaxRows rows (a decode step, bound by the weight stream) prefetch the
// value and meta streams kPrefetchLines ahead with the hint of common/weight_stream.h (PF 1:
// T0, 2: NTA), as gemm_w8a8_avx2's decode tiles do. Zen 3, 2 threads, weights from DRAM,
// in-process A/B on 4096x4096, 4096x11008, 11008x4096, 2048x8192: one row 1.05-1.12x faster,
// two rows 0.98-1.13x, three or four even (their tiles' compute hides the stream).
constexpr int64_t kPrefetchLines = 8, kPrefetchMaxRows = 2;

template <int PF>
inline void prefetch_line(const void* p) {
  if constexpr (PF == 2) _mm_prefetch(static_cast<const char*>(p), _MM_HINT_NTA);
  if constexpr (PF == 1) _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
}

template <int MR, int PF>
void tile(const W8A8Args& a, const uint8_t* aq, int64_t lda, int64_t K8, const float* sx,
          int64_t nb, int64_t m0) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int8_t* wp = a.values + nb * K8 * 64;
  const uint8_t* mp = a.meta + nb * K8 * 16;
  for (int64_t j = 0; j < K8; ++j, wp += 64, mp += 16) {
    if constexpr (PF != 0) {  // past the block's end: the next block's start (never faults)
      prefetch_line<PF>(wp + kPrefetchLines * 64);
      if ((j & 3) == 0) prefetch_line<PF>(mp + kPrefetchLines * 64);
    }
    const __m256i w[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32))};
    const __m256i idx[2] = {decode_meta8(mp), decode_meta8(mp + 8)};
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256i av =
          _mm256_set1_epi64x(*reinterpret_cast<const long long*>(aq + (m0 + r) * lda + 8 * j));
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h) {
        const __m256i sel = _mm256_shuffle_epi8(av, idx[h]);
        const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(sel), _mm256_sign_epi8(w[h], sel));
        acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(p, ones));
      }
    }
  }
  store_int8_tile<MR>(acc, sx + m0, a.w_scale, a.bias, a.N, a.y + m0 * a.ldy, a.ldy,
                      nb * 16);
}

using TileFn = void (*)(const W8A8Args&, const uint8_t*, int64_t, int64_t, const float*, int64_t,
                        int64_t);
constexpr TileFn kTiles[3][kMR] = {{tile<1, 0>, tile<2, 0>, tile<3, 0>, tile<4, 0>},
                                    {tile<1, 1>, tile<2, 1>, tile<3, 1>, tile<4, 1>},
                                    {tile<1, 2>, tile<2, 2>, tile<3, 2>, tile<4, 2>}};

// One thread's column block, staged for the folded-sign tile (above), 128 bytes per 8 k:
//   ops[j] = | idx cols 0-7 | idx cols 8-15 | |w| cols 0-7 | |w| cols 8-15 |
//   (idx: decode_meta8's 4 indices per lane, + 8 in the bytes where w < 0)
//   sums[c] = sum of |w| over column c's negative values, where its accumulators start
struct StagedBlock {
  const int8_t* src = nullptr;  // the block staged now
  Scratch<uint8_t> ops;
  int64_t capacity = 0;
  alignas(32) int32_t sums[16];

  void stage(const W8A8Args& a, int64_t K8, int64_t nb) {
    const int8_t* values = a.values + nb * K8 * 64;
    if (values == src) return;
    if (K8 * 128 > capacity) {
      capacity = K8 * 128;
      ops = alloc_scratch<uint8_t>(capacity);
    }
    const __m256i zero = _mm256_setzero_si256(), eight = _mm256_set1_epi8(8);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    const uint8_t* meta = a.meta + nb * K8 * 16;
    __m256i neg_sum[2] = {zero, zero};  // -sum |w| over the negative values, per column
    uint8_t* dst = ops.get();
    for (int64_t j = 0; j < K8; ++j, dst += 128) {
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h) {
        const __m256i v =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + 64 * j + 32 * h));
        const __m256i neg = _mm256_cmpgt_epi8(zero, v);
        const __m256i idx =
            _mm256_or_si256(decode_meta8(meta + 16 * j + 8 * h), _mm256_and_si256(neg, eight));
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 32 * h), idx);
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 64 + 32 * h), _mm256_abs_epi8(v));
        neg_sum[h] = _mm256_add_epi32(
            neg_sum[h],
            _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_min_epi8(v, zero)), ones16));
      }
    }
TERSOR_UNROLL
    for (int h = 0; h < 2; ++h)
      _mm256_store_si256(reinterpret_cast<__m256i*>(sums + 8 * h),
                         _mm256_sub_epi32(zero, neg_sum[h]));
    src = values;
  }
};

// Rows m0 .. m0 + MR (row2: the codes and complements, 16 bytes per 8 k) against the staged
// block nb.
template <int MR>
void tile_staged(const W8A8Args& a, const uint8_t* row2, int64_t ld2, int64_t K8,
                 const float* sx, const StagedBlock& st, int64_t nb, int64_t m0) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    const __m256i start = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.sums + 8 * h));
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[r][h] = start;
  }
  const uint8_t* op = st.ops.get();
  const uint8_t* rp = row2 + m0 * ld2;
  for (int64_t j = 0; j < K8; ++j, op += 128, rp += 16) {
    const __m256i idx0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(op));
    const __m256i idx1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(op + 32));
    const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(op + 64));
    const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(op + 96));
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256i av = _mm256_broadcastsi128_si256(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp + r * ld2)));
      const __m256i p0 = _mm256_maddubs_epi16(w0, _mm256_shuffle_epi8(av, idx0));
      const __m256i p1 = _mm256_maddubs_epi16(w1, _mm256_shuffle_epi8(av, idx1));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, ones));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, ones));
    }
  }
  store_int8_tile<MR>(acc, sx + m0, a.w_scale, a.bias, a.N, a.y + m0 * a.ldy, a.ldy,
                      nb * 16);
}

using StagedFn = void (*)(const W8A8Args&, const uint8_t*, int64_t, int64_t, const float*,
                          const StagedBlock&, int64_t, int64_t);
constexpr StagedFn kStagedTiles[kMR] = {tile_staged<1>, tile_staged<2>, tile_staged<3>,
                                        tile_staged<4>};

// A row of codes (K8 * 8 bytes, zero past K, readable to a multiple of 32) as row2 (above).
void complement_pairs(const uint8_t* row, int64_t K8, uint8_t* row2) {
  const __m256i all = _mm256_set1_epi8(-1);
  for (int64_t j = 0; j < K8; j += 4, row += 32, row2 += 64) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
    const __m256i nv = _mm256_xor_si256(v, all);
    const __m256i lo = _mm256_unpacklo_epi64(v, nv);  // j, j + 2
    const __m256i hi = _mm256_unpackhi_epi64(v, nv);  // j + 1, j + 3
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row2),
                        _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row2 + 32),
                        _mm256_permute2x128_si256(lo, hi, 0x31));
  }
}

}  // namespace

void run_w8a8_avx2(const W8A8Args& a) {
  const int64_t K8 = k8_blocks(a.K), n_blocks = (a.N + 15) / 16;
  const int64_t lda = round_up(K8 * 8, 64) + 64;
  const bool staged = a.M >= kStagedFromRows;
  const int64_t ld2 = round_up(K8, 4) * 16 + 64;  // off a power of two (see gemm_w8a8.h)
  auto aq = alloc_scratch<uint8_t>(a.M * lda);
  auto row2 = alloc_scratch<uint8_t>(staged ? a.M * ld2 : 0);
  auto sx = alloc_scratch<float>(a.M);
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
  const int prefetch =
      a.M > kPrefetchMaxRows ? 0 : weight_stream_nta(a.values, n_blocks * K8 * 80) ? 2 : 1;
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* row = aq.get() + m * lda;
      const int64_t done = round_up(a.K, 4);
      std::memset(row + done, 0, round_up(K8 * 8, 32) - done);
      sx.get()[m] = quant_act::quantize_row_avx2(a.x + m * a.ldx, a.K, row, 4, 0,
                                                 quant_act::amax_floor(a.row_amax, m));
      if (staged) complement_pairs(row, K8, row2.get() + m * ld2);
    }
    if (staged) {
      StagedBlock st;
      for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
        st.stage(a, K8, nb);
        kStagedTiles[mr - 1](a, row2.get(), ld2, K8, sx.get(), st, nb, m0);
      });
    } else {
      for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
        kTiles[prefetch][mr - 1](a, aq.get(), lda, K8, sx.get(), nb, m0);
      });
    }
  });
}

}  // namespace tersor::spmm_24
