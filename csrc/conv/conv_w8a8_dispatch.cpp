// Portable part of the W8A8 convolution: the per-image input quantization, the patch gather for
// gemm_w8a8::run_rows, and the per-call dispatch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

#include "common/cpu_features.h"
#include "common/formats.h"
#include "common/linear_args.h"
#include "common/parallel.h"
#include "conv/conv_w8a8.h"
#include "conv/conv_w8a8_implicit.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "quant_act/quant_act.h"

namespace tersor::conv {

void quantize_input(const ConvW8A8Args& c, const QuantizedInput& in, bool scan_copied) {
  const Isa isa = active_isa();
  auto absmax = [&](const float* x, int64_t n, bool* finite) {
#if defined(TERSOR_X86)
    if (isa >= Isa::Avx512) return quant_act::absmax_avx512(x, n, finite);
    if (isa == Isa::Avx2) return quant_act::absmax_avx2(x, n, finite);
#endif
    return quant_act::absmax_ref(x, n, finite);
  };
  auto quantize = [&](const float* x, int64_t n, float inv, int8_t* dst) {
#if defined(TERSOR_X86)
    if (isa >= Isa::Avx512) return quant_act::quantize_scaled_avx512(x, n, inv, dst);
    if (isa == Isa::Avx2) return quant_act::quantize_scaled_avx2(x, n, inv, dst);
#endif
    quant_act::quantize_scaled_ref(x, n, inv, dst);
  };
  const int64_t row = c.W * c.C, prow = in.Wp * c.C;
  const bool codes = c.xs != nullptr;  // static pipeline: codes at one scale, copied as they are
  const int64_t xs_c = c.xs_channels > 0 ? c.xs_channels : c.C;
  auto amax_rows = alloc_scratch<float>(c.B * c.H);  // per input row; NaN marks non-finite
  auto inv = alloc_scratch<float>(c.B);
  auto negative_rows = alloc_scratch<uint8_t>(c.B * in.Hp);  // per padded row: a code < 0
  const int nt = threads_for_work(double(c.B) * c.H * row * 8, c.nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < (codes ? 0 : c.B * c.H); ++r) {
      bool finite;
      const float m = absmax(c.x + r * row, row, &finite);
      amax_rows.get()[r] = finite ? m : NAN;
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < c.B; ++b) {
      if (codes) {
        in.scale[b] = c.xs_scale;
        inv.get()[b] = 1.0f;  // any non-zero: the rows are copied
        continue;
      }
      float amax = 0.0f;
      bool finite = true;
      for (int64_t h = 0; h < c.H; ++h) {
        const float m = amax_rows.get()[b * c.H + h];
        finite = finite && !std::isnan(m);
        amax = std::fmax(amax, m);
      }
      in.scale[b] = !finite ? NAN : amax / 127.0f;
      inv.get()[b] = finite && amax > 0.0f ? 127.0f / amax : 0.0f;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < c.B * in.Hp; ++r) {  // padded rows
      const int64_t b = r / in.Hp, h = r % in.Hp - c.ph;
      int8_t* dst = in.xq + r * prow;
      const float inv_b = inv.get()[b];
      negative_rows.get()[r] = 0;
      if (h < 0 || h >= c.H || inv_b == 0.0f) {  // border row, or an all-zero / non-finite image
        std::memset(dst, 0, prow);
        continue;
      }
      std::memset(dst, 0, c.pw * c.C);
      if (codes && xs_c == c.C) {
        std::memcpy(dst + c.pw * c.C, c.xs + (b * c.H + h) * row, row);
      } else if (codes) {  // pixels of xs_c codes spread to C, zero-filled
        const int8_t* src = c.xs + (b * c.H + h) * c.W * xs_c;
        int8_t* px = dst + c.pw * c.C;
        if (xs_c == 3 && c.C == 4) {  // an RGB image: one 4-byte store per pixel, not a memcpy
          for (int64_t w = 0; w < c.W; ++w) {
            const uint32_t v = uint32_t(uint8_t(src[3 * w])) |
                               uint32_t(uint8_t(src[3 * w + 1])) << 8 |
                               uint32_t(uint8_t(src[3 * w + 2])) << 16;
            std::memcpy(px + 4 * w, &v, 4);
          }
        } else {
          std::memset(px, 0, row);
          for (int64_t w = 0; w < c.W; ++w) std::memcpy(px + w * c.C, src + w * xs_c, xs_c);
        }
      } else {
        quantize(c.x + (b * c.H + h) * row, row, inv_b, dst + c.pw * c.C);
      }
      std::memset(dst + c.pw * c.C + row, 0, c.pw * c.C);
      if (codes && !scan_copied) {  // (read as signed)
        negative_rows.get()[r] = 1;
        continue;
      }
      uint8_t any = 0;  // OR of the codes' bytes: the sign bit says whether one is negative
      for (int64_t i = 0; i < row; ++i) any |= static_cast<uint8_t>(dst[c.pw * c.C + i]);
      negative_rows.get()[r] = any >> 7;
    }
  });
  for (int64_t b = 0; b < c.B; ++b) {
    bool non_negative = true;
    for (int64_t h = 0; h < in.Hp; ++h)
      non_negative = non_negative && !negative_rows.get()[b * in.Hp + h];
    in.non_negative[b] = non_negative;
  }
  std::memset(in.xq + c.B * in.Hp * prow, 0, tail_pixels(c) * c.C);
}

