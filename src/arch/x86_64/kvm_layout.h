// Guest-physical and guest-virtual layout of a kvm-backend VM (SPEC §5 "kvm"), shared by the
// backend (src/backend/kvm/) and the ring-0 code (kvm_guest.S). Machine-dependent.
//
// Guest virtual addresses:
//   [0, 0x7FFFFFE00000)          the guest's (DragonFly's VM_MAX_USER_ADDRESS)
//   kStubVa   (user, read-only)   the SYSCALL entry (LSTAR): one instruction that writes the
//                                 exit page and so leaves the VM (KVM_EXIT_MMIO)
//   kExitVa   (user, writable)    the exit page: guest-physical kExitGpa, which no memory
//                                 slot backs (any access leaves the VM; nothing is stored)
//   kKernelVa (supervisor only)   ring-0 code, GDT, IDT, then two pages per vCPU: its TSS,
//                                 and its ring-0 stack page (growing down from the end).
//                                 Apart: kvm_pvm may write-protect a TSS page, and pushes to
//                                 it would then be emulated.
// Guest-physical addresses:
//   [0, kKernelSlotSize)          the kernel slot: the pages above, at kKernelVa + gpa
//   kZapGpa                       a one-page slot deleted and re-added to make KVM drop every
//                                 shadow/TDP translation and flush every vCPU's TLB
//   kExitGpa                      no slot: every access exits to the host
//   kTablesGpa..                  the page-table pool (the runtime's page tables)
//   kDataGpa..                    memory slots of the vmspace's mappings and objects
#ifndef VKRT_SRC_ARCH_X86_64_KVM_LAYOUT_H_
#define VKRT_SRC_ARCH_X86_64_KVM_LAYOUT_H_

#define VKRT_KVM_KERNEL_VA 0xFFFFFFFF80000000
#define VKRT_KVM_STUB_VA 0x7FFFFFE00000
#define VKRT_KVM_EXIT_VA 0x7FFFFFE01000

// Offsets in the kernel slot (and from VKRT_KVM_KERNEL_VA).
#define VKRT_KVM_CODE_OFF 0x1000  // ring-0 code (kvm_guest.S), one page
#define VKRT_KVM_STUB_OFF 0x2000  // the page mapped at VKRT_KVM_STUB_VA
#define VKRT_KVM_GDT_OFF 0x3000
#define VKRT_KVM_IDT_OFF 0x4000
#define VKRT_KVM_VCPU_OFF 0x10000  // first per-vCPU page pair

// Selectors (Linux's, so that a guest reading %cs or %ss sees what it would on Linux).
#define VKRT_KVM_KERNEL_CS 0x10
#define VKRT_KVM_KERNEL_SS 0x18
#define VKRT_KVM_USER_SS 0x2b
#define VKRT_KVM_USER_CS 0x33
#define VKRT_KVM_TSS_SEL 0x40

// An exception as the host reads it at a vector stub's halt, in 8-byte words: CR2 (from the
// vCPU's registers), vector (from the stub that halted), error code (0 where the CPU pushed
// none), then the CPU's frame: rip, cs, rflags, rsp, ss. The frame's last five words are at
// the top of the vCPU's ring-0 stack, where the CPU pushed them; the host's resume frame
// goes to the same place.
#define VKRT_KVM_RECORD_WORDS 8

#ifdef __cplusplus
#include <stdint.h>

namespace vkrt::kvm_layout {

inline constexpr uint64_t kPage = 4096;
inline constexpr uint64_t kKernelVa = VKRT_KVM_KERNEL_VA;
inline constexpr uint64_t kStubVa = VKRT_KVM_STUB_VA;
inline constexpr uint64_t kExitVa = VKRT_KVM_EXIT_VA;
inline constexpr uint64_t kCodeOff = VKRT_KVM_CODE_OFF;
inline constexpr uint64_t kStubOff = VKRT_KVM_STUB_OFF;
inline constexpr uint64_t kGdtOff = VKRT_KVM_GDT_OFF;
inline constexpr uint64_t kIdtOff = VKRT_KVM_IDT_OFF;
inline constexpr uint64_t kVcpuOff = VKRT_KVM_VCPU_OFF;
inline constexpr uint64_t kKernelSlotSize = 2ULL << 20;
inline constexpr uint64_t kVcpuPages = 2;  // TSS page, stack page
inline constexpr int kMaxVcpus =
    static_cast<int>((kKernelSlotSize - kVcpuOff) / (kVcpuPages * kPage));
// A vCPU's TSS and the top of its ring-0 stack, as offsets in the kernel slot.
constexpr uint64_t TssOff(int vcpu) { return kVcpuOff + uint64_t(vcpu) * kVcpuPages * kPage; }
constexpr uint64_t StackPageOff(int vcpu) { return TssOff(vcpu) + kPage; }
constexpr uint64_t StackTopOff(int vcpu) { return StackPageOff(vcpu) + kPage; }
inline constexpr uint64_t kZapGpa = 0x3FFFF000;
inline constexpr uint64_t kExitGpa = 0x3FFFE000;
inline constexpr uint64_t kTablesGpa = 0x40000000;
inline constexpr uint64_t kTablesSize = 256ULL << 20;  // 65536 table pages
inline constexpr uint64_t kDataGpa = 1ULL << 32;
inline constexpr uint16_t kKernelCs = VKRT_KVM_KERNEL_CS;
inline constexpr uint16_t kKernelSs = VKRT_KVM_KERNEL_SS;
inline constexpr uint16_t kUserCs = VKRT_KVM_USER_CS;
inline constexpr uint16_t kUserSs = VKRT_KVM_USER_SS;
inline constexpr uint16_t kTssSel = VKRT_KVM_TSS_SEL;
inline constexpr int kRecordWords = VKRT_KVM_RECORD_WORDS;
enum RecordWord { kRecCr2, kRecVector, kRecErr, kRecRip, kRecCs, kRecRflags, kRecRsp, kRecSs };

}  // namespace vkrt::kvm_layout
#endif

#endif  // VKRT_SRC_ARCH_X86_64_KVM_LAYOUT_H_
