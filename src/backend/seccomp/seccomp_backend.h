// The seccomp backend (SPEC §5), in the manner of gVisor's systrap: a guest address space is
// a stub process (arch/x86_64/seccomp_stub.S, layout in seccomp_layout.h) under a seccomp
// filter whose answer to every guest system call is SECCOMP_RET_TRAP. Each vkernel thread
// that uses the space gets a context thread in it; the guest's system calls and faults
// raise signals whose handler, on the context's signal stack in memory shared with the
// vkernel, hands the signal frame over and waits (spin, then futex) for the vkernel's answer.
// RUN writes the registers into that frame and lets the handler return into the guest.
//
// Memory changes (mmap/munmap/madvise, VPAGETABLE translations, batched) are system calls
// the stub's server thread makes; it never runs guest code, and context threads, which do,
// cannot make them at all (docs/security.md says why that split is needed).
#ifndef VKRT_SRC_BACKEND_SECCOMP_SECCOMP_BACKEND_H_
#define VKRT_SRC_BACKEND_SECCOMP_SECCOMP_BACKEND_H_

#include "backend/backend.h"

namespace vkrt {

class SeccompBackend : public Backend {
 public:
  static SeccompBackend* Get();
  // Why the seccomp backend cannot be used here (no seccomp filters, no SECCOMP_RET_TRAP,
  // no memfd, libseccomp refuses the filters), or nullptr.
  static const char* Unavailable();

  const char* Name() const override { return "seccomp"; }
  absl::StatusOr<std::unique_ptr<AddressSpace>> CreateAddressSpace() override;
};

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_SECCOMP_SECCOMP_BACKEND_H_