void scan_codes(const ConvW8A8Args& c, const QuantizedInput& in, bool scan) {
  const int64_t image = c.H * c.W * c.C;
  const int nt = scan ? threads_for_work(double(c.B) * image, c.nthreads) : 1;
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < c.B; ++b) {
      const uint8_t* p = reinterpret_cast<const uint8_t*>(c.xs) + b * image;
      // OR of the codes' bytes, 4 KiB at a time: the sign bit says whether one is negative (a
      // signed image stops at its first chunk)
      uint8_t any = scan ? 0 : 0x80;
      for (int64_t i0 = 0; i0 < image && !(any >> 7); i0 += 4096)
        for (int64_t i = i0, i1 = std::min(image, i0 + 4096); i < i1; ++i) any |= p[i];
      in.scale[b] = c.xs_scale;
      in.non_negative[b] = !(any >> 7);
    }
  });
}

PreparedInput::PreparedInput(const ConvW8A8Args& c, bool may_read_in_place, bool unpadded,
                             bool scan_signs)
    : scale(alloc_scratch<float>(c.B)), non_negative(alloc_scratch<bool>(c.B)) {
  const bool in_place = may_read_in_place && c.xs &&
                        (unpadded || (c.kh == 1 && c.kw == 1 && c.ph == 0 && c.pw == 0)) &&
                        (c.xs_channels == 0 || c.xs_channels == c.C);
  const int64_t Hp = in_place ? c.H : c.H + 2 * c.ph, Wp = in_place ? c.W : c.W + 2 * c.pw;
  xq = alloc_scratch<int8_t>(in_place ? 0 : (c.B * Hp * Wp + tail_pixels(c)) * c.C);
  in = QuantizedInput{in_place ? const_cast<int8_t*>(c.xs) : xq.get(), scale.get(),
                      non_negative.get(), Hp, Wp};
  if (in_place) {
    scan_codes(c, in, scan_signs);
  } else {
    quantize_input(c, in, scan_signs);
  }
}

