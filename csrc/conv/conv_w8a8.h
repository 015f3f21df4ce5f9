// W8A8 Conv2d by the GEMM view (M = B * H_out * W_out, K = kh * kw * C_in, N = C_out) on an NHWC
// input. The input is quantized once, with one scale per image (the quant_act rules applied to
// the whole image), into a zero-padded s8 copy a quarter the size of the fp32 input:
//
//   xq[B][Hp][Wp][C]  s8     Hp = H + 2 ph, Wp = W + 2 pw, the border holds code 0
//   +---------------+        (zero padding), and a few zero pixels follow the last image
//   | 0 0 0 0 0 0 0 |
//   | 0 x x x x x 0 |        every tap of every patch lies inside xq: no bounds checks
//   | 0 x x x x x 0 |
//   | 0 0 0 0 0 0 0 |
//   +---------------+
//
// Then the GEMM reads its A rows (the patches) from xq:
//   - AMX, patches of 64 codes and more whose kernel rows are runs of a multiple of 4 codes
//     (the 3x3 and strided layers of a ResNet, its 7x7 stem on 4 channels): implicit GEMM
//     with no gather at all (conv_w8a8_implicit.h). At stride 1 output pixels are numbered
//     over the padded width, q = oh * Wp + ow, so the patch row of q at tap (i, j) starts at
//     pixel q + i*dh*Wp + j*dw: 16 consecutive q are 16 pixels C bytes apart, one tile load
//     with stride C; rows with ow >= Wo are computed and dropped (Wp / Wo extra work: 4% at
//     56x56, 29% at 7x7). Strided, each tile holds 16 pixels of one output row, sw * C bytes
//     apart.
//   - AVX2 and AVX-512 VNNI, runs of codes a multiple of 4 long: the register tile broadcasts
//     each output pixel's 4-code groups straight from xq, one pointer per row: no gather, any
//     stride.
//   - otherwise: each patch is copied as kh runs of kw * C codes (kh * kw runs of C when
//     dilated) into the GEMM's A buffer, a block of rows at a time (gemm_w8a8::run_rows).
// Every path computes the same integer sums and the same epilogue: results are bit-identical
// across ISAs.
#pragma once
#include <cstdint>
#include <functional>

#include "conv/requant.h"
#include "gemm_w8a8/gemm_w8a8.h"

