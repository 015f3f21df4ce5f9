// Portable part of the depthwise W8A8 convolution: weight re-layout, the scalar path (the
// oracle), the per-call dispatch. See conv_dw_w8a8.h.
#include <cmath>
#include <stdexcept>

#include "common/cpu_features.h"
#include "common/formats.h"
#include "common/parallel.h"
#include "conv/conv_dw_w8a8.h"

namespace tersor::conv {

DwRowOutput::DwRowOutput(const ConvW8A8Args& c)
    : c_(c), scratch_(c.out ? alloc_scratch<float>(c.Wo * c.N) : Scratch<float>()) {}

void DwRowOutput::finish_row(int64_t r) const {
  if (!c_.out) return;
  const bool avx2 = TERSOR_X86_FN(requant_rows_avx2) != nullptr && active_isa() >= Isa::Avx2;
#if defined(TERSOR_X86)
  if (avx2) return requant_rows_avx2(*c_.out, scratch_.get(), c_.N, r * c_.Wo, r * c_.Wo + c_.Wo, c_.N);
#endif
  requant_rows_ref(*c_.out, scratch_.get(), c_.N, r * c_.Wo, r * c_.Wo + c_.Wo, c_.N);
}

void DwRowOutput::finish_columns(int64_t r, int64_t n0) const {
  Requant tail = *c_.out;
  tail.q += n0;
  requant_rows_ref(tail, scratch_.get() + n0, c_.N, r * c_.Wo, r * c_.Wo + c_.Wo, c_.N - n0);
}

void dw_pixel_ref(const DwCall& k, int64_t b, int64_t oh, int64_t ow, int64_t n0, int64_t n1,
                  float* y) {
  const ConvW8A8Args& c = k.c;
  const int8_t* img = k.in.xq + b * k.in.Hp * k.in.Wp * c.C;
  const float sx = k.in.scale[b];
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t ch = n / k.mult;
    int32_t acc = 0;
    for (int64_t i = 0; i < c.kh; ++i)
      for (int64_t j = 0; j < c.kw; ++j) {
        const int64_t pix = (oh * c.sh + i * c.dh) * k.in.Wp + ow * c.sw + j * c.dw;
        acc += int32_t(img[pix * c.C + ch]) * k.wt[(i * c.kw + j) * k.Np + n];
      }
    const float bias = c.bias ? c.bias[n] : 0.0f;
    y[n] = std::fma(static_cast<float>(acc), sx * c.w_scale[n], bias);
  }
}

void run_dw_ref(const DwCall& k) {
  const ConvW8A8Args& c = k.c;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * c.kh * c.kw, c.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    const DwRowOutput out(c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < c.B * c.Ho; ++r) {
      float* y = out.row(r);
      for (int64_t ow = 0; ow < c.Wo; ++ow)
        dw_pixel_ref(k, r / c.Ho, r % c.Ho, ow, 0, c.N, y + ow * c.N);
      out.finish_row(r);
    }
  });
}

DwWeights prepare_dw_weights(const ConvW8A8Args& c) {
  // wt[tap][n] from the packed W8Tile blocks: byte tap % 4 of lane n % 16 of tile
  // (n / 16, tap / 4); padding channels (N .. Np) hold 0
  DwWeights d;
  const int64_t taps = c.kh * c.kw, k4 = round_up(taps, 4) / 4;
  d.Np = round_up(c.N, 16);
  d.wt.resize(taps * d.Np);
  const W8Tile* tiles = reinterpret_cast<const W8Tile*>(c.w);
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t n = 0; n < d.Np; ++n)
      d.wt[t * d.Np + n] = tiles[(n / 16) * k4 + t / 4].q[n % 16][t % 4];
  if (dw_rows_of_three(c, c.N / c.C)) {
    const int64_t blocks = d.Np / 16;
    d.rows3.assign(blocks * c.kh * 64, 0);
    d.comp3.assign(blocks * 16, 0);
    for (int64_t nb = 0; nb < blocks; ++nb)
      for (int64_t i = 0; i < c.kh; ++i)
        for (int64_t l = 0; l < 16; ++l)
          for (int64_t j = 0; j < 3; ++j) {
            const int16_t w = d.wt[(i * 3 + j) * d.Np + nb * 16 + l];
            d.rows3[(nb * c.kh + i) * 64 + 4 * l + j] = static_cast<int8_t>(w);
            d.comp3[nb * 16 + l] += 128 * w;
          }
  }
  return d;
}

namespace {
void run_dw_folded(const ConvW8A8Args& c, const DwWeights* prepared) {
  // the AVX-512 rows of three and the AVX2 walk read static codes in place: no padded copy of
  // the input (a copy is a read and a write of the whole input, as much traffic as the layer's
  // own at 112x112); the rows of three flip every image's codes to u8 at no cost, and the AVX2
  // walk reads them as signed: no pass over the codes for their signs either
  const Isa isa = active_isa();
  const bool unpadded = (isa >= Isa::Avx512 && dw_rows_of_three(c, c.N / c.C)) ||
                        (isa == Isa::Avx2 && TERSOR_X86_FN(run_dw_avx2) != nullptr &&
                         dw_avx2_reads_in_place(c, c.N / c.C));
  const PreparedInput prepared_input(c, true, unpadded, !unpadded);
  const QuantizedInput& in = prepared_input.in;
  DwWeights local;
  if (!prepared) local = prepare_dw_weights(c);
  const DwWeights& w = prepared ? *prepared : local;
  const bool padded = in.xq != c.xs;
  dispatch_isa(DwCall{c, in, w, w.wt.data(), w.Np, c.N / c.C, padded}, run_dw_ref,
               TERSOR_X86_FN(run_dw_avx2), TERSOR_X86_FN(run_dw_avx512),
               TERSOR_X86_FN(run_dw_avx512));
}
}  // namespace

void run_dw_w8a8(const ConvW8A8Args& c, const DwWeights* weights) {
  if (c.B * c.Ho * c.Wo == 0 || c.N == 0) return;
  if (c.C <= 0 || c.N % c.C)
    throw std::invalid_argument("conv_dw_w8a8: N must be a multiple of the input channels");
  if (weights && (weights->Np != round_up(c.N, 16) ||
                  static_cast<int64_t>(weights->wt.size()) != c.kh * c.kw * weights->Np))
    throw std::invalid_argument("conv_dw_w8a8: prepared weights of another layer");
  with_folded_scales(c, [weights](const ConvW8A8Args& f) { run_dw_folded(f, weights); });
}

}  // namespace tersor::conv
