// CPU features and the ISA paths: the one list of ISA names (common/cpu_features.h) as _C.ISAS.
#include <pybind11/stl.h>

#include <atomic>
#include <string>
#include <vector>

#include "bindings/bind.h"
#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/team_governor.h"
#include "common/weight_stream.h"

namespace tersor::bindings {

void bind_cpu(py::module_& m) {
  std::vector<std::string> isas;
  for (Isa i : kAllIsas) isas.emplace_back(isa_name(i));
  m.attr("ISAS") = py::tuple(py::cast(isas));
  m.def("cpu_info", [] {
    const CpuFeatures& f = cpu_features();
    py::dict features;
    features["avx2"] = f.avx2; features["fma"] = f.fma; features["f16c"] = f.f16c;
    features["avx512f"] = f.avx512f; features["avx512bw"] = f.avx512bw;
    features["avx512vl"] = f.avx512vl; features["avx512dq"] = f.avx512dq;
    features["avx512vnni"] = f.avx512vnni;
    features["avx512bf16"] = f.avx512bf16;
    features["amx_tile"] = f.amx_tile; features["amx_int8"] = f.amx_int8;
    features["amx_bf16"] = f.amx_bf16;
    features["os_amx"] = f.os_amx;
    features["os_ymm"] = f.os_ymm; features["os_zmm"] = f.os_zmm;
    py::list avail;
    for (Isa i : kAllIsas)
      if (isa_available(i)) avail.append(isa_name(i));
    py::dict d;
    d["features"] = features;
    d["vendor"] = std::string(f.vendor);
    d["available"] = avail;
    d["best"] = isa_name(best_isa());
    d["active"] = isa_name(active_isa());
    d["llc_bytes"] = last_level_cache_bytes();
#if defined(_OPENMP)
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    return d;
  }, "CPU vendor and features (CPUID + XCR0), the ISA paths available (a subset of ISAS, in "
     "order), the best one and the one TERSOR_CPU_ISA selects now.");
  m.def(
      "weight_stream_nta",
      [](addr w, int64_t bytes) { return weight_stream_nta(ptr<void>(w), bytes); },
      py::arg("w"), py::arg("bytes"),
      "Records a kernel call's read of `bytes` of weights at address w; whether it takes the "
      "non-temporal prefetch (common/weight_stream.h). For tests.");
  m.def("int8_decode_nta", &int8_decode_nta,
        "Whether the W8A8 / W4A8 AVX-512 decode tiles give streaming weights the non-temporal "
        "hint (common/weight_stream.h).");
  m.def("set_int8_decode_nta", &set_int8_decode_nta, py::arg("mode"),
        "-1: the W8A8 / W4A8 AVX-512 decode tiles give streaming weights the non-temporal hint "
        "on AMD only (common/weight_stream.h); 0: never; 1: always. For tests.");

  auto stats_dict = [](const TeamGovernor::Stats& s, bool enabled) {
    py::dict d;
    d["adaptive"] = enabled;
    d["threads_given_up"] = s.cut;
    d["regions"] = s.regions;
    d["windows"] = s.windows;
    d["cuts"] = s.cuts;
    d["tries"] = s.tries;
    d["switches_per_s"] = s.switches_per_s;
    d["others_runnable"] = s.others_runnable;
    return d;
  };
  m.def(
      "set_adaptive_threads",
      [](bool on) {
        const bool was = team_governor().enabled();
        team_governor().set_enabled(on);
        return was;
      },
      py::arg("on"),
      "Whether kernels give up threads while other work keeps the cores busy "
      "(common/team_governor.h); returns the previous setting. Turning it on or off gives "
      "back every thread given up.");
  m.def("others_runnable", &others_runnable_now,
        "Threads of other processes waiting to run now, as the thread governor sees them "
        "(common/team_governor.h); -1 where /proc cannot say.");
  m.def(
      "team_stats",
      [stats_dict] { return stats_dict(team_governor().stats(), team_governor().enabled()); },
      "The thread governor's counters since the process started (regions: those that asked "
      "for more than one thread), the involuntary context switches per second of its last "
      "window, and the threads given up now.");
  m.def(
      "parallel_team_probe",
      [](int nt, int outer, int items) {
        // what a region of parallel_team (common/parallel.h) sees, per calling thread:
        // (nesting level, team size, loop items it ran)
        std::vector<std::vector<int>> seen(outer > 1 ? outer : 1);
        auto probe = [&](int slot) {
          std::atomic<int> ran{0};
          int level = 0, size = 1;
          parallel_team(nt, [&] {
#pragma omp for schedule(static)
            for (int i = 0; i < items; ++i) ran.fetch_add(1);
            if (thread_index() == 0) {
#if defined(_OPENMP)
              level = omp_get_level();
              size = omp_get_num_threads();
#endif
            }
          });
          seen[slot] = {level, size, ran.load()};
        };
        if (outer > 1) {
#pragma omp parallel num_threads(outer)
          probe(thread_index());
        } else {
          probe(0);
        }
        return seen;
      },
      py::arg("nt"), py::arg("outer"), py::arg("items"),
      "For tests: an `omp for` of `items` items in a region of parallel_team(nt), called "
      "outside any team (outer <= 1) or by each thread of an active team of `outer`; returns "
      "[nesting level, team size, items run] per calling thread.");
  py::class_<TeamGovernor>(m, "TeamGovernor",
                           "A thread governor of its own (common/team_governor.h) on made-up "
                           "times and switch counts: for tests of its decisions.")
      .def(py::init<bool>(), py::arg("fake_switches") = true,
           "A governor with every thread, on; counting the switches set_switches() gives.")
      .def("size_at", &TeamGovernor::size_at, py::arg("requested"), py::arg("now_ns"),
           "Threads for a region asking for `requested` at time now_ns.")
      .def("set_switches", &TeamGovernor::set_switches, py::arg("count"),
           "The process's involuntary context switches so far, as the governor will read them.")
      .def("set_others_runnable", &TeamGovernor::set_others_runnable, py::arg("n"),
           "Threads of other processes waiting to run, as the governor will see them when it "
           "judges a busy window (1 until set: the switches alone decide).")
      .def("set_enabled", &TeamGovernor::set_enabled, py::arg("on"),
           "On or off; either gives back every thread given up.")
      .def(
          "stats", [stats_dict](TeamGovernor& g) { return stats_dict(g.stats(), g.enabled()); },
          "Counters, as team_stats().")
      .def_readonly_static("WINDOW_NS", &TeamGovernor::kWindowNs)
      .def_readonly_static("SWITCHES_PER_SECOND", &TeamGovernor::kSwitchesPerSecond)
      .def_readonly_static("BACKOFF_MIN_NS", &TeamGovernor::kBackoffMinNs)
      .def_readonly_static("BACKOFF_MAX_NS", &TeamGovernor::kBackoffMaxNs)
      .def_readonly_static("FORGET_NS", &TeamGovernor::kForgetNs);
}

}  // namespace tersor::bindings
