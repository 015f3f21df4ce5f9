// The implicit GEMM of a stride-1 W8A8 convolution with C % 64 == 0 (see conv_w8a8.h), written
// over a tile-operations policy: AMX runs it with its tile instructions (conv_w8a8_amx.cpp),
// and EmulatedTiles runs the same code with scalar tiles on every machine, so the addressing
// below is tested (bit for bit against the gather path) even where no AMX unit exists.
//
// Tiles: configure() / release(); zero<t>(); load<t>(ptr, stride_bytes); store<t>(ptr, stride);
// dpbssd<c, a, b>(): C tile c (16 x 16 int32) += A tile a (16 x 64 s8) . B tile b (16 rows of
// 16 columns x 4 k s8), the AMX TDPBSSD contract.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/formats.h"
#include "common/parallel.h"
#include "conv/conv_w8a8.h"
#if defined(__AVX512F__)  // the AMX file
#include "common/simd.h"
#endif

namespace tersor::conv {

constexpr int64_t kImplicitRows = 32;  // output pixels of a register block (2 A tiles)

// The static pipeline's codes come out of the block's epilogue when every folded factor is
// finite (requant.h); otherwise through fp32 and requant_all (conv_w8a8_dispatch.cpp).
static inline bool implicit_gemm_applies(const ConvW8A8Args& c) {
  return c.sh == 1 && c.sw == 1 && c.C % 64 == 0 && patch_channels(c) == c.C &&
         c.groups == 1 && !(c.out && !c.out->folded_finite);
}

namespace implicit_detail {

// One 32-pixel x 32-channel block of an image, pixels q0.. numbered over the padded width,
// column blocks b0, b1 (C tiles 0..3 = rows 0-15 / 16-31 x columns b0 / b1). The K loop walks
// the taps and, inside a tap, C in steps of 64; the packed weight's K order (kh, kw, C) is the
// same walk, so B advances linearly.
template <class Tiles>
void block_32(const ConvW8A8Args& c, const QuantizedInput& in, const int8_t* img, int64_t q0,
              const int8_t* b0, const int8_t* b1, int32_t (*acc)[32]) {
  const int64_t C = c.C;
  Tiles::template zero<0>();
  Tiles::template zero<1>();
  Tiles::template zero<2>();
  Tiles::template zero<3>();
  int64_t k = 0;
  for (int64_t i = 0; i < c.kh; ++i) {
    for (int64_t j = 0; j < c.kw; ++j) {
      const int8_t* a0 = img + (q0 + i * c.dh * in.Wp + j * c.dw) * C;
      const int8_t* a1 = a0 + 16 * C;
      for (int64_t c0 = 0; c0 < C; c0 += 64, k += 64) {
        Tiles::template load<4>(a0 + c0, C);
        Tiles::template load<5>(a1 + c0, C);
        Tiles::template load<6>(b0 + k * 16, 64);
        Tiles::template load<7>(b1 + k * 16, 64);
        Tiles::template dpbssd<0, 4, 6>();
        Tiles::template dpbssd<1, 4, 7>();
        Tiles::template dpbssd<2, 5, 6>();
        Tiles::template dpbssd<3, 5, 7>();
      }
    }
  }
  Tiles::template store<0>(&acc[0][0], 128);
  Tiles::template store<1>(&acc[0][16], 128);
  Tiles::template store<2>(&acc[16][0], 128);
  Tiles::template store<3>(&acc[16][16], 128);
}

// One output pixel's columns n0 .. n0 + cols of a block (cols <= 32), from its accumulators:
//   fp32:  y = fma(float(acc), sx * w_scale[n], bias[n]), the epilogue of every W8A8 path;
//   codes: the static pipeline's requantization (c.out, after fold_output_scale: w_scale /
//          bias hold the folded m / c, sx is 1), as the direct kernels write them
//          (gemm_w8a8/row_blocks.h CodesOut) and requant_rows_ref computes them unfused.
// The AMX file compiles this with AVX-512 (two masked 16-column halves); the emulated tiles
// with the scalar loop: the same operations in the same order, bit for bit.
static inline void store_pixel(const ConvW8A8Args& c, const int32_t* acc, float sx, int64_t m,
                               int64_t n0, int64_t cols) {
  const float* sw = c.w_scale + n0;
  const float* bias = c.bias ? c.bias + n0 : nullptr;
  const Requant* o = c.out;
  const int8_t* res = o && o->res ? o->res + m * o->ldres + n0 : nullptr;
#if defined(__AVX512F__)
  for (int64_t h = 0; h < cols; h += 16) {
    const __mmask16 mask = tail_mask16(cols - h);
    const __m512 v = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + h));
    if (o) {
      __m512 t = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(mask, sw + h), bias16(bias, h, mask));
      if (res)
        t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                _mm_maskz_loadu_epi8(mask, res + h))),
                            _mm512_set1_ps(o->res_scale), t);
      t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(o->lo)), _mm512_set1_ps(o->hi));
      _mm_mask_storeu_epi8(o->q + m * o->ldq + n0 + h, mask,
                           _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(t)));
    } else {
      const __m512 s = _mm512_mul_ps(_mm512_set1_ps(sx), _mm512_maskz_loadu_ps(mask, sw + h));
      _mm512_mask_storeu_ps(c.y + m * out_stride(c) + n0 + h, mask,
                            _mm512_fmadd_ps(v, s, bias16(bias, h, mask)));
    }
  }
