#include "arch/x86_64/frame.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "absl/strings/str_format.h"
#include "common/errno_status.h"

namespace vkrt::x86_64 {

// The DragonFly trapframe ABI, checked once here: 25 x int64, packed, in this order.
static_assert(sizeof(trapframe) == 200);
static_assert(offsetof(trapframe, tf_rdi) == 0);
static_assert(offsetof(trapframe, tf_rsi) == 8);
static_assert(offsetof(trapframe, tf_rdx) == 16);
static_assert(offsetof(trapframe, tf_rcx) == 24);
static_assert(offsetof(trapframe, tf_r8) == 32);
static_assert(offsetof(trapframe, tf_r9) == 40);
static_assert(offsetof(trapframe, tf_rax) == 48);
static_assert(offsetof(trapframe, tf_rbx) == 56);
static_assert(offsetof(trapframe, tf_rbp) == 64);
static_assert(offsetof(trapframe, tf_r10) == 72);
static_assert(offsetof(trapframe, tf_r11) == 80);
static_assert(offsetof(trapframe, tf_r12) == 88);
static_assert(offsetof(trapframe, tf_r13) == 96);
static_assert(offsetof(trapframe, tf_r14) == 104);
static_assert(offsetof(trapframe, tf_r15) == 112);
static_assert(offsetof(trapframe, tf_xflags) == 120);
static_assert(offsetof(trapframe, tf_trapno) == 128);
static_assert(offsetof(trapframe, tf_addr) == 136);
static_assert(offsetof(trapframe, tf_flags) == 144);
static_assert(offsetof(trapframe, tf_err) == 152);
static_assert(offsetof(trapframe, tf_rip) == 160);
static_assert(offsetof(trapframe, tf_cs) == 168);
static_assert(offsetof(trapframe, tf_rflags) == 176);
static_assert(offsetof(trapframe, tf_rsp) == 184);
static_assert(offsetof(trapframe, tf_ss) == 192);
static_assert(sizeof(tls_info) == 16 && offsetof(tls_info, base) == 0 &&
              offsetof(tls_info, size) == 8);
static_assert(sizeof(savetls) == 32 && offsetof(savetls, info) == 0);
static_assert(sizeof(vextframe) == 32 && offsetof(vextframe, vx_tls) == 0);

absl::Status SanitizeFrame(trapframe& tf, uint64_t fs_base, uint64_t gs_base) {
  const uint64_t rip = static_cast<uint64_t>(tf.tf_rip);
  if (!IsCanonical(rip)) {
    return ErrnoError(EINVAL, absl::StrFormat("RUN: non-canonical tf_rip %#x", rip));
  }
  // Linux only lets a user thread hold segment bases below TASK_SIZE_MAX; a canonical
  // kernel-half base is refused as well (documented in docs/api.md).
  if (fs_base >= kLinuxTaskSizeMax) {
    return ErrnoError(EINVAL, absl::StrFormat("RUN: FS base %#x is not a user address", fs_base));
  }
  if (gs_base >= kLinuxTaskSizeMax) {
    return ErrnoError(EINVAL, absl::StrFormat("RUN: GS base %#x is not a user address", gs_base));
  }
  tf.tf_cs = kUserCs;
  tf.tf_ss = kUserSs;
  tf.tf_rflags = static_cast<int64_t>(
      (static_cast<uint64_t>(tf.tf_rflags) & kRflagsUserChangeable) | kRflagsAlwaysSet);
  return absl::OkStatus();
}

int TrapCodeForVector(int vector) {
  switch (vector) {
    case 0: return T_DIVIDE;
    case 1: return T_TRCTRAP;
    case 3: return T_BPTFLT;
    case 4: return T_OFLOW;
    case 5: return T_BOUND;
    case 6: return T_PRIVINFLT;
    case 7: return T_DNA;
    case 11: return T_SEGNPFLT;
    case 12: return T_STKFLT;
    case 13: return T_PROTFLT;
    case 14: return T_PAGEFLT;
    case 16: return T_ARITHTRAP;
    case 17: return T_ALIGNFLT;
    case 19: return T_XMMFLT;
    default: return T_PROTFLT;  // #TS, #MC and anything unexpected: a protection fault.
  }
}

void FrameToUserRegs(const trapframe& tf, uint64_t fs_base, uint64_t gs_base,
                     user_regs_struct& regs) {
  regs = user_regs_struct{};
  regs.rdi = tf.tf_rdi;
  regs.rsi = tf.tf_rsi;
  regs.rdx = tf.tf_rdx;
  regs.rcx = tf.tf_rcx;
  regs.r8 = tf.tf_r8;
  regs.r9 = tf.tf_r9;
  regs.rax = tf.tf_rax;
  regs.rbx = tf.tf_rbx;
  regs.rbp = tf.tf_rbp;
  regs.r10 = tf.tf_r10;
  regs.r11 = tf.tf_r11;
  regs.r12 = tf.tf_r12;
  regs.r13 = tf.tf_r13;
  regs.r14 = tf.tf_r14;
  regs.r15 = tf.tf_r15;
  regs.rip = tf.tf_rip;
  regs.rsp = tf.tf_rsp;
  regs.eflags = tf.tf_rflags;
  regs.cs = kUserCs;
  regs.ss = kUserSs;
  regs.fs_base = fs_base;
  regs.gs_base = gs_base;
  regs.orig_rax = static_cast<unsigned long long>(-1);
}

void UserRegsToFrame(const user_regs_struct& regs, trapframe& tf) {
  tf.tf_rdi = regs.rdi;
  tf.tf_rsi = regs.rsi;
  tf.tf_rdx = regs.rdx;
  tf.tf_rcx = regs.rcx;
  tf.tf_r8 = regs.r8;
  tf.tf_r9 = regs.r9;
  tf.tf_rax = regs.rax;
  tf.tf_rbx = regs.rbx;
  tf.tf_rbp = regs.rbp;
  tf.tf_r10 = regs.r10;
  tf.tf_r11 = regs.r11;
  tf.tf_r12 = regs.r12;
  tf.tf_r13 = regs.r13;
  tf.tf_r14 = regs.r14;
  tf.tf_r15 = regs.r15;
  tf.tf_rip = regs.rip;
  tf.tf_rsp = regs.rsp;
  tf.tf_rflags = regs.eflags;
  tf.tf_cs = kUserCs;
  tf.tf_ss = kUserSs;
}

void FrameToSigGregs(const trapframe& tf, uint64_t* g) {
  g[kSigR8] = tf.tf_r8;
  g[kSigR9] = tf.tf_r9;
  g[kSigR10] = tf.tf_r10;
  g[kSigR11] = tf.tf_r11;
  g[kSigR12] = tf.tf_r12;
  g[kSigR13] = tf.tf_r13;
  g[kSigR14] = tf.tf_r14;
  g[kSigR15] = tf.tf_r15;
  g[kSigRdi] = tf.tf_rdi;
  g[kSigRsi] = tf.tf_rsi;
  g[kSigRbp] = tf.tf_rbp;
  g[kSigRbx] = tf.tf_rbx;
  g[kSigRdx] = tf.tf_rdx;
  g[kSigRax] = tf.tf_rax;
  g[kSigRcx] = tf.tf_rcx;
  g[kSigRsp] = tf.tf_rsp;
  g[kSigRip] = tf.tf_rip;
  g[kSigEflags] = tf.tf_rflags;
}

void SigGregsToFrame(const uint64_t* g, trapframe& tf) {
  tf.tf_r8 = static_cast<int64_t>(g[kSigR8]);
  tf.tf_r9 = static_cast<int64_t>(g[kSigR9]);
  tf.tf_r10 = static_cast<int64_t>(g[kSigR10]);
  tf.tf_r11 = static_cast<int64_t>(g[kSigR11]);
  tf.tf_r12 = static_cast<int64_t>(g[kSigR12]);
  tf.tf_r13 = static_cast<int64_t>(g[kSigR13]);
  tf.tf_r14 = static_cast<int64_t>(g[kSigR14]);
  tf.tf_r15 = static_cast<int64_t>(g[kSigR15]);
  tf.tf_rdi = static_cast<int64_t>(g[kSigRdi]);
  tf.tf_rsi = static_cast<int64_t>(g[kSigRsi]);
  tf.tf_rbp = static_cast<int64_t>(g[kSigRbp]);
  tf.tf_rbx = static_cast<int64_t>(g[kSigRbx]);
  tf.tf_rdx = static_cast<int64_t>(g[kSigRdx]);
  tf.tf_rax = static_cast<int64_t>(g[kSigRax]);
  tf.tf_rcx = static_cast<int64_t>(g[kSigRcx]);
  tf.tf_rsp = static_cast<int64_t>(g[kSigRsp]);
  tf.tf_rip = static_cast<int64_t>(g[kSigRip]);
  tf.tf_rflags = static_cast<int64_t>(g[kSigEflags]);
  tf.tf_cs = kUserCs;
  tf.tf_ss = kUserSs;
}

bool SigframeGregsAt(const uint8_t* mem, uint64_t base, uint64_t len, uint64_t magic2,
                     uint64_t* gregs) {
  constexpr uint64_t kMcontextInFrame = 8 + kUcMcontext;  // after the return address
  constexpr uint64_t kFpstateInFrame = 8 + kUcFpregs;
  auto inside = [&](uint64_t addr, uint64_t n) {
    return addr >= base && addr - base <= len && n <= len - (addr - base);
  };
  auto u32 = [&](uint64_t addr) {
    uint32_t v;
    memcpy(&v, mem + (addr - base), 4);
    return v;
  };
  if (magic2 < base + kRtSigframeSize + 1024 || !inside(magic2, 4)) return false;
  // The XSAVE area is at least the legacy 512 bytes plus the 64-byte header.
  for (uint64_t fx = (magic2 - 576) & ~uint64_t{63}; fx >= base + kRtSigframeSize + 16;
       fx -= 64) {
    if (!inside(fx + kFpxSw, 8) || u32(fx + kFpxSw) != kFpXstateMagic1 ||
        u32(fx + kFpxSw + 4) != magic2 + 4 - fx) {
      continue;
    }
    const uint64_t frame = ((fx - kRtSigframeSize) & ~uint64_t{15}) - 8;
    uint64_t fpstate;
    if (!inside(frame, kFpstateInFrame + 8)) return false;
    memcpy(&fpstate, mem + (frame + kFpstateInFrame - base), 8);
    if (fpstate != fx) continue;
    memcpy(gregs, mem + (frame + kMcontextInFrame - base), 8 * kSigGregs);
    return true;
  }
  return false;
}

}  // namespace vkrt::x86_64
