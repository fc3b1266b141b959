// Decoding of kvm-backend exits into GuestExit values. Pure: takes the raw record the
// ring-0 handlers left (arch/x86_64/kvm_layout.h) and the instruction bytes at the faulting
// rip; no kernel needed to test it.
#ifndef VKRT_SRC_BACKEND_KVM_EXIT_DECODE_H_
#define VKRT_SRC_BACKEND_KVM_EXIT_DECODE_H_

#include <stdint.h>

#include "backend/backend.h"

namespace vkrt {

// One exception as the guest took it.
struct KvmException {
  GuestExit exit;
  uint64_t rip = 0;  // where the guest resumes if the vkernel changes nothing
  bool valid = false;  // false: the record is not of a CPL3 exception (the ring-0 code broke)
};

// `record`: the eight words of the exception record (kvm_layout.h RecordWord order).
// `insn`: the two bytes at the recorded rip, little-endian, or -1 if they are unreadable;
// they tell `int $0x80` (which kvm_pvm raises as #UD) and `sysenter` apart.
KvmException DecodeKvmException(const uint64_t* record, int insn);

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_KVM_EXIT_DECODE_H_
