// The static program's steps (program.h), each the call its module makes.
#include "static_program/program.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "int8_ops/int8_ops.h"

namespace tersor::static_program {

namespace {

// expand_dw (program.h): x the expansion's input codes [B][H][W][Cx], y the depthwise
// convolution's output codes [B][Ho][Wo][Ce].
void run_expand_dw(const Step& s, const int8_t* x, int8_t* y, int nthreads) {
  const conv::StaticConvPlan& expand = *s.plan;
  const int64_t Cx = expand.c.xs_channels > 0 ? expand.c.xs_channels : expand.c.C;
  const int64_t Ce = expand.c.N, kh = s.plan2->c.kh, sh = s.plan2->c.sh, ph = s.plan2->c.ph;
  const int64_t bands = (s.Ho + s.band - 1) / s.band, row_bytes = s.W * Ce;
  parallel_team(::tersor::team(nthreads), [&] {
    conv::StaticConvPlan dw = *s.plan2;
    dw.c.ph = 0;  // the padding rows are in buf
    auto buf = alloc_scratch<int8_t>(((s.band - 1) * sh + kh) * row_bytes);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < s.B * bands; ++item) {
      const int64_t b = item / bands, oh0 = item % bands * s.band;
      const int64_t oh1 = std::min(s.Ho, oh0 + s.band);
      const int64_t ih0 = oh0 * sh - ph, ih1 = (oh1 - 1) * sh - ph + kh;  // rows buf holds
      const int64_t lo = std::max<int64_t>(ih0, 0), hi = std::min(ih1, s.H);
      std::memset(buf.get(), 0, (lo - ih0) * row_bytes);
      if (hi > lo)
        conv::run_static_plan(expand, x + (b * s.H + lo) * s.W * Cx, 1, hi - lo, s.W, hi - lo,
                              s.W, buf.get() + (lo - ih0) * row_bytes, nullptr, 1);
      std::memset(buf.get() + (std::max(hi, lo) - ih0) * row_bytes, 0,
                  (ih1 - std::max(hi, lo)) * row_bytes);
      conv::run_static_plan(dw, buf.get(), 1, ih1 - ih0, s.W, oh1 - oh0, s.Wo,
                            y + (b * s.Ho + oh0) * s.Wo * Ce, nullptr, 1);
    }
  });
}

}  // namespace

void Program::run_on(int8_t* arena, const float* x, void* y, int nthreads,
                     double* step_seconds) const {
  auto at = [&](int64_t off) -> void* {
    return off == kInput ? const_cast<float*>(x) : off == kOutput ? y : arena + off;
  };
  for (const Step& s : steps) {
    const auto t0 = std::chrono::steady_clock::now();
    switch (s.op) {
      case Op::kQuantize:
        conv::quantize_codes(static_cast<const float*>(at(s.in)), s.n, s.inv, s.lo, s.hi,
                             static_cast<int8_t*>(at(s.out)), nthreads);
        break;
      case Op::kConv:
        conv::run_static_plan(*s.plan, static_cast<const int8_t*>(at(s.in)), s.B, s.H, s.W, s.Ho,
                              s.Wo, at(s.out),
                              s.in2 == kNone ? nullptr : static_cast<const int8_t*>(at(s.in2)),
                              nthreads);
        break;
      case Op::kExpandDw:
        run_expand_dw(s, static_cast<const int8_t*>(at(s.in)), static_cast<int8_t*>(at(s.out)),
                      nthreads);
        break;
      case Op::kMaxPool:
      case Op::kAvgPool: {
        const int8_ops::PoolArgs p{static_cast<const int8_t*>(at(s.in)), s.B, s.H, s.W, s.C, s.Ho,
                                   s.Wo, s.h0.data(), s.h1.data(), s.w0.data(), s.w1.data(),
                                   s.div_h.data(), s.div_w.data(),
                                   static_cast<int8_t*>(at(s.out)), nthreads};
        (s.op == Op::kMaxPool ? int8_ops::max_pool : int8_ops::avg_pool)(p);
        break;
      }
      case Op::kAdd:
        int8_ops::add({static_cast<const int8_t*>(at(s.in)), s.a,
                       s.in2 == kNone ? nullptr : static_cast<const int8_t*>(at(s.in2)), s.b, s.n,
                       s.inv, s.lo, s.hi, static_cast<int8_t*>(at(s.out)), nthreads});
        break;
      case Op::kDequantize: {  // as the module: float(q) * scale
        const int8_t* q = static_cast<const int8_t*>(at(s.in));
        float* out = static_cast<float*>(at(s.out));
        for (int64_t i = 0; i < s.n; ++i) out[i] = static_cast<float>(q[i]) * s.a;
        break;
      }
    }
    if (step_seconds)
      *step_seconds++ =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
}

std::vector<std::string> Program::describe() const {
  auto conv = [](const conv::StaticConvPlan& p, int64_t B, int64_t Ho, int64_t Wo) {
    const conv::ConvW8A8Args& c = p.c;
    const std::string kind = p.depthwise ? " dw" : c.groups > 1 ? " g" + std::to_string(c.groups)
                                                                 : "";
    return std::to_string(c.kh) + "x" + std::to_string(c.kw) + "/" + std::to_string(c.sh) +
           kind + " " + std::to_string(c.C) + "->" + std::to_string(c.N) + " " +
           std::to_string(B) + "x" + std::to_string(Ho) + "x" + std::to_string(Wo);
  };
  std::vector<std::string> out;
  for (const Step& s : steps) {
    const std::string pixels =
        std::to_string(s.B) + "x" + std::to_string(s.Ho) + "x" + std::to_string(s.Wo);
    switch (s.op) {
      case Op::kQuantize: out.push_back("quantize " + std::to_string(s.n)); break;
      case Op::kConv:
        out.push_back("conv " + conv(*s.plan, s.B, s.Ho, s.Wo) + (s.in2 == kNone ? "" : " +res") +
                      (s.plan->out.inv_scale > 0.0f ? "" : " fp32"));
        break;
      case Op::kExpandDw:
        out.push_back("expand_dw " + conv(*s.plan, s.B, s.H, s.W) + " | " +
                      conv(*s.plan2, s.B, s.Ho, s.Wo));
        break;
      case Op::kMaxPool: out.push_back("max_pool " + pixels + "x" + std::to_string(s.C)); break;
      case Op::kAvgPool: out.push_back("avg_pool " + pixels + "x" + std::to_string(s.C)); break;
      case Op::kAdd: out.push_back("add " + std::to_string(s.n)); break;
      case Op::kDequantize: out.push_back("dequantize " + std::to_string(s.n)); break;
    }
  }
  return out;
}

void Program::run(const float* x, void* y, int nthreads, double* step_seconds) {
  std::unique_lock<std::mutex> lock(arena_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) {  // another caller runs this program now: a one-off arena
    auto arena = alloc_scratch<int8_t>(arena_bytes);
    return run_on(arena.get(), x, y, nthreads, step_seconds);
  }
  if (arena_size_ < arena_bytes) {
    arena_ = alloc_scratch<int8_t>(arena_bytes);
    arena_size_ = arena_bytes;
  }
  run_on(arena_.get(), x, y, nthreads, step_seconds);
}

}  // namespace tersor::static_program
