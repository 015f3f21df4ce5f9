// The implicit GEMM of a W8A8 convolution whose kernel rows are runs of a multiple of 4 codes
// (see conv_w8a8.h and ImplicitPlan below), written over a tile-operations policy: AMX runs it
// with its tile instructions (conv_w8a8_amx.cpp), and EmulatedTiles runs the same code with
// scalar tiles on every machine, so the addressing below is tested (bit for bit against the
// C ref) even where no AMX unit exists.
//
// Tiles: configure(step) / release(); zero<t>(); load<t>(ptr, stride_bytes); store<t>(ptr,
// stride); dpbssd<c, a, b>(): C tile c (16 x 16 int32) += A tile a (16 x step s8) . B tile b
// (step / 4 rows of 16 columns x 4 k s8), the AMX TDPBSSD contract.
//
// The stem (C = 4 after the zero 4th channel, 7x7, stride 2), one kernel row i of a segment:
//
//   xq row 2 oh + i:  | px 2ow | px 2ow+1 | ... | px 2ow+6 | ...      (4 codes a pixel)
//                      \________ 28 codes: row r of A ________/
//   A tile: 16 rows (ow0 .. ow0 + 15), each 28 codes, 8 bytes apart (sw * C)
//   B tile: 7 rows (28 / 4) of 16 columns x 4 k, the weight's k = 28 i .. 28 i + 27
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/formats.h"
#include "common/parallel.h"
#include "conv/conv_w8a8.h"
#if defined(__AVX512F__)  // the AMX file
#include "common/simd.h"
#endif

