// The rows of the direct (gather-free) W8A8 convolution, shared by its AVX2 and AVX-512 VNNI
// paths: each GEMM row is a pointer to its output pixel's first tap in the zero-padded int8
// input, and the kernel rows of the patch are runs at fixed offsets from it:
//
//   xq image (C codes per pixel)          output pixel (oh, ow), 3x3, stride s
//   row oh*s     [ . . a a a . . ]   run 0 = xq + ((oh*s)*Wp + ow*s) * C,   kw*C codes
//   row oh*s+1   [ . . a a a . . ]   run 1 = run 0 + 1 * Wp * C
//   row oh*s+2   [ . . a a a . . ]   run 2 = run 0 + 2 * Wp * C
//
// (dilated, or one group's channels of a grouped convolution: one run per tap.) The K order
// (kh, kw, C) of the packed weight is the order of the runs, so the weight block streams as in
// the GEMM. This skips the patch copy (~20% of the AVX2 time at 56x56, measured with perf) and
// the panel's trip through memory. Include only from the ISA files.
#pragma once
#include <immintrin.h>

#include <vector>

#include "conv/conv_w8a8.h"
#include "gemm_w8a8/row_blocks.h"
#if !defined(__AVX512BW__)
#include "gemm_w8a8/tile_avx2.h"  // all_non_negative
#endif

namespace tersor::conv {

struct DirectRuns {
  std::vector<int64_t> offsets;  // of each run from the pixel's first tap, in bytes
  int64_t run = 0;               // codes per run
  int64_t cg = 0;                // input channels per group
};

static inline DirectRuns direct_runs(const ConvW8A8Args& c, const QuantizedInput& in) {
  DirectRuns d;
  d.cg = c.groups > 1 ? c.C / c.groups : patch_channels(c);
  const bool whole_rows = c.dw == 1 && d.cg == c.C;  // a kernel row's taps: one run of codes
  d.run = whole_rows ? c.kw * c.C : d.cg;
  for (int64_t i = 0; i < c.kh; ++i)
    for (int64_t j = 0; j < (whole_rows ? 1 : c.kw); ++j)
      d.offsets.push_back((i * c.dh * in.Wp + j * c.dw) * c.C);
  return d;
}

// false: take the gathered rows of the generic path (a group at a time): a 4-code group would
// straddle two runs (the 3-channel stem), or the folded factors are not finite (the NaN rule of
// requant.h, which the tiles' codes epilogue does not test).
static inline bool direct_applies(const ConvW8A8Args& c, const DirectRuns& d) {
  return d.run % 4 == 0 && !(c.out && !c.out->folded_finite);
}
static inline void run_gathered(const ConvCall& k) {
  for_each_group(k, [](const ConvCall& g) { run_unfused(g, run_w8a8_generic); });
}

// The GEMM view of the convolution (M output pixels, K = kh * kw * cg) for run_row_blocks.
static inline PackedW8LinearArgs direct_gemm_args(const ConvW8A8Args& c, const DirectRuns& d) {
  const int64_t K = c.kh * c.kw * d.cg;  // K % 4 == 0 when direct_applies
  PackedW8LinearArgs a{nullptr, c.B * c.Ho * c.Wo, K, K, c.w, c.colsum, c.w_scale, c.N,
                       c.bias, c.y, out_stride(c), c.nthreads};
  a.narrow_w = c.narrow_w;
  return a;
}

// The static pipeline's folded requantization (requant.h) as the tiles' codes epilogue.
static inline gemm_w8a8::CodesOut direct_codes(const ConvW8A8Args& c) {
  return c.out ? gemm_w8a8::CodesOut{c.out->q, c.out->ldq, c.out->res, c.out->ldres,
                                     c.out->res_scale, c.out->lo, c.out->hi}
               : gemm_w8a8::CodesOut{};
}

// True when no byte of p[0, n) has its sign bit set (every s8 code >= 0): vpmovb2m on
// AVX-512, the AVX2 tile's own check (tile_avx2.h) otherwise.
static inline bool no_sign_bits(const uint8_t* p, int64_t n) {
#if defined(__AVX512BW__)
  for (int64_t i = 0; i < n; i += 64) {
    const __mmask64 m = n - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - i)) - 1;
    if (_mm512_movepi8_mask(_mm512_maskz_loadu_epi8(m, p + i))) return false;
  }
  return true;
