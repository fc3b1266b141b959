// MAP_VPAGETABLE on the test process's own address space (SPEC §4, last bullet): mmap with
// MAP_VPAGETABLE and mcontrol(MADV_SETMAP / MADV_INVAL) on the caller's memory, faults
// resolved in-process by vkrt's SIGSEGV handler, unresolvable ones delivered to the program's
// own handler. Linked with libvkrt like a DragonFly-style vkernel; calls libc's mmap/sigaction,
// which vkrt interposes.
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "test_support.h"
#include "vpt_tables.h"

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kLen = 1ULL << 30;  // 262144 pages
using vkrt_test::kVpteUser;

using vkrt_test::PhysMem;

// A VPAGETABLE region of this process over `pm`, unmapped at scope exit.
class OwnRegion {
 public:
  explicit OwnRegion(PhysMem& pm, bool setmap = true) {
    void* p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_VPAGETABLE, pm.fd(), 0);
    err_ = errno;
    if (p == MAP_FAILED) return;
    base_ = static_cast<unsigned char*>(p);
    if (setmap && mcontrol(base_, kLen, MADV_SETMAP, static_cast<off_t>(pm.root())) != 0) {
      err_ = errno;
    }
  }
  ~OwnRegion() {
    if (base_ != nullptr) munmap(base_, kLen);
  }
  bool ok() const { return base_ != nullptr; }
  int err() const { return err_; }
  unsigned char* base() const { return base_; }
  volatile uint64_t* Word(uint64_t index, uint64_t byte = 0) const {
    return reinterpret_cast<volatile uint64_t*>(base_ + index * kPage + byte);
  }
  uint64_t addr(uint64_t index) const { return reinterpret_cast<uint64_t>(base_) + index * kPage; }

 private:
  unsigned char* base_ = nullptr;
  int err_ = 0;
};

// The program's SIGSEGV handler: records the fault and jumps back to the test.
sigjmp_buf g_jump;
std::atomic<uint64_t> g_fault_addr{0};
std::atomic<int> g_faults{0};
void ProgramHandler(int, siginfo_t* si, void*) {
  g_fault_addr.store(reinterpret_cast<uint64_t>(si->si_addr));
  g_faults.fetch_add(1);
  siglongjmp(g_jump, 1);
}

class ScopedProgramHandler {
 public:
  ScopedProgramHandler() {
    struct sigaction sa = {};
    sa.sa_sigaction = ProgramHandler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    EXPECT_EQ(0, sigaction(SIGSEGV, &sa, &old_));
  }
  ~ScopedProgramHandler() { sigaction(SIGSEGV, &old_, nullptr); }

 private:
  struct sigaction old_ = {};
};

// Reads `*p`; returns true, or false if the program's handler caught a SIGSEGV.
bool TryRead(volatile uint64_t* p, uint64_t& value) {
  if (sigsetjmp(g_jump, 1) != 0) return false;
  value = *p;
  return true;
}
bool TryWrite(volatile uint64_t* p, uint64_t value) {
  if (sigsetjmp(g_jump, 1) != 0) return false;
  *p = value;
  return true;
}

TEST(OwnSpace, ReadsAndWritesGoThroughTheTables) {
  PhysMem pm(8 << 20);
  ASSERT_TRUE(pm.ok());
  OwnRegion region(pm);
  ASSERT_TRUE(region.ok()) << strerror(region.err());
  const uint64_t frame = pm.NewFrame();
  pm.Store(frame + 8, 0x1234);
  pm.Map(3, frame);
  EXPECT_EQ(0x1234u, *region.Word(3, 8));
  EXPECT_TRUE(pm.Entry(3) & VPTE_A);
  EXPECT_FALSE(pm.Entry(3) & VPTE_M);
  *region.Word(3, 16) = 0x5678;  // installed read-only: faults again, sets M
  EXPECT_EQ(0x5678u, pm.Load(frame + 16));
  for (int level = 0; level < 4; ++level) {
    EXPECT_TRUE(pm.Entry(3, level) & VPTE_M) << "level " << level;
  }
  pm.Store(frame + 24, 99);
  EXPECT_EQ(99u, *region.Word(3, 24));
}

