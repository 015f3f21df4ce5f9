// How many threads a kernel's parallel region gets while other work competes for the cores.
//
// Kernels split their work statically, and a region ends when its last thread is done. When
// another process keeps a core busy, the OS shares that core between it and one of our threads
// in slices of milliseconds, and region after region waits for the thread that is off the CPU
// (libgomp's waiting threads spin, so they keep competing between regions too). On Zen 3
// (2 cores) with one busy-loop process beside it, the W4A8 1B decode fell from 28-34 to 7-9
// tok/s, where a single thread runs 18-20 with or without that process. libgomp's passive
// wait policy recovers 18.6 under load but costs a fifth of the speed on idle cores.
//
// The sign that threads wait for a core is the process's involuntary context switches (the OS
// took a runnable thread off its CPU for another): on that machine, decoding on 2 threads, 33/s
// on idle cores and ~200/s beside the busy process; on one thread, 2/s and 25/s. So team()
// counts them (getrusage) over windows of kWindowNs while regions ask for more than one
// thread. A window above kSwitchesPerSecond gives up one thread. With threads given up, the
// governor tries one more again after a back-off, for one window. The back-off doubles at each
// cut, from kBackoffMinNs to kBackoffMaxNs, and goes back to kBackoffMinNs after kForgetNs
// without a cut. Results never depend on the team size (every split gives whole output tiles to
// one thread), so this changes speed only.
//
// The switches are the whole process's, and threads of this process preempt each other too: a
// tokenizer's worker pool spinning after its batch (Hugging Face tokenizers), or an inference
// pool beside ours. Giving up a thread does not help against those: they are gone a few
// milliseconds later, and the cut stays for the back-off. (MiniLM encode, Zen 3: 860 switches
// / s, most of them the tokenizer threads', and a cut team made the int8 layers 2x slower.) So
// a busy window also needs a thread of another process waiting to run, seen when the window is
// judged: the runnable count of /proc/loadavg less this process's threads in state R (two
// reads, not one snapshot: a thread changing state between them can miscount by one). Where
// /proc cannot be read, the switches alone decide.
//
// TERSOR_ADAPTIVE_THREADS=0 turns it off at start-up; set_adaptive_threads() at run time.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>

namespace tersor {

class TeamGovernor {
 public:
  static constexpr int64_t kWindowNs = 100'000'000;
  static constexpr double kSwitchesPerSecond = 100;
  static constexpr int64_t kBackoffMinNs = 100'000'000;
  static constexpr int64_t kBackoffMaxNs = 1'600'000'000;
  static constexpr int64_t kForgetNs = 2'000'000'000;

  struct Stats {
    int64_t regions = 0;  // regions that asked for more than one thread
    int64_t windows = 0;  // decisions taken
    int64_t cuts = 0;     // threads given up
    int64_t tries = 0;    // threads taken back to try
    double switches_per_s = 0;  // in the last window
    int others_runnable = -1;   // threads of other processes waiting to run, at the last busy
                                // window (-1: not looked at or not readable)
    int cut = 0;          // threads given up now
  };

  // fake_switches: the switch count is what set_switches() last said (tests), not getrusage, and
  // the runnable threads of other processes what set_others_runnable() said, not /proc.
  explicit TeamGovernor(bool fake_switches = false) : fake_(fake_switches) {}
  // Threads for a region that asks for `requested` (1 when requested <= 1), now / at now_ns.
  int size(int requested);
  int size_at(int requested, int64_t now_ns);
  void set_switches(int64_t count) { fake_count_ = count; }
  void set_others_runnable(int n) { fake_others_ = n; }
  void set_enabled(bool on);
  bool enabled() const { return enabled_; }
  Stats stats();

 private:
  void decide(int size, int64_t now_ns);  // under mu_
  int64_t switches() const;
  int others_runnable() const;

  std::mutex mu_;
  const bool fake_;
  std::atomic<int64_t> fake_count_{0};
  std::atomic<int> fake_others_{1};
  std::atomic<bool> enabled_{true};
  std::atomic<int> cut_{0};         // size() reads these without the lock
  std::atomic<int64_t> try_at_{0};  // when to take a thread back
  std::atomic<int64_t> window_end_{0};  // when the current window is judged; 0: none open
  std::atomic<int64_t> regions_{0};
  int64_t window_start_ = 0, window_switches_ = 0;
  int window_size_ = 0;             // the team size the window measures
  bool trying_ = false;             // this window runs one thread more than the last decision
  int64_t backoff_ = kBackoffMinNs;
  int64_t last_cut_ = 0;
  Stats stats_;
};

TeamGovernor& team_governor();  // the process's one, used by team()
int64_t monotonic_ns();
// Runnable threads of other processes now (/proc/loadavg's runnable count less this process's
// threads in state R), or -1 where /proc cannot say.
int others_runnable_now();

}  // namespace tersor
