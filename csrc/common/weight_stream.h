// Which prefetch hint a kernel call gives its weight stream.
//
// A decode step reads every weight once and goes on to the next layer: a 1B model's 700 MB
// per token never fit any cache, and a weight line is dead the moment it has been used. Such
// lines are best fetched with the non-temporal hint (prefetchnta: into L1, not kept in L2 / L3),
// which also leaves the caches to the activations and the KV cache. But the same hint on a
// small model whose weights do stay in the L3 from one call to the next makes every call a
// DRAM read. Measured on Zen 2 (2 threads, W4A8 g32, M = 1): from DRAM NTA 0.72-0.78x the time
// of no prefetch and 0.88-0.93x that of T0; L3-resident NTA 1.3-1.5x the time, T0 1.0-1.05x.
//
// So the call asks: have more weight bytes streamed through tersor's kernels since this weight
// was last read (its reuse distance) than the last-level cache holds? Then its lines are gone
// and it streams (NTA); a weight seen for the first time streams too. Else T0. Other memory
// traffic is not counted, which errs towards T0, the hint that is never much worse.
// TERSOR_WEIGHT_STREAM=0 / 1 forces T0 / NTA for every call (read once).
#pragma once
#include <cstdint>

namespace tersor {

// Called once per kernel call that streams `bytes` of weights at `w` (records the read).
bool weight_stream_nta(const void* w, int64_t bytes);

int64_t last_level_cache_bytes();  // this core's share as sysfs lists it (index3, else index2)

// Whether the int8-activation decode tiles (W8A8 and W4A8 on AVX-512, up to 2 / 4 rows) give
// a streaming weight the non-temporal hint. On AMD (Zen 5) NTA ran 1.0-1.08x faster than T0
// from DRAM. On Intel server cores prefetchnta fills L1 only, past the L2 streamer that T0's
// misses train: W8A8 4096x4096 at one row read 10 GB/s with it, 26 GB/s with T0 (Sapphire
// Rapids class, 2 threads, weights from DRAM); W4A8 g32 1.09x slower. So AMD only. (The
// weight-only kernels' hint stays: W8 / W4 at one row were as fast or faster with NTA there;
// the W4 few-row AMX tiles, Intel only, always prefetch T0: gemm_w4_amx.cpp few_rows::run.)
// set_int8_decode_nta(-1 / 0 / 1): by vendor / never / always (tests: each path runs anywhere).
bool int8_decode_nta();
void set_int8_decode_nta(int mode);

}  // namespace tersor
