// AVX2 unstructured sparse GEMM (rules in spmm_csr.h).
//  - 1-2 rows (decode steps): the ELL blocks, 8 lanes per vector, each lane's own x[k]
//    gathered (vgatherdps; a row of x sits in L1) for one FMA per lane and row, each lane its
//    own chain in k order. Zen 3, 2 threads, 90% zeros, against the scalar kernel it replaces
//    (4 channels in lockstep, one scalar FMA chain each: FMA-latency bound where rows are
//    short): 1.1-2.1x faster at one row (384x1536 .. 4096x11008), 1.1-1.6x at two; against
//    torch's CSR (MKL) at one row 0.93-1.7x -> 1.7-2.6x (75-95% zeros).
//  - More rows: the transposed-activation kernel (spmm_csr/transposed.h, 8 lanes, 32 rows per
//    pass); its cost per call is about flat up to 32 rows, the gathers' grow with every row
//    (3 rows: even).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common/formats.h"
#include "common/parallel.h"
#include "spmm_csr/ell_avx2.h"
#include "spmm_csr/spmm_csr.h"
#include "spmm_csr/transposed.h"

namespace tersor::spmm_csr {
namespace {

struct Avx2Vec {
  using vec = __m256;
  static constexpr int kLanes = 8;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float x) { return _mm256_set1_ps(x); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vec v) { _mm256_store_ps(p, v); }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
};

}  // namespace

void run_avx2(const Args& a) {
  if (a.M <= ell_avx2::kMaxRows) {
    const ell_avx2::Ell ell{a.ell_cnt, a.ell_off, a.ell_col, a.perm, a.N};
    const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
    parallel_team(::tersor::team(nt), [&] {
      ell_avx2::for_blocks(ell, a.M, [&](int64_t b, auto shape) {
        constexpr int MR = decltype(shape)::kRows, NB = decltype(shape)::kBlocks;
        ell_avx2::walk<MR, NB>(
            ell, b, a.x, a.ldx, INT64_MAX,
            [&](int64_t e) { return _mm256_loadu_ps(a.ell_val + e); },
            [&](const __m256(&acc)[MR][NB][2]) {  // once, at the end: y = acc + bias
              ell_avx2::scatter<float>(ell, b, acc, [&](int r, int32_t n, float v) {
                a.y[r * a.ldy + n] = v + (a.bias ? a.bias[n] : 0.0f);
              });
            });
      });
    });
    return;
  }
  // xT pass-major (transpose_passes): Zen 3, 2 threads, 90% zeros, in-process against one xT
  // [K][M + 16] (a pass reading 32 floats of each row): 4096x4096 / 4096x11008 / 384x1536 at
  // 512 rows 1.79 / 1.45 / 1.14x faster, at 64-128 rows 1.01-1.05x
  run_transposed<Avx2Vec>(a, 0);
}

}  // namespace tersor::spmm_csr
