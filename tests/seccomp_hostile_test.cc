// A hostile guest against the seccomp backend's stub (docs/security.md): it jumps to every
// system call instruction of the stub code with crafted registers, writes every stub page it
// can reach, and blocks the stub's kick signal with a forged signal frame. Whatever it does,
// RUN returns (a trap, an interrupt, or an error saying the stub died), and the host shows
// no effect: no file created, no signal sent, no process created, no memory object mapped.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <vkrt/vmspace.h>

#include "arch/x86_64/seccomp_layout.h"
#include "test_support.h"

namespace {

using vkrt_test::UnavailableReason;
using vkrt_test::Watchdog;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kCodeAddr = 0x400000;
constexpr uint64_t kDataAddr = 0x500000;
constexpr uint64_t kProbeAddr = 0x600000;  // where a forged mmap would put an object page
constexpr uint64_t kStackBase = 0x7000000;
constexpr uint64_t kStackTop = kStackBase + 16 * kPage;
constexpr int kRw = PROT_READ | PROT_WRITE;
constexpr int kRwx = kRw | PROT_EXEC;
constexpr int kAnonFixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;

// rep stosq (rdi = start, rcx = quadwords, rax = pattern); syscall; ud2.
//      0: f3 48 ab               rep stos %rax,%es:(%rdi)
//      3: 0f 05                  syscall
//      5: 0f 0b                  ud2
const unsigned char kGuestScribble[] = {0xf3, 0x48, 0xab, 0x0f, 0x05, 0x0f, 0x0b};
// A loop that never traps.
//      0: eb fe                  jmp    0
const unsigned char kGuestSpin[] = {0xeb, 0xfe};

std::atomic<int> g_sigusr2{0};
void CountSigusr2(int) { g_sigusr2.fetch_add(1); }

std::set<pid_t> ChildrenOf(pid_t parent) {
  std::set<pid_t> out;
  std::ifstream f("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) +
                  "/children");
  pid_t pid;
  while (f >> pid) out.insert(pid);
  return out;
}

class SeccompHostile : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = UnavailableReason(VKRT_TYPE_SECCOMP);
    if (!why.empty()) GTEST_SKIP() << why;
    watchdog_ = std::make_unique<Watchdog>(
        ::testing::UnitTest::GetInstance()->current_test_info()->name(),
        std::chrono::seconds(600));
    struct sigaction sa = {};
    sa.sa_handler = CountSigusr2;
    sigaction(SIGUSR2, &sa, &old_usr2_);
    g_sigusr2 = 0;
    snprintf(path_, sizeof(path_), "/tmp/vkrt-hostile-%d", getpid());
    unlink(path_);
  }
  void TearDown() override {
    sigaction(SIGUSR2, &old_usr2_, nullptr);
    unlink(path_);
  }

  // A fresh vmspace with code, data (holding the path), a stack, and one MAP_VPAGETABLE
  // region (so the stub holds a memory object). Returns the stub's pid.
  pid_t Create(void* id) {
    const std::set<pid_t> before = ChildrenOf(getpid());
    EXPECT_EQ(0, vmspace_create(id, VKRT_TYPE_SECCOMP, nullptr)) << strerror(errno);
    const std::set<pid_t> after = ChildrenOf(getpid());
    pid_t stub = -1;
    for (pid_t p : after) {
      if (!before.count(p)) stub = p;
    }
    EXPECT_NE(-1, stub);
    EXPECT_EQ(reinterpret_cast<void*>(kCodeAddr),
              vmspace_mmap(id, reinterpret_cast<void*>(kCodeAddr), kPage, kRwx, kAnonFixed, -1, 0));
    EXPECT_EQ(reinterpret_cast<void*>(kDataAddr),
              vmspace_mmap(id, reinterpret_cast<void*>(kDataAddr), kPage, kRw, kAnonFixed, -1, 0));
    EXPECT_EQ(reinterpret_cast<void*>(kStackBase),
              vmspace_mmap(id, reinterpret_cast<void*>(kStackBase), 16 * kPage, kRw, kAnonFixed,
                           -1, 0));
    EXPECT_EQ(static_cast<ssize_t>(strlen(path_) + 1),
              vmspace_pwrite(id, path_, strlen(path_) + 1, 0, kDataAddr));
    const int memfd = static_cast<int>(syscall(SYS_memfd_create, "vkrt-hostile", 0));
    EXPECT_LE(0, memfd);
    EXPECT_EQ(0, ftruncate(memfd, 16 * kPage));
    EXPECT_EQ(reinterpret_cast<void*>(0x800000),
              vmspace_mmap(id, reinterpret_cast<void*>(0x800000), 16 * kPage, kRw,
                           MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE, memfd, 0));
    close(memfd);
    return stub;
  }

  // The stub's code, read from outside (the test process is the stub's parent).
  static std::vector<unsigned char> StubCode(pid_t stub) {
    std::vector<unsigned char> code(VKRT_STUB_CODE_SIZE);
    struct iovec local = {code.data(), code.size()};
    struct iovec remote = {reinterpret_cast<void*>(VKRT_SC_CODE), code.size()};
    if (process_vm_readv(stub, &local, 1, &remote, 1, 0) != static_cast<ssize_t>(code.size())) {
      return {};
    }
    return code;
  }

  // No host effect of the attempts so far.
  void ExpectNoHostEffect(pid_t stub, const std::string& what) {
    EXPECT_NE(0, access(path_, F_OK)) << what << ": the guest created " << path_;
    EXPECT_EQ(0, g_sigusr2.load()) << what << ": the guest signalled the vkernel";
    EXPECT_TRUE(ChildrenOf(stub).empty()) << what << ": the stub has a child process";
    char byte;
    struct iovec local = {&byte, 1};
    struct iovec remote = {reinterpret_cast<void*>(kProbeAddr), 1};
    EXPECT_EQ(-1, process_vm_readv(stub, &local, 1, &remote, 1, 0))
        << what << ": something is mapped at " << std::hex << kProbeAddr;
  }

  char path_[64];
  struct sigaction old_usr2_ = {};
  std::unique_ptr<Watchdog> watchdog_;
};

