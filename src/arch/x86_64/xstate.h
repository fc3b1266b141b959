// The extended FPU state area: the standard XSAVE layout, which is also the layout of
// ptrace's NT_X86_XSTATE register set. The entry stub (entry.S) saves and loads the
// caller's state; backends move it to and from the guest (SPEC §3).
#ifndef VKRT_SRC_ARCH_X86_64_XSTATE_H_
#define VKRT_SRC_ARCH_X86_64_XSTATE_H_

#include <stddef.h>
#include <stdint.h>

namespace vkrt::x86_64 {

// Size in bytes of the standard-format XSAVE area for the features the OS enabled
// (CPUID.(EAX=0DH,ECX=0):EBX; includes AMX where XCR0 enables it, ~11 KiB). Constant for
// the life of the process; ptrace's NT_X86_XSTATE transfers exactly this many bytes.
size_t XstateSize();

// XCR0: the state components the OS enabled. Constant for the life of the process.
uint64_t EnabledFeatures();

// MXCSR_MASK: the MXCSR bits this CPU lets software set (FXSAVE's report; 0xFFBF where it
// reports 0, as the SDM says). Constant for the life of the process.
uint32_t MxcsrMask();

// Why XRSTOR (standard form) would refuse `area` on a machine whose XCR0 is `xcr0` and whose
// MXCSR_MASK is `mxcsr_mask`, or nullptr if it would not: the compacted format (XCOMP_BV not
// 0), XSTATE_BV bits beyond XCR0, reserved header bytes set (bytes 24-63 too, which XRSTOR
// ignores today), MXCSR bits outside the mask. Pure: reads the legacy area and header only.
const char* XrstorRefusal(const void* area, uint64_t xcr0, uint32_t mxcsr_mask);

// Whether Linux's copies into a thread's or a vCPU's FPU state (PTRACE_SETREGSET
// NT_X86_XSTATE, KVM_SET_XSAVE) would drop `area`'s MXCSR: they take it only while XSTATE_BV
// names SSE or AVX, where XRSTOR loads it in any case. Such an area says SSE is in its
// initial state (XMM registers zero) with an MXCSR other than 0x1F80.
bool LinuxWouldDropMxcsr(const void* area);
// Makes `area` say the same state in the form those copies take whole: SSE marked in use,
// with its XMM registers zero. Call where LinuxWouldDropMxcsr.
void MarkSseInUse(void* area);

// Bytes of the standard-format area that hold what passes between vkernel and guest:
// x87, SSE, AVX and AVX-512 (not PKRU, not AMX). A prefix of XstateSize(); ptrace can read
// just this much, which costs less than reading the whole area (~11 KiB with AMX).
size_t GuestXstateSize();
// The shorter prefix that ends after the AVX component: enough while AVX-512 is unused.
size_t AvxXstateSize();
// True if the area's XSTATE_BV says an AVX-512 component is in use.
bool UsesAvx512(const void* area);

// A component of the standard-format area beyond the legacy area and header.
struct XstateComponent {
  int index;      // its XSTATE_BV bit
  size_t offset;  // in the standard format
  size_t size;
};
// The AVX and AVX-512 components the OS enabled (those SameGuestXstate compares when in
// use); at most 4. Returns how many, filling `out` with up to `max` of them.
int GuestXstateComponents(XstateComponent* out, int max);

// True if two standard-format areas hold the same guest-visible state: the legacy area, the
// in-use bits and the in-use AVX/AVX-512 components. A false "different" is harmless (the
// state is transferred again); "same" is exact.
bool SameGuestXstate(const void* a, const void* b);

}  // namespace vkrt::x86_64

#endif  // VKRT_SRC_ARCH_X86_64_XSTATE_H_
