// The kvm backend (SPEC §5 "kvm"): guest code runs at CPL3 in a KVM virtual machine the
// runtime owns, one VM per vmspace and one vCPU per vkernel thread that runs in it.
//
// - Ring 0 is the runtime's: a handful of exception stubs (arch/x86_64/kvm_guest.S), the
//   GDT, IDT and per-vCPU TSS/stack, all mapped supervisor-only; the guest never sees them
//   writable. Layout: arch/x86_64/kvm_layout.h.
// - A guest `syscall` jumps to LSTAR, a one-instruction stub that reads a guest-physical
//   page no memory slot backs: KVM_EXIT_MMIO. (Under kvm_pvm the stub runs at CPL3, on
//   VMX/SVM hardware at CPL0; the stub works either way and the backend reads the CPL of
//   every exit.) Exceptions go through the IDT to a stub that halts: KVM_EXIT_HLT with the
//   CPU's frame on the ring-0 stack. Both become the same GuestExit values as elsewhere.
// - Memory: vmspace_mmap ranges and MAP_VPAGETABLE objects are KVM memory slots backed by
//   the vkernel's own mappings of them (no copies). Guest virtual addresses are translated
//   by page tables the runtime builds (backend/kvm/page_tables.h) from the mappings and, for
//   MAP_VPAGETABLE, from the software walker (vpagetable/space.h). Removing or narrowing a
//   translation is followed by a flush of every vCPU's TLB and of KVM's shadow/TDP
//   translations before the call returns (see KvmAddressSpace::Flush in the .cc).
#ifndef VKRT_SRC_BACKEND_KVM_KVM_BACKEND_H_
#define VKRT_SRC_BACKEND_KVM_KVM_BACKEND_H_

#include "backend/backend.h"

namespace vkrt {

class KvmBackend : public Backend {
 public:
  static KvmBackend* Get();
  // Why the kvm backend cannot be used here (no /dev/kvm, a KVM without the capabilities it
  // needs, or a VM that fails the start-up self test), or nullptr. Decided once.
  static const char* Unavailable();
  // "pvm (syscall entry at CPL3)" or "hardware (syscall entry at CPL0)": what the self test
  // found. nullptr when unavailable.
  static const char* Mode();

  const char* Name() const override { return "kvm"; }
  absl::StatusOr<std::unique_ptr<AddressSpace>> CreateAddressSpace() override;
};

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_KVM_KVM_BACKEND_H_