TEST(OwnSpace, UnresolvableFaultsReachTheProgramsHandler) {
  PhysMem pm(8 << 20);
  ASSERT_TRUE(pm.ok());
  OwnRegion region(pm);
  ASSERT_TRUE(region.ok()) << strerror(region.err());
  ScopedProgramHandler handler;  // installed after vkrt's: vkrt keeps the first turn
  struct sigaction seen = {};
  ASSERT_EQ(0, sigaction(SIGSEGV, nullptr, &seen));
  EXPECT_EQ(reinterpret_cast<void*>(ProgramHandler), reinterpret_cast<void*>(seen.sa_sigaction));

  uint64_t v = 0;
  const int before = g_faults.load();
  EXPECT_FALSE(TryRead(region.Word(7, 0x40), v));
  EXPECT_EQ(region.addr(7) + 0x40, g_fault_addr.load());
  // Read-only entry: a read works, a write reaches the program.
  const uint64_t ro = pm.NewFrame();
  pm.Store(ro, 5);
  pm.Map(8, ro, VPTE_V | VPTE_U);
  EXPECT_TRUE(TryRead(region.Word(8), v));
  EXPECT_EQ(5u, v);
  EXPECT_FALSE(TryWrite(region.Word(8, 8), 1));
  EXPECT_EQ(region.addr(8) + 8, g_fault_addr.load());
  EXPECT_EQ(0u, pm.Load(ro + 8));
  // An ordinary bad pointer outside any region too.
  EXPECT_FALSE(TryRead(reinterpret_cast<volatile uint64_t*>(16), v));
  EXPECT_EQ(16u, g_fault_addr.load());
  EXPECT_EQ(before + 3, g_faults.load());
}

TEST(OwnSpace, InvalAndSetMapChangeWhatTheProgramSees) {
  PhysMem pm(8 << 20);
  ASSERT_TRUE(pm.ok());
  OwnRegion region(pm);
  ASSERT_TRUE(region.ok()) << strerror(region.err());
  ScopedProgramHandler handler;
  const uint64_t a = pm.NewFrame(), b = pm.NewFrame();
  pm.Store(a, 1);
  pm.Store(b, 2);
  pm.Map(0, a);
  EXPECT_EQ(1u, *region.Word(0));
  pm.Map(0, b);
  ASSERT_EQ(0, mcontrol(region.base(), kPage, MADV_INVAL, 0));
  EXPECT_EQ(2u, *region.Word(0));
  pm.Map(0, 0, 0);
  ASSERT_EQ(0, mcontrol(region.base(), 2 << 20, MADV_INVAL, 0));
  uint64_t v = 0;
  EXPECT_FALSE(TryRead(region.Word(0), v));
  pm.NewTop();
  const uint64_t c = pm.NewFrame();
  pm.Store(c, 3);
  pm.Map(0, c);
  ASSERT_EQ(0, mcontrol(region.base(), kLen, MADV_SETMAP, static_cast<off_t>(pm.root())));
  EXPECT_EQ(3u, *region.Word(0));
}

