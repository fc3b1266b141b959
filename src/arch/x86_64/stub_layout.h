// The layout of a guest address space's stub, shared by the assembly in stub.S and the
// ptrace backend. The stub owns only [kStubBase, kStubEnd): everything below
// kStubBase (DragonFly's VM_MAX_USER_ADDRESS) belongs to the guest.
#ifndef VKRT_SRC_ARCH_X86_64_STUB_LAYOUT_H_
#define VKRT_SRC_ARCH_X86_64_STUB_LAYOUT_H_

#define VKRT_STUB_BASE 0x7FFFFFE00000
#define VKRT_STUB_END 0x7FFFFFFFF000   /* Linux's TASK_SIZE with 4-level paging */
#define VKRT_STUB_SIZE 0x1FF000
#define VKRT_STUB_CODE_SIZE 0x10000    /* read + execute */
#define VKRT_STUB_SCRATCH 0x7FFFFFE10000 /* the spawner's scratch page */
#define VKRT_STUB_SLOTS 0x7FFFFFE20000 /* per-context slots: scratch page + signal stack */
#define VKRT_STUB_SLOT_SIZE 0x4000
#define VKRT_STUB_SLOT_ALTSTACK 0x1000 /* offset of the signal stack within a slot */
#define VKRT_STUB_MAX_SLOTS 96

#ifndef __ASSEMBLER__
#include <stdint.h>

namespace vkrt::x86_64 {

inline constexpr uint64_t kStubBase = VKRT_STUB_BASE;
inline constexpr uint64_t kStubEnd = VKRT_STUB_END;
inline constexpr uint64_t kStubSlots = VKRT_STUB_SLOTS;
inline constexpr uint64_t kStubSlotSize = VKRT_STUB_SLOT_SIZE;
inline constexpr int kStubMaxSlots = VKRT_STUB_MAX_SLOTS;
static_assert(VKRT_STUB_BASE + VKRT_STUB_SIZE == VKRT_STUB_END);
static_assert(VKRT_STUB_SLOTS + VKRT_STUB_MAX_SLOTS * VKRT_STUB_SLOT_SIZE <= VKRT_STUB_END);

// Offsets of entry points inside the stub code, filled in by stub.S.
struct StubOffsets {
  uint64_t fault_report_end;  // rip after the fault handler's reporting `syscall`
  uint64_t inject_syscall;    // `syscall; int3`: one injected system call
};
extern "C" const StubOffsets vkrt_stub_offsets;

// In the child of a fork: maps the stub region over whatever is there, copies the stub
// code into it and jumps there. The stub installs `prog` as its seccomp filter, unmaps
// everything below kStubBase and becomes the spawner thread (see stub.S). Uses no stack.
extern "C" [[noreturn]] void vkrt_stub_boot(int ctl_fd, int vkernel_pidfd, const void* prog);

}  // namespace vkrt::x86_64
#endif

#endif  // VKRT_SRC_ARCH_X86_64_STUB_LAYOUT_H_
