// How many threads a kernel's parallel region gets while other work competes for the cores.
//
// Kernels split their work statically, and a region ends when its last thread is done. When
// another process keeps a core busy, the OS shares that core between it and one of our threads
// in slices of milliseconds, and region after region waits for the thread that is off the CPU:
// on Zen 3 (2 cores) with one busy-loop process beside it, the W4A8 1B decode fell from 28-34
// to 9 tok/s, where a single thread runs 19 with or without that process. libgomp's passive
// wait policy recovers 18.6 under load but costs a fifth of the speed on idle cores.
//
// So the regions on the decode path report how late their last thread finished after their
// first (TeamClock, common/parallel.h). A region is stalled when that lateness is over
// kStallNs and over twice the first thread's time (a static split is never that uneven by
// itself). Once kWindowNs of regions have been reported, the team gives up one thread if
// stalled lateness took more than kStalledShare of them. With threads given up, the governor
// tries one more again after a back-off for one window. The back-off doubles at each cut, from
// kBackoffMinNs to kBackoffMaxNs, and goes back to kBackoffMinNs after kForgetNs without a cut. Results never depend on the team size (every split gives
// whole output tiles to one thread), so this changes speed only.
//
// TERSOR_ADAPTIVE_THREADS=0 turns it off at start-up; set_adaptive_threads() at run time.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>

namespace tersor {

class TeamGovernor {
 public:
  static constexpr int64_t kWindowNs = 20'000'000;
  static constexpr int64_t kStallNs = 100'000;
  static constexpr double kStalledShare = 0.25;
  static constexpr int64_t kBackoffMinNs = 100'000'000;
  static constexpr int64_t kBackoffMaxNs = 1'600'000'000;
  static constexpr int64_t kForgetNs = 2'000'000'000;

  struct Stats {
    int64_t regions = 0;  // reported regions of more than one thread
    int64_t stalled = 0;  // of which stalled
    int64_t windows = 0;  // decisions taken
    int64_t cuts = 0;     // threads given up
    int64_t tries = 0;    // threads taken back to try
    int cut = 0;          // threads given up now
  };

  // Threads for a region that asks for `requested` (1 when requested <= 1), now / at now_ns.
  int size(int requested);
  int size_at(int requested, int64_t now_ns);
  // A region of n threads began at t0_ns and its threads finished at ends_ns[0..n).
  void report(int64_t t0_ns, const int64_t* ends_ns, int n);
  void set_enabled(bool on);
  bool enabled() const { return enabled_; }
  Stats stats();

 private:
  std::mutex mu_;
  std::atomic<bool> enabled_{true};
  std::atomic<int> cut_{0};         // size() reads these two without the lock
  std::atomic<int64_t> try_at_{0};  // when to take a thread back
  bool trying_ = false;             // this window runs one thread more than the last decision
  int64_t backoff_ = kBackoffMinNs;
  int64_t last_cut_ = 0;
  int64_t window_ = 0, stalled_late_ = 0;
  Stats stats_;
};

TeamGovernor& team_governor();  // the process's one, used by team()
int64_t monotonic_ns();

}  // namespace tersor
