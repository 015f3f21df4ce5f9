// 2:4 sparse GEMM on NVIDIA sparse tensor cores (mma.sp, sm_80+): fp16 activations x a 2:4
// fp16 weight, fp32 accumulation, fp16 out.  y^T = W . x^T, so the sparse operand A is W itself
// (2:4 along K, as our format is) and B is x (row-major [M][K] = the "col" layout of B^T).
//
//   values fp16 [N][K/2]   the canonical 2:4 values (formats/sparse24.py), as they are: lane
//                          (g, t) of a 16-row tile reads chunk t (and 4 + t) of rows g, g + 8
//   meta   u32  [N][K/32]  8 canonical meta nibbles (p0 | p1 << 2) per word, chunk c at bits
//                          4c .. 4c + 3: one row's metadata for one k32 step
//
// mma.sp m16n8k32 .f16 metadata, sparsity selector 0 (PTX ISA "sparse-mma-metadata-16832-f16"):
// lanes t = 0 and 1 of quad g supply it, each for both of the quad's rows and one k16 half:
//
//   lane (g, t)   bits 0..15: row g,     chunks 4t .. 4t + 3   (k 16t .. 16t + 15)
//                 bits 16..31: row g + 8, chunks 4t .. 4t + 3
//
// so a lane takes half of each of its two rows' words (one byte permute).
//
// Block: 4 warps x 16 channels = 64 channels, 64 activation rows (8 n8 tiles); x tiles of 64 k
// double-buffered in shared memory by cp.async. Requires K % 32 == 0 and ldx % 8 == 0.
#include "common/cuda_common.cuh"
#include "spmm_24/spmm_24_cuda.h"

namespace tersor::spmm_24 {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kRows = 64;   // activation rows per block (8 n8 tiles)
constexpr int kBK = 64;     // k per shared slice (2 mma.sp steps)
constexpr int kLd = kBK + 8;

__global__ void __launch_bounds__(kThreads)
spmm_24_kernel(const __half* __restrict__ x, int64_t ldx, const uint32_t* __restrict__ values,
               const uint32_t* __restrict__ meta, const __half* __restrict__ bias,
               __half* __restrict__ y, int M, int N, int K) {
  __shared__ __align__(16) __half sx[2][kRows][kLd];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = (blockIdx.x * kWarps + warp) * 16;  // this warp's 16 channels
  const int m0 = blockIdx.y * kRows;
  const int slices = K / kBK + (K % kBK ? 1 : 0);
  const int vstride = K / 4;   // u32 (two fp16 values) per row of values
  const int mstride = K / 32;  // u32 per row of meta
  const bool live = n0 < N;

  auto load_x = [&](int buf, int k0) {
    for (int c = tid; c < kRows * (kBK / 8); c += kThreads) {
      const int r = c / (kBK / 8), kc = (c % (kBK / 8)) * 8;
      const bool ok = m0 + r < M && k0 + kc < K;
      cuda::cp_async16(&sx[buf][r][kc], ok ? x + int64_t(m0 + r) * ldx + k0 + kc : x, ok);
    }
  };
  // this lane's rows of W (g and g + 8): values, and the metadata words of both
  const bool ok0 = n0 + g < N, ok1 = n0 + g + 8 < N;
  const uint32_t* v0 = values + int64_t(ok0 ? n0 + g : 0) * vstride;
  const uint32_t* v1 = values + int64_t(ok1 ? n0 + g + 8 : 0) * vstride;
  const uint32_t* m0row = meta + int64_t(ok0 ? n0 + g : 0) * mstride;
  const uint32_t* m1row = meta + int64_t(ok1 ? n0 + g + 8 : 0) * mstride;
  // low halves (k 0..15) for lane t = 0, high halves (k 16..31) for t = 1 (t = 2, 3: unread)
  const uint32_t half_sel = (t & 1) ? 0x7632u : 0x5410u;

  float acc[8][4] = {};
  load_x(0, 0);
  cuda::cp_async_commit();
  for (int s = 0; s < slices; ++s) {
    if (s + 1 < slices) load_x((s + 1) & 1, (s + 1) * kBK);
    cuda::cp_async_commit();
    cuda::cp_async_wait<1>();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 32) {
      const int k = s * kBK + ks;
      if (k < K && live) {
        const int c0 = k / 4;  // first 4-chunk of this step
        uint32_t a[4], b[4];
        a[0] = ok0 ? v0[c0 + t] : 0u;
        a[1] = ok1 ? v1[c0 + t] : 0u;
        a[2] = ok0 ? v0[c0 + 4 + t] : 0u;
        a[3] = ok1 ? v1[c0 + 4 + t] : 0u;
        // padding rows: positions (0, 1) with zero values
        const uint32_t w0 = ok0 ? m0row[k / 32] : 0x44444444u;
        const uint32_t w1 = ok1 ? m1row[k / 32] : 0x44444444u;
        const uint32_t e = __byte_perm(w0, w1, half_sel);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const __half* p = &sx[s & 1][j * 8 + g][ks + 2 * t];
          b[0] = *reinterpret_cast<const uint32_t*>(p);
          b[1] = *reinterpret_cast<const uint32_t*>(p + 8);
          b[2] = *reinterpret_cast<const uint32_t*>(p + 16);
          b[3] = *reinterpret_cast<const uint32_t*>(p + 24);
          cuda::mma_sp_f16_16832(acc[j], a, b, e);
        }
      }
    }
    __syncthreads();
  }
  if (!live) return;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // c0, c1: channel g; c2, c3: channel g + 8; rows 2t, 2t + 1
      const int n = n0 + g + (q / 2) * 8, m = m0 + j * 8 + 2 * t + q % 2;
      if (n >= N || m >= M) continue;
      const float v = acc[j][q] + (bias ? __half2float(bias[n]) : 0.0f);
      y[int64_t(m) * N + n] = __float2half_rn(v);
    }
}

}  // namespace

void run_cuda(const void* x, int64_t ldx, const uint32_t* values, const uint32_t* meta,
              const void* bias, void* y, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  if (K % 32 != 0 || ldx % 8 != 0)
    throw std::invalid_argument("tersor spmm_24 (cuda): needs K % 32 == 0 and an activation row "
                                "stride that is a multiple of 8");
  if (M == 0 || N == 0) return;
  const dim3 grid(unsigned((N + 16 * kWarps - 1) / (16 * kWarps)),
                  unsigned((M + kRows - 1) / kRows));
  spmm_24_kernel<<<grid, kThreads, 0, stream>>>(
      static_cast<const __half*>(x), ldx, values, meta, static_cast<const __half*>(bias),
      static_cast<__half*>(y), int(M), int(N), int(K));
  cuda::check(cudaGetLastError(), "tersor spmm_24 (cuda)");
}

}  // namespace tersor::spmm_24
