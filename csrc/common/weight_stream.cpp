#include "common/weight_stream.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "common/cpu_features.h"

namespace tersor {
namespace {

int64_t read_cache_size(int index) {  // sysfs "16384K" -> bytes, or 0
  char path[96];
  std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
  std::FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  long long v = 0;
  char unit = 0;
  const int got = std::fscanf(f, "%lld%c", &v, &unit);
  std::fclose(f);
  if (got < 1 || v <= 0) return 0;
  return unit == 'K' ? v << 10 : unit == 'M' ? v << 20 : v;
}

int forced_mode() {  // -1: by reuse distance; 0 / 1: TERSOR_WEIGHT_STREAM
  const char* e = std::getenv("TERSOR_WEIGHT_STREAM");
  return e && (e[0] == '0' || e[0] == '1') ? e[0] - '0' : -1;
}

}  // namespace

int64_t last_level_cache_bytes() {
  // glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) reports the whole socket's L3 on some AMD VMs
  // (256 MiB for 16 MiB per core complex): sysfs says what this core shares.
  static const int64_t bytes = [] {
    int64_t b = read_cache_size(3);
    if (b <= 0) b = read_cache_size(2);
    return b > 0 ? b : int64_t(32) << 20;
  }();
  return bytes;
}

bool weight_stream_nta(const void* w, int64_t bytes) {
  static const int forced = forced_mode();
  if (forced >= 0) return forced == 1;
  static std::mutex mu;
  static std::unordered_map<const void*, uint64_t> last_read;  // weight -> `streamed` then
  static uint64_t streamed = 0;                                // weight bytes read so far
  std::lock_guard<std::mutex> lock(mu);
  if (last_read.size() > (1 << 16)) last_read.clear();  // freed weights: a fresh start is right
  auto [it, first] = last_read.try_emplace(w, streamed);
  const uint64_t distance = streamed - it->second;  // since (and with) its last read
  it->second = streamed;
  streamed += uint64_t(bytes);
  return first || distance > uint64_t(last_level_cache_bytes());
}

namespace {
std::atomic<int> int8_decode_nta_mode{-1};
}

bool int8_decode_nta() {
  const int mode = int8_decode_nta_mode.load(std::memory_order_relaxed);
  if (mode >= 0) return mode == 1;
  static const bool amd = std::strcmp(cpu_features().vendor, "AuthenticAMD") == 0 ||
                          std::strcmp(cpu_features().vendor, "HygonGenuine") == 0;
  return amd;
}

void set_int8_decode_nta(int mode) { int8_decode_nta_mode.store(mode < 0 ? -1 : mode > 0); }

}  // namespace tersor