namespace tersor::conv {

constexpr int64_t kImplicitRows = 32;  // output pixels of a register block (2 A tiles)
constexpr int64_t kOverlapMinK = 384, kMinSliceRows = 4;  // implicit_gemm

// The K walk of the implicit GEMM. The packed weight's K order is (kh, kw, C), so a kernel row
// of taps is one run of kw * C codes of the input row (kw runs of C when dilated), and B
// advances linearly along it. Each run is cut into steps of `step` codes: one A tile of
// 16 pixels x step bytes, one B tile of step / 4 rows x 64 bytes. step is 64 when the run is
// whole 64-code steps (C % 64 == 0), the whole run when it is at most 64 codes long (the
// 4-channel stem's 7 x 4 = 28, a 1x1 layer's 16 or 24 channels), else the largest multiple of
// 4 below 64 that divides it (48 for 96 or 144 channels); 0 (does not apply) below 32.
struct ImplicitPlan {
  int64_t run;   // codes per run: kw * C, or C when dilated
  int64_t runs;  // runs per kernel row: 1, or kw when dilated
  int64_t step;  // bytes per tile step (a multiple of 4, <= 64), 0: no plan
  // A tile rows: pixels `row_stride` bytes apart. Stride 1: output pixels numbered over the
  // padded width (q = oh * Wp + ow, blocks span output rows). Otherwise each 16-pixel segment
  // lies in one output row (ow0 .. ow0 + 15), its pixels sw * C bytes apart.
  bool linear;
  int64_t row_stride;
};

static inline ImplicitPlan implicit_plan(const ConvW8A8Args& c) {
  ImplicitPlan p{c.dw == 1 ? c.kw * c.C : c.C, c.dw == 1 ? 1 : c.kw, 0, c.sh == 1 && c.sw == 1,
                 c.sw * c.C};
  if (p.run % 4) return p;
  if (p.run <= 64) {
    p.step = p.run;
  } else {
    for (int64_t s = 64; s >= 32 && !p.step; s -= 4) p.step = p.run % s ? 0 : s;
  }
  return p;
}

// The static pipeline's codes come out of the block's epilogue when every folded factor is
// finite (requant.h); otherwise through fp32 and requant_all (conv_w8a8_dispatch.cpp).
static inline bool implicit_gemm_applies(const ConvW8A8Args& c) {
  return implicit_plan(c).step > 0 && patch_channels(c) == c.C && c.groups == 1 &&
         !(c.out && !c.out->folded_finite);
}
// Where the AMX path takes it (conv_w8a8_dispatch.cpp): from kImplicitMinK codes per patch.
// With the epilogue through memory at ~75 instructions per row (fields reloaded after every
// code store, see store_codes) the VNNI register tile was faster below 64 codes (1.6x at
// 24 -> 144 channels, 2x at 16 -> 96) except for at most 32 outputs; with today's epilogue the
// tiles win from 16 codes: in-process A/B (batch 8, Sapphire Rapids class, 2 threads)
// MobileNetV2's fused expansions 16 -> 96 .. 32 -> 192 1.07-1.35x, the network 1.08x at
// batch 8 and 1.06x at batch 1. Under 16 output pixels in all (a classifier's 1x1 layer at
// batch 8) the tiles' rows are mostly empty: the VNNI tile took 0.55x their time at 8 pixels,
// 1.35x at 16.
constexpr int64_t kImplicitMinK = 16, kImplicitMinPixels = 16;
static inline bool implicit_gemm_pays(const ConvW8A8Args& c) {
  return implicit_gemm_applies(c) && c.B * c.Ho * c.Wo >= kImplicitMinPixels &&
         c.kh * c.kw * c.C >= kImplicitMinK;
}

namespace implicit_detail {

// Where segment s (16 output pixels) of an image starts in the padded input, and which output
// pixel its first row is (oh, ow; rows ow + r >= Wo, or past Ho, are dropped by
// store_rows).
struct Segment {
  int64_t offset, oh, ow;
};
static inline Segment segment(const ConvW8A8Args& c, const QuantizedInput& in,
                              const ImplicitPlan& p, int64_t s) {
  if (p.linear) {
    const int64_t q = 16 * s;
    return {q * c.C, q / in.Wp, q % in.Wp};
  }
  const int64_t per_row = (c.Wo + 15) / 16, oh = s / per_row, ow = s % per_row * 16;
  return {(oh * c.sh * in.Wp + ow * c.sw) * c.C, oh, ow};
}
static inline int64_t segments(const ConvW8A8Args& c, const QuantizedInput& in,
                               const ImplicitPlan& p) {
  return p.linear ? (c.Ho * in.Wp + 15) / 16 : c.Ho * ((c.Wo + 15) / 16);
}

// One 32-pixel x 32-channel block: A tiles from segments a0 / a1 of the image, column blocks
// b0, b1 (C tiles 0..3 = rows 0-15 / 16-31 x columns b0 / b1). The K loop walks the kernel
// rows, the runs of a row, and each run in steps (ImplicitPlan); after step s it calls
// between(s) (the previous block's epilogue, a slice per step: implicit_gemm).
template <class Tiles, class Between>
void block_32(const ConvW8A8Args& c, const QuantizedInput& in, const ImplicitPlan& p,
              const int8_t* a0, const int8_t* a1, const int8_t* b0, const int8_t* b1,
              int32_t (*acc)[32], Between&& between) {
  Tiles::template zero<0>();
  Tiles::template zero<1>();
  Tiles::template zero<2>();
  Tiles::template zero<3>();
  int64_t k = 0, s = 0;
  for (int64_t i = 0; i < c.kh; ++i) {
    for (int64_t j = 0; j < p.runs; ++j) {
      const int64_t tap = (i * c.dh * in.Wp + j * c.dw) * c.C;
      for (int64_t c0 = 0; c0 < p.run; c0 += p.step, k += p.step) {
        Tiles::template load<4>(a0 + tap + c0, p.row_stride);
        Tiles::template load<5>(a1 + tap + c0, p.row_stride);
        Tiles::template load<6>(b0 + k * 16, 64);
        Tiles::template load<7>(b1 + k * 16, 64);
        Tiles::template dpbssd<0, 4, 6>();
        Tiles::template dpbssd<1, 4, 7>();
        Tiles::template dpbssd<2, 5, 6>();
        Tiles::template dpbssd<3, 5, 7>();
        between(s++);
      }
    }
  }
  Tiles::template store<0>(&acc[0][0], 128);
  Tiles::template store<1>(&acc[0][16], 128);
  Tiles::template store<2>(&acc[16][0], 128);
  Tiles::template store<3>(&acc[16][16], 128);
}

// A computed block waiting for its epilogue: image b, its segments, its first column.
struct Block {
  int64_t b;
  Segment s0, s1;
  bool two;  // s1 is a segment of its own (else the last, odd segment, computed twice)
  int64_t n0;
  int64_t m[kImplicitRows];  // each row's output pixel, -1 where dropped (locate_rows)
};

// Calls row(r, m) for rows [r0, r1) of a block (0-15: segment s0, 16-31: s1) that are output
// pixels, m the pixel's row of the output. Pixels past the output row's end (ow >= Wo: the
// padded width, or a segment's tail) and past the image are dropped. The position steps along
// the rows (no division per row), and the sizes are locals: row() stores int8 codes, which may
// alias anything, and fields read through c would be reloaded after every store.
template <class Row>
static inline void for_each_row(const ConvW8A8Args& c, const QuantizedInput& in,
                                const ImplicitPlan& p, const Block& blk, int64_t r0, int64_t r1,
                                Row&& row) {
  const int64_t Ho = c.Ho, Wo = c.Wo, Wp = in.Wp, img = blk.b * c.Ho;
  const bool linear = p.linear;
  r1 = r1 < (blk.two ? 32 : 16) ? r1 : (blk.two ? 32 : 16);
  for (int64_t r = r0; r < r1;) {
    const Segment& sg = r < 16 ? blk.s0 : blk.s1;
    const int64_t seg_end = r < 16 && r1 > 16 ? 16 : r1;
    int64_t oh = sg.oh, ow = sg.ow + (r & 15);
    if (linear)
      while (ow >= Wp) ow -= Wp, ++oh;  // at most once from 16 columns up
    for (; r < seg_end; ++r, ++ow) {
      if (linear && ow == Wp) ow = 0, ++oh;
      if (oh < Ho && ow < Wo) row(r, (img + oh) * Wo + ow);
    }
  }
}

// Fills blk.m once per block: the epilogue runs in slices of a few rows between K steps, and
// walking the segments for each slice cost as much as the slice's stores.
static inline void locate_rows(const ConvW8A8Args& c, const QuantizedInput& in,
                               const ImplicitPlan& p, Block& blk) {
  for (int64_t& m : blk.m) m = -1;
  for_each_row(c, in, p, blk, 0, kImplicitRows, [&](int64_t r, int64_t m) { blk.m[r] = m; });
}

// Calls row(r, m) for the output rows among rows [r0, r1) of a located block.
template <class Row>
static inline void for_rows(const Block& blk, int64_t r0, int64_t r1, Row&& row) {
  r1 = r1 < kImplicitRows ? r1 : kImplicitRows;
  for (int64_t r = r0; r < r1; ++r)
    if (blk.m[r] >= 0) row(r, blk.m[r]);
}

#if defined(__AVX512F__)
// The codes of one block's rows (see store_rows), kHalves 16-column halves, kRes with the
// residual. Every field of c.out in a local, as in for_each_row: read through the struct, they
// were reloaded after every store.
template <int kHalves, bool kRes>
static inline void store_codes(const ConvW8A8Args& c, const QuantizedInput& in,
                               const ImplicitPlan& p, const int32_t (*acc)[32], const Block& blk,
                               int64_t r0, int64_t r1) {
  const Requant& o = *c.out;
  const int64_t n0 = blk.n0, cols = c.N - n0 < 32 ? c.N - n0 : 32;
  const __mmask16 mask0 = tail_mask16(cols), mask1 = kHalves == 2 ? tail_mask16(cols - 16) : 0;
  const __m512 f0 = _mm512_maskz_loadu_ps(mask0, c.w_scale + n0);
  const __m512 add0 = bias16(c.bias, n0, mask0);
  const __m512 f1 = kHalves == 2 ? _mm512_maskz_loadu_ps(mask1, c.w_scale + n0 + 16) : f0;
  const __m512 add1 = kHalves == 2 ? bias16(c.bias, n0 + 16, mask1) : add0;
  const __m512 lo = _mm512_set1_ps(o.lo), hi = _mm512_set1_ps(o.hi);
  const __m512 res_scale = _mm512_set1_ps(o.res_scale);
  int8_t* const q = o.q + n0;
  const int8_t* const res = kRes ? o.res + n0 : nullptr;
  const int64_t ldq = o.ldq, ldres = o.ldres;
  auto half = [&](const int32_t* a, int64_t m, int h, __mmask16 mask, __m512 f, __m512 add) {
    __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(a + 16 * h)), f, add);
    if (kRes)
      t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                              _mm_maskz_loadu_epi8(mask, res + m * ldres + 16 * h))),
                          res_scale, t);
    t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
    _mm512_mask_cvtepi32_storeu_epi8(q + m * ldq + 16 * h, mask, _mm512_cvtps_epi32(t));
  };
  for_rows(blk, r0, r1, [&](int64_t r, int64_t m) {
    half(acc[r], m, 0, mask0, f0, add0);
    if (kHalves == 2) half(acc[r], m, 1, mask1, f1, add1);
  });
}
#endif

