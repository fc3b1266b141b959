#include "arch/x86_64/frame.h"

#include <errno.h>
#include <string.h>

#include <gtest/gtest.h>

#include <vector>

#include "common/errno_status.h"

namespace vkrt::x86_64 {
namespace {

TEST(Frame, CanonicalAddresses) {
  EXPECT_TRUE(IsCanonical(0));
  EXPECT_TRUE(IsCanonical(0x00007FFFFFFFFFFFULL));
  EXPECT_FALSE(IsCanonical(0x0000800000000000ULL));
  EXPECT_TRUE(IsCanonical(0xFFFF800000000000ULL));
  EXPECT_FALSE(IsCanonical(0xFFFF7FFFFFFFFFFFULL));
}

TEST(Frame, SanitizeRefusesNonCanonicalRipAndLeavesFrameAlone) {
  trapframe tf;
  memset(&tf, 0x5A, sizeof(tf));
  tf.tf_rip = static_cast<int64_t>(0x0000800000000000ULL);
  trapframe before = tf;
  absl::Status s = SanitizeFrame(tf, 0, 0);
  EXPECT_EQ(ErrnoOf(s), EINVAL);
  EXPECT_EQ(memcmp(&tf, &before, sizeof(tf)), 0);
}

TEST(Frame, SanitizeRefusesKernelTlsBase) {
  trapframe tf = {};
  EXPECT_EQ(ErrnoOf(SanitizeFrame(tf, 0xFFFF800000000000ULL, 0)), EINVAL);
  EXPECT_EQ(ErrnoOf(SanitizeFrame(tf, 0, 0x0000900000000000ULL)), EINVAL);
}

TEST(Frame, SanitizeForcesUserSelectorsAndFlags) {
  trapframe tf = {};
  tf.tf_cs = 0x8;
  tf.tf_ss = 0x10;
  tf.tf_rflags = 0x3000 | 0x20000 | 0x1;  // IOPL 3, VM, CF
  ASSERT_TRUE(SanitizeFrame(tf, 0x1000, 0x2000).ok());
  EXPECT_EQ(tf.tf_cs, kUserCs);
  EXPECT_EQ(tf.tf_ss, kUserSs);
  EXPECT_EQ(tf.tf_rflags, 0x1 | 0x2 | 0x200);
}

TEST(Frame, VectorsMapToDragonFlyTrapCodes) {
  EXPECT_EQ(TrapCodeForVector(0), T_DIVIDE);
  EXPECT_EQ(TrapCodeForVector(1), T_TRCTRAP);
  EXPECT_EQ(TrapCodeForVector(3), T_BPTFLT);
  EXPECT_EQ(TrapCodeForVector(6), T_PRIVINFLT);
  EXPECT_EQ(TrapCodeForVector(13), T_PROTFLT);
  EXPECT_EQ(TrapCodeForVector(14), T_PAGEFLT);
  EXPECT_EQ(TrapCodeForVector(16), T_ARITHTRAP);
  EXPECT_EQ(TrapCodeForVector(17), T_ALIGNFLT);
  EXPECT_EQ(TrapCodeForVector(19), T_XMMFLT);
}

TEST(Frame, RegistersRoundTrip) {
  trapframe tf = {};
  int64_t* words = reinterpret_cast<int64_t*>(&tf);
  for (int i = 0; i < 25; ++i) words[i] = 0x1111 * (i + 1);
  user_regs_struct regs;
  FrameToUserRegs(tf, 0x7000, 0x8000, regs);
  EXPECT_EQ(regs.fs_base, 0x7000u);
  EXPECT_EQ(regs.gs_base, 0x8000u);
  EXPECT_EQ(static_cast<long long>(regs.orig_rax), -1);
  trapframe back = {};
  UserRegsToFrame(regs, back);
  EXPECT_EQ(back.tf_rdi, tf.tf_rdi);
  EXPECT_EQ(back.tf_r15, tf.tf_r15);
  EXPECT_EQ(back.tf_rip, tf.tf_rip);
  EXPECT_EQ(back.tf_rsp, tf.tf_rsp);
  EXPECT_EQ(back.tf_rflags, tf.tf_rflags);
  EXPECT_EQ(back.tf_cs, kUserCs);
}

// A signal frame laid out as Linux's get_sigframe lays one on an alternate stack: the XSAVE
// area (`xsave_size` bytes) at a 64-byte boundary under `top`, FP_XSTATE_MAGIC2 after it, the
// software bytes at 464, rt_sigframe under the area, the fpstate pointer and rbp in its
// ucontext. Returns the magic's address.
uint64_t LayAltStackFrame(std::vector<uint8_t>& mem, uint64_t base, uint64_t xsave_size,
                          uint64_t rbp) {
  const uint64_t top = base + mem.size();
  const uint64_t fx = (top - xsave_size - 4) & ~uint64_t{63};
  auto put32 = [&](uint64_t addr, uint32_t v) { memcpy(mem.data() + (addr - base), &v, 4); };
  auto put64 = [&](uint64_t addr, uint64_t v) { memcpy(mem.data() + (addr - base), &v, 8); };
  put32(fx + xsave_size, kFpXstateMagic2);
  put32(fx + 464, kFpXstateMagic1);
  put32(fx + 468, static_cast<uint32_t>(xsave_size + 4));
  const uint64_t frame = ((fx - kRtSigframeSize) & ~uint64_t{15}) - 8;
  put64(frame + 48 + 8 * kSigGregs, fx);
  put64(frame + 48 + 8 * kSigRbp, rbp);
  put64(frame + 48 + 8 * kSigRip, 0x401000);
  return fx + xsave_size;
}

TEST(Frame, FindsTheRegistersOfAnAlternateStackFrame) {
  constexpr uint64_t kBase = 0x7f0000010000;
  // The legacy + AVX sizes, AVX-512's, and an AMX-sized area; stacks of two sizes.
  for (const uint64_t xsave_size : {832u, 2696u, 11008u}) {
    for (const uint64_t stack_size : {16384u, 65536u}) {
      std::vector<uint8_t> mem(stack_size, 0xEE);
      const uint64_t magic2 = LayAltStackFrame(mem, kBase, xsave_size, 0x1234567890ABCDEFULL);
      EXPECT_GE(magic2 + 68, kBase + stack_size);  // in the top 68 bytes, as Linux puts it
      uint64_t gregs[kSigGregs] = {};
      ASSERT_TRUE(SigframeGregsAt(mem.data(), kBase, mem.size(), magic2, gregs))
          << xsave_size << " " << stack_size;
      EXPECT_EQ(0x1234567890ABCDEFULL, gregs[kSigRbp]);
      EXPECT_EQ(0x401000u, gregs[kSigRip]);
    }
  }
}

TEST(Frame, RefusesAnAlternateStackFrameThatDoesNotAgree) {
  constexpr uint64_t kBase = 0x7f0000010000;
  std::vector<uint8_t> good(16384, 0);
  const uint64_t magic2 = LayAltStackFrame(good, kBase, 2696, 7);
  uint64_t gregs[kSigGregs];
  ASSERT_TRUE(SigframeGregsAt(good.data(), kBase, good.size(), magic2, gregs));
  const uint64_t fx = magic2 - 2696;
  auto corrupt = [&](uint64_t addr) {
    std::vector<uint8_t> bad = good;
    bad[addr - kBase] ^= 0x01;
    return SigframeGregsAt(bad.data(), kBase, bad.size(), magic2, gregs);
  };
  EXPECT_FALSE(corrupt(fx + 464));  // FP_XSTATE_MAGIC1
  EXPECT_FALSE(corrupt(fx + 468));  // the area's size
  const uint64_t frame = ((fx - kRtSigframeSize) & ~uint64_t{15}) - 8;
  EXPECT_FALSE(corrupt(frame + 48 + 8 * kSigGregs));  // the fpstate pointer
  // A window too small to hold the frame, and a magic outside the window.
  EXPECT_FALSE(SigframeGregsAt(good.data() + 15000, kBase + 15000, good.size() - 15000, magic2,
                               gregs));
  EXPECT_FALSE(SigframeGregsAt(good.data(), kBase, good.size(), kBase + good.size(), gregs));
  // Nothing there at all.
  std::vector<uint8_t> empty(16384, 0);
  EXPECT_FALSE(SigframeGregsAt(empty.data(), kBase, empty.size(), magic2, gregs));
}

}  // namespace
}  // namespace vkrt::x86_64
