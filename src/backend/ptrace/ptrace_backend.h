// The ptrace backend (SPEC §5): a guest address space is a stub process (arch/x86_64/
// stub.S) that owns only [0x7FFFFFE00000, TASK_SIZE); each vkernel thread that uses it
// gets its own context thread in it, seized with ptrace by that vkernel thread and run
// under PTRACE_SYSEMU. Memory changes are system calls injected into the caller's
// context; reads and writes use process_vm_readv/writev.
#ifndef VKRT_SRC_BACKEND_PTRACE_PTRACE_BACKEND_H_
#define VKRT_SRC_BACKEND_PTRACE_PTRACE_BACKEND_H_

#include "backend/backend.h"

namespace vkrt {

class PtraceBackend : public Backend {
 public:
  static PtraceBackend* Get();
  // Why ptrace cannot be used here (e.g. it is forbidden by seccomp or Yama), or nullptr.
  static const char* Unavailable();

  const char* Name() const override { return "ptrace"; }
  absl::StatusOr<std::unique_ptr<AddressSpace>> CreateAddressSpace() override;
};

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_PTRACE_PTRACE_BACKEND_H_
