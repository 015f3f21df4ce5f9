// Portable oracle for the W4 weight-only GEMM (rules in gemm_w4.h).
#include <cmath>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/formats.h"
#include "common/half.h"
#include "gemm_w4/gemm_w4.h"

namespace tersor::gemm_w4 {

void chunk_sums(const float* x, int64_t K, float* out) {
  for (int64_t c = 0; c * kChunk < K; ++c) {
    float sum = 0.0f;
    for (int64_t k = c * kChunk; k < (c + 1) * kChunk && k < K; ++k) sum += x[k];
    out[c] = sum;
  }
}

bool dequantized_rows(int64_t M) {
  static const bool avx512 = best_isa() >= Isa::Avx512;
  return M >= (avx512 ? kDequantMinRowsAvx512 : kDequantMinRows);
}

// The dequantized rules (gemm_w4.h): one FMA chain per output over w = (q - z) * s.
static void run_ref_dequantized(const PackedW4LinearArgs& a) {
  const int64_t G = a.group_size, k8n = a.ngroups * G / 8;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) {
      const W4Tile* col = reinterpret_cast<const W4Tile*>(a.w) + (n / 16) * k8n;
      const int64_t meta = (n / 16) * a.ngroups * 16 + n % 16;
      std::vector<float> w(a.K);
      for (int64_t k = 0; k < a.K; ++k) {
        const uint8_t byte = col[k / 8].q[n % 16][k % 4];
        const int code = (k % 8) < 4 ? (byte & 0x0f) : (byte >> 4);
        const int64_t g = k / G;
        const int z = a.zero ? a.zero[meta + g * 16] : 8;
        w[k] = static_cast<float>(code - z) * half_to_float(a.scale[meta + g * 16]);
      }
      for (int64_t m = 0; m < a.M; ++m) {
        const float* x = a.x + m * a.ldx;
        float acc = 0.0f;
        for (int64_t k = 0; k < a.K; ++k) acc = std::fma(x[k], w[k], acc);
        a.y[m * a.ldy + n] = acc + (a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

void run_ref(const PackedW4LinearArgs& a) {
  if (dequantized_rows(a.M)) return run_ref_dequantized(a);
  const int64_t G = a.group_size, k8n = a.ngroups * G / 8, nchunks = (a.K + kChunk - 1) / kChunk;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ldx;
      std::vector<float> X(nchunks);
      chunk_sums(x, a.K, X.data());
      for (int64_t n = 0; n < a.N; ++n) {
        const W4Tile* col = reinterpret_cast<const W4Tile*>(a.w) + (n / 16) * k8n;
        const int64_t meta = (n / 16) * a.ngroups * 16 + n % 16;
        float acc = 0.0f, part = 0.0f;
        for (int64_t k = 0; k < a.K; ++k) {
          const uint8_t byte = col[k / 8].q[n % 16][k % 4];
          const int code = (k % 8) < 4 ? (byte & 0x0f) : (byte >> 4);
          part = std::fma(x[k], static_cast<float>(code - 8), part);
          if (k % kChunk == kChunk - 1 || k == a.K - 1) {
            const int64_t g = k / G;
            const float zc = static_cast<float>(8 - (a.zero ? a.zero[meta + g * 16] : 8));
            const float t = std::fma(zc, X[k / kChunk], part);
            acc = std::fma(t, half_to_float(a.scale[meta + g * 16]), acc);
            part = 0.0f;
          }
        }
        a.y[m * a.ldy + n] = acc + (a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

void run_bf16_ref(const PackedW4LinearArgs& a) {
  const int64_t G = a.group_size, k8n = a.ngroups * G / 8, Kp = a.ngroups * G;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      std::vector<float> xb(Kp, 0.0f), X(a.ngroups, 0.0f);
      for (int64_t k = 0; k < a.K; ++k) xb[k] = bf16_to_float(bf16_from(a.x[m * a.ldx + k]));
      for (int64_t g = 0; g < a.ngroups; ++g)
        for (int64_t k = g * G; k < (g + 1) * G; ++k) X[g] += xb[k];
      for (int64_t n = 0; n < a.N; ++n) {
        const W4Tile* col = reinterpret_cast<const W4Tile*>(a.w) + (n / 16) * k8n;
        const int64_t meta = (n / 16) * a.ngroups * 16 + n % 16;
        auto wq = [&](int64_t k) {  // q - 8, exact
          const uint8_t byte = col[k / 8].q[n % 16][k % 4];
          return static_cast<float>(((k % 8) < 4 ? (byte & 0x0f) : (byte >> 4)) - 8);
        };
        float acc = 0.0f;
        for (int64_t g = 0; g < a.ngroups; ++g) {
          float part = 0.0f;
          for (int64_t k = g * G; k < (g + 1) * G; k += 2) {
            part += xb[k + 1] * wq(k + 1);  // products exact; each add rounded
            part += xb[k] * wq(k);
          }
          const float zc = a.zero ? static_cast<float>(8 - a.zero[meta + g * 16]) : 0.0f;
          acc = std::fma(std::fma(zc, a.zero ? X[g] : 0.0f, part),
                         half_to_float(a.scale[meta + g * 16]), acc);
        }
        a.y[m * a.ldy + n] = acc + (a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

void run_bf16_scaled_ref(const PackedW4LinearArgs& a) {
  const int64_t G = a.group_size, k8n = a.ngroups * G / 8, Kp = a.ngroups * G;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) {
      const W4Tile* col = reinterpret_cast<const W4Tile*>(a.w) + (n / 16) * k8n;
      const int64_t meta = (n / 16) * a.ngroups * 16 + n % 16;
      // w = bf16((q - z) s), the exact product rounded once, stored in vdpbf16ps's order (k + 1
      // before k), so that the dot product is one sum in array order. (Two adds per pair step,
      // as run_bf16_ref writes them, came out wrong from GCC 12's vectorizer here: even k
      // counted twice.)
      std::vector<float> w(Kp);
      for (int64_t t = 0; t < k8n; ++t) {
        const int64_t g = 8 * t / G;
        const int z = a.zero ? a.zero[meta + g * 16] : 8;
        const float s = half_to_float(a.scale[meta + g * 16]);
        const uint8_t* bytes = col[t].q[n % 16];  // k = 8t + i low nibble, 8t + 4 + i high
        for (int i = 0; i < 4; ++i) {
          const int lo = bytes[i] & 0x0f, hi = bytes[i] >> 4;
          w[(8 * t + i) ^ 1] = bf16_to_float(bf16_from(static_cast<float>(lo - z) * s));
          w[(8 * t + 4 + i) ^ 1] = bf16_to_float(bf16_from(static_cast<float>(hi - z) * s));
        }
      }
      std::vector<float> xb(Kp, 0.0f);
      for (int64_t m = 0; m < a.M; ++m) {
        for (int64_t k = 0; k < a.K; ++k) xb[k ^ 1] = bf16_to_float(bf16_from(a.x[m * a.ldx + k]));
        float acc = 0.0f;
        for (int64_t k = 0; k < Kp; ++k) acc += xb[k] * w[k];  // products exact; adds rounded
        a.y[m * a.ldy + n] = acc + (a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

}  // namespace tersor::gemm_w4
