// The seccomp programs of a seccomp-backend stub (arch/x86_64/seccomp_stub.S), built with
// libseccomp behind a hand-written prefix that checks what libseccomp cannot: the
// instruction pointer. Both programs:
//   - a system call from outside the stub's code, or of another ABI (int $0x80, sysenter),
//     returns SECCOMP_RET_TRAP: the guest's system calls raise SIGSYS;
//   - from inside the stub's code, only the calls listed are allowed, with their arguments
//     pinned as tightly as the filter can express; anything else kills the stub process.
// The server program applies to the whole stub; each context thread stacks the context
// program on top of it before it runs guest code (the stricter answer wins).
#ifndef VKRT_SRC_BACKEND_SECCOMP_STUB_FILTER_H_
#define VKRT_SRC_BACKEND_SECCOMP_STUB_FILTER_H_

#include <linux/filter.h>
#include <stdint.h>

#include <vector>

#include "absl/status/statusor.h"

namespace vkrt::seccomp_filter {

// The server thread: the calls it makes to build the stub and to carry out the vkernel's
// batches (maps, unmaps, clone of a context thread with the context flags only, ...).
absl::StatusOr<std::vector<sock_filter>> ServerProgram(uint64_t code_start, uint64_t code_end);

// Context threads (they run guest code): futex WAIT/WAKE on stub addresses, rt_sigreturn,
// sched_yield, arch_prctl(ARCH_SET_FS/ARCH_SET_GS), exit(0). Nothing that maps, opens or
// signals.
absl::StatusOr<std::vector<sock_filter>> ContextProgram(uint64_t code_start, uint64_t code_end);

}  // namespace vkrt::seccomp_filter

#endif  // VKRT_SRC_BACKEND_SECCOMP_STUB_FILTER_H_
