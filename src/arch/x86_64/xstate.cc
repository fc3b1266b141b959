#include "arch/x86_64/xstate.h"

#include <cpuid.h>

namespace vkrt::x86_64 {

size_t XstateSize() {
  static const size_t size = [] {
    unsigned eax, ebx, ecx, edx;
    __cpuid_count(0xD, 0, eax, ebx, ecx, edx);
    return static_cast<size_t>(ebx);
  }();
  return size;
}

}  // namespace vkrt::x86_64
