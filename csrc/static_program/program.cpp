// The static program's steps (program.h), each the call its module makes.
#include "static_program/program.h"

#include "int8_ops/int8_ops.h"

namespace tersor::static_program {

void Program::run_on(int8_t* arena, const float* x, void* y, int nthreads) const {
  auto at = [&](int64_t off) -> void* {
    return off == kInput ? const_cast<float*>(x) : off == kOutput ? y : arena + off;
  };
  for (const Step& s : steps) {
    switch (s.op) {
      case Op::kQuantize:
        conv::quantize_codes(static_cast<const float*>(at(s.in)), s.n, s.inv, s.lo, s.hi,
                             static_cast<int8_t*>(at(s.out)), nthreads);
        break;
      case Op::kConv:
        conv::run_static_plan(*s.plan, static_cast<const int8_t*>(at(s.in)), s.B, s.H, s.W, s.Ho,
                              s.Wo, at(s.out),
                              s.in2 == -3 ? nullptr : static_cast<const int8_t*>(at(s.in2)),
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
                       s.in2 == -3 ? nullptr : static_cast<const int8_t*>(at(s.in2)), s.b, s.n,
                       s.inv, s.lo, s.hi, static_cast<int8_t*>(at(s.out)), nthreads});
        break;
      case Op::kDequantize: {  // as the module: float(q) * scale
        const int8_t* q = static_cast<const int8_t*>(at(s.in));
        float* out = static_cast<float*>(at(s.out));
        for (int64_t i = 0; i < s.n; ++i) out[i] = static_cast<float>(q[i]) * s.a;
        break;
      }
    }
  }
}

void Program::run(const float* x, void* y, int nthreads) {
  std::unique_lock<std::mutex> lock(arena_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) {  // another caller runs this program now: a one-off arena
    auto arena = alloc_scratch<int8_t>(arena_bytes);
    return run_on(arena.get(), x, y, nthreads);
  }
  if (arena_size_ < arena_bytes) {
    arena_ = alloc_scratch<int8_t>(arena_bytes);
    arena_size_ = arena_bytes;
  }
  run_on(arena_.get(), x, y, nthreads);
}

}  // namespace tersor::static_program
