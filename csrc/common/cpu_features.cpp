#include "common/cpu_features.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "common/parallel.h"
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#if defined(TERSOR_X86)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace tersor {

std::atomic<bool> g_team_started{false};
std::atomic<bool> g_forked_child{false};

namespace {

#if defined(__unix__) || defined(__APPLE__)
// see common/parallel.h team()
const int kForkHandler = pthread_atfork(nullptr, nullptr, [] {
  if (g_team_started.load(std::memory_order_relaxed))
    g_forked_child.store(true, std::memory_order_relaxed);
});
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(TERSOR_X86)
  unsigned a, b, c, d;
  if (__get_cpuid(0, &a, &b, &c, &d)) {  // the vendor string: EBX, EDX, ECX
    std::memcpy(f.vendor, &b, 4);
    std::memcpy(f.vendor + 4, &d, 4);
    std::memcpy(f.vendor + 8, &c, 4);
  }
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (osxsave) {
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    f.os_ymm = (xlo & 0x6) == 0x6;     // SSE + AVX state
    f.os_zmm = (xlo & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
    f.amx_tile = d & (1u << 24);
    f.amx_int8 = d & (1u << 25);
    f.amx_bf16 = d & (1u << 22);
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = a & (1u << 5);
  }
  if (f.amx_tile && f.amx_int8 && osxsave) {
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    const bool xcr0_tiles = ((xlo >> 17) & 3) == 3;  // XTILECFG + XTILEDATA
#if defined(__linux__) && defined(SYS_arch_prctl)
    // Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA);
    // once granted it holds for every thread of the process.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    f.os_amx = xcr0_tiles && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#endif
  }
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool isa_available(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::Ref: return true;
#if defined(TERSOR_X86)
    case Isa::Avx2: return f.os_ymm && f.avx2 && f.fma && f.f16c;
    case Isa::Avx512:
      return f.os_zmm && f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq &&
             f.avx512vnni;
    case Isa::Amx: return isa_available(Isa::Avx512) && f.amx_tile && f.amx_int8 && f.os_amx;
#endif
    default: return false;
  }
}

Isa best_isa() {
  Isa best = Isa::Ref;
  for (Isa i : kAllIsas)
    if (isa_available(i)) best = i;
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Ref: return "ref";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Amx: return "amx";
  }
  return "?";
}

Isa active_isa() {
  const char* env = std::getenv("TERSOR_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return best_isa();
  const Isa* want = nullptr;
  std::string names = "auto";
  for (const Isa& i : kAllIsas) {
    if (std::strcmp(env, isa_name(i)) == 0) want = &i;
    names += std::string(", ") + isa_name(i);
  }
  if (want == nullptr)
    throw std::invalid_argument(std::string("TERSOR_CPU_ISA='") + env + "' is not one of " +
                                names);
  if (!isa_available(*want))
    throw std::runtime_error(std::string("TERSOR_CPU_ISA=") + env +
                             " is not available on this CPU/build (see tersor.cpu_info())");
  return *want;
}

int clamp_threads(int requested) { return requested < 1 ? 1 : requested; }

bool amx_bf16_available() {
#if defined(TERSOR_X86)
  return cpu_features().amx_bf16 && active_isa() == Isa::Amx;
#else
  return false;
#endif
}

bool bf16_dot_available() {
#if defined(TERSOR_X86)
  return cpu_features().avx512bf16 && active_isa() >= Isa::Avx512;
#else
  return false;
#endif
}

}  // namespace tersor