TEST(OwnSpace, ArgumentChecksAndSetMapRules) {
  PhysMem pm(1 << 20);
  ASSERT_TRUE(pm.ok());
  errno = 0;
  EXPECT_EQ(MAP_FAILED, mmap(nullptr, kPage, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_VPAGETABLE, pm.fd(), 0));
  EXPECT_EQ(EINVAL, errno);
  errno = 0;
  EXPECT_EQ(MAP_FAILED, mmap(nullptr, kPage, PROT_READ, MAP_SHARED | MAP_VPAGETABLE, pm.fd(), 0));
  EXPECT_EQ(EINVAL, errno);
  errno = 0;
  EXPECT_EQ(MAP_FAILED, mmap(nullptr, kPage, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS | MAP_VPAGETABLE, -1, 0));
  EXPECT_EQ(EINVAL, errno);
  const int ro = open(("/proc/self/fd/" + std::to_string(pm.fd())).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(ro, 0);
  errno = 0;
  EXPECT_EQ(MAP_FAILED, mmap(nullptr, kPage, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_VPAGETABLE, ro, 0));
  EXPECT_EQ(EACCES, errno);
  close(ro);
  // SETMAP: EINVAL on ordinary memory, nothing to do on a hole.
  void* plain = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(MAP_FAILED, plain);
  errno = 0;
  EXPECT_EQ(-1, mcontrol(plain, kPage, MADV_SETMAP, static_cast<off_t>(pm.root())));
  EXPECT_EQ(EINVAL, errno);
  ASSERT_EQ(0, munmap(plain, kPage));
  EXPECT_EQ(0, mcontrol(plain, kPage, MADV_SETMAP, static_cast<off_t>(pm.root())));
  EXPECT_EQ(0, mcontrol(plain, kPage, MADV_INVAL, 0));
}

TEST(OwnSpace, UnhandledFaultKillsWithSigsegvLikeTheKernel) {
  PhysMem pm(1 << 20);
  ASSERT_TRUE(pm.ok());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    signal(SIGSEGV, SIG_DFL);
    void* p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_VPAGETABLE, pm.fd(), 0);
    if (p == MAP_FAILED) _exit(2);
    *static_cast<volatile uint64_t*>(p) = 1;  // no SETMAP: not resolvable
    _exit(3);
  }
  int status = 0;
  ASSERT_EQ(child, waitpid(child, &status, 0));
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(SIGSEGV, WTERMSIG(status));
}

TEST(OwnSpace, TwoHundredThousandPagesKeepWorking) {
  constexpr uint64_t kPages = 200000;
  constexpr uint64_t kFrames = 1021;
  PhysMem pm((kFrames + kPages / 512 + 16) * kPage);
  ASSERT_TRUE(pm.ok());
  OwnRegion region(pm);
  ASSERT_TRUE(region.ok()) << strerror(region.err());
  std::vector<uint64_t> frames(kFrames);
  for (uint64_t f = 0; f < kFrames; ++f) {
    frames[f] = pm.NewFrame();
    pm.Store(frames[f], f + 1);
  }
  uint64_t expected = 0;
  for (uint64_t i = 0; i < kPages; ++i) {
    pm.Map(i, frames[(i * 7) % kFrames]);
    expected += (i * 7) % kFrames + 1;
  }
  uint64_t sum = 0;
  for (uint64_t i = 0; i < kPages; ++i) sum += *region.Word(i);
  EXPECT_EQ(expected, sum);
}

// The TLB-shootdown property in the own space: readers never see a tag older than the last
// event whose INVAL had returned before they looked.
TEST(OwnSpace, InvalRacingReadersNeverLeavesStaleTranslations) {
  PhysMem pm(8 << 20);
  ASSERT_TRUE(pm.ok());
  OwnRegion region(pm);
  ASSERT_TRUE(region.ok()) << strerror(region.err());
  constexpr int kPool = 64;
  std::vector<uint64_t> frames(kPool);
  for (auto& f : frames) f = pm.NewFrame();
  const uint64_t entry = pm.EntryOffset(0);
  pm.Store(frames[0], 0);
  pm.Store(entry, frames[0] | kVpteUser);
  std::atomic<uint64_t> completed{0};
  std::atomic<bool> done{false};
  std::atomic<int> stale{0};
  std::atomic<uint64_t> reads{0};
  auto reader = [&] {
    while (!done.load()) {
      const uint64_t floor = completed.load();
      const uint64_t tag = *region.Word(0);
      if (tag < floor) stale.fetch_add(1);
      reads.fetch_add(1);
    }
  };
  // (Readers must not block SIGSEGV: the resolution runs in their SIGSEGV handler.)
  std::thread r1(reader);
  std::thread r2(reader);
  for (uint64_t k = 1; k <= 20000; ++k) {
    const uint64_t f = frames[k % kPool];
    pm.Store(f, k);
    pm.Store(entry, f | kVpteUser);
    ASSERT_EQ(0, mcontrol(region.base(), kPage, MADV_INVAL, 0));
    completed.store(k);
  }
  done.store(true);
  r1.join();
  r2.join();
  EXPECT_EQ(0, stale.load()) << "reads " << reads.load();
  EXPECT_GT(reads.load(), 0u);
}

}  // namespace