trapframe FrameAt(uint64_t rip) {
  trapframe tf = {};
  tf.tf_rip = static_cast<int64_t>(rip);
  tf.tf_rsp = static_cast<int64_t>(kStackTop - 64);
  tf.tf_rflags = 0x202;
  tf.tf_cs = 0x33;
  tf.tf_ss = 0x2b;
  return tf;
}

TEST_F(SeccompHostile, StubSyscallInstructionsWithCraftedRegistersMakeNoHostCall) {
  static char probe_id;
  const pid_t probe_stub = Create(&probe_id);
  ASSERT_FALSE(HasFailure());
  const std::vector<unsigned char> code = StubCode(probe_stub);
  ASSERT_FALSE(code.empty()) << strerror(errno);
  vmspace_destroy(&probe_id);
  std::vector<uint64_t> sites;
  for (size_t i = 0; i + 1 < code.size(); ++i) {
    if (code[i] == 0x0f && code[i + 1] == 0x05) sites.push_back(VKRT_SC_CODE + i);
  }
  ASSERT_GE(sites.size(), 10u) << "the stub code should hold its system call instructions";

  struct Payload {
    const char* name;
    int64_t rax, rdi, rsi, rdx, r10, r8, r9;
  };
  const Payload payloads[] = {
      {"openat(O_CREAT)", SYS_openat, AT_FDCWD, static_cast<int64_t>(kDataAddr),
       O_CREAT | O_WRONLY, 0600, 0, 0},
      {"kill(vkernel, SIGUSR2)", SYS_kill, getpid(), SIGUSR2, 0, 0, 0, 0},
      {"clone(SIGCHLD)", SYS_clone, SIGCHLD, 0, 0, 0, 0, 0},
      // The stub's first memory object is descriptor 2 (seccomp_layout.h).
      {"mmap(object)", SYS_mmap, static_cast<int64_t>(kProbeAddr), static_cast<int64_t>(kPage),
       kRw, MAP_SHARED | MAP_FIXED, SC_FD_FIRST_OBJECT, 0},
  };
  int traps = 0, interrupts = 0, deaths = 0;
  for (uint64_t site : sites) {
    for (const Payload& p : payloads) {
      static char id;
      const pid_t stub = Create(&id);
      ASSERT_FALSE(HasFailure());
      trapframe tf = FrameAt(site);
      tf.tf_rax = p.rax;
      tf.tf_rdi = p.rdi;
      tf.tf_rsi = p.rsi;
      tf.tf_rdx = p.rdx;
      tf.tf_r10 = p.r10;
      tf.tf_r8 = p.r8;
      tf.tf_r9 = p.r9;
      vextframe vf = {};
      char what[128];
      snprintf(what, sizeof(what), "%s at stub+%#lx", p.name,
               static_cast<unsigned long>(site - VKRT_SC_CODE));
      // A guest that ends up waiting inside the stub code is ended by the timeout.
      const int rc = vkrt_vmspace_run(&id, &tf, &vf, 200'000'000);
      if (rc == 0) {
        ++(tf.tf_trapno == 0 ? interrupts : traps);
      } else {
        EXPECT_EQ(EFAULT, errno) << what << ": " << strerror(errno);
        ++deaths;
      }
      ExpectNoHostEffect(stub, what);
      EXPECT_EQ(0, vmspace_destroy(&id)) << what << ": " << strerror(errno);
      if (HasFailure()) return;
    }
  }
  printf("%zu sites x %zu payloads: %d traps, %d interrupts, %d stub deaths\n", sites.size(),
         std::size(payloads), traps, interrupts, deaths);
  EXPECT_GT(deaths, 0) << "no crafted call was refused: the filter cannot be working";
}