#else
  for (int64_t n = 0; n < cols; ++n) {
    const float v = static_cast<float>(acc[n]);
    if (o) {
      float t = std::fma(v, sw[n], bias ? bias[n] : 0.0f);
      if (res) t = std::fma(static_cast<float>(res[n]), o->res_scale, t);
      o->q[m * o->ldq + n0 + n] =
          static_cast<int8_t>(std::nearbyint(std::fmin(std::fmax(t, o->lo), o->hi)));
    } else {
      c.y[m * out_stride(c) + n0 + n] = std::fma(v, sx * sw[n], bias ? bias[n] : 0.0f);
    }
  }
#endif
}

// The block's real pixels: columns ow >= Wo and pixels past the image are dropped.
static inline void store_block(const ConvW8A8Args& c, const QuantizedInput& in,
                               const int32_t (*acc)[32], int64_t b, int64_t q0, int64_t n0) {
  const float sx = in.scale[b];
  const int64_t cols = c.N - n0 < 32 ? c.N - n0 : 32;
  for (int64_t r = 0; r < kImplicitRows; ++r) {
    const int64_t q = q0 + r, oh = q / in.Wp, ow = q % in.Wp;
    if (oh >= c.Ho) break;
    if (ow >= c.Wo) continue;
    store_pixel(c, acc[r], sx, (b * c.Ho + oh) * c.Wo + ow, n0, cols);
  }
}

}  // namespace implicit_detail

template <class Tiles>
void implicit_gemm(const ConvW8A8Args& c, const QuantizedInput& in) {
  const int64_t K = c.kh * c.kw * c.C;  // a multiple of 64: no k tail
  const int64_t n_blocks = round_up(c.N, 16) / 16, n_pairs = (n_blocks + 1) / 2;
  const int64_t panels = (c.Ho * in.Wp + kImplicitRows - 1) / kImplicitRows;  // per image
  const int64_t img_bytes = in.Hp * in.Wp * c.C;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * K, c.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
    // Work items in (column pair, image, panel) order: a thread's share keeps one weight pair
    // panel (2 * K * 16 bytes) in L2 while the images stream past it.
    int64_t w0, w1;
    thread_range(n_pairs * c.B * panels, &w0, &w1);
    if (w0 < w1) {
      Tiles::configure();
      alignas(64) int32_t acc[kImplicitRows][32];
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t pair = w / (c.B * panels), b = w / panels % c.B, p = w % panels;
        const int64_t nb0 = 2 * pair;
        const int8_t* b0 = c.w + nb0 * K * 16;
        const int8_t* b1 = nb0 + 1 < n_blocks ? b0 + K * 16 : b0;  // odd tail: computed twice
        implicit_detail::block_32<Tiles>(c, in, in.xq + b * img_bytes, p * kImplicitRows, b0,
                                         b1, acc);
        implicit_detail::store_block(c, in, acc, b, p * kImplicitRows, nb0 * 16);
      }
      Tiles::release();
    }
  }
}

// Scalar tiles with the AMX semantics, one register file per thread.
struct EmulatedTiles {
  static inline thread_local int8_t reg[8][16][64];
  static void configure() {}
  static void release() {}
  template <int t>
  static void zero() {
    for (auto& row : reg[t])
      for (auto& v : row) v = 0;
  }
  template <int t>
  static void load(const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      for (int i = 0; i < 64; ++i) reg[t][r][i] = static_cast<const int8_t*>(p)[r * stride + i];
  }
  template <int t>
  static void store(void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      for (int i = 0; i < 64; ++i) static_cast<int8_t*>(p)[r * stride + i] = reg[t][r][i];
  }
  template <int ct, int at, int bt>
  static void dpbssd() {
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        int32_t acc;
        __builtin_memcpy(&acc, &reg[ct][m][4 * n], 4);
        for (int k4 = 0; k4 < 16; ++k4)
          for (int i = 0; i < 4; ++i) acc += int32_t(reg[at][m][4 * k4 + i]) * reg[bt][k4][4 * n + i];
        __builtin_memcpy(&reg[ct][m][4 * n], &acc, 4);
      }
  }
};

}  // namespace tersor::conv
