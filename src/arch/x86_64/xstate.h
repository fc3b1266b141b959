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

// Bytes of the standard-format area that hold what passes between vkernel and guest:
// x87, SSE, AVX, AVX-512 and PKRU (not AMX). A prefix of XstateSize(); ptrace can read just
// this much, which costs a quarter of reading the whole area where AMX is enabled.
size_t GuestXstateSize();

// True if two standard-format areas hold the same guest-visible state (the components of
// GuestXstateSize()). A false "different" is harmless (the state is transferred again).
bool SameGuestXstate(const void* a, const void* b);

}  // namespace vkrt::x86_64

#endif  // VKRT_SRC_ARCH_X86_64_XSTATE_H_