TEST_F(SeccompHostile, GuestScribblingOverEveryWritableStubPageStaysContained) {
  static char id;
  const pid_t stub = Create(&id);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(static_cast<ssize_t>(sizeof(kGuestScribble)),
            vmspace_pwrite(&id, kGuestScribble, sizeof(kGuestScribble), 0, kCodeAddr));
  // Every writable stub range: the server's scratch page, then all slots (mailboxes, signal
  // stacks, the server's mailbox with its results), with two patterns.
  struct Range {
    uint64_t start, end;
  };
  const Range ranges[] = {{VKRT_SC_SCRATCH, VKRT_SC_SCRATCH + kPage},
                          {VKRT_SC_RW, VKRT_SC_RW + VKRT_SC_RW_SIZE}};
  for (uint64_t pattern : {0x4141414141414141ULL, 0ULL, 0x00007FFFFFE20000ULL}) {
    for (const Range& r : ranges) {
      trapframe tf = FrameAt(kCodeAddr);
      tf.tf_rdi = static_cast<int64_t>(r.start);
      tf.tf_rcx = static_cast<int64_t>((r.end - r.start) / 8);
      tf.tf_rax = static_cast<int64_t>(pattern);
      vextframe vf = {};
      const int rc = vkrt_vmspace_run(&id, &tf, &vf, 2'000'000'000);
      if (rc != 0) {
        // Dying is an acceptable answer to a guest that wrecked its own stub; a vkernel hang
        // or crash is not.
        EXPECT_EQ(EFAULT, errno) << strerror(errno);
        ExpectNoHostEffect(stub, "scribble");
        vmspace_destroy(&id);
        return;
      }
      // The handler rewrites what it needs: the system call after the scribble is reported.
      EXPECT_EQ(T_FAST_SYSCALL, tf.tf_trapno) << "trapno " << tf.tf_trapno;
      ExpectNoHostEffect(stub, "scribble");
    }
  }
  // The address space still works: memory changes go through the server.
  EXPECT_EQ(reinterpret_cast<void*>(kProbeAddr + 16 * kPage),
            vmspace_mmap(&id, reinterpret_cast<void*>(kProbeAddr + 16 * kPage), kPage, kRw,
                         kAnonFixed, -1, 0))
      << strerror(errno);
  EXPECT_EQ(0, vmspace_destroy(&id));
}

TEST_F(SeccompHostile, StubCodeFilterAndCommandPagesAreNotWritable) {
  static char id;
  const pid_t stub = Create(&id);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(static_cast<ssize_t>(sizeof(kGuestScribble)),
            vmspace_pwrite(&id, kGuestScribble, sizeof(kGuestScribble), 0, kCodeAddr));
  for (uint64_t target : {uint64_t{VKRT_SC_CODE}, uint64_t{VKRT_SC_FILTER},
                          uint64_t{VKRT_SC_RO}, uint64_t{VKRT_SC_RO + VKRT_SC_SERVER_SLOT * kPage}}) {
    trapframe tf = FrameAt(kCodeAddr);
    tf.tf_rdi = static_cast<int64_t>(target);
    tf.tf_rcx = 1;
    tf.tf_rax = 0x4141414141414141;
    vextframe vf = {};
    ASSERT_EQ(0, vkrt_vmspace_run(&id, &tf, &vf, 2'000'000'000)) << strerror(errno);
    EXPECT_EQ(T_PAGEFLT, tf.tf_trapno) << std::hex << target;
    EXPECT_EQ(static_cast<int64_t>(target), tf.tf_addr);
    EXPECT_EQ(PGEX_P | PGEX_W | PGEX_U, tf.tf_err & (PGEX_P | PGEX_W | PGEX_U));
  }
  ExpectNoHostEffect(stub, "writes to read-only stub pages");
  EXPECT_EQ(0, vmspace_destroy(&id));
}

TEST_F(SeccompHostile, GuestThatBlocksTheKickIsStoppedAnyway) {
  static char id;
  const pid_t stub = Create(&id);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(static_cast<ssize_t>(sizeof(kGuestSpin)),
            vmspace_pwrite(&id, kGuestSpin, sizeof(kGuestSpin), 0, kCodeAddr));
  const std::vector<unsigned char> code = StubCode(stub);
  ASSERT_FALSE(code.empty());
  // The stub's restorer: mov $15, %eax; syscall (rt_sigreturn, which the filter allows).
  const unsigned char restorer[] = {0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};
  uint64_t restorer_addr = 0;
  for (size_t i = 0; i + sizeof(restorer) <= code.size(); ++i) {
    if (memcmp(&code[i], restorer, sizeof(restorer)) == 0) restorer_addr = VKRT_SC_CODE + i;
  }
  ASSERT_NE(0u, restorer_addr);
  // A forged ucontext at kDataAddr: resume at the spin loop with every signal blocked.
  uint64_t uc[64] = {};
  uc[2 + 1] = SS_DISABLE;             // uc_stack.ss_flags
  uint64_t* gregs = &uc[5];           // uc_mcontext at byte 40
  gregs[15] = kStackTop - 64;         // rsp
  gregs[16] = kCodeAddr;              // rip
  gregs[17] = 0x202;                  // eflags
  gregs[18] = 0x33 | (uint64_t{0x2b} << 48);  // cs, ss
  uc[37] = ~uint64_t{0};              // uc_sigmask at byte 296
  ASSERT_EQ(static_cast<ssize_t>(sizeof(uc)), vmspace_pwrite(&id, uc, sizeof(uc), 0, kDataAddr));
  trapframe tf = FrameAt(restorer_addr);
  tf.tf_rsp = static_cast<int64_t>(kDataAddr);
  vextframe vf = {};
  const auto start = std::chrono::steady_clock::now();
  const int rc = vkrt_vmspace_run(&id, &tf, &vf, 100'000'000);
  const int err = errno;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The kick cannot reach it; the runtime gives it a grace period, then kills the stub.
  EXPECT_EQ(-1, rc) << "trapno " << tf.tf_trapno;
  EXPECT_EQ(EFAULT, err) << strerror(err);
  printf("RUN ended after %.2f s\n", seconds);
  ExpectNoHostEffect(stub, "blocked kick");
  EXPECT_EQ(0, vmspace_destroy(&id));
}

}  // namespace
