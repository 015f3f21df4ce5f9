// Grouped-query attention over new rows with rotary position embedding, the new keys and
// values written into the caller's cache in place: one decode step (T = 1 new row per
// sequence), or a causal chunk of T rows (a prefill):
//
//   for each sequence b, new row t (position pos + t), kv head j, and query head h of j's
//   group (h = j*G .. j*G + G-1, G = H / Hkv, the repeat_kv order of Hugging Face models):
//     K[b][j][pos+t] = rope(k[b][t][j]),  V[b][j][pos+t] = v[b][t][j]   (cache rows, in place)
//     s[p]   = (rope(q[b][t][h]) . K[b][j][p]) * scaling,   p = start[b] .. pos + t
//     out[b][t][h] = sum_p softmax(s)[p] * V[b][j][p]
//
//   rope(x)[i] = x[i] * cos[i] + rotate_half(x)[i] * sin[i],
//   rotate_half(x) = (-x[D/2 ..], x[.. D/2])                    (HF's apply_rotary_pos_emb)
//
// Why a kernel: a 1B Llama's decode step calls attention 16 times on one query row; in eager
// PyTorch each call is ~25 ops (views, rotary, two torch.cat into the cache, SDPA), ~0.4 ms
// against ~20 us of arithmetic here. A 128-token prefill spends ~4 ms per layer in the same
// ops (SDPA 2.2 ms of it, Sapphire Rapids, 2 threads).
//
// start (null: all 0) skips a sequence's first cache rows: the left padding of a batch whose
// prompts differ in length (start[b] <= pos: padding lies in rows already cached).
//
// Tensors are fp32, bf16 or fp16 (`dtype`, half_io::Dtype), all the same; the arithmetic is
// fp32 (halves widened exactly, results rounded once to nearest even). The cache is
// [B][Hkv][cap][D] with rows 0 .. pos - 1 already filled. Every sum runs in 8 fp32 lanes then a
// fixed tree (attention_impl.h), so the portable and the AVX2 builds give the same bits.
#pragma once
#include <cstdint>

namespace tersor::attention {

struct DecodeArgs {
  const void* q;  // [B][T][H * D], row stride ldq (elements): row (b, t) at (b T + t) ldq
  const void* k;  // [B][T][Hkv * D] the new keys, before rotary
  const void* v;  // [B][T][Hkv * D]
  int64_t ldq, ldk, ldv;
  const void* cos;  // [B][T][D]: row (b, t) at b ldcs + t ldcs_t; null: no rotary
  const void* sin;
  int64_t ldcs, ldcs_t;
  void* kcache;  // [B][Hkv][cap][D]
  void* vcache;
  int64_t B, T, H, Hkv, D, cap, pos;  // D % 8 == 0, pos + T <= cap
  const int64_t* start;             // [B] or null
  float scaling;
  void* out;  // [B][T][H * D], row stride ldo
  int64_t ldo;
  int dtype;
  int nthreads;
};

void decode(const DecodeArgs& a);  // per-call ISA dispatch
void decode_ref(const DecodeArgs& a);
void decode_avx2(const DecodeArgs& a);

}  // namespace tersor::attention
