// A hostile guest against the kvm backend (docs/security.md): it reads, writes and jumps to
// every page of the runtime's ring 0 and the syscall stub, runs privileged instructions and
// every `int $N`, forges an iretq frame into ring 0, and jumps into the stub at every offset
// with crafted registers. Whatever it does, RUN returns a trap at the right place, and the
// vmspace goes on working (its ring-0 code, tables and descriptors intact).
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <vkrt/vmspace.h>

#include "arch/x86_64/kvm_layout.h"
#include "test_support.h"

namespace {

namespace L = vkrt::kvm_layout;
using vkrt_test::UnavailableReason;
using vkrt_test::Watchdog;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kCodeAddr = 0x400000;
constexpr uint64_t kStackBase = 0x7000000;
constexpr uint64_t kStackTop = kStackBase + 16 * kPage;
constexpr int kRw = PROT_READ | PROT_WRITE;
constexpr int kRwx = kRw | PROT_EXEC;
constexpr int kAnonFixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;

// A system call that answers with rax = number + 1 proves the vmspace works.
//      0: 0f 05                  syscall
//      2: 0f 0b                  ud2
const std::vector<unsigned char> kSyscall = {0x0f, 0x05, 0x0f, 0x0b};

std::string Describe(const trapframe& tf) {
  char buf[160];
  snprintf(buf, sizeof(buf), "trapno %ld err %#lx addr %#lx rip %#lx", static_cast<long>(tf.tf_trapno),
           static_cast<unsigned long>(tf.tf_err), static_cast<unsigned long>(tf.tf_addr),
           static_cast<unsigned long>(tf.tf_rip));
  return buf;
}

class KvmHostile : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = UnavailableReason(VKRT_TYPE_KVM);
    if (!why.empty()) GTEST_SKIP() << why;
    watchdog_ = std::make_unique<Watchdog>(
        ::testing::UnitTest::GetInstance()->current_test_info()->name(),
        std::chrono::seconds(300));
    ASSERT_EQ(0, vmspace_create(&id_, VKRT_TYPE_KVM, nullptr)) << strerror(errno);
    created_ = true;
    ASSERT_EQ(reinterpret_cast<void*>(kCodeAddr),
              vmspace_mmap(&id_, reinterpret_cast<void*>(kCodeAddr), kPage, kRwx, kAnonFixed, -1, 0));
    ASSERT_EQ(reinterpret_cast<void*>(kStackBase),
              vmspace_mmap(&id_, reinterpret_cast<void*>(kStackBase), 16 * kPage, kRw, kAnonFixed,
                           -1, 0));
  }
  void TearDown() override {
    if (created_) {
      EXPECT_EQ(0, vmspace_destroy(&id_)) << strerror(errno);
    }
  }

  trapframe Frame(uint64_t rip) {
    trapframe tf = {};
    tf.tf_rip = static_cast<int64_t>(rip);
    tf.tf_rsp = static_cast<int64_t>(kStackTop - 64);
    tf.tf_rflags = 0x202;
    tf.tf_cs = 0x33;
    tf.tf_ss = 0x2b;
    return tf;
  }

  // Loads `code` at kCodeAddr and runs it from there with `tf`'s registers.
  void Run(const std::vector<unsigned char>& code, trapframe& tf) {
    ASSERT_EQ(static_cast<ssize_t>(code.size()),
              vmspace_pwrite(&id_, code.data(), code.size(), 0, kCodeAddr));
    vextframe vf = {};
    ASSERT_EQ(0, vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf)) << strerror(errno);
    EXPECT_EQ(0x33, tf.tf_cs);
    EXPECT_EQ(0x2b, tf.tf_ss);
  }

  // The vmspace still runs guests: a system call, answered, then a ud2.
  void ExpectStillWorks(const std::string& after) {
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rax = 1234;
    ASSERT_NO_FATAL_FAILURE(Run(kSyscall, tf));
    ASSERT_EQ(T_FAST_SYSCALL, tf.tf_trapno) << after << ": " << Describe(tf);
    EXPECT_EQ(1234, tf.tf_rax) << after;
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr + 2), tf.tf_rip) << after;
    vextframe vf = {};
    ASSERT_EQ(0, vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf)) << after;
    EXPECT_EQ(T_PRIVINFLT, tf.tf_trapno) << after << ": " << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr + 2), tf.tf_rip) << after;
  }

  char id_ = 0;
  bool created_ = false;
  std::unique_ptr<Watchdog> watchdog_;
};

