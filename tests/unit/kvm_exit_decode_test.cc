// Decoding of the kvm backend's exception records (no kernel needed).
#include "backend/kvm/exit_decode.h"

#include "arch/x86_64/kvm_layout.h"
#include "gtest/gtest.h"

namespace vkrt {
namespace {

namespace L = kvm_layout;

// A record as the ring-0 stubs leave it for an exception at CPL3.
// The instruction bytes a test guest has: `bytes` at every address.
auto Bytes(int bytes) {
  return [bytes](uint64_t) { return bytes; };
}

struct Record {
  uint64_t words[L::kRecordWords] = {};
  Record(int vector, uint64_t err, uint64_t rip, uint64_t cr2 = 0) {
    words[L::kRecCr2] = cr2;
    words[L::kRecVector] = static_cast<uint64_t>(vector);
    words[L::kRecErr] = err;
    words[L::kRecRip] = rip;
    words[L::kRecCs] = L::kUserCs;
    words[L::kRecRflags] = 0x202;
    words[L::kRecRsp] = 0x7FF0;
    words[L::kRecSs] = L::kUserSs;
  }
};

TEST(KvmExitDecode, PageFaultKeepsTheHardwareBitsAndAddsUser) {
  // err 0x1f: P W U RSV I; the hardware's U is replaced by ours, PK (0x20) is dropped.
  Record r(14, 0x3B, 0x401000, 0xDEAD000);
  KvmException ex = DecodeKvmException(r.words, true, Bytes(-1));
  ASSERT_TRUE(ex.valid);
  EXPECT_EQ(GuestExit::Kind::kPageFault, ex.exit.kind);
  EXPECT_EQ(T_PAGEFLT, ex.exit.trapno);
  EXPECT_EQ(0xDEAD000u, ex.exit.addr);
  EXPECT_EQ(static_cast<uint64_t>(PGEX_P | PGEX_W | PGEX_U | PGEX_RSV | PGEX_I), ex.exit.err);
  EXPECT_EQ(0x401000u, ex.rip) << "faults report the faulting instruction";
}

TEST(KvmExitDecode, Int80IsASystemCallWhereverItArrives) {
  // kvm_pvm: #UD at `cd 80`; rip moves past the instruction.
  KvmException ud = DecodeKvmException(Record(6, 0, 0x1000).words, KvmVectorHasErrorCode(6), Bytes(0x80CD));
  ASSERT_TRUE(ud.valid);
  EXPECT_EQ(GuestExit::Kind::kSyscall80, ud.exit.kind);
  EXPECT_EQ(T_SYSCALL80, ud.exit.trapno);
  EXPECT_EQ(2u, ud.exit.err);
  EXPECT_EQ(0x1002u, ud.rip);
  // Hardware with a DPL0 gate: #GP with the IDT error code for vector 0x80.
  KvmException gp = DecodeKvmException(Record(13, (0x80 << 3) | 2, 0x1000).words, true, Bytes(0x80CD));
  EXPECT_EQ(T_SYSCALL80, gp.exit.trapno);
  EXPECT_EQ(0x1002u, gp.rip);
  // Through the DPL3 gate: the CPU already moved rip.
  KvmException gate = DecodeKvmException(Record(0x80, 0, 0x1002).words, false, Bytes(-1));
  EXPECT_EQ(T_SYSCALL80, gate.exit.trapno);
  EXPECT_EQ(0x1002u, gate.rip);
}

TEST(KvmExitDecode, OtherUndefinedOpcodesAndSysenterArePrivinflt) {
  KvmException ud2 = DecodeKvmException(Record(6, 0, 0x1000).words, KvmVectorHasErrorCode(6), Bytes(0x0B0F));
  EXPECT_EQ(T_PRIVINFLT, ud2.exit.trapno);
  EXPECT_EQ(0x1000u, ud2.rip);
  // Intel raises #GP(0) for sysenter with SYSENTER_CS 0: reported as AMD's #UD would be.
  KvmException sysenter = DecodeKvmException(Record(13, 0, 0x1000).words, KvmVectorHasErrorCode(13), Bytes(0x340F));
  EXPECT_EQ(T_PRIVINFLT, sysenter.exit.trapno);
  EXPECT_EQ(0u, sysenter.exit.err);
}

TEST(KvmExitDecode, VectorsBecomeDragonFlyTrapCodes) {
  struct Case {
    int vector;
    int trapno;
  } cases[] = {{0, T_DIVIDE}, {1, T_TRCTRAP}, {3, T_BPTFLT}, {13, T_PROTFLT},
               {16, T_ARITHTRAP}, {17, T_ALIGNFLT}, {19, T_XMMFLT}};
  for (const Case& c : cases) {
    KvmException ex = DecodeKvmException(Record(c.vector, 0, 0x1000).words,
                                         KvmVectorHasErrorCode(c.vector), Bytes(0x9090));
    ASSERT_TRUE(ex.valid) << c.vector;
    EXPECT_EQ(GuestExit::Kind::kException, ex.exit.kind) << c.vector;
    EXPECT_EQ(c.trapno, ex.exit.trapno) << c.vector;
  }
  // The error code passes where the CPU pushes one, and only there.
  EXPECT_EQ(0x18u, DecodeKvmException(Record(13, 0x18, 0x1000).words, KvmVectorHasErrorCode(13), Bytes(0x9090)).exit.err);
  EXPECT_EQ(0u, DecodeKvmException(Record(3, 0x18, 0x1000).words, KvmVectorHasErrorCode(3), Bytes(0x9090)).exit.err);
}

TEST(KvmExitDecode, SoftwareInterruptsThroughForbiddenGatesBecomeProtectionFaults) {
  // kvm_pvm lets `int $4` through a DPL0 gate: reported as the #GP hardware raises.
  Record r(4, 0, 0x1002);
  KvmException ex = DecodeKvmException(r.words, false, [](uint64_t va) {
    return va == 0x1000 ? 0x04CD : -1;  // cd 04
  });
  ASSERT_TRUE(ex.valid);
  EXPECT_EQ(T_PROTFLT, ex.exit.trapno);
  EXPECT_EQ(static_cast<uint64_t>((4 << 3) | 2), ex.exit.err);
  EXPECT_EQ(0x1000u, ex.rip);
  // Through an error-code vector's gate, `int $14` pushes no error code: not a page fault.
  Record soft(14, 0, 0x1002);
  ex = DecodeKvmException(soft.words, false, [](uint64_t va) { return va == 0x1000 ? 0x0ECD : -1; });
  ASSERT_TRUE(ex.valid);
  EXPECT_EQ(GuestExit::Kind::kException, ex.exit.kind);
  EXPECT_EQ(T_PROTFLT, ex.exit.trapno);
  EXPECT_EQ(static_cast<uint64_t>((14 << 3) | 2), ex.exit.err);
  EXPECT_EQ(0x1000u, ex.rip);
  EXPECT_EQ(0x7FF0u, ex.rsp);
  EXPECT_EQ(0x202u, ex.rflags);
}

TEST(KvmExitDecode, ARecordNotFromCpl3IsNotTheGuests) {
  Record r(14, 0, 0xFFFFFFFF80001000, 0);
  r.words[L::kRecCs] = L::kKernelCs;
  EXPECT_FALSE(DecodeKvmException(r.words, true, Bytes(-1)).valid);
  Record odd(200, 0, 0x1000);
  EXPECT_FALSE(DecodeKvmException(odd.words, false, Bytes(-1)).valid);
}

}  // namespace
}  // namespace vkrt
