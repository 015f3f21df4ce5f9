// The operations between the convolutions of the static int8 pipeline (tersor.static_int8), on
// s8 NHWC codes with one scale per tensor (zero point 0):
//
//   max_pool   max of the window's codes; the scale is kept (max commutes with a scale > 0)
//   avg_pool   nearbyint(sum of the window's codes / divisor); the scale is kept. Windows and
//              divisors come from the caller per output row / column, so avg_pool2d (padding,
//              count_include_pad) and adaptive_avg_pool2d are the same kernel
//   add        q = requant(fma(float(b), sb, float(a) * sa))  -- a skip connection the
//              convolution before it could not absorb, or (b null) a change of scale
//
// with requant as in conv/requant.h (NaN -> 0, clamp to [lo, hi], round half to even).
// One implementation each (int8_ops_impl.h), compiled portable and with AVX2: they move bytes
// and the compiler vectorizes the channel loops; results are the same on every path.
#pragma once
#include <cstdint>

namespace tersor::int8_ops {

struct PoolArgs {
  const int8_t* x;  // [B][H][W][C]
  int64_t B, H, W, C;
  int64_t Ho, Wo;
  const int64_t* h0;  // [Ho] window rows [h0, h1), inside [0, H)
  const int64_t* h1;
  const int64_t* w0;  // [Wo] window columns [w0, w1), inside [0, W)
  const int64_t* w1;
  const int64_t* div_h;  // avg_pool: divisor = div_h[oh] * div_w[ow]
  const int64_t* div_w;
  int8_t* y;  // [B][Ho][Wo][C]
  int nthreads;
};
struct AddArgs {
  const int8_t* a;
  float sa;
  const int8_t* b;  // or null
  float sb;
  int64_t n;
  float inv_scale, lo, hi;
  int8_t* y;
  int nthreads;
};

// Per-call ISA dispatch, and the paths.
void max_pool(const PoolArgs& a);
void avg_pool(const PoolArgs& a);
void add(const AddArgs& a);
void max_pool_ref(const PoolArgs& a);
void avg_pool_ref(const PoolArgs& a);
void add_ref(const AddArgs& a);
void max_pool_avx2(const PoolArgs& a);
void avg_pool_avx2(const PoolArgs& a);
void add_avx2(const AddArgs& a);

}  // namespace tersor::int8_ops
