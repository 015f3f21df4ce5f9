#include <cstring>

#include "common/parallel.h"
#include "common/cpu_features.h"
#include "common/formats.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {

void run(const Args& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512));
}

void run_w8a8(const W8A8Args& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_w8a8_ref, TERSOR_X86_FN(run_w8a8_avx2), TERSOR_X86_FN(run_w8a8_avx512));
}

}  // namespace tersor::spmm_24
