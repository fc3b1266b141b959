// Leak test: thousands of create / mmap / pwrite / RUN / destroy cycles must leave no file
// descriptors, threads, child processes (or zombies), mappings or memory behind.

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "gtest/gtest.h"
#include "test_support.h"
#include "guest_code.h"

namespace {

constexpr uint64_t kCodeAddr = 0x400000;
constexpr int kWarmupCycles = 200;
constexpr int kCycles = 10000;
constexpr long kMaxRssGrowthKib = 8 * 1024;
// Allows for lazily created allocator arenas and the like, not for a per-cycle leak.
constexpr long kMaxMapsGrowth = 64;
constexpr auto kTestLimit = std::chrono::seconds(1100);

using vkrt_test::BackendName;
using vkrt_test::CountDirEntries;
using vkrt_test::StatusField;
using vkrt_test::Watchdog;

struct ProcessCounts {
  long fds = 0;
  long threads = 0;
  long children = 0;         // processes whose parent is this process
  long zombie_children = 0;  // ... of which zombies
  long traced = 0;           // processes ptraced by a thread of this process
  long maps = 0;             // lines in /proc/self/maps
  long rss_kib = 0;
};

std::string ToString(const ProcessCounts& c) {
  return "fds=" + std::to_string(c.fds) + " threads=" + std::to_string(c.threads) +
         " children=" + std::to_string(c.children) +
         " zombie_children=" + std::to_string(c.zombie_children) +
         " traced=" + std::to_string(c.traced) + " maps=" + std::to_string(c.maps) +
         " rss_kib=" + std::to_string(c.rss_kib);
}



ProcessCounts Snapshot() {
  ProcessCounts c;
  c.fds = CountDirEntries("/proc/self/fd");
  c.threads = StatusField("/proc/self/status", "Threads:");
  c.rss_kib = StatusField("/proc/self/status", "VmRSS:");
  {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line)) ++c.maps;
  }
  std::set<long> own_tids;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') own_tids.insert(strtol(e->d_name, nullptr, 10));
    }
    closedir(d);
  }
  const long self = getpid();
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return c;
  while (dirent* e = readdir(proc)) {
    char* end = nullptr;
    const long pid = strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || pid == self) continue;
    const std::string dir = std::string("/proc/") + e->d_name;
    std::ifstream stat_file(dir + "/stat");
    std::string stat;
    if (!std::getline(stat_file, stat)) continue;  // gone already
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    const size_t close = stat.rfind(')');
    if (close == std::string::npos || close + 4 > stat.size()) continue;
    const char state = stat[close + 2];
    const long ppid = strtol(stat.c_str() + close + 4, nullptr, 10);
    if (ppid == self) {
      ++c.children;
      if (state == 'Z') ++c.zombie_children;
    }
    const long tracer = StatusField(dir + "/status", "TracerPid:");
    if (tracer > 0 && own_tids.count(tracer) != 0) ++c.traced;
  }
  closedir(proc);
  return c;
}

// "Physical memory" for the VPAGETABLE part of a cycle: four tables mapping the region's
// first page to a frame holding kGuestSyscallLoop. Created once.
constexpr uint64_t kVptAddr = 0x40000000;
int VptMemfd() {
  static const int fd = [] {
    const int f = memfd_create("vkrt-leak", MFD_CLOEXEC);
    if (f < 0 || ftruncate(f, 5 * 4096) != 0) return -1;
    constexpr uint64_t kBits = VPTE_V | VPTE_RW | VPTE_U;
    for (uint64_t level = 0; level < 4; ++level) {
      const uint64_t entry = (level + 1) * 4096 | kBits;  // table `level` -> next frame
      if (pwrite(f, &entry, 8, static_cast<off_t>(level * 4096)) != 8) return -1;
    }
    if (pwrite(f, kGuestSyscallLoop, sizeof(kGuestSyscallLoop), 4 * 4096) !=
        static_cast<ssize_t>(sizeof(kGuestSyscallLoop))) {
      return -1;
    }
    return f;
  }();
  return fd;
}

