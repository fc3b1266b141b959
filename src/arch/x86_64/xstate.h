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

}  // namespace vkrt::x86_64

#endif  // VKRT_SRC_ARCH_X86_64_XSTATE_H_
