// CPU features and the ISA paths: the one list of ISA names (common/cpu_features.h) as _C.ISAS.
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/bind.h"
#include "common/cpu_features.h"
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
  }, "CPU features (CPUID + XCR0), the ISA paths available (a subset of ISAS, in order), the "
     "best one and the one TERSOR_CPU_ISA selects now.");
  m.def(
      "weight_stream_nta",
      [](addr w, int64_t bytes) { return weight_stream_nta(ptr<void>(w), bytes); },
      py::arg("w"), py::arg("bytes"),
      "Records a kernel call's read of `bytes` of weights at address w; whether it takes the "
      "non-temporal prefetch (common/weight_stream.h). For tests.");
}

}  // namespace tersor::bindings
