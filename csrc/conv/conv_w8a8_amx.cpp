// AMX W8A8 convolution: the implicit GEMM (conv_w8a8_implicit.h) with AMX tile instructions
// for stride-1 convolutions with C % 64 == 0; the patch gather + AMX GEMM otherwise.
#include <immintrin.h>

#include "conv/conv_w8a8.h"
#include "conv/conv_w8a8_implicit.h"
#include "gemm_w8a8/gemm_w8a8.h"

namespace tersor::conv {
namespace {

// GCC's tile intrinsics paste the tile number into the instruction text, so each tile the
// implicit GEMM uses gets its own specialization.
struct AmxTiles {
  static void configure() { gemm_w8a8::amx_configure_tiles(); }
  static void release() { _tile_release(); }
  template <int t> static void zero();
  template <int t> static void load(const void* p, int64_t stride);
  template <int t> static void store(void* p, int64_t stride);
  template <int ct, int at, int bt> static void dpbssd();
};
#define TERSOR_C_TILE(t)                                \
  template <> void AmxTiles::zero<t>() { _tile_zero(t); } \
  template <> void AmxTiles::store<t>(void* p, int64_t s) { _tile_stored(t, p, s); }
#define TERSOR_AB_TILE(t) \
  template <> void AmxTiles::load<t>(const void* p, int64_t s) { _tile_loadd(t, p, s); }
TERSOR_C_TILE(0)
TERSOR_C_TILE(1)
TERSOR_C_TILE(2)
TERSOR_C_TILE(3)
TERSOR_AB_TILE(4)
TERSOR_AB_TILE(5)
TERSOR_AB_TILE(6)
TERSOR_AB_TILE(7)
#undef TERSOR_C_TILE
#undef TERSOR_AB_TILE
template <> void AmxTiles::dpbssd<0, 4, 6>() { _tile_dpbssd(0, 4, 6); }
template <> void AmxTiles::dpbssd<1, 4, 7>() { _tile_dpbssd(1, 4, 7); }
template <> void AmxTiles::dpbssd<2, 5, 6>() { _tile_dpbssd(2, 5, 6); }
template <> void AmxTiles::dpbssd<3, 5, 7>() { _tile_dpbssd(3, 5, 7); }

}  // namespace

void run_w8a8_amx(const ConvCall& k) {
  const ConvW8A8Args& c = k.c;
  if (implicit_gemm_applies(c)) return implicit_gemm<AmxTiles>(c, k.in);
  const int64_t K = c.kh * c.kw * patch_channels(c);
  gemm_w8a8::run_rows_amx(PackedW8LinearArgs{nullptr, c.B * c.Ho * c.Wo, K, K, c.w, c.colsum,
                                             c.w_scale, c.N, c.bias, c.y, out_stride(c),
                                             c.nthreads},
                          patch_rows(c, k.in));
}

}  // namespace tersor::conv
