#include "common/team_governor.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace tersor {

int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int TeamGovernor::size(int requested) {
  // The clock is read only while threads are given up (the common case costs one load).
  if (requested <= 1 || cut_.load(std::memory_order_relaxed) == 0) return std::max(1, requested);
  return size_at(requested, monotonic_ns());
}

int TeamGovernor::size_at(int requested, int64_t now_ns) {
  if (requested <= 1) return 1;
  if (!enabled_.load(std::memory_order_relaxed)) return requested;
  int cut = cut_.load(std::memory_order_relaxed);
  if (cut > 0 && now_ns >= try_at_.load(std::memory_order_relaxed)) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cut_ > 0 && !trying_ && now_ns >= try_at_) {  // take one thread back for a window
      cut_ -= 1;
      trying_ = true;
      window_ = stalled_late_ = 0;
      stats_.tries += 1;
    }
    cut = cut_;
  }
  return std::max(1, requested - cut);
}

void TeamGovernor::report(int64_t t0_ns, const int64_t* ends_ns, int n) {
  if (n < 2 || !enabled_.load(std::memory_order_relaxed)) return;
  int64_t first = ends_ns[0], last = ends_ns[0];
  for (int i = 1; i < n; ++i) {
    first = std::min(first, ends_ns[i]);
    last = std::max(last, ends_ns[i]);
  }
  const int64_t late = last - first;
  const bool stalled = late > kStallNs && late > 2 * (first - t0_ns);
  std::lock_guard<std::mutex> lock(mu_);
  stats_.regions += 1;
  stats_.stalled += stalled;
  window_ += last - t0_ns;
  if (stalled) stalled_late_ += late;
  if (window_ < kWindowNs) return;
  stats_.windows += 1;
  if (stalled_late_ > kStalledShare * window_) {
    // Give up a thread (this region had n, so at most n - 1 more go). Every cut doubles the
    // wait before the next try: under lasting load a try often passes its own window (a thread
    // that slept is let back on a busy core at once for a while) and stalls the next.
    const int requested = n + cut_;
    if (cut_ < requested - 1) {
      cut_ += 1;
      stats_.cuts += 1;
    }
    try_at_ = last + backoff_;
    backoff_ = std::min(2 * backoff_, kBackoffMaxNs);
    last_cut_ = last;
  } else if (!trying_ && cut_ == 0 && last - last_cut_ > kForgetNs) {
    backoff_ = kBackoffMinNs;  // calm with every thread for a while: the load has gone
  } else if (trying_) {
    try_at_ = last + backoff_;  // the thread taken back stays; the next try waits as long
  }
  trying_ = false;
  window_ = stalled_late_ = 0;
}

void TeamGovernor::set_enabled(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  enabled_ = on;
  cut_ = 0;
  trying_ = false;
  window_ = stalled_late_ = 0;
  backoff_ = kBackoffMinNs;
}

TeamGovernor::Stats TeamGovernor::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
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