// Rows [r0, r1) of a block's 32 held in acc, each an output pixel's columns n0 .. n0 + cols
// (cols <= 32):
//   fp32:  y = fma(float(acc), sx * w_scale[n], bias[n]), the epilogue of every W8A8 path;
//   codes: the static pipeline's requantization (c.out, after fold_output_scale: w_scale /
//          bias hold the folded m / c, sx is 1), as the direct kernels write them
//          (gemm_w8a8/row_blocks.h CodesOut) and requant_rows_ref computes them unfused.
// The AMX file compiles this with AVX-512 (16-column halves, the block's column factors loaded
// once); the emulated tiles with the scalar loop: the same operations in the same order, bit
// for bit.
static inline void store_rows(const ConvW8A8Args& c, const QuantizedInput& in,
                              const ImplicitPlan& p, const int32_t (*acc)[32], const Block& blk,
                              int64_t r0, int64_t r1) {
  const int64_t n0 = blk.n0, cols = c.N - n0 < 32 ? c.N - n0 : 32;
  const Requant* o = c.out;
#if defined(__AVX512F__)
  if (o) {
    const bool two = cols > 16;
    if (o->res)
      (two ? store_codes<2, true> : store_codes<1, true>)(c, in, p, acc, blk, r0, r1);
    else
      (two ? store_codes<2, false> : store_codes<1, false>)(c, in, p, acc, blk, r0, r1);
    return;
  }
  const int halves = cols > 16 ? 2 : 1;
  __mmask16 mask[2];
  __m512 f[2], add[2];  // per column: sx * w_scale and bias
  for (int h = 0; h < halves; ++h) {
    mask[h] = tail_mask16(cols - 16 * h);
    f[h] = _mm512_mul_ps(_mm512_set1_ps(in.scale[blk.b]),
                         _mm512_maskz_loadu_ps(mask[h], c.w_scale + n0 + 16 * h));
    add[h] = bias16(c.bias, n0 + 16 * h, mask[h]);
  }
  float* const y = c.y + n0;
  const int64_t ldy = out_stride(c);
  for_rows(blk, r0, r1, [&](int64_t r, int64_t m) {
    for (int h = 0; h < halves; ++h) {
      const __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(acc[r] + 16 * h));
      _mm512_mask_storeu_ps(y + m * ldy + 16 * h, mask[h], _mm512_fmadd_ps(v, f[h], add[h]));
    }
  });
