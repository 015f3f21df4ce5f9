// CPU feature detection (CPUID + XCR0, once) and per-call ISA resolution.
//
// The resolved ISA is never cached: `active_isa()` reads TERSOR_CPU_ISA on every call, so a test
// can force each path in turn in one process (FBGEMM's function-local-static cache made a later
// override silently ineffective; we avoid that).
#pragma once
#include <string>

namespace tersor {

// Amx = Avx512 plus AMX-INT8 tiles: families without an AMX kernel run their Avx512 one.
// The one list of ISA paths, worst to best (Python reads it as tersor._C.ISAS).
enum class Isa : int { Ref = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };
inline constexpr Isa kAllIsas[] = {Isa::Ref, Isa::Avx2, Isa::Avx512, Isa::Amx};

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
  bool avx512bf16 = false;  // vdpbf16ps (Zen 4, Cooper Lake, Sapphire Rapids on)
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;
  bool os_ymm = false, os_zmm = false;  // XCR0: the OS saves the wider registers
  bool os_amx = false;                  // XCR0 tile state + Linux granted this process the tiles
  char vendor[13] = {};                 // CPUID leaf 0: "GenuineIntel", "AuthenticAMD", ...
};

const CpuFeatures& cpu_features();       // detected once (the CPU does not change)
bool isa_available(Isa isa);              // compiled in and supported by CPU + OS
Isa best_isa();                           // the best available
Isa active_isa();                         // TERSOR_CPU_ISA override or best; throws if unusable
const char* isa_name(Isa isa);
// AVX512-BF16 present and the active ISA path AVX-512 or above: the *_avx512bf16.cpp kernels
// (vdpbf16ps) run, else their families' C refs of the same arithmetic.
bool bf16_dot_available();
// AMX-BF16 tiles usable and the active ISA path AMX: the bf16 tile kernels run
// (gemm_w4::run_bf16_tiles), else the vdpbf16ps or C ref forms of the same weights.
bool amx_bf16_available();

// Number of threads a kernel may use: the caller passes torch.get_num_threads().
int clamp_threads(int requested);

// The x86 kernels of a family exist only in x86 builds: name them through this macro so that
// an aarch64 build (ref only) never references them.
#if defined(TERSOR_X86)
#define TERSOR_X86_FN(fn) fn
#else
#define TERSOR_X86_FN(fn) nullptr
#endif

// Calls the kernel for the ISA this call resolves to; a family without a kernel for that ISA
// (nullptr) runs the next one down (AMX -> AVX-512 -> AVX2 -> ref).
template <typename Args>
struct KernelOf {  // a non-deduced parameter type, so nullptr can be passed
  using type = void (*)(const Args&);
};
template <typename Args>
void dispatch_isa(const Args& a, void (*ref)(const Args&), typename KernelOf<Args>::type avx2,
                  typename KernelOf<Args>::type avx512,
                  typename KernelOf<Args>::type amx = nullptr) {
  switch (active_isa()) {
    case Isa::Amx:
      if (amx) return amx(a);
      [[fallthrough]];
    case Isa::Avx512:
      if (avx512) return avx512(a);
      [[fallthrough]];
    case Isa::Avx2:
      if (avx2) return avx2(a);
      [[fallthrough]];
    default:
      return ref(a);
  }
}

}  // namespace tersor
