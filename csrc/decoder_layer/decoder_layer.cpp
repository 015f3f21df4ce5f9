// A decoder layer's decode step from the per-family dispatchers (decoder_layer.h). Portable:
// the kernels it calls pick their ISA path per call.
#include "decoder_layer/decoder_layer.h"

#include "act/act.h"
#include "attention/attention.h"
#include "gemm_w4/gemm_w4.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "gemm_w8/gemm_w8.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "half_io/half_io.h"
#include "norm/norm.h"
#include "repack/repack.h"
#include "spmm_24/spmm_24.h"

namespace tersor::decoder_layer {

namespace {

// The rows of a 2:4 projection's call, with the fields half_io::run_staged reads and sets: the
// 2:4 kernels take fp32 rows only, so half rows are widened into fp32 staging rows and the
// outputs rounded back (x_io / y_io / x_widen / row_amax stay unused: no a8, no half_rows)
struct Rows24 {
  const float* x;
  int64_t M, K, ldx, N;
  float* y;
  int64_t ldy;
  int nthreads;
  const float* row_amax = nullptr;
  int x_io = 0;
  half_io::RowsFn x_widen = nullptr;
  int y_io = 0;
};

}  // namespace

void Projection::run_permuted(const void* x, int64_t M, int64_t ldx, void* y, int64_t ldy,
                              int io, int nthreads) const {
  // fp32 rows x[:, perm] | fp32 outputs (half io) | the gathered half rows (half io). A buffer
  // of its own: step()'s scratch and half_io's are live around this call.
  thread_local std::vector<float> buf;
  const int64_t half_floats = io ? (M * K + 1) / 2 : 0;
  const size_t need = static_cast<size_t>(M * K + (io ? M * N : 0) + half_floats);
  if (buf.size() < need) buf.resize(need);
  float* xs = buf.data();
  float* ys = xs + M * K;
  const int bytes = io ? 2 : 4;
  void* gathered = io ? static_cast<void*>(ys + M * N) : static_cast<void*>(xs);
  repack::gather_columns(x, M, K, ldx, perm, gathered, K, bytes, nthreads);
  if (io) half_io::widen({gathered, M, K, K, xs, K, io, nthreads});  // (exact)
  Projection p = *this;
  p.perm = nullptr;
  if (!io) return p.run(xs, M, K, y, ldy, half_io::F32, nthreads);
  p.col = 0;
  p.run(xs, M, K, ys, N, half_io::F32, nthreads);
  half_io::narrow({ys, M, N, N, static_cast<char*>(y) + col * 2, ldy, io, nthreads});
}

void Projection::run(const void* x, int64_t M, int64_t ldx, void* y, int64_t ldy, int io,
                     int nthreads) const {
  if (perm) return run_permuted(x, M, ldx, y, ldy, io, nthreads);
  // half rows are staged through fp32 by half_io, or widened row by row by the A8 kernels
  // (the layers' prepared calls do the same)
  const float* xf = static_cast<const float*>(x);
  float* yf = reinterpret_cast<float*>(static_cast<char*>(y) + col * (io ? 2 : 4));
  if (kind == S24W8A8 || kind == S24) {
    const Rows24 r{xf, M, K, ldx, N, yf, ldy, nthreads};
    half_io::run_staged(r, io, nullptr, [this](const Rows24& b) {
      if (kind == S24) {
        spmm_24::run({b.x, b.M, b.K, b.ldx, static_cast<const float*>(w), meta, N, bias, b.y,
                      b.ldy, b.nthreads});
      } else {
        spmm_24::run_w8a8({b.x, b.M, b.K, b.ldx, static_cast<const int8_t*>(w), meta,
                           static_cast<const int32_t*>(aux), static_cast<const float*>(scale), N,
                           bias, b.y, b.ldy, b.nthreads});
      }
    });
    return;
  }
  if (kind == W8) {  // (run_bf16 only where the layers' calls pass no x_scale)
    const PackedW8LinearArgs a{xf, M, K, ldx, static_cast<const int8_t*>(w), nullptr,
                               static_cast<const float*>(scale), N, bias, yf, ldy, nthreads};
    if (io == half_io::BF16 && x_scale == nullptr && M >= bf16_tiles_from) {
      half_io::run_staged(a, io, nullptr, gemm_w8::run_bf16);
    } else {
      half_io::run_staged(a, io, x_scale, gemm_w8::run);
    }
    return;
  }
  if (kind == W8A8 || kind == W8A8Narrow) {
    PackedW8LinearArgs a{xf, M, K, ldx, static_cast<const int8_t*>(w),
                         static_cast<const int32_t*>(aux), static_cast<const float*>(scale), N,
                         bias, yf, ldy, nthreads};
    a.x_scale = x_scale;
    a.narrow_w = kind == W8A8Narrow;
    half_io::run_staged(a, io, nullptr, gemm_w8a8::run, true);
  } else {
    PackedW4LinearArgs a{xf, M, K, ldx, static_cast<const uint8_t*>(w),
                         static_cast<const uint16_t*>(scale), static_cast<const uint8_t*>(aux),
                         group_size, ngroups, N, bias, yf, ldy, nthreads};
    // W4 as the layers' prepared calls choose by the rows: bf16 rows in the group form (W4Bf16
    // at every row count, with no x_scale by the layers' rule; W4 from bf16_tiles_from rows
    // without one), float rows on the fp32 tiles from fp32_tiles_from, else the register
    // kernel (the staging scales float rows by x_scale, as _C.gemm_w4 does)
    if (kind == W4 || kind == W4Bf16) {
      const bool group_form = kind == W4Bf16 || (x_scale == nullptr && M >= bf16_tiles_from);
      if (io == half_io::BF16 && group_form) {
        half_io::run_staged(a, io, nullptr, gemm_w4::run_bf16, false,
                            gemm_w4::bf16_rows_on_tiles(a.M, a.group_size));
      } else if (M >= fp32_tiles_from) {
        half_io::run_staged(a, io, x_scale, gemm_w4::run_fp32_tiles);
      } else {
        half_io::run_staged(a, io, x_scale, gemm_w4::run, false, gemm_w4::takes_half_rows(a.M));
      }
      return;
    }
    a.x_scale = x_scale;
    a.x_planes = kind == W4A8Planes ? 2 : 1;
    half_io::run_staged(a, io, nullptr, gemm_w4a8::run, true);
  }
}

namespace {

void run_all(const std::vector<Projection>& ps, const void* x, int64_t M, int64_t ldx, void* y,
             int64_t ldy, int io, int nthreads) {
  for (const Projection& p : ps) p.run(x, M, ldx, y, ldy, io, nthreads);
}

// Scratch bytes, grown as needed and kept per thread (a step allocates nothing after the first).
char* scratch(size_t bytes) {
  thread_local std::vector<char> buf;
  if (buf.size() < bytes) buf.resize(bytes);
  return buf.data();
}

// out = a + b over n elements of dtype: fp32 adds, a half sum rounded to nearest even as
// torch's half adds are (widened exactly, added, narrowed: half_io). out may be b.
void add(const void* a, const void* b, void* out, int64_t n, int dtype, float* tmp) {
  if (dtype == half_io::F32) {
    const float* fa = static_cast<const float*>(a);
    const float* fb = static_cast<const float*>(b);
    float* fo = static_cast<float*>(out);
    for (int64_t i = 0; i < n; ++i) fo[i] = fa[i] + fb[i];
    return;
  }
  float* wb = tmp + n;
  half_io::widen({a, 1, n, n, tmp, n, dtype});
  half_io::widen({b, 1, n, n, wb, n, dtype});
  for (int64_t i = 0; i < n; ++i) tmp[i] += wb[i];
  half_io::narrow({tmp, 1, n, n, out, n, dtype});
}

}  // namespace

void step(const Layer& L, const StepArgs& a) {
  const int64_t B = a.B, H = L.hidden, nqkv = L.nq + 2 * L.nkv, I = L.inter;
  const int nt = a.nthreads, dt = a.dtype;
  const int64_t es = dt == half_io::F32 ? 4 : 2;  // bytes per element
  // h [B][H] | qkv [B][nqkv] | attn [B][nq] | x1 [B][H] | gu [B][2I] | act [B][I] | normed
  // q, k [B][nq + nkv], then fp32 room for a half add (2 B H)
  const int64_t elems = B * (2 * H + nqkv + L.nq + 3 * I + L.nq + L.nkv);
  const int64_t tmp_at = (elems * es + 63) / 64 * 64;  // (fp32 after half rows: aligned)
  char* h = scratch(static_cast<size_t>(tmp_at + (es == 4 ? 0 : 2 * B * H * 4)));
  char* qkv = h + B * H * es;
  char* attn = qkv + B * nqkv * es;
  char* x1 = attn + B * L.nq * es;
  char* gu = x1 + B * H * es;
  char* act = gu + B * 2 * I * es;
  char* qk = act + B * I * es;
  float* tmp = reinterpret_cast<float*>(h + tmp_at);

  norm::rms_norm({a.x, B, H, H, L.norm1, L.eps1, h, H, dt, nt});
  run_all(L.qkv, h, B, H, qkv, nqkv, dt, nt);
  const char *q = qkv, *k = qkv + L.nq * es;
  int64_t ldq = nqkv, ldk = nqkv;
  if (L.q_norm) {  // each head's D values normed: q [B][nq] and k [B][nkv] rows, contiguous
    const int64_t D = L.head_dim;
    for (int64_t b = 0; b < B; ++b) {
      norm::rms_norm({q + b * nqkv * es, L.heads, D, D, L.q_norm, L.q_eps,
                      qk + b * L.nq * es, D, dt, nt});
      norm::rms_norm({k + b * nqkv * es, L.kv_heads, D, D, L.k_norm, L.k_eps,
                      qk + (B * L.nq + b * L.nkv) * es, D, dt, nt});
    }
    q = qk, k = qk + B * L.nq * es, ldq = L.nq, ldk = L.nkv;
  }
  attention::decode({q, k, qkv + (L.nq + L.nkv) * es, ldq, ldk, nqkv, a.cos, a.sin, a.ldcs, 0,
                     a.kcache, a.vcache, B, 1, L.heads, L.kv_heads, L.head_dim, a.cap, a.pos,
                     a.start, L.scaling, attn, L.nq, dt, nt});
  run_all(L.o, attn, B, L.nq, x1, H, dt, nt);
  add(a.x, x1, x1, B * H, dt, tmp);
  norm::rms_norm({x1, B, H, H, L.norm2, L.eps2, h, H, dt, nt});
  run_all(L.gate_up, h, B, H, gu, 2 * I, dt, nt);
  act::silu_mul({gu, gu + I * es, B, I, 2 * I, 2 * I, act, I, dt, nt});
  run_all(L.down, act, B, I, a.y, H, dt, nt);
  add(x1, a.y, a.y, B * H, dt, tmp);
}

void step_layers(const std::vector<const Layer*>& layers, const StepArgs& a,
                 const std::vector<void*>& kcache, const std::vector<void*>& vcache,
                 const std::vector<int64_t>& cap) {
  StepArgs s = a;
  for (size_t i = 0; i < layers.size(); ++i) {
    s.x = i ? a.y : a.x;
    s.kcache = kcache[i], s.vcache = vcache[i], s.cap = cap[i];
    step(*layers[i], s);
  }
}

}  // namespace tersor::decoder_layer