#else
  return gemm_w8a8::avx2::all_non_negative(p, n);
#endif
}

// Fills rows [m0, m1) of a row block: each output pixel's first tap, its image's scale, and per
// tile of MR rows whether every code it reads is >= 0: the image's flag, or for a 1x1 layer
// (direct_reads_signs) the tile's own codes, read here while the tile is about to use them
// (its input then skips the pass over every code: scan_codes).
template <int MR>
static inline void direct_rows(const ConvW8A8Args& c, const QuantizedInput& in,
                               const DirectRuns& d, const gemm_w8a8::CodesOut* codes, int64_t m0,
                               int64_t m1, gemm_w8a8::RowBlock<MR>& block) {
  const bool own_signs = direct_reads_signs(c);
  if (c.kh == 1 && c.kw == 1 && c.sh == 1 && c.sw == 1 && in.Hp == c.Ho && in.Wp == c.Wo) {
    // 1x1, stride 1: output pixel m reads input pixel m, so the block's codes are one span and a
    // tile's signs one check over its rows (the walk below, per pixel, took a third as long as
    // the tiles of a 1x1 layer over 16-32 channels, Zen 3)
    const uint8_t* p = reinterpret_cast<const uint8_t*>(in.xq) + m0 * c.C + c.c0;
    const int64_t image = c.Ho * c.Wo;
    int64_t b = m0 / image, next = (b + 1) * image;
    for (int64_t m = m0; m < m1; ++m) {
      if (m == next) ++b, next += image;
      block.row[m - m0] = p + (m - m0) * c.C;
      block.sx[m - m0] = in.scale[b];
      bool& non_negative = block.non_negative[(m - m0) / MR];
      if ((m - m0) % MR == 0) non_negative = true;
      non_negative = non_negative && in.non_negative[b];
    }
    if (own_signs)
      for (int64_t t = 0; t < (m1 - m0 + MR - 1) / MR; ++t) {
        const int64_t rows = std::min<int64_t>(MR, m1 - m0 - t * MR);
        block.non_negative[t] =
            block.non_negative[t] || no_sign_bits(p + t * MR * c.C, rows * c.C);
      }
  } else {
    // the pixel's (b, oh, ow) counted on from m0's, and its pointer moved sw pixels at a time:
    // the address arithmetic per row costs as much as the dot products of a 1x1 layer over
    // 16-32 channels
    int64_t b = m0 / (c.Ho * c.Wo), oh = m0 / c.Wo % c.Ho, ow = m0 % c.Wo;
    const int64_t step = c.sw * c.C;
    const auto pixel = [&] {
      return reinterpret_cast<const uint8_t*>(in.xq) +
             ((b * in.Hp + oh * c.sh) * in.Wp + ow * c.sw) * c.C + c.c0;
    };
    const uint8_t* p = pixel();
    for (int64_t m = m0; m < m1; ++m) {
      block.row[m - m0] = p;
      block.sx[m - m0] = in.scale[b];
      bool& non_negative = block.non_negative[(m - m0) / MR];
      if ((m - m0) % MR == 0) non_negative = true;
      non_negative =
          non_negative && (in.non_negative[b] || (own_signs && no_sign_bits(p, c.C)));
      p += step;
      if (++ow == c.Wo) {
        ow = 0;
        if (++oh == c.Ho) {
          oh = 0;
          ++b;
        }
        if (m + 1 < m1) p = pixel();
      }
    }
  }
  block.runs = gemm_w8a8::RowRuns{d.offsets.data(), static_cast<int64_t>(d.offsets.size()),
                                  d.run / 4};
  block.codes = c.out ? codes : nullptr;
  if (c.groups > 1) {  // N / groups is a multiple of 16: a column block lies in one group
    block.group_cols = c.N / c.groups;
    block.group_bytes = d.cg;
  }
}

}  // namespace tersor::conv