struct Target {
  const char* name;
  uint64_t va;
};

const Target kRingZero[] = {
    {"ring-0 code", L::kKernelVa + L::kCodeOff},
    {"GDT", L::kKernelVa + L::kGdtOff},
    {"IDT", L::kKernelVa + L::kIdtOff},
    {"vCPU 0 TSS", L::kKernelVa + L::TssOff(0)},
    {"vCPU 0 ring-0 stack", L::kKernelVa + L::StackPageOff(0)},
    {"vCPU 0 exception record", L::kKernelVa + L::StackTopOff(0) - 64},
    {"vCPU 1 TSS", L::kKernelVa + L::TssOff(1)},
    {"vCPU 1 ring-0 stack", L::kKernelVa + L::StackPageOff(1)},
};

TEST_F(KvmHostile, RingZeroPagesCannotBeReadWrittenOrExecuted) {
  // mov (%rdi),%rax; ud2  /  mov %rax,(%rdi); ud2  /  jmp *%rdi
  const std::vector<unsigned char> load = {0x48, 0x8b, 0x07, 0x0f, 0x0b};
  const std::vector<unsigned char> store = {0x48, 0x89, 0x07, 0x0f, 0x0b};
  const std::vector<unsigned char> jump = {0xff, 0xe7};
  for (const Target& t : kRingZero) {
    for (int access = 0; access < 3; ++access) {
      trapframe tf = Frame(kCodeAddr);
      tf.tf_rdi = static_cast<int64_t>(t.va);
      tf.tf_rax = 0x4141414141414141;
      ASSERT_NO_FATAL_FAILURE(Run(access == 0 ? load : access == 1 ? store : jump, tf));
      const std::string what = std::string(t.name) + (access == 0   ? " read"
                                                      : access == 1 ? " write"
                                                                    : " fetch");
      ASSERT_EQ(T_PAGEFLT, tf.tf_trapno) << what << ": " << Describe(tf);
      EXPECT_EQ(static_cast<int64_t>(t.va), tf.tf_addr) << what;
      // Present but supervisor-only: a protection fault.
      const int64_t bits = access == 1 ? PGEX_W : access == 2 ? PGEX_I : 0;
      EXPECT_EQ(PGEX_P | PGEX_U | bits, tf.tf_err) << what << ": " << Describe(tf);
      EXPECT_EQ(static_cast<int64_t>(access == 2 ? t.va : kCodeAddr), tf.tf_rip) << what;
    }
  }
  ExpectStillWorks("touching ring 0");
}

