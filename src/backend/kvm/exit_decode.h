// Decoding of kvm-backend exits into GuestExit values. Pure: takes the raw record the
// ring-0 handlers left (arch/x86_64/kvm_layout.h) and the instruction bytes at the faulting
// rip; no kernel needed to test it.
#ifndef VKRT_SRC_BACKEND_KVM_EXIT_DECODE_H_
#define VKRT_SRC_BACKEND_KVM_EXIT_DECODE_H_

#include <stdint.h>

#include "absl/functional/function_ref.h"
#include "backend/backend.h"

namespace vkrt {

// One exception as the guest took it.
struct KvmException {
  GuestExit exit;
  // The guest's rip (where it resumes if the vkernel changes nothing), rsp and rflags.
  uint64_t rip = 0;
  uint64_t rsp = 0;
  uint64_t rflags = 0;
  bool valid = false;  // false: the record is not of a CPL3 exception (the ring-0 code broke)
};

// `record`: the eight words of the exception record (kvm_layout.h RecordWord order), built
// by the host from the vCPU's registers and the CPU's frame; `error_pushed`: the CPU pushed an
// error code (exceptions of some vectors do; a software `int $N` never does).
// `insn(va)`: the two bytes at guest address `va`, little-endian, or -1 if unreadable; they
// tell `int $0x80` (which kvm_pvm raises as #UD) and `sysenter` apart, and a software `int $N`
// that kvm_pvm delivers through a gate the guest may not use from the exception it imitates.
KvmException DecodeKvmException(const uint64_t* record, bool error_pushed,
                                absl::FunctionRef<int(uint64_t)> insn);

// Whether the CPU pushes an error code for exceptions of `vector`.
bool KvmVectorHasErrorCode(int vector);

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_KVM_EXIT_DECODE_H_
