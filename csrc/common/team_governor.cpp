#include "common/team_governor.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#endif
#if defined(__linux__)
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#endif

namespace tersor {

int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t TeamGovernor::switches() const {
  if (fake_) return fake_count_.load(std::memory_order_relaxed);
#if defined(__unix__) || defined(__APPLE__)
  rusage u;
  if (getrusage(RUSAGE_SELF, &u) == 0) return u.ru_nivcsw;
#endif
  return 0;  // nothing to count: never gives up a thread
}

#if defined(__linux__)
namespace {
// The file's first `cap` - 1 bytes, NUL-terminated; false when it cannot be read.
bool read_head(const char* path, char* buf, size_t cap) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t n = ::read(fd, buf, cap - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  return true;
}
}  // namespace
#endif

int others_runnable_now() {
#if defined(__linux__)
  char load[256];  // "0.50 0.40 0.30 3/450 12345": 3 runnable now, system-wide
  if (!read_head("/proc/loadavg", load, sizeof load)) return -1;
  const char* slash = std::strchr(load, '/');
  if (!slash) return -1;
  const char* at = slash;
  while (at > load && at[-1] != ' ') --at;
  const long running = std::strtol(at, nullptr, 10);
  DIR* dir = ::opendir("/proc/self/task");
  if (!dir) return -1;
  long ours = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[64], buf[512];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
    if (!read_head(path, buf, sizeof buf)) continue;
    const char* paren = std::strrchr(buf, ')');  // the state follows "(comm) "
    if (paren && paren[1] == ' ' && paren[2] == 'R') ++ours;
  }
  ::closedir(dir);
  return static_cast<int>(std::max(0L, running - ours));
#else
  return -1;
#endif
}

int TeamGovernor::others_runnable() const {
  return fake_ ? fake_others_.load(std::memory_order_relaxed) : others_runnable_now();
}

int TeamGovernor::size(int requested) {
  if (requested <= 1) return 1;
  return size_at(requested, monotonic_ns());
}

int TeamGovernor::size_at(int requested, int64_t now_ns) {
  if (requested <= 1) return 1;
  if (!enabled_.load(std::memory_order_relaxed)) return requested;
  regions_.fetch_add(1, std::memory_order_relaxed);
  const int cut = cut_.load(std::memory_order_relaxed);
  const int64_t end = window_end_.load(std::memory_order_relaxed);
  const bool try_due = cut > 0 && now_ns >= try_at_.load(std::memory_order_relaxed);
  const bool to_open = end == 0 && requested - cut > 1, to_judge = end != 0 && now_ns >= end;
  if (!try_due && !to_open && !to_judge) return std::max(1, requested - cut);

  std::lock_guard<std::mutex> lock(mu_);
  if (window_end_ != 0 && now_ns >= window_end_) decide(window_size_, now_ns);
  if (cut_ > 0 && !trying_ && now_ns >= try_at_) {  // take one thread back for a window
    cut_ -= 1;
    trying_ = true;
    window_end_ = 0;
    stats_.tries += 1;
  }
  const int size = std::max(1, requested - cut_.load(std::memory_order_relaxed));
  if (window_end_ == 0 && size > 1) {
    window_start_ = now_ns;
    window_switches_ = switches();
    window_size_ = size;
    window_end_ = now_ns + kWindowNs;
  }
  return size;
}

void TeamGovernor::decide(int size, int64_t now_ns) {
  const double rate = double(switches() - window_switches_) * 1e9 /
                      double(std::max<int64_t>(now_ns - window_start_, 1));
  stats_.windows += 1;
  stats_.switches_per_s = rate;
  const int others = rate > kSwitchesPerSecond ? others_runnable() : -1;
  if (rate > kSwitchesPerSecond) stats_.others_runnable = others;
  if (rate > kSwitchesPerSecond && others != 0) {
    // Give up a thread. Every cut doubles the wait before the next try: under lasting load a
    // try often passes its own window (a thread that slept is let back on a busy core at once
    // for a while) and the next window cuts again.
    if (size > 1) {
      cut_ += 1;
      stats_.cuts += 1;
    }
    try_at_ = now_ns + backoff_;
    backoff_ = std::min(2 * backoff_, kBackoffMaxNs);
    last_cut_ = now_ns;
  } else if (!trying_ && cut_ == 0 && now_ns - last_cut_ > kForgetNs) {
    backoff_ = kBackoffMinNs;  // calm with every thread for a while: the load has gone
  } else if (trying_) {
    try_at_ = now_ns + backoff_;  // the thread taken back stays; the next try waits as long
  }
  trying_ = false;
  window_end_ = 0;
}

void TeamGovernor::set_enabled(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  enabled_ = on;
  cut_ = 0;
  trying_ = false;
  window_end_ = 0;
  backoff_ = kBackoffMinNs;
}

TeamGovernor::Stats TeamGovernor::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  s.regions = regions_.load(std::memory_order_relaxed);
  s.cut = cut_;
  return s;
}

TeamGovernor& team_governor() {
  static TeamGovernor* g = [] {
    auto* gov = new TeamGovernor();  // never destroyed: kernels may run during exit
    const char* env = std::getenv("TERSOR_ADAPTIVE_THREADS");
    if (env && std::strcmp(env, "0") == 0) gov->set_enabled(false);
    return gov;
  }();
  return *g;
}

}  // namespace tersor
