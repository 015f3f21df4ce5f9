// AMX W8A8 convolution: the implicit GEMM (conv_w8a8_implicit.h) with AMX tile instructions,
// for the layers implicit_gemm_applies to (conv_w8a8_dispatch.cpp runs the others on the
// AVX-512 VNNI direct path).
#include <immintrin.h>

#include "conv/conv_w8a8.h"
#include "conv/conv_w8a8_implicit.h"
#include "gemm_w8a8/gemm_w8a8.h"  // amx_configure_tiles

namespace tersor::conv {
namespace {

// GCC's tile intrinsics paste the tile number into the instruction text, so each tile the
// implicit GEMM uses gets its own specialization.
struct AmxTiles {
  static void configure(int64_t k_bytes) { gemm_w8a8::amx_configure_tiles(k_bytes); }
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

void run_w8a8_amx(const ConvCall& k) { implicit_gemm<AmxTiles>(k.c, k.in); }

}  // namespace tersor::conv
