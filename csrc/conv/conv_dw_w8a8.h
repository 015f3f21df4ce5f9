// W8A8 depthwise Conv2d (groups == C_in, C_out = mult * C_in): output channel n reads input
// channel n / mult only, so there is no GEMM to speak of: kh * kw products per output, where
// the dense convolution has kh * kw * C_in. Same input rules as conv_w8a8.h (one scale per
// image, a zero-padded s8 copy xq), same weight tensors (gemm_w8a8's packed int8 weight with
// K = kh * kw, per-channel scale), same epilogue
//     y = fma(float(acc), scale_x[b] * scale_w[n], bias[n])
// so every ISA path is bit-identical to the ref.
//
// The weights are re-laid out once per call, channel-innermost (a few KiB):
//
//     wt[tap][Np] int16      tap = i * kw + j;   wt[tap][n] = W[n][tap]
//
// and each path walks output pixels, 8 / 16 channels per vector: for every tap, the codes of
// those channels at that tap's input pixel (C bytes apart in xq, read in place), times the
// tap's weights, summed in int32 (|x w| <= 127 * 127, so the int16 products are exact).
#pragma once
#include <cstdint>
#include <vector>

#include "common/parallel.h"
#include "conv/conv_w8a8.h"

namespace tersor::conv {

// A layer's weights re-laid for the paths: wt (above), and for the AVX-512 rows of three
// (dw_rows_of_three) each 16-channel block's kernel rows as quads of codes (w[i][0], w[i][1],
// w[i][2], 0) per channel, with 128 * the sum of each channel's weights. Built per call, or
// once per layer by the static pipeline's plan (bindings/conv.cpp): a few thousand scalar
// steps, as long as the whole call of a 14x14 layer at batch 1.
struct DwWeights {
  int64_t Np = 0;               // N rounded up to 16
  std::vector<int16_t> wt;      // [kh * kw][Np]
  std::vector<int8_t> rows3;    // [Np / 16][kh][16 channels][4]  (rows of three only)
  std::vector<int32_t> comp3;   // [Np / 16][16]: 128 * sum of the channel's weights
};
DwWeights prepare_dw_weights(const ConvW8A8Args& c);

// What every path gets: the arguments, the quantized input, the re-laid weights.
struct DwCall {
  const ConvW8A8Args& c;
  const QuantizedInput& in;
  const DwWeights& weights;
  const int16_t* wt;  // weights.wt
  int64_t Np;         // weights.Np
  int64_t mult;       // N / C
  // in.xq has the zero border (Hp = H + 2 ph); false: in.xq is the codes themselves
  // (in.Hp = H, in.Wp = W), only for the AVX-512 rows of three (dw_rows_of_three) and the AVX2
  // walk (dw_avx2_reads_in_place)
  bool padded = true;
};

// The AVX-512 kernel for kernels three taps wide (conv_dw_w8a8_avx512.cpp run_rows_of_three),
// which also reads static codes in place, handling the zero border itself.
static inline bool dw_rows_of_three(const ConvW8A8Args& c, int64_t mult) {
  return mult == 1 && c.kw == 3 && c.dw == 1 && c.dh == 1 && c.kh <= 7;
}

// The AVX2 path's row walk (conv_dw_w8a8_avx2.cpp), which reads static codes in place too,
// bordering the rows it reads itself: channel multiplier 1, up to 5x5 taps.
static inline bool dw_avx2_reads_in_place(const ConvW8A8Args& c, int64_t mult) {
  return mult == 1 && c.kh * c.kw <= 26;
}

void run_dw_ref(const DwCall& k);
void run_dw_avx2(const DwCall& k);
void run_dw_avx512(const DwCall& k);

// Byte offset of each tap from a patch's first pixel in xq, for taps taken two at a time: a
// count rounded up to even, the odd tap's partner at any valid address (its weights are 0).
static inline std::vector<int64_t> dw_tap_offsets(const ConvW8A8Args& c, int64_t Wp) {
  const int64_t taps = c.kh * c.kw, pairs = (taps + 1) / 2;
  std::vector<int64_t> off(pairs * 2);
  for (int64_t t = 0; t < pairs * 2; ++t) {
    const int64_t tt = t < taps ? t : taps - 1;
    off[t] = ((tt / c.kw) * c.dh * Wp + (tt % c.kw) * c.dw) * c.C;
  }
  return off;
}

// c.w: K = kh * kw (c.C is the input channel count; c.N a multiple of it). weights: c.w
// prepared (prepare_dw_weights), or null to prepare them in the call.
void run_dw_w8a8(const ConvW8A8Args& c, const DwWeights* weights = nullptr);

// Scalar epilogue of one output pixel's channels [n0, n1) (the vector paths' tails), written
// to y[n0 .. n1) (y: the pixel's N outputs).
void dw_pixel_ref(const DwCall& k, int64_t b, int64_t oh, int64_t ow, int64_t n0, int64_t n1,
                  float* y);

// Where output row r = b * Ho + oh goes: c.y's, or with c.out (the static pipeline) a
// per-thread scratch of Wo * N floats that finish_row requantizes while it is in L1/L2.
struct DwRowOutput {
  explicit DwRowOutput(const ConvW8A8Args& c);
  float* row(int64_t r) const { return scratch_ ? scratch_.get() : c_.y + r * c_.Wo * c_.N; }
  void finish_row(int64_t r) const;
  // finish_row for columns [n0, N) only (the rest already written as codes)
  void finish_columns(int64_t r, int64_t n0) const;

 private:
  const ConvW8A8Args& c_;
  Scratch<float> scratch_;
};

}  // namespace tersor::conv
