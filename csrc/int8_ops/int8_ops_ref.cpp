// Portable build of int8_ops_impl.h, and the per-call dispatch.
#include "common/cpu_features.h"
#include "int8_ops/int8_ops_impl.h"

namespace tersor::int8_ops {

void max_pool_ref(const PoolArgs& a) { max_pool_impl(a); }
void avg_pool_ref(const PoolArgs& a) { avg_pool_impl(a); }
void add_ref(const AddArgs& a) {
  add_impl(a.a, a.sa, a.b, a.sb, a.n, a.inv_scale, a.lo, a.hi, a.y, a.nthreads);
}

void max_pool(const PoolArgs& a) {
  dispatch_isa(a, max_pool_ref, TERSOR_X86_FN(max_pool_avx2), nullptr);
}
void avg_pool(const PoolArgs& a) {
  dispatch_isa(a, avg_pool_ref, TERSOR_X86_FN(avg_pool_avx2), nullptr);
}
void add(const AddArgs& a) { dispatch_isa(a, add_ref, TERSOR_X86_FN(add_avx2), nullptr); }

}  // namespace tersor::int8_ops
