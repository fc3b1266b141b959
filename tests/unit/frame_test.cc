#include "arch/x86_64/frame.h"

#include <errno.h>
#include <string.h>

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace vkrt::x86_64
