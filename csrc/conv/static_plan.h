// A static-pipeline convolution's fixed arguments (tersor.static_int8's StaticConv), built once
// per layer, so a call passes only what changes: ~2 us instead of ~15 us for 31 converted
// arguments, the per-call cost of every layer of a small network at batch 1. Run from Python
// (_C.StaticConvPlan.run) and by the static program (static_program/program.h).
#pragma once
#include <memory>

#include "conv/conv_dw_w8a8.h"
#include "conv/conv_w8a8.h"
#include "conv/requant.h"

namespace tersor::conv {

struct StaticConvPlan {
  ConvW8A8Args c{};
  bool depthwise = false;
  std::shared_ptr<const DwWeights> dw;  // a depthwise layer's re-laid weights
  Requant out{};  // q, res set per call; inv_scale 0: fp32 out
};

// xs: s8 NHWC codes [B, H, W, xs_channels] -> out (s8 codes [B, Ho, Wo, N], or fp32 when the
// plan's inv_scale is 0); res: s8 [B, Ho, Wo, N] residual codes or null.
inline void run_static_plan(const StaticConvPlan& p, const int8_t* xs, int64_t B, int64_t H,
                            int64_t W, int64_t Ho, int64_t Wo, void* out, const int8_t* res,
                            int nthreads) {
  ConvW8A8Args c = p.c;
  c.xs = xs;
  c.B = B, c.H = H, c.W = W, c.Ho = Ho, c.Wo = Wo, c.nthreads = nthreads;
  Requant r = p.out;
  r.q = static_cast<int8_t*>(out);
  r.res = res;
  const bool codes = r.inv_scale > 0.0f;
  c.y = codes ? nullptr : static_cast<float*>(out);
  c.out = codes ? &r : nullptr;
  if (p.depthwise) return run_dw_w8a8(c, p.dw.get());
  run_w8a8(c);
}

}  // namespace tersor::conv