TEST_F(KvmHostile, StubAndExitPageCannotBeWritten) {
  const std::vector<unsigned char> load = {0x48, 0x8b, 0x07, 0x0f, 0x0b};
  const std::vector<unsigned char> store = {0x48, 0x89, 0x07, 0x0f, 0x0b};
  // The stub's code is readable (the guest learns nothing it could not read here) but not
  // writable.
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(L::kStubVa);
  ASSERT_NO_FATAL_FAILURE(Run(load, tf));
  EXPECT_EQ(T_PRIVINFLT, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(0x0ff905c6, tf.tf_rax & 0xffffffff) << "c6 05 f9 0f: movb $0, exit_page(%rip)";
  tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(L::kStubVa);
  ASSERT_NO_FATAL_FAILURE(Run(store, tf));
  ASSERT_EQ(T_PAGEFLT, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(L::kStubVa), tf.tf_addr);
  EXPECT_EQ(PGEX_P | PGEX_W | PGEX_U, tf.tf_err);
  EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip);
  // The exit page reaches no memory at all: any access is a protection fault there. A read is
  // reported at the instruction; a write only after it (KVM has completed it).
  tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(L::kExitVa + 8);
  ASSERT_NO_FATAL_FAILURE(Run(load, tf));
  ASSERT_EQ(T_PAGEFLT, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(L::kExitVa + 8), tf.tf_addr);
  EXPECT_EQ(PGEX_P | PGEX_U, tf.tf_err);
  EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip);
  tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(L::kExitVa + 16);
  ASSERT_NO_FATAL_FAILURE(Run(store, tf));
  ASSERT_EQ(T_PAGEFLT, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(L::kExitVa + 16), tf.tf_addr);
  EXPECT_EQ(PGEX_P | PGEX_W | PGEX_U, tf.tf_err);
  EXPECT_EQ(static_cast<int64_t>(kCodeAddr + 3), tf.tf_rip);
  ExpectStillWorks("touching the stub and exit pages");
}

TEST_F(KvmHostile, PrivilegedInstructionsTrapAndChangeNothing) {
  struct Insn {
    const char* name;
    std::vector<unsigned char> bytes;
  };
  const Insn insns[] = {
      {"hlt", {0xf4}},
      {"cli", {0xfa}},
      {"sti", {0xfb}},
      {"lgdt (%rdi)", {0x0f, 0x01, 0x17}},
      {"lidt (%rdi)", {0x0f, 0x01, 0x1f}},
      {"ltr %ax", {0x0f, 0x00, 0xd8}},
      {"mov %rax,%cr3", {0x0f, 0x22, 0xd8}},
      {"mov %rax,%cr0", {0x0f, 0x22, 0xc0}},
      {"mov %cr2,%rax", {0x0f, 0x20, 0xd0}},
      {"wrmsr", {0x0f, 0x30}},
      {"rdmsr", {0x0f, 0x32}},
      {"invlpg (%rdi)", {0x0f, 0x01, 0x3f}},
      {"swapgs", {0x0f, 0x01, 0xf8}},
      {"in (%dx),%al", {0xec}},
      {"out %al,(%dx)", {0xee}},
      {"sysret", {0x48, 0x0f, 0x07}},
      {"mov %ax,%ss (0x10, ring 0)", {0x8e, 0xd0}},
      {"lcall *(%rdi) (ring-0 selector)", {0xff, 0x1f}},
  };
  for (const Insn& insn : insns) {
    std::vector<unsigned char> code = insn.bytes;
    code.push_back(0x0f);  // ud2, if it did not trap
    code.push_back(0x0b);
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rdi = static_cast<int64_t>(kStackBase);  // a descriptor table / far pointer there
    tf.tf_rax = 0x10;
    tf.tf_rcx = 0xC0000082;  // LSTAR, for wrmsr/rdmsr
    tf.tf_rdx = 0x80;
    uint64_t far[2] = {L::kKernelVa + L::kCodeOff, 0x10};
    ASSERT_EQ(16, vmspace_pwrite(&id_, far, sizeof(far), 0, kStackBase));
    ASSERT_NO_FATAL_FAILURE(Run(code, tf));
    EXPECT_TRUE(tf.tf_trapno == T_PROTFLT || tf.tf_trapno == T_PRIVINFLT ||
                tf.tf_trapno == T_SEGNPFLT)
        << insn.name << ": " << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip) << insn.name << " must not complete";
  }
  ExpectStillWorks("privileged instructions");
}

