// Threading helpers. Every helper here has internal linkage (static / an unnamed namespace):
// this header is compiled into TUs with different ISA flags, and an inline function with
// external linkage would be merged by the linker into one copy, possibly the AVX-512 one,
// called from the portable path (the failure mode that made bitsandbytes SIGILL). Kernels run one OpenMP parallel region per call with the thread count the
// caller passes (torch.get_num_threads()), and split work statically: on a 2-core machine a
// dynamic scheduler buys nothing and costs a few microseconds per call.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "common/team_governor.h"
#if defined(_OPENMP)
#include <omp.h>
#endif

// Fully unroll a register-tile loop before GCC decides where the tile's accumulator array
// lives: without it the 24-zmm VNNI tile was kept on the stack (a store per dpbusd).
#define TERSOR_UNROLL _Pragma("GCC unroll 16")

namespace tersor {

// fork(): GNU OpenMP cannot run a thread team in the child of a process whose team had
// started (the child waits forever for worker threads that fork did not copy). The child
// handler (common/cpu_features.cpp) sets g_forked_child when our team had started, and from
// then on every parallel region of that child runs on the calling thread: same results (work
// splits never change them), no hang. Every `omp parallel` takes its size from team(), which
// also gives up threads while other work keeps our cores busy (common/team_governor.h).
extern std::atomic<bool> g_team_started;
extern std::atomic<bool> g_forked_child;

static inline int team(int requested) {
  if (requested <= 1 || g_forked_child.load(std::memory_order_relaxed)) return 1;
  if (!g_team_started.load(std::memory_order_relaxed))
    g_team_started.store(true, std::memory_order_relaxed);
  return team_governor().size(requested);
}

// body() on a team of `nt` threads: `#pragma omp parallel num_threads(nt) body();`, except
// that a team of one runs body on the calling thread with no region at all. Why: GNU OpenMP
// spends ~1 us on a region of one thread (a team allocated and freed, a futex wake per
// barrier; 0.8-1.4 us measured on Zen 3), a fifth of a small layer's whole call. Outside any
// region, body's worksharing (`omp for`, barriers, omp_get_thread_num) sees a team of one,
// as it did; inside a caller's active team the region stays, so that it still binds to a
// team of its own. Every kernel's parallel region goes through here.
template <typename Fn>
static void parallel_team(int nt, Fn&& body) {
#if defined(_OPENMP)
  if (nt > 1 || omp_in_parallel()) {
#pragma omp parallel num_threads(nt > 1 ? nt : 1)
    body();
    return;
  }
#endif
  body();
}

// [begin, end) of `n` items for thread `t` of `nt`, balanced to within one item.
static inline void split_range(int64_t n, int nt, int t, int64_t* begin, int64_t* end) {
  *begin = n * t / nt;
  *end = n * (t + 1) / nt;
}

// This thread's index in its OpenMP team (0 outside a parallel region).
static inline int thread_index() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// This thread's share [begin, end) of n items, inside an OpenMP parallel region.
static inline void thread_range(int64_t n, int64_t* begin, int64_t* end) {
#if defined(_OPENMP)
  split_range(n, omp_get_num_threads(), omp_get_thread_num(), begin, end);
#else
  *begin = 0;
  *end = n;
#endif
}

// This thread's share [begin, end) of n items whose work is given as a prefix sum
// (prefix[i + 1] - prefix[i] = work of item i, e.g. the nonzeros of a sparse row), balanced by
// work rather than by item count, inside an OpenMP parallel region.
static inline void balanced_range(const int64_t* prefix, int64_t n, int64_t* begin,
                                  int64_t* end) {
  int64_t t0, t1;
  thread_range(prefix[n] - prefix[0], &t0, &t1);
  auto at = [&](int64_t w) {
    return std::lower_bound(prefix, prefix + n + 1, prefix[0] + w) - prefix;
  };
  *begin = t0 == 0 ? 0 : at(t0);
  *end = t1 == prefix[n] - prefix[0] ? n : at(t1);
}

// This thread's register tiles, inside a parallel region: the column blocks split into chunks
// of `chunk` blocks (threads take whole chunks), each chunk visited for every tile of `rows`
// rows (the last chunk and the last row tile may be short):
//   fn(first_block, blocks_in_chunk, first_row, rows_in_tile)
// Chunk-outer order keeps a chunk's weight panel in L2 while all rows stream past it.
template <typename Fn>
static void for_each_tile(int64_t n_blocks, int64_t chunk, int64_t M, int64_t rows, Fn&& fn) {
  int64_t c0, c1;
  thread_range((n_blocks + chunk - 1) / chunk, &c0, &c1);
  for (int64_t ch = c0; ch < c1; ++ch) {
    const int64_t b0 = ch * chunk;
    const int nb = static_cast<int>(n_blocks - b0 < chunk ? n_blocks - b0 : chunk);
    for (int64_t m0 = 0; m0 < M; m0 += rows)
      fn(b0, nb, m0, static_cast<int>(M - m0 < rows ? M - m0 : rows));
  }
}

// fn(r0, r1) for consecutive row blocks [r0, r1) of `rows` rows (the last may be short).
template <typename Fn>
static void for_row_blocks(int64_t M, int64_t rows, Fn&& fn) {
  for (int64_t r0 = 0; r0 < M; r0 += rows) fn(r0, r0 + rows < M ? r0 + rows : M);
}

// A 64-byte aligned scratch array (freed with the owner).
namespace {
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
}  // namespace
template <typename T>
using Scratch = std::unique_ptr<T, FreeDeleter>;
template <typename T>
static Scratch<T> alloc_scratch(int64_t count) {
  const int64_t bytes = (count * int64_t(sizeof(T)) + 63) / 64 * 64;
  return Scratch<T>(static_cast<T*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64)));
}

// Measured: a second thread pays from ~64K multiply-adds (384x384 at M = 1: 8.2 -> 6.8 us).
static inline int threads_for_work(double macs, int nthreads) {
  return macs < (1 << 16) ? 1 : (nthreads < 1 ? 1 : nthreads);
}

}  // namespace tersor
