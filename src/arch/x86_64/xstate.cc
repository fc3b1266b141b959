#include "arch/x86_64/xstate.h"

#include <cpuid.h>
#include <string.h>

#include <algorithm>
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

uint64_t EnabledFeatures() {
  static const uint64_t xcr0 = [] {
    uint32_t lo, hi;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<uint64_t>(hi) << 32) | lo;
  }();
  return xcr0;
}

uint32_t MxcsrMask() {
  static const uint32_t mask = [] {
    alignas(16) unsigned char fx[512] = {};
    __builtin_ia32_fxsave64(fx);
    uint32_t m;
    memcpy(&m, fx + 28, 4);
    return m != 0 ? m : 0xFFBFu;
  }();
  return mask;
}

namespace {

// Components that pass between vkernel and guest: x87+SSE (the legacy area), AVX, opmask,
// ZMM_Hi256, Hi16_ZMM. Not PKRU (the vkernel never takes the guest's) and not AMX.
constexpr int kAvx = 2;
constexpr int kAvx512Components[] = {5, 6, 7};
constexpr uint64_t kAvx512Bits = (1u << 5) | (1u << 6) | (1u << 7);
constexpr size_t kXstateBvOffset = 512;

using Component = XstateComponent;

struct Layout {
  size_t avx_size = 576;    // legacy area + header (+ AVX when enabled)
  size_t guest_size = 576;  // ... + AVX-512 when enabled
  std::vector<Component> components;  // AVX and AVX-512 components the OS enabled
};

const Layout& GetLayout() {
  static const Layout layout = [] {
    Layout l;
    const uint64_t xcr0 = EnabledFeatures();
    auto add = [&](int c) {
      if (!(xcr0 & (uint64_t{1} << c))) return;
      unsigned eax, ebx, ecx, edx;
      __cpuid_count(0xD, c, eax, ebx, ecx, edx);  // eax = size, ebx = offset
      l.components.push_back({c, ebx, eax});
      l.guest_size = std::max<size_t>(l.guest_size, ebx + eax);
    };
    add(kAvx);
    l.avx_size = l.guest_size;
    for (int c : kAvx512Components) add(c);
    // ptrace transfers whole 8-byte units.
    l.avx_size = std::min((l.avx_size + 7) & ~size_t{7}, XstateSize());
    l.guest_size = std::min((l.guest_size + 7) & ~size_t{7}, XstateSize());
    return l;
  }();
  return layout;
}

uint64_t XstateBv(const unsigned char* area) {
  uint64_t bv;
  memcpy(&bv, area + kXstateBvOffset, sizeof(bv));
  return bv;
}

}  // namespace

bool LinuxWouldDropMxcsr(const void* area) {
  const auto* p = static_cast<const unsigned char*>(area);
  uint32_t mxcsr;
  memcpy(&mxcsr, p + 24, 4);
  return (XstateBv(p) & 0x6) == 0 && mxcsr != 0x1F80;  // SSE (bit 1) or AVX (bit 2)
}

void MarkSseInUse(void* area) {
  auto* p = static_cast<unsigned char*>(area);
  memset(p + 160, 0, 256);  // XMM0-15: their initial state, which XSTATE_BV said
  const uint64_t bv = XstateBv(p) | 0x2;
  memcpy(p + kXstateBvOffset, &bv, sizeof(bv));
}

size_t GuestXstateSize() { return GetLayout().guest_size; }
size_t AvxXstateSize() { return GetLayout().avx_size; }

int GuestXstateComponents(XstateComponent* out, int max) {
  const auto& components = GetLayout().components;
  const int n = static_cast<int>(components.size());
  for (int i = 0; i < n && i < max; ++i) out[i] = components[i];
  return n;
}

bool UsesAvx512(const void* area) {
  return (XstateBv(static_cast<const unsigned char*>(area)) & kAvx512Bits) != 0;
}

const char* XrstorRefusal(const void* area, uint64_t xcr0, uint32_t mxcsr_mask) {
  const auto* p = static_cast<const unsigned char*>(area);
  const unsigned char* header = p + kXstateBvOffset;
  uint64_t xstate_bv, xcomp_bv;
  memcpy(&xstate_bv, header, 8);
  memcpy(&xcomp_bv, header + 8, 8);
  if (xcomp_bv != 0) return "the compacted format (XCOMP_BV not 0)";
  if ((xstate_bv & ~xcr0) != 0) return "XSTATE_BV names components the OS did not enable";
  for (int i = 16; i < 64; ++i) {
    if (header[i] != 0) return "reserved XSAVE header bytes are set";
  }
  uint32_t mxcsr;
  memcpy(&mxcsr, p + 24, 4);
  if ((mxcsr & ~mxcsr_mask) != 0) return "MXCSR has bits set that MXCSR_MASK reserves";
  return nullptr;
}

bool SameGuestXstate(const void* a, const void* b) {
  const auto* pa = static_cast<const unsigned char*>(a);
  const auto* pb = static_cast<const unsigned char*>(b);
  // FCW..MXCSR, ST0-7, XMM0-15, compared whatever XSTATE_BV says of x87 and SSE: XSAVE
  // writes those registers in any case, and may report either bit as 0 or 1 while its
  // component is in its initial configuration (the SDM's init optimization; this host's
  // signal frames say "x87 in use" where the vkernel's XSAVE said not). Then which of the
  // other components are in use.
  if (memcmp(pa, pb, 416) != 0) return false;
  const uint64_t bv = XstateBv(pa);
  if ((bv ^ XstateBv(pb)) & ~uint64_t{3}) return false;
  // A component in its initial state is equal whatever bytes its area holds.
  for (const Component& c : GetLayout().components) {
    if ((bv & (uint64_t{1} << c.index)) && memcmp(pa + c.offset, pb + c.offset, c.size) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace vkrt::x86_64