TEST_F(KvmHostile, ForgedIretqIntoRingZeroFaults) {
  // iretq with a frame whose cs is the ring-0 code selector and whose rip is ring-0 code.
  //      0: 48 cf                 iretq
  const uint64_t frame[5] = {L::kKernelVa + L::kCodeOff, L::kKernelCs, 0x2, kStackTop - 256,
                             L::kKernelSs};
  ASSERT_EQ(40, vmspace_pwrite(&id_, frame, sizeof(frame), 0, kStackTop - 512));
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rsp = static_cast<int64_t>(kStackTop - 512);
  ASSERT_NO_FATAL_FAILURE(Run({0x48, 0xcf}, tf));
  EXPECT_EQ(T_PROTFLT, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip);
  ExpectStillWorks("a forged iretq");
}

TEST_F(KvmHostile, EverySoftwareInterruptTrapsToTheVkernel) {
  for (int n = 0; n < 256; ++n) {
    trapframe tf = Frame(kCodeAddr);
    ASSERT_NO_FATAL_FAILURE(Run({0xcd, static_cast<unsigned char>(n), 0x0f, 0x0b}, tf));
    ASSERT_NE(0, tf.tf_trapno) << "int $" << n;
    if (n == 3) {
      EXPECT_EQ(T_BPTFLT, tf.tf_trapno);
    } else if (n == 0x80) {
      EXPECT_EQ(T_SYSCALL80, tf.tf_trapno);
      EXPECT_EQ(static_cast<int64_t>(kCodeAddr + 2), tf.tf_rip);
    } else {
      // A gate the guest may not use: #GP at the instruction. kvm_pvm raises #UD for some,
      // and for a few (23, 25, 26 seen) reports the exception after the instruction.
      EXPECT_TRUE(tf.tf_trapno == T_PROTFLT || tf.tf_trapno == T_PRIVINFLT)
          << "int $" << n << ": " << Describe(tf);
      EXPECT_TRUE(tf.tf_rip == static_cast<int64_t>(kCodeAddr) ||
                  tf.tf_rip == static_cast<int64_t>(kCodeAddr + 2))
          << "int $" << n << ": " << Describe(tf);
    }
  }
  ExpectStillWorks("int $0..255");
}

TEST_F(KvmHostile, JumpsIntoTheStubWithCraftedRegistersOnlyEverTrap) {
  for (uint64_t offset = 0; offset < 16; ++offset) {
    for (uint64_t pattern : {uint64_t{0}, uint64_t{L::kExitVa}, uint64_t{L::kKernelVa + L::kGdtOff},
                             uint64_t{0xFFFFFFFFFFFFFFFF}}) {
      trapframe tf = Frame(kCodeAddr);
      tf.tf_rax = tf.tf_rbx = tf.tf_rdx = tf.tf_rsi = tf.tf_rdi = static_cast<int64_t>(pattern);
      tf.tf_rcx = static_cast<int64_t>(kCodeAddr + 2);  // where a forged "sysret" would go
      tf.tf_r11 = 0x3202;                               // with IOPL 3
      tf.tf_rdi = static_cast<int64_t>(L::kStubVa + offset);
      //      0: ff e7                 jmp *%rdi
      ASSERT_NO_FATAL_FAILURE(Run({0xff, 0xe7, 0x0f, 0x0b}, tf));
      EXPECT_NE(0, tf.tf_trapno) << "offset " << offset;
      EXPECT_EQ(0, tf.tf_rflags & 0x3000) << "IOPL stays 0";
    }
  }
  ExpectStillWorks("jumps into the stub");
}