#else
  const float sx = in.scale[blk.b];
  const float* sw = c.w_scale + n0;
  const float* bias = c.bias ? c.bias + n0 : nullptr;
  for_rows(blk, r0, r1, [&](int64_t r, int64_t m) {
    const int32_t* a = acc[r];
    for (int64_t n = 0; n < cols; ++n) {
      const float v = static_cast<float>(a[n]);
      if (o) {
        float t = std::fma(v, sw[n], bias ? bias[n] : 0.0f);
        if (o->res)
          t = std::fma(static_cast<float>(o->res[m * o->ldres + n0 + n]), o->res_scale, t);
        o->q[m * o->ldq + n0 + n] =
            static_cast<int8_t>(std::nearbyint(std::fmin(std::fmax(t, o->lo), o->hi)));
      } else {
        c.y[m * out_stride(c) + n0 + n] = std::fma(v, sx * sw[n], bias ? bias[n] : 0.0f);
      }
    }
  });
#endif
}

}  // namespace implicit_detail

// The order of the work items (32-pixel panels of an image x pairs of 16-column blocks), from
// what a thread would read: split by images (each thread reads its images' codes and every
// weight) when the weights are smaller than the batch's codes, else by column pairs (each
// thread reads its weights and every image). By images, a thread walks an image's pairs one
// after the other (its codes stay in L2); with fewer images than threads, an image's panels,
// every pair per panel, so the threads split the image. At 3x3 64 -> 64 on 56 x 56 (batch 8)
// the split by images took 0.92x the time of the split by pairs; the whole work per image
// with one image 0.76x (Sapphire Rapids class, 2 threads).
enum class WorkOrder { kPairImagePanel, kImagePairPanel, kImagePanelPair };