namespace tersor::conv {

struct ConvW8A8Args {
  const float* x;  // NHWC input [B][H][W][C]
  int64_t B, H, W, C;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  const int8_t* w;  // packed int8 weight, K = kh * kw * C in (kh, kw, C) order
  const int32_t* colsum;
  const float* w_scale;
  int64_t N;
  const float* bias;
  float* y;  // NHWC output [B * Ho * Wo][N]
  int nthreads;
  // The static int8 pipeline (requant.h): the input arrives as s8 codes at one fixed scale
  // (x unused), and / or the output leaves as codes through *out (y unused).
  const int8_t* xs = nullptr;  // NHWC [B][H][W][xs_channels] codes
  float xs_scale = 0.0f;
  int64_t xs_channels = 0;  // <= C: the rest of each pixel's C codes are zero (a 3-channel
                            // image read as 4 channels, whole 4-code groups); 0 means C
  const Requant* out = nullptr;
  // A grouped convolution (1 < groups, not depthwise: conv_dw_w8a8.h): group g reads input
  // channels [g * C / groups, (g + 1) * C / groups) and writes N / groups outputs, a multiple
  // of 16, so the packed weight's 16-column blocks never straddle two groups (nn/qconv.py
  // merges narrower groups block-diagonally). w: the [N][kh * kw * C / groups] packed weight.
  int64_t groups = 1;
  // What a path reads and writes (for_each_group sets them per group): codes c0 .. c0 + cg of
  // each pixel (cg 0: all C), output rows ldy apart (0: N).
  int64_t c0 = 0, cg = 0, ldy = 0;
  bool narrow_w = false;  // every |w| <= 64: PackedW8LinearArgs::narrow_w
};

// The channels of each pixel a patch reads, and the output row stride (see ConvW8A8Args).
static inline int64_t patch_channels(const ConvW8A8Args& c) { return c.cg ? c.cg : c.C; }
static inline int64_t out_stride(const ConvW8A8Args& c) { return c.ldy ? c.ldy : c.N; }

// Zero pixels after the last image in a padded copy: the AMX implicit GEMM's last block of two
// 16-pixel segments (pixels sw apart) reads up to 32 * sw + (kw - 1) * dw of them
// (conv_w8a8_implicit.h; codes read in place take a copy of the last block there instead).
static inline int64_t tail_pixels(const ConvW8A8Args& c) { return 32 * c.sw + (c.kw - 1) * c.dw; }

struct QuantizedInput {
  int8_t* xq;    // [B][Hp][Wp][C], then tail_pixels(c) * C zero bytes
  float* scale;  // [B]: amax / 127, 0 for an all-zero image, NaN if it holds NaN or Inf
  bool* non_negative;  // [B]: every code of the image >= 0 (a ReLU's output), see tile_avx2.h
  int64_t Hp, Wp;
};
// Fills in.xq, in.scale and in.non_negative (allocated by the caller) from c.x, or copies c.xs
// (and, unless scan_copied is false, reads the copied codes' signs: else non_negative false).
void quantize_input(const ConvW8A8Args& c, const QuantizedInput& in, bool scan_copied = true);
// in.xq is c.xs itself: fills in.scale, and in.non_negative from a pass over the codes when
// `scan` (else false: every path then reads the codes as signed, exact for any code).
void scan_codes(const ConvW8A8Args& c, const QuantizedInput& in, bool scan = true);

// The input a path reads: quantized (or codes copied) into the padded xq, or the codes
// themselves (c.xs, every channel) when the path may read them in place: a 1x1 layer without
// padding, or any layer with `unpadded` (the path handles the border itself: in.Hp / in.Wp are
// then H / W). `scan_signs` false: no pass over codes read in place (or copied) for their signs
// (in.non_negative all false, which every path reads correctly): the depthwise rows of three
// flip every image at no cost, the direct paths read a 1x1 layer's signs per tile. (The pass
// was a quarter of a depthwise layer's time at 112x112.)
struct PreparedInput {
  PreparedInput(const ConvW8A8Args& c, bool may_read_in_place, bool unpadded = false,
                bool scan_signs = true);
  Scratch<int8_t> xq;
  Scratch<float> scale;
  Scratch<bool> non_negative;
  QuantizedInput in{};
};

// The GEMM's rows gathered from xq (for gemm_w8a8::run_rows / run_rows_amx).
gemm_w8a8::RowFill patch_rows(const ConvW8A8Args& c, const QuantizedInput& in);

// A 1x1 layer without groups: the direct paths (AVX2, AVX-512 VNNI) read the signs of each
// tile's codes themselves (direct_rows.h), so codes read in place need no scan_codes pass.
static inline bool direct_reads_signs(const ConvW8A8Args& c) {
  return c.kh == 1 && c.kw == 1 && c.groups == 1 && patch_channels(c) == c.C;
}

// One call of the GEMM stage, what the shared dispatch_isa hands each path.
struct ConvCall {
  const ConvW8A8Args& c;
  const QuantizedInput& in;
};
// fn(k), or for a grouped convolution fn once per group: a plain convolution over the group's
// channel slice (c0, cg) writing its columns of w / colsum / w_scale / bias / y / out.
void for_each_group(const ConvCall& k, void (*fn)(const ConvCall&));
// Generic (ref, and the other paths' fallback): patch rows gathered for gemm_w8a8::run_rows, which dispatches.
void run_w8a8_generic(const ConvCall& k);
void run_w8a8_amx(const ConvCall& k);
// AVX2 and AVX-512 VNNI: the patches read in place from xq (no gather, direct_rows.h) when
// every run of codes is a multiple of 4 long (kw * C, or C when dilated, or C / groups),
// requantized (c.out) one row block at a time, every group of a grouped convolution in the same
// pass; the gather path otherwise (the 3-channel stem).
void run_w8a8_avx2(const ConvCall& k);
void run_w8a8_avx512(const ConvCall& k);
// fn(k) as it is without c.out; with it, fn writes fp32 into a scratch [M][N] that requant_all
// then turns into codes (the paths without a fused requantization).
void run_unfused(const ConvCall& k, void (*fn)(const ConvCall&));
// Auto: quantize, then per-call ISA dispatch. EmulatedImplicit (tests): the AMX implicit GEMM
// run over scalar tiles, on any machine.
enum class Path { Auto, EmulatedImplicit };
void run_w8a8(const ConvW8A8Args& c, Path path = Path::Auto);
// run(c), or with c.out run(c with the output scale folded into its per-column factors and an
// input scale of 1: fold_output_scale in requant.h).
void with_folded_scales(const ConvW8A8Args& c, const std::function<void(const ConvW8A8Args&)>& run);

}  // namespace tersor::conv