namespace {

// Row m of the implicit im2col matrix: the patch of output pixel m, copied from xq as kh runs
// of kw * C codes (kh * kw runs of C when dilated, of cg for a group's channels) in the GEMM's
// A layout (gemm_w8a8.h RowFill).
// The AMX and AVX2 row buffers take the runs directly; the VNNI panel takes them from a
// contiguous copy, 4-k groups at a time.
float gather_row(const ConvW8A8Args& c, const QuantizedInput& in, int64_t m, uint8_t* dst,
                 int64_t group_stride, uint8_t xor_mask) {
  const int64_t b = m / (c.Ho * c.Wo), oh = m / c.Wo % c.Ho, ow = m % c.Wo;
  const int64_t cg = patch_channels(c);
  const bool whole_rows = c.dw == 1 && cg == c.C;  // a kernel row's taps: one run of codes
  const int64_t runs_per_row = whole_rows ? 1 : c.kw, run = whole_rows ? c.kw * c.C : cg;
  const int8_t* img = in.xq + b * in.Hp * in.Wp * c.C + c.c0;
  const int64_t K = c.kh * c.kw * cg, Kp = round_up(K, 4);
  const bool plain = group_stride == 4 && xor_mask == 0;  // a plain s8 row (AMX, AVX2)
  thread_local std::vector<uint8_t> tmp;
  if (!plain && static_cast<int64_t>(tmp.size()) < Kp) tmp.resize(Kp);
  uint8_t* row = plain ? dst : tmp.data();
  int64_t k = 0;
  for (int64_t i = 0; i < c.kh; ++i)
    for (int64_t j = 0; j < runs_per_row; ++j, k += run)
      std::memcpy(row + k,
                  img + ((oh * c.sh + i * c.dh) * in.Wp + ow * c.sw + j * c.dw) * c.C, run);
  std::memset(row + K, 0, Kp - K);
  if (!plain) {
    const uint32_t xor32 = xor_mask * 0x01010101u;
    for (int64_t g = 0; g < Kp / 4; ++g) {
      uint32_t v;
      std::memcpy(&v, row + 4 * g, 4);
      v ^= xor32;
      std::memcpy(dst + g * group_stride, &v, 4);
    }
  }
  return in.scale[b];
}

}  // namespace

gemm_w8a8::RowFill patch_rows(const ConvW8A8Args& c, const QuantizedInput& in) {
  return [&c, &in](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return gather_row(c, in, m, dst, gs, xm);
  };
}

void run_w8a8_generic(const ConvCall& k) {
  const ConvW8A8Args& c = k.c;
  const int64_t K = c.kh * c.kw * patch_channels(c);
  PackedW8LinearArgs a{nullptr, c.B * c.Ho * c.Wo, K, K, c.w, c.colsum, c.w_scale, c.N,
                       c.bias, c.y, out_stride(c), c.nthreads};
  a.narrow_w = c.narrow_w;
  gemm_w8a8::run_rows(a, patch_rows(c, k.in));
}

void run_unfused(const ConvCall& k, void (*fn)(const ConvCall&)) {
  if (!k.c.out) return fn(k);
  const int64_t M = k.c.B * k.c.Ho * k.c.Wo;
  auto y = alloc_scratch<float>(M * k.c.N);
  ConvW8A8Args c = k.c;
  c.y = y.get();
  c.ldy = 0;  // the scratch holds this call's N columns
  c.out = nullptr;
  fn(ConvCall{c, k.in});
  requant_all(*k.c.out, y.get(), M, k.c.N, k.c.nthreads);
}

void for_each_group(const ConvCall& k, void (*fn)(const ConvCall&)) {
  const ConvW8A8Args& c = k.c;
  if (c.groups == 1) return fn(k);
  // each group a plain convolution over its channel slice, on the input quantized once (one
  // scale per image, as ungrouped), its output columns in place
  const int64_t cg = c.C / c.groups, ng = c.N / c.groups;
  const int64_t Kp = round_up(c.kh * c.kw * cg, 4);
  Requant out;
  for (int64_t gi = 0; gi < c.groups; ++gi) {
    ConvW8A8Args g = c;
    g.groups = 1;
    g.c0 = gi * cg;
    g.cg = cg;
    g.N = ng;
    g.ldy = c.N;
    g.w = c.w + gi * ng * Kp;  // ng / 16 column blocks of 16 * Kp bytes (common/formats.h)
    g.colsum = c.colsum + gi * ng;
    g.w_scale = c.w_scale + gi * ng;
    if (c.bias) g.bias = c.bias + gi * ng;
    if (c.y) g.y = c.y + gi * ng;
    if (c.out) {
      out = *c.out;
      out.q += gi * ng;
      if (out.res) out.res += gi * ng;
      g.out = &out;
    }
    fn(ConvCall{g, k.in});
  }
}