static inline WorkOrder work_order(const ConvW8A8Args& c, const QuantizedInput& in, int nt) {
  const double weights = double(c.N) * c.kh * c.kw * c.C, codes = double(in.Hp) * in.Wp * c.C;
  if (nt <= 1 || weights >= c.B * codes) return WorkOrder::kPairImagePanel;
  return c.B >= nt ? WorkOrder::kImagePairPanel : WorkOrder::kImagePanelPair;
}

template <class Tiles>
void implicit_gemm(const ConvW8A8Args& c, const QuantizedInput& in) {
  using implicit_detail::Block;
  const ImplicitPlan p = implicit_plan(c);
  const int64_t K = c.kh * c.kw * c.C;  // whole steps: no k tail
  const int64_t n_blocks = round_up(c.N, 16) / 16, n_pairs = (n_blocks + 1) / 2;
  const int64_t segs = implicit_detail::segments(c, in, p);
  const int64_t panels = (segs + 1) / 2;  // blocks of two segments, per image
  const int64_t img_bytes = in.Hp * in.Wp * c.C;
  // A segment's A tiles read `reach` bytes from its first pixel; rows past the output row or
  // image read the next one's codes, which store_rows drops. Past the last image a padded
  // copy has tail_pixels(c) zero pixels; the codes read in place (a 1x1 layer without padding,
  // PreparedInput) do not, so the blocks that would read past `end` take a copy of the input's
  // last bytes with zeros behind them (a block or two per call).
  const int64_t reach = ((c.kh - 1) * c.dh * in.Wp + (p.runs - 1) * c.dw) * c.C +
                        15 * p.row_stride + p.run;
  const int8_t* const end =
      in.xq + c.B * img_bytes + (in.xq == c.xs ? 0 : tail_pixels(c) * c.C);
  // From kOverlapMinK codes per patch, and for every kernel taller than one row, the epilogue
  // of block w (int32 tiles -> fp32 or codes, AVX-512) runs in slices between the K steps of
  // block w + 1, so it overlaps that block's tile instructions instead of waiting for them:
  // 0.92-0.95x the time at 3x3 layers of 64 and 128 channels, 0.83-0.91x at the stems (7x7 on
  // 4 channels: 7 steps of 28 codes; 3x3: 3 of 12) once the slices stopped walking the
  // segments (locate_rows). A slice holds at least kMinSliceRows rows, after every `every`
  // steps: one row after each step (3x3 on 512 channels: 72 steps) paid a call's set-up per
  // row, and 3x3 layers of 256 / 512 channels took 0.91-0.94x the time with 4. 1x1 layers of
  // 1-4 steps keep the epilogue after the block: slices outweighed the steps (1.05-1.14x).
  const int64_t k_steps = c.kh * p.runs * (p.run / p.step);
  const bool overlap = K >= kOverlapMinK || c.kh > 1;
  const int64_t slices = std::min<int64_t>(k_steps, kImplicitRows / kMinSliceRows);
  const int64_t every = k_steps / slices;  // steps between slices
  const int64_t rows_per_slice = (kImplicitRows + slices - 1) / slices;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * K, c.nthreads);
  const WorkOrder order = work_order(c, in, nt);
  // Work items go to the threads in chunks as they ask (a vCPU that a neighbour slows takes
  // fewer), each chunk whole images (or column pairs) in the order above, so a thread still
  // reads what it would have read with a fixed split.
  const int64_t items = n_pairs * c.B * panels;
  int64_t chunk = std::max<int64_t>(1, items / (16 * nt));
  if (order == WorkOrder::kImagePairPanel)
    chunk = n_pairs * panels;
  else if (order == WorkOrder::kImagePanelPair)
    chunk = (chunk + n_pairs - 1) / n_pairs * n_pairs;  // whole panels
  else if (n_pairs >= 4 * nt)
    chunk = c.B * panels;  // whole pairs
  parallel_team(::tersor::team(nt), [&] {
    Tiles::configure(p.step);
    alignas(64) int32_t acc[2][kImplicitRows][32];  // this block's, the previous block's
    Block blocks[2];
    bool pending = false;
    std::vector<int8_t> tail;  // the input's last bytes and zeros (in place, see above)
    int64_t done = 0;  // blocks this thread ran
#pragma omp for schedule(dynamic, chunk) nowait
    for (int64_t w = 0; w < items; ++w) {
      int64_t pair, b, pn;
      if (order == WorkOrder::kPairImagePanel)
        pair = w / (c.B * panels), b = w / panels % c.B, pn = w % panels;
      else if (order == WorkOrder::kImagePairPanel)
        b = w / (n_pairs * panels), pair = w / panels % n_pairs, pn = w % panels;
      else
        b = w / (n_pairs * panels), pn = w / n_pairs % panels, pair = w % n_pairs;
      const int64_t nb0 = 2 * pair;
      const int8_t* b0 = c.w + nb0 * K * 16;
      const int8_t* b1 = nb0 + 1 < n_blocks ? b0 + K * 16 : b0;  // odd tail: computed twice
      const int8_t* img = in.xq + b * img_bytes;
      Block& blk = blocks[done & 1];  // (the previous one waits in the other)
      blk.b = b, blk.s0 = implicit_detail::segment(c, in, p, 2 * pn);
      blk.two = 2 * pn + 1 < segs, blk.n0 = nb0 * 16;
      blk.s1 = blk.two ? implicit_detail::segment(c, in, p, 2 * pn + 1) : blk.s0;
      implicit_detail::locate_rows(c, in, p, blk);
      const int8_t* a0 = img + blk.s0.offset;
      const int8_t* a1 = img + blk.s1.offset;
      if (a1 + reach > end) {  // only when read in place: a padded copy has the zeros
        tail.assign(a1 + reach - a0, 0);
        std::memcpy(tail.data(), a0, end - a0);
        a1 = tail.data() + (a1 - a0);
        a0 = tail.data();
      }
      const int cur = done++ & 1;
      int64_t slice = 0, wait = every;  // (counters: a division per K step cost ~40 cycles)
      implicit_detail::block_32<Tiles>(c, in, p, a0, a1, b0, b1, acc[cur], [&](int64_t) {
        if (--wait || !pending || slice == slices) return;
        wait = every;
        implicit_detail::store_rows(c, in, p, acc[cur ^ 1], blocks[cur ^ 1],
                                    slice * rows_per_slice, (slice + 1) * rows_per_slice);
        ++slice;
      });
      if (overlap) {
        pending = true;
      } else {
        implicit_detail::store_rows(c, in, p, acc[cur], blk, 0, kImplicitRows);
      }
    }
    if (pending)
      implicit_detail::store_rows(c, in, p, acc[(done - 1) & 1], blocks[(done - 1) & 1], 0,
                                  kImplicitRows);
    Tiles::release();
  });
}

// Scalar tiles with the AMX semantics, one register file per thread.
struct EmulatedTiles {
  static inline thread_local int8_t reg[8][16][64];
  static inline thread_local int step = 64;  // A tiles' bytes per row, B tiles' rows * 4
  static void configure(int64_t k_bytes) { step = static_cast<int>(k_bytes); }
  static void release() {}
  template <int t>
  static void zero() {
    for (auto& row : reg[t])
      for (auto& v : row) v = 0;
  }
  // as configured (conv_w8a8_amx.cpp): tiles 4, 5 (A) 16 rows x step bytes, 6, 7 (B)
  // step / 4 rows x 64 bytes; what lies past them reads as zero, as in a tile
  template <int t>
  static void load(const void* p, int64_t stride) {
    const int rows = t >= 6 ? step / 4 : 16, cols = t == 4 || t == 5 ? step : 64;
    for (int r = 0; r < 16; ++r)
      for (int i = 0; i < 64; ++i)
        reg[t][r][i] = r < rows && i < cols ? static_cast<const int8_t*>(p)[r * stride + i] : 0;
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
