// AVX2 W8A8 convolution without a gather (direct_rows.h): the GEMM micro-kernel
// (gemm_w8a8/tile_avx2.h) broadcasts one 4-code group of one row at a time, so its rows need
// not be packed. In the static pipeline (c.out) the tiles write the next layer's codes directly.
#include <immintrin.h>

#include <algorithm>

#include "common/parallel.h"
#include "conv/conv_w8a8.h"
#include "conv/direct_rows.h"
#include "gemm_w8a8/tile_avx2.h"

namespace tersor::conv {

namespace {
// dst[i] = src[i] ^ 0x80: s8 codes as u8 a + 128
inline void flip_copy(uint8_t* dst, const uint8_t* src, int64_t n) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm256_xor_si256(flip, _mm256_loadu_si256(
                                                   reinterpret_cast<const __m256i*>(src + i))));
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm_xor_si128(_mm256_castsi256_si128(flip),
                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = src[i] ^ 0x80;
}
}  // namespace

void run_w8a8_avx2(const ConvCall& k) {
  const ConvW8A8Args& c = k.c;
  const DirectRuns d = direct_runs(c, k.in);
  if (!direct_applies(c, d)) return run_gathered(k);
  const PackedW8LinearArgs a = direct_gemm_args(c, d);
  const gemm_w8a8::CodesOut codes = direct_codes(c);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, c.nthreads);
  // A 1x1 layer with narrow weights over signed codes (MobileNetV2's expansions read the
  // projections' outputs): a row block with a signed tile is copied once as u8 a + 128, and its
  // tiles take kNarrowBiased, where kNarrowFlip flipped each code once per column block
  // (tile_avx2.h). Zen 3, MobileNetV2's expansions: 1.04-1.09x from 32 channels; over 16-24
  // the epilogue outweighs the flips (0.94-1.02x), so those keep the flip in the tile.
  const bool flip_rows = c.narrow_w && direct_reads_signs(c) && c.C >= 32;
  // Narrow weights over signed images in the padded copy (a normalized photo into the stem):
  // the copy is ours, so it turns u8 a + 128 once (its zero borders the biased zero) and every
  // tile takes kNarrowBiased, where kNarrowFlip flipped each code once per column block. Zen 3,
  // 2 threads: ResNet's 7x7 stem 1.09x, MobileNetV2's 3x3 one 1.01-1.04x.
  bool any_non_negative = false;
  for (int64_t b = 0; b < c.B; ++b) any_non_negative = any_non_negative || k.in.non_negative[b];
  const bool flip_copy_in_place = c.narrow_w && c.groups == 1 && !direct_reads_signs(c) &&
                                  k.in.xq != c.xs && !any_non_negative;
  const int64_t copy_bytes = (c.B * k.in.Hp * k.in.Wp + tail_pixels(c)) * c.C;
  parallel_team(::tersor::team(nt), [&] {
    if (flip_copy_in_place) {
      constexpr int64_t kChunk = 64 << 10;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < copy_bytes; i += kChunk) {
        uint8_t* p = reinterpret_cast<uint8_t*>(k.in.xq) + i;
        flip_copy(p, p, std::min(kChunk, copy_bytes - i));
      }
    }
    Scratch<uint8_t> flipped;  // a row block's copy, per thread, only for layers that flip rows
    if (flip_rows) flipped = alloc_scratch<uint8_t>(gemm_w8a8::kRowsPerBlock * c.C);
    gemm_w8a8::avx2::run_row_blocks(a, [&](int64_t m0, int64_t m1,
                                           gemm_w8a8::avx2::RowBlock& block) {
      direct_rows(c, k.in, d, &codes, m0, m1, block);
      block.biased = flip_copy_in_place;
      if (!flip_rows) return;
      bool any_signed = false;
      for (int64_t t = 0; t < (m1 - m0 + gemm_w8a8::avx2::kMR - 1) / gemm_w8a8::avx2::kMR; ++t)
        any_signed = any_signed || !block.non_negative[t];
      if (!any_signed) return;
      for (int64_t i = 0; i < m1 - m0; ++i) {
        flip_copy(flipped.get() + i * c.C, block.row[i], c.C);
        block.row[i] = flipped.get() + i * c.C;
      }
      block.biased = true;
    });
  });
}

}  // namespace tersor::conv