namespace {
void run_emulated_implicit(const ConvCall& k) { implicit_gemm<EmulatedTiles>(k.c, k.in); }
void run_generic_unfused(const ConvCall& k) { run_unfused(k, run_w8a8_generic); }
void run_generic_grouped(const ConvCall& k) { for_each_group(k, run_generic_unfused); }
#if defined(TERSOR_X86)
// AMX: the implicit GEMM where it applies and pays (conv_w8a8_implicit.h: the 3x3 layers, the
// stems, strided and 1x1 layers of 16 channels and more); the others (grouped, tiny images) on
// the AVX-512 VNNI direct path, which reads its patches in place and writes codes from its
// register tiles. The AMX GEMM over gathered patches that ran them before was 1.2-7x slower
// (ResNet-18 / MobileNetV2 layers at batch 8, Sapphire Rapids class).
void run_amx_or_avx512(const ConvCall& k) {
  if (implicit_gemm_pays(k.c)) return run_w8a8_amx(k);
  run_w8a8_avx512(k);
}
#endif
}  // namespace

void with_folded_scales(const ConvW8A8Args& c, const std::function<void(const ConvW8A8Args&)>& run) {
  if (!c.out) return run(c);
  // static pipeline: the output scale moves into the epilogue's factors (requant.h)
  FoldedScales f =
      fold_output_scale(c.w_scale, c.bias, c.N, round_up(c.N, 16), c.xs_scale, *c.out);
  ConvW8A8Args folded = c;
  folded.w_scale = f.m.get();
  folded.bias = f.c.get();
  folded.xs_scale = 1.0f;
  folded.out = &f.out;
  run(folded);
}

namespace {
void run_w8a8_folded(const ConvW8A8Args& c, Path path) {
  const bool implicit = implicit_gemm_applies(c);
  if (path == Path::EmulatedImplicit && !implicit)
    throw std::invalid_argument(
        "conv_w8a8: the implicit GEMM needs patch runs (kw * C codes, C when dilated) of a "
        "multiple of 4 codes, at most 64 or cut into steps of 32-64 codes, one group, and "
        "finite folded factors");
  // a 1x1 layer's codes read in place by every path (the implicit GEMM copies the blocks that
  // would read past the input's end); signs left to the direct paths' tiles where they run,
  // and not read at all by the implicit GEMM (signed tiles: no pass over a projection layer's
  // whole input, which a ReLU's codes made it read to the end)
  const Isa isa = active_isa();
  const bool implicit_runs = path == Path::EmulatedImplicit ||
                             (path == Path::Auto && isa == Isa::Amx && implicit_gemm_pays(c));
  const bool direct = path == Path::Auto && isa >= Isa::Avx2 && !implicit_runs;
  const PreparedInput prepared(c, true, false,
                               !implicit_runs && !(direct && direct_reads_signs(c)));
  const QuantizedInput& in = prepared.in;
  if (path == Path::EmulatedImplicit) return run_emulated_implicit(ConvCall{c, in});
  // AVX2 and AVX-512 VNNI run every group in one pass over the rows, the reference a group at
  // a time
  dispatch_isa(ConvCall{c, in}, run_generic_grouped, TERSOR_X86_FN(run_w8a8_avx2),
               TERSOR_X86_FN(run_w8a8_avx512), TERSOR_X86_FN(run_amx_or_avx512));
}
}  // namespace

void run_w8a8(const ConvW8A8Args& c, Path path) {
  if (c.B * c.Ho * c.Wo == 0 || c.N == 0) return;
  if (c.groups < 1 || (c.groups > 1 && (c.C % c.groups || c.N % c.groups || (c.N / c.groups) % 16)))
    throw std::invalid_argument(
        "conv_w8a8: groups must divide C and N into groups of a multiple of 16 outputs");
  // A 1x1 layer (stride 1, no padding) on codes at one scale is one GEMM over every pixel of
  // the batch: as one image of B * H rows, its blocks of pixels run across the images' ends
  // (a 7 x 7 image is 49 pixels: 4 AMX segments of 16, 15 rows computed for nothing).
  ConvW8A8Args f = c;
  if (c.xs && c.kh == 1 && c.kw == 1 && c.sh == 1 && c.sw == 1 && c.ph == 0 && c.pw == 0)
    f.H = f.Ho = c.B * c.H, f.B = 1;
  with_folded_scales(f, [path](const ConvW8A8Args& g) { run_w8a8_folded(g, path); });
}

}  // namespace tersor::conv
