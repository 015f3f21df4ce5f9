// Threading helpers. Kernels run one OpenMP parallel region per call with the thread count the
// caller passes (torch.get_num_threads()), and split work statically: on a 2-core machine a
// dynamic scheduler buys nothing and costs a few microseconds per call.
#pragma once
#include <cstdint>

// Fully unroll a register-tile loop before GCC decides where the tile's accumulator array
// lives: without it the 24-zmm VNNI tile was kept on the stack (a store per dpbusd).
#define TERSOR_UNROLL _Pragma("GCC unroll 16")

namespace tersor {

// [begin, end) of `n` items for thread `t` of `nt`, balanced to within one item.
inline void split_range(int64_t n, int nt, int t, int64_t* begin, int64_t* end) {
  *begin = n * t / nt;
  *end = n * (t + 1) / nt;
}

// Measured: a second thread pays from ~64K multiply-adds (384x384 at M = 1: 8.2 -> 6.8 us).
inline int threads_for_work(double macs, int nthreads) {
  return macs < (1 << 16) ? 1 : (nthreads < 1 ? 1 : nthreads);
}

}  // namespace tersor
