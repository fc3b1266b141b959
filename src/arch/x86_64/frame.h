// Machine-dependent frame handling for x86-64: the DragonFly trapframe ABI checks, frame
// sanitizing (DragonFly's cpu_sanitize_frame/cpu_sanitize_tls), hardware exception vector
// to DragonFly trap code mapping, and conversion to and from Linux's user_regs_struct.
// Everything here is pure: no system calls, testable without a kernel.
#ifndef VKRT_SRC_ARCH_X86_64_FRAME_H_
#define VKRT_SRC_ARCH_X86_64_FRAME_H_

#include <stdint.h>
#include <sys/user.h>

#include "absl/status/status.h"
#include "vkrt/vmspace.h"

namespace vkrt::x86_64 {

// Linux's user code/data selectors, reported in tf_cs/tf_ss.
inline constexpr int64_t kUserCs = 0x33;
inline constexpr int64_t kUserSs = 0x2b;

// RFLAGS bits a guest may set (DragonFly's PSL_USERCHANGE plus RF), and the bits always set.
inline constexpr uint64_t kRflagsUserChangeable = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 |
                                                  0x800 | 0x4000 | 0x40000 | 0x200000 | 0x10000;
inline constexpr uint64_t kRflagsAlwaysSet = 0x2 | 0x200;  // reserved bit 1, IF

// Highest user address + 1 Linux accepts for a segment base set through ptrace.
inline constexpr uint64_t kLinuxTaskSizeMax = 0x00007FFFFFFFF000ULL;

// True if `va` is canonical for 48-bit virtual addresses (bits 63..47 all equal).
constexpr bool IsCanonical(uint64_t va) {
  uint64_t top = va >> 47;
  return top == 0 || top == 0x1FFFF;
}

// Checks and normalises a frame before it is loaded into a guest context.
// EINVAL (and `tf` unchanged) for a non-canonical rip or a TLS base a user thread cannot
// hold; otherwise forces user selectors and limits rflags to the user-changeable bits plus
// IF and the reserved bit.
absl::Status SanitizeFrame(trapframe& tf, uint64_t fs_base, uint64_t gs_base);

// DragonFly trap code (T_*) for an x86 exception vector.
int TrapCodeForVector(int vector);

// Frame <-> Linux registers. orig_rax is set to -1 so the kernel never treats the loaded
// state as an interrupted system call to restart.
void FrameToUserRegs(const trapframe& tf, uint64_t fs_base, uint64_t gs_base,
                     user_regs_struct& regs);
// Copies every general register, rip, rsp and rflags; trapno/err/addr are left for the
// caller; cs/ss are reported as the user selectors.
void UserRegsToFrame(const user_regs_struct& regs, trapframe& tf);

// Frame <-> the general registers of a Linux signal frame (uc_mcontext.gregs, in REG_R8 ..
// REG_CR2 order: kSigGregs words). FrameToSigGregs writes the general registers, rip, rsp
// and rflags and leaves the rest (segments, err, trapno, oldmask, cr2) as the kernel wrote
// them; SigGregsToFrame is UserRegsToFrame's counterpart.
inline constexpr int kSigGregs = 23;
enum SigGreg {
  kSigR8, kSigR9, kSigR10, kSigR11, kSigR12, kSigR13, kSigR14, kSigR15, kSigRdi, kSigRsi,
  kSigRbp, kSigRbx, kSigRdx, kSigRax, kSigRcx, kSigRsp, kSigRip, kSigEflags, kSigCsGsFs,
  kSigErr, kSigTrapno, kSigOldmask, kSigCr2,
};
void FrameToSigGregs(const trapframe& tf, uint64_t* gregs);
void SigGregsToFrame(const uint64_t* gregs, trapframe& tf);

// A signal frame as Linux lays it on an alternate stack (arch/x86/kernel/signal.c,
// get_sigframe): from the stack's top, the XSAVE area at a 64-byte boundary followed by
// FP_XSTATE_MAGIC2 (so the magic lies in the top 68 bytes); under it struct rt_sigframe (a
// return address, the ucontext, the siginfo: 440 bytes) at a 16-byte boundary minus 8. The
// XSAVE area's software bytes (offset 464) hold FP_XSTATE_MAGIC1 and the area's size plus 4,
// and the ucontext's fpstate pointer points at the area.
// Offsets in a signal frame's ucontext { uc_flags, uc_link, uc_stack (24 bytes),
// uc_mcontext (kSigGregs general registers, the fpstate pointer, 8 reserved words),
// uc_sigmask }, and of the software bytes (struct _fpx_sw_bytes) in its XSAVE area.
inline constexpr uint64_t kUcMcontext = 40;
inline constexpr uint64_t kUcFpregs = kUcMcontext + 8 * kSigGregs;
inline constexpr uint64_t kFpxSw = 464;
inline constexpr uint32_t kFpXstateMagic1 = 0x46505853;
inline constexpr uint32_t kFpXstateMagic2 = 0x46505845;
inline constexpr uint64_t kRtSigframeSize = 440;
// `mem` holds the `len` bytes at address `base`, and an FP_XSTATE_MAGIC2 lies at address
// `magic2`: the general registers (kSigGregs words) of the frame it ends, found only if the
// software bytes and the fpstate pointer agree on where its XSAVE area is, and copied to
// `gregs`. False if no such frame lies within `mem`.
bool SigframeGregsAt(const uint8_t* mem, uint64_t base, uint64_t len, uint64_t magic2,
                     uint64_t* gregs);

}  // namespace vkrt::x86_64

#endif  // VKRT_SRC_ARCH_X86_64_FRAME_H_