// One create / mmap / pwrite / RUN / destroy cycle, plus a RUN that fetches its code through
// a MAP_VPAGETABLE region (an object attached to the stub, a translation installed); returns
// "" or what went wrong.
std::string Cycle(int type) {
  static char id_object;
  void* const id = &id_object;
  if (vmspace_create(id, type, nullptr) != 0) {
    return std::string("vmspace_create: ") + strerror(errno);
  }
  std::string error;
  void* p = vmspace_mmap(id, reinterpret_cast<void*>(kCodeAddr), 0x1000,
                         PROT_READ | PROT_WRITE | PROT_EXEC,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p != reinterpret_cast<void*>(kCodeAddr)) {
    error = std::string("vmspace_mmap: ") + strerror(errno);
  } else if (vmspace_pwrite(id, kGuestSyscallLoop, sizeof(kGuestSyscallLoop), 0, kCodeAddr) !=
             static_cast<ssize_t>(sizeof(kGuestSyscallLoop))) {
    error = std::string("vmspace_pwrite: ") + strerror(errno);
  } else {
    trapframe tf = {};
    tf.tf_rip = kCodeAddr;
    tf.tf_rflags = 0x202;
    tf.tf_rax = 39;
    vextframe vf = {};
    if (vmspace_ctl(id, VMSPACE_CTL_RUN, &tf, &vf) != 0) {
      error = std::string("vmspace_ctl: ") + strerror(errno);
    } else if (tf.tf_trapno != T_FAST_SYSCALL || tf.tf_rax != 39 ||
               tf.tf_rip != static_cast<int64_t>(kCodeAddr + 2)) {
      error = "unexpected exit: trapno " + std::to_string(tf.tf_trapno) + " rip " +
              std::to_string(tf.tf_rip);
    } else if (vmspace_mmap(id, reinterpret_cast<void*>(kVptAddr), 2 << 20,
                            PROT_READ | PROT_WRITE | PROT_EXEC,
                            MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE, VptMemfd(), 0) !=
                   reinterpret_cast<void*>(kVptAddr) ||
               vmspace_mcontrol(id, reinterpret_cast<void*>(kVptAddr), 2 << 20, MADV_SETMAP,
                                static_cast<off_t>(VPTE_V | VPTE_RW | VPTE_U)) != 0) {
      error = std::string("MAP_VPAGETABLE: ") + strerror(errno);
    } else {
      tf = {};
      tf.tf_rip = kVptAddr;
      tf.tf_rflags = 0x202;
      tf.tf_rax = 40;
      if (vmspace_ctl(id, VMSPACE_CTL_RUN, &tf, &vf) != 0) {
        error = std::string("vmspace_ctl (VPAGETABLE): ") + strerror(errno);
      } else if (tf.tf_trapno != T_FAST_SYSCALL || tf.tf_rax != 40 ||
                 tf.tf_rip != static_cast<int64_t>(kVptAddr + 2)) {
        error = "unexpected VPAGETABLE exit: trapno " + std::to_string(tf.tf_trapno) +
                " rip " + std::to_string(tf.tf_rip) + " addr " + std::to_string(tf.tf_addr);
      }
    }
  }
  if (vmspace_destroy(id) != 0 && error.empty()) {
    error = std::string("vmspace_destroy: ") + strerror(errno);
  }
  return error;
}

class LeakTest : public ::testing::TestWithParam<int> {};

TEST_P(LeakTest, CreateRunDestroyCyclesLeakNothing) {
  const char* name = BackendName(GetParam());
  if (const std::string why = vkrt_test::UnavailableReason(GetParam()); !why.empty()) {
    GTEST_SKIP() << why;
  }
  Watchdog watchdog(std::string("leak test on ") + name, kTestLimit);

  for (int i = 0; i < kWarmupCycles; ++i) {
    const std::string error = Cycle(GetParam());
    ASSERT_EQ("", error) << "warm-up cycle " << i;
  }
  const ProcessCounts before = Snapshot();
  for (int i = 0; i < kCycles; ++i) {
    const std::string error = Cycle(GetParam());
    ASSERT_EQ("", error) << "cycle " << i;
  }
  const ProcessCounts after = Snapshot();

  printf("before %d cycles: %s\nafter:  %s\n", kCycles, ToString(before).c_str(),
         ToString(after).c_str());
  SCOPED_TRACE("before: " + ToString(before));
  SCOPED_TRACE("after:  " + ToString(after));
  EXPECT_EQ(before.fds, after.fds);
  EXPECT_EQ(before.threads, after.threads);
  EXPECT_EQ(before.children, after.children);
  EXPECT_EQ(0, after.zombie_children);
  EXPECT_EQ(before.traced, after.traced);
  EXPECT_LT(after.maps - before.maps, kMaxMapsGrowth);
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer keeps freed memory in quarantine (256 MiB by default), so RSS says
  // nothing here; LeakSanitizer checks at exit that nothing was leaked.
  printf("RSS growth not checked under AddressSanitizer (quarantine); LeakSanitizer runs at exit\n");
#else
  EXPECT_LT(after.rss_kib - before.rss_kib, kMaxRssGrowthKib);
#endif
}

std::string ParamName(const ::testing::TestParamInfo<int>& info) { return BackendName(info.param); }

INSTANTIATE_TEST_SUITE_P(Backends, LeakTest, ::testing::Values(VKRT_TYPE_PTRACE, VKRT_TYPE_SECCOMP, VKRT_TYPE_KVM), ParamName);

}  // namespace
