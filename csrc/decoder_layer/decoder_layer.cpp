// A decoder layer's decode step from the per-family dispatchers (decoder_layer.h). Portable:
// the kernels it calls pick their ISA path per call.
#include "decoder_layer/decoder_layer.h"

#include "act/act.h"
#include "attention/attention.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "norm/norm.h"

namespace tersor::decoder_layer {

void Projection::run(const float* x, int64_t M, int64_t ldx, float* y, int64_t ldy,
                     int nthreads) const {
  y += col;
  if (kind == W8A8) {
    PackedW8LinearArgs a{x, M, K, ldx, static_cast<const int8_t*>(w),
                         static_cast<const int32_t*>(aux), static_cast<const float*>(scale), N,
                         bias, y, ldy, nthreads};
    a.x_scale = x_scale;
    gemm_w8a8::run(a);
  } else {
    PackedW4LinearArgs a{x, M, K, ldx, static_cast<const uint8_t*>(w),
                         static_cast<const uint16_t*>(scale), static_cast<const uint8_t*>(aux),
                         group_size, ngroups, N, bias, y, ldy, nthreads};
    a.x_scale = x_scale;
    gemm_w4a8::run(a);
  }
}

namespace {

void run_all(const std::vector<Projection>& ps, const float* x, int64_t M, int64_t ldx, float* y,
             int64_t ldy, int nthreads) {
  for (const Projection& p : ps) p.run(x, M, ldx, y, ldy, nthreads);
}

void rms_norm(const float* x, int64_t M, int64_t N, const float* w, float eps, float* y,
              int nthreads) {
  norm::rms_norm({x, M, N, N, w, eps, y, N, /*dtype=*/0, nthreads});
}

// Scratch rows, grown as needed and kept per thread (a step allocates nothing after the first).
float* scratch(size_t floats) {
  thread_local std::vector<float> buf;
  if (buf.size() < floats) buf.resize(floats);
  return buf.data();
}

}  // namespace

void step(const Layer& L, const StepArgs& a) {
  const int64_t B = a.B, H = L.hidden, nqkv = L.nq + 2 * L.nkv, I = L.inter;
  const int nt = a.nthreads;
  // h [B][H] | qkv [B][nqkv] | attn [B][nq] | x1 [B][H] | gu [B][2I] | act [B][I]
  float* h = scratch(static_cast<size_t>(B) * (2 * H + nqkv + L.nq + 3 * I));
  float* qkv = h + B * H;
  float* attn = qkv + B * nqkv;
  float* x1 = attn + B * L.nq;
  float* gu = x1 + B * H;
  float* act = gu + B * 2 * I;

  rms_norm(a.x, B, H, L.norm1, L.eps1, h, nt);
  run_all(L.qkv, h, B, H, qkv, nqkv, nt);
  attention::decode({qkv, qkv + L.nq, qkv + L.nq + L.nkv, nqkv, nqkv, nqkv, a.cos, a.sin, a.ldcs,
                     0, a.kcache, a.vcache, B, 1, L.heads, L.kv_heads, L.head_dim, a.cap, a.pos,
                     a.start, L.scaling, attn, L.nq, /*dtype=*/0, nt});
  run_all(L.o, attn, B, L.nq, x1, H, nt);
  for (int64_t i = 0; i < B * H; ++i) x1[i] = a.x[i] + x1[i];
  rms_norm(x1, B, H, L.norm2, L.eps2, h, nt);
  run_all(L.gate_up, h, B, H, gu, 2 * I, nt);
  act::silu_mul({gu, gu + I, B, I, 2 * I, 2 * I, act, I, /*dtype=*/0, nt});
  run_all(L.down, act, B, I, a.y, H, nt);
  for (int64_t i = 0; i < B * H; ++i) a.y[i] = x1[i] + a.y[i];
}

}  // namespace tersor::decoder_layer