TEST_F(KvmHostile, IoplCannotBeRaised) {
  // pushfq; orq $0x3000,(%rsp); popfq; out %al,(%dx); ud2
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rdx = 0x80;
  ASSERT_NO_FATAL_FAILURE(
      Run({0x9c, 0x48, 0x81, 0x0c, 0x24, 0x00, 0x30, 0x00, 0x00, 0x9d, 0xee, 0x0f, 0x0b}, tf));
  EXPECT_EQ(T_PROTFLT, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(0, tf.tf_rflags & 0x3000);
  ExpectStillWorks("popfq with IOPL 3");
}

// Large mappings get their page-table entries 2 MiB at a time, on the first fault there; a
// MAP_FIXED replacement in the middle of one keeps both sides.
TEST_F(KvmHostile, LargeMappingsFillInOnFirstTouchAndSplitCleanly) {
  constexpr uint64_t kBig = 0x40000000;
  constexpr uint64_t kBigLen = 256ULL << 20;  // beyond the eager limit (64 MiB)
  ASSERT_EQ(reinterpret_cast<void*>(kBig),
            vmspace_mmap(&id_, reinterpret_cast<void*>(kBig), kBigLen, kRw, kAnonFixed, -1, 0));
  //      0: 48 89 07              mov %rax,(%rdi)
  //      3: 0f 05                 syscall
  //      5: 0f 0b                 ud2
  const std::vector<unsigned char> store = {0x48, 0x89, 0x07, 0x0f, 0x05, 0x0f, 0x0b};
  const uint64_t offsets[] = {0, 4096, (2ULL << 20) + 8, kBigLen / 2, kBigLen - 8};
  for (uint64_t off : offsets) {
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rdi = static_cast<int64_t>(kBig + off);
    tf.tf_rax = static_cast<int64_t>(0x1000 + off);
    ASSERT_NO_FATAL_FAILURE(Run(store, tf));
    ASSERT_EQ(T_FAST_SYSCALL, tf.tf_trapno) << "offset " << off << ": " << Describe(tf);
  }
  for (uint64_t off : offsets) {
    uint64_t value = 0;
    ASSERT_EQ(8, vmspace_pread(&id_, &value, 8, 0, kBig + off)) << off;
    EXPECT_EQ(0x1000 + off, value) << off;
  }
  // Replace 4 KiB in the middle: zero there, the neighbours keep their data.
  const uint64_t mid = kBig + kBigLen / 2;
  ASSERT_EQ(reinterpret_cast<void*>(mid),
            vmspace_mmap(&id_, reinterpret_cast<void*>(mid), 4096, kRw, kAnonFixed, -1, 0));
  uint64_t value = 1;
  ASSERT_EQ(8, vmspace_pread(&id_, &value, 8, 0, mid));
  EXPECT_EQ(0u, value);
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(mid);
  tf.tf_rax = 77;
  ASSERT_NO_FATAL_FAILURE(Run(store, tf));
  ASSERT_EQ(T_FAST_SYSCALL, tf.tf_trapno) << Describe(tf);
  ASSERT_EQ(8, vmspace_pread(&id_, &value, 8, 0, mid));
  EXPECT_EQ(77u, value);
  ASSERT_EQ(8, vmspace_pread(&id_, &value, 8, 0, kBig + kBigLen - 8));
  EXPECT_EQ(0x1000 + kBigLen - 8, value);
  // Unmapping the rest of the big mapping around the replacement leaves it working.
  EXPECT_EQ(0, vmspace_munmap(&id_, reinterpret_cast<void*>(kBig), kBigLen / 2));
  EXPECT_EQ(0, vmspace_munmap(&id_, reinterpret_cast<void*>(mid + 4096), kBigLen / 2 - 4096));
  ASSERT_EQ(8, vmspace_pread(&id_, &value, 8, 0, mid));
  EXPECT_EQ(77u, value);
  tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(kBig);
  ASSERT_NO_FATAL_FAILURE(Run(store, tf));
  EXPECT_EQ(T_PAGEFLT, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(kBig), tf.tf_addr);
  ExpectStillWorks("large mappings");
}

// A MAP_VPAGETABLE object that grows after it was mapped: pages beyond its old end work once
// the vkernel's tables point there.
TEST_F(KvmHostile, VpagetableObjectsMayGrow) {
  const int phys = static_cast<int>(syscall(SYS_memfd_create, "grow", 0));
  ASSERT_LE(0, phys);
  ASSERT_EQ(0, ftruncate(phys, 1 << 20));
  constexpr uint64_t kRegion = 0x40000000;
  ASSERT_EQ(reinterpret_cast<void*>(kRegion),
            vmspace_mmap(&id_, reinterpret_cast<void*>(kRegion), 1 << 21, kRw,
                         MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE, phys, 0));
  ASSERT_EQ(0, ftruncate(phys, 4 << 20));
  // Four tables in the first 16 KiB, page 0 of the region at object offset 3 MiB.
  uint64_t tables[4 * 512] = {};
  tables[0] = 0x1000 | VPTE_V | VPTE_RW | VPTE_U;
  tables[512] = 0x2000 | VPTE_V | VPTE_RW | VPTE_U;
  tables[1024] = 0x3000 | VPTE_V | VPTE_RW | VPTE_U;
  tables[1536] = (3ULL << 20) | VPTE_V | VPTE_RW | VPTE_U;
  ASSERT_EQ(static_cast<ssize_t>(sizeof(tables)), pwrite(phys, tables, sizeof(tables), 0));
  const uint64_t marker = 0x5a5a5a5a12345678;
  ASSERT_EQ(8, pwrite(phys, &marker, 8, 3 << 20));
  ASSERT_EQ(0, vmspace_mcontrol(&id_, reinterpret_cast<void*>(kRegion), 1 << 21, MADV_SETMAP,
                                VPTE_V | VPTE_RW));
  //      0: 48 8b 07              mov (%rdi),%rax
  //      3: 0f 05                 syscall
  //      5: 0f 0b                 ud2
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(kRegion);
  ASSERT_NO_FATAL_FAILURE(Run({0x48, 0x8b, 0x07, 0x0f, 0x05, 0x0f, 0x0b}, tf));
  ASSERT_EQ(T_FAST_SYSCALL, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(marker), tf.tf_rax);
  close(phys);
}

std::atomic<int> g_usr2{0};
void CountUsr2(int) { g_usr2.fetch_add(1, std::memory_order_relaxed); }

// Signals that land while a vCPU is anywhere on the way out (the syscall stub, a vector stub,
// the resume path) must neither hang RUN nor change what it reports: a storm of SIGUSR2 at
// the RUN thread while the guest makes system calls, then while it faults.
TEST_F(KvmHostile, SignalStormsDuringExitsNeverHangOrMisreport) {
  struct sigaction sa = {}, old = {};
  sa.sa_handler = CountUsr2;
  sigaction(SIGUSR2, &sa, &old);
  g_usr2 = 0;
  const pthread_t runner = pthread_self();
  std::atomic<bool> stop{false};
  std::thread storm([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      pthread_kill(runner, SIGUSR2);
      sched_yield();
    }
  });
  //      0: 48 ff c3              inc %rbx
  //      3: 0f 05                 syscall
  //      5: eb f9                 jmp 0
  const std::vector<unsigned char> loop = {0x48, 0xff, 0xc3, 0x0f, 0x05, 0xeb, 0xf9};
  ASSERT_EQ(static_cast<ssize_t>(loop.size()),
            vmspace_pwrite(&id_, loop.data(), loop.size(), 0, kCodeAddr));
  trapframe tf = Frame(kCodeAddr);
  vextframe vf = {};
  int syscalls = 0, interrupts = 0;
  std::string failure;
  // Exactly one `inc` runs between two system calls, however many RUNs the signals end in
  // between (one may end between the `inc` and the `syscall`: not RUN by RUN).
  int64_t rbx_at_last_syscall = tf.tf_rbx;
  for (int i = 0; i < 3000 && failure.empty(); ++i) {
    if (vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf) != 0) {
      failure = std::string("RUN: ") + strerror(errno);
    } else if (tf.tf_trapno == T_FAST_SYSCALL) {
      ++syscalls;
      if (tf.tf_rip != static_cast<int64_t>(kCodeAddr + 5) ||
          tf.tf_rbx != rbx_at_last_syscall + 1) {
        failure = "system call reported at " + Describe(tf) + " with rbx " +
                  std::to_string(tf.tf_rbx) + " after " + std::to_string(rbx_at_last_syscall);
      }
      rbx_at_last_syscall = tf.tf_rbx;
      tf.tf_rax = tf.tf_rbx;
    } else if (tf.tf_trapno == 0) {
      ++interrupts;
      if (tf.tf_rip < static_cast<int64_t>(kCodeAddr) ||
          tf.tf_rip > static_cast<int64_t>(kCodeAddr + 5)) {
        failure = "interrupted outside the guest's code: " + Describe(tf);
      }
    } else {
      failure = "unexpected " + Describe(tf);
    }
  }
  // The same for page faults (an unmapped address, re-taken every RUN).
  //      0: 8b 03                 mov (%rbx),%eax
  //      2: eb fc                 jmp 0
  const std::vector<unsigned char> fault = {0x8b, 0x03, 0xeb, 0xfc};
  ASSERT_EQ(4, vmspace_pwrite(&id_, fault.data(), fault.size(), 0, kCodeAddr));
  tf = Frame(kCodeAddr);
  tf.tf_rbx = 0x10000000;
  int faults = 0;
  for (int i = 0; i < 3000 && failure.empty(); ++i) {
    if (vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf) != 0) {
      failure = std::string("RUN: ") + strerror(errno);
    } else if (tf.tf_trapno == T_PAGEFLT) {
      ++faults;
      if (tf.tf_rip != static_cast<int64_t>(kCodeAddr) || tf.tf_addr != 0x10000000) {
        failure = "page fault reported at " + Describe(tf);
      }
    } else if (tf.tf_trapno == 0) {
      ++interrupts;
      if (tf.tf_rip != static_cast<int64_t>(kCodeAddr) &&
          tf.tf_rip != static_cast<int64_t>(kCodeAddr + 2)) {
        failure = "interrupted outside the guest's code: " + Describe(tf);
      }
    } else {
      failure = "unexpected " + Describe(tf);
    }
  }
  stop = true;
  storm.join();
  sigaction(SIGUSR2, &old, nullptr);
  EXPECT_EQ("", failure);
  EXPECT_GT(g_usr2.load(), 0);  // (how many RUNs each signal ended depends on the load)
  printf("%d system calls, %d faults, %d interrupted RUNs, %d signals\n", syscalls, faults,
         interrupts, g_usr2.load());
  ExpectStillWorks("a signal storm");
}

