#include "arch/x86_64/xstate.h"

#include <cpuid.h>
#include <string.h>

#include <utility>
#include <vector>

namespace vkrt::x86_64 {

size_t XstateSize() {
  static const size_t size = [] {
    unsigned eax, ebx, ecx, edx;
    __cpuid_count(0xD, 0, eax, ebx, ecx, edx);
    return static_cast<size_t>(ebx);
  }();
  return size;
}

namespace {

// Components that pass between vkernel and guest: x87 SSE AVX opmask ZMM_Hi256 Hi16_ZMM PKRU.
constexpr int kGuestComponents[] = {2, 5, 6, 7, 9};

struct Layout {
  size_t guest_size = 576;                          // legacy area + header
  std::vector<std::pair<size_t, size_t>> compared;  // (offset, size) ranges to compare
};

const Layout& GetLayout() {
  static const Layout layout = [] {
    Layout l;
    l.compared.push_back({0, 416});  // FCW..MXCSR, ST0-7, XMM0-15
    l.compared.push_back({512, 8});  // XSTATE_BV
    uint32_t lo, hi;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const uint64_t xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
    for (int c : kGuestComponents) {
      if (!(xcr0 & (uint64_t{1} << c))) continue;
      unsigned eax, ebx, ecx, edx;
      __cpuid_count(0xD, c, eax, ebx, ecx, edx);  // eax = size, ebx = offset
      l.compared.push_back({ebx, eax});
      if (ebx + eax > l.guest_size) l.guest_size = ebx + eax;
    }
    l.guest_size = (l.guest_size + 63) & ~size_t{63};
    if (l.guest_size > XstateSize()) l.guest_size = XstateSize();
    return l;
  }();
  return layout;
}

}  // namespace

size_t GuestXstateSize() { return GetLayout().guest_size; }

bool SameGuestXstate(const void* a, const void* b) {
  const auto* pa = static_cast<const unsigned char*>(a);
  const auto* pb = static_cast<const unsigned char*>(b);
  for (const auto& [offset, size] : GetLayout().compared) {
    if (memcmp(pa + offset, pb + offset, size) != 0) return false;
  }
  return true;
}

}  // namespace vkrt::x86_64
