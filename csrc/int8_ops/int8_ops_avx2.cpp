// AVX2 build of int8_ops_impl.h (the same code, vectorized by the compiler: bit-identical).
#include "int8_ops/int8_ops_impl.h"

namespace tersor::int8_ops {

void max_pool_avx2(const PoolArgs& a) { max_pool_impl(a); }
void avg_pool_avx2(const PoolArgs& a) { avg_pool_impl(a); }
void add_avx2(const AddArgs& a) {
  add_impl(a.a, a.sa, a.b, a.sb, a.n, a.inv_scale, a.lo, a.hi, a.y, a.nthreads);
}

}  // namespace tersor::int8_ops