// Without /dev/kvm the backend is unavailable with a reason naming it, vmspace_create refuses
// it, and the default backend still runs guests. A child hides /dev behind an empty tmpfs in
// a mount namespace of its own and runs a fresh process (kvm_unavailable_helper.c), since
// this one has already looked at /dev/kvm.
TEST(KvmUnavailable, WithoutDevKvmTheBackendSaysWhyAndTheRestWorks) {
  int out[2];
  ASSERT_EQ(0, pipe(out));
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    if (unshare(CLONE_NEWNS) != 0) {
      printf("SKIP unshare(CLONE_NEWNS): %s\n", strerror(errno));
      _exit(77);
    }
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        mount("tmpfs", "/dev", "tmpfs", 0, nullptr) != 0) {
      printf("SKIP mounting a tmpfs over /dev: %s\n", strerror(errno));
      _exit(77);
    }
    execl(VKRT_KVM_UNAVAILABLE_HELPER, VKRT_KVM_UNAVAILABLE_HELPER, nullptr);
    printf("execl(%s): %s\n", VKRT_KVM_UNAVAILABLE_HELPER, strerror(errno));
    _exit(2);
  }
  close(out[1]);
  std::string output;
  char buf[512];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) output.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  ASSERT_EQ(child, waitpid(child, &status, 0));
  ASSERT_TRUE(WIFEXITED(status)) << output;
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "no mount namespace here: " << output;
  EXPECT_EQ(0, WEXITSTATUS(status)) << output;
}

}  // namespace
