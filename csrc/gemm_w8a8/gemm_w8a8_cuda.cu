// W8A8 GEMM on NVIDIA tensor cores (sm_80+): y = (A . B^T) * sa[m] * sb[n] + bias[n].
//
//   A  s8 [M][K]  per-row quantized activations (quant_act_cuda.cu), K contiguous
//   B  s8 [N][K]  the canonical int8 weight (formats/int8.py): K contiguous, which is exactly
//                 the "col" operand layout of mma.sync m16n8k32.row.col
//
// Block tile 128 x 128 x 64, 8 warps as 2 (M) x 4 (N), each warp 64 x 32 = 4 x 4 mma tiles;
// a 3-stage cp.async pipeline keeps two k-tiles in flight while the third is multiplied.
// Shared rows are padded to 80 bytes: the 32-bit fragment loads of the 8 rows x 4 lanes of a
// quad pattern then hit 32 distinct banks, and every 16-byte cp.async stays aligned.
// Epilogue as on the CPU: y = fma(float(acc), sa * sb, bias). Requires K % 16 == 0.
#include "common/cuda_common.cuh"
#include "gemm_w8a8/gemm_w8a8_cuda.h"

namespace tersor::gemm_w8a8 {
namespace {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 3, kThreads = 256;
constexpr int kLds = kBK + 16;                      // bytes per shared row
constexpr int kStageBytes = (kBM + kBN) * kLds;     // A tile then B tile
constexpr int kSmemBytes = kStages * kStageBytes;   // 61440: needs the opt-in above 48 KiB

template <bool kHalfOut>
__global__ void __launch_bounds__(kThreads)
gemm_w8a8_kernel(const int8_t* __restrict__ A, const float* __restrict__ sa,
                 const int8_t* __restrict__ B, const float* __restrict__ sb,
                 const float* __restrict__ bias, void* __restrict__ y, int M, int N, int K) {
  extern __shared__ __align__(16) int8_t smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;  // quad (row of a fragment) and lane within it
  const int wm = warp / 4, wn = warp % 4;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int ktiles = (K + kBK - 1) / kBK;

  auto load = [&](int stage, int kt) {
    int8_t* sA = smem + stage * kStageBytes;
    int8_t* sB = sA + kBM * kLds;
    const int k0 = kt * kBK;
    for (int c = tid; c < kBM * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), kc = (c % (kBK / 16)) * 16;
      const bool ok = m0 + r < M && k0 + kc < K;
      cuda::cp_async16(sA + r * kLds + kc, ok ? A + int64_t(m0 + r) * K + k0 + kc : A, ok);
    }
    for (int c = tid; c < kBN * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), kc = (c % (kBK / 16)) * 16;
      const bool ok = n0 + r < N && k0 + kc < K;
      cuda::cp_async16(sB + r * kLds + kc, ok ? B + int64_t(n0 + r) * K + k0 + kc : B, ok);
    }
  };

  int acc[4][4][4] = {};
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load(s, s);
    cuda::cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cuda::cp_async_wait<kStages - 2>();  // k-tile kt has landed
    __syncthreads();                     // ... for every thread; and tile kt-1 is consumed
    if (kt + kStages - 1 < ktiles) load((kt + kStages - 1) % kStages, kt + kStages - 1);
    cuda::cp_async_commit();
    const int8_t* sA = smem + (kt % kStages) * kStageBytes;
    const int8_t* sB = sA + kBM * kLds;
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 32) {
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int8_t* p = sA + (wm * 64 + i * 16 + g) * kLds + ks + t * 4;
        a[i][0] = *reinterpret_cast<const uint32_t*>(p);
        a[i][1] = *reinterpret_cast<const uint32_t*>(p + 8 * kLds);
        a[i][2] = *reinterpret_cast<const uint32_t*>(p + 16);
        a[i][3] = *reinterpret_cast<const uint32_t*>(p + 8 * kLds + 16);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int8_t* p = sB + (wn * 32 + j * 8 + g) * kLds + ks + t * 4;
        b[j][0] = *reinterpret_cast<const uint32_t*>(p);
        b[j][1] = *reinterpret_cast<const uint32_t*>(p + 16);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) cuda::mma_s8_16832(acc[i][j], a[i], b[j]);
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // c0, c1: row g; c2, c3: row g + 8
        const int m = m0 + wm * 64 + i * 16 + g + (e / 2) * 8;
        const int n = n0 + wn * 32 + j * 8 + t * 2 + e % 2;
        if (m >= M || n >= N) continue;
        const float v = __fmaf_rn(static_cast<float>(acc[i][j][e]), __fmul_rn(sa[m], sb[n]),
                                  bias ? bias[n] : 0.0f);
        if (kHalfOut)
          static_cast<__half*>(y)[int64_t(m) * N + n] = __float2half_rn(v);
        else
          static_cast<float*>(y)[int64_t(m) * N + n] = v;
      }
}

}  // namespace

void run_cuda(const int8_t* a, const float* sa, const int8_t* b, const float* sb,
              const float* bias, void* y, bool half_out, int64_t M, int64_t N, int64_t K,
              cudaStream_t stream) {
  if (K % 16 != 0) throw std::invalid_argument("tersor gemm_w8a8 (cuda): K must be a multiple of 16");
  if (M == 0 || N == 0) return;
  auto kernel = half_out ? gemm_w8a8_kernel<true> : gemm_w8a8_kernel<false>;
  cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   kSmemBytes),
              "tersor gemm_w8a8 (cuda): shared memory opt-in");
  const dim3 grid((N + kBN - 1) / kBN, (M + kBM - 1) / kBM);
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(a, sa, b, sb, bias, y, int(M), int(N), int(K));
  cuda::check(cudaGetLastError(), "tersor gemm_w8a8 (cuda)");
}

}  // namespace tersor::gemm_w8a8
