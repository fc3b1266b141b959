// Resource tests (issue 10): what a vkernel can hold at once and what it leaves behind.
//   - 1,000 live vmspaces, each running its own guest, all alive at the same time; destroying
//     them gives back every fd, thread and process.
//   - SIGKILL of a vkernel with 100 guests inside RUN (30 under the sanitizers) leaves no guest process (and, on kvm, no
//     VM) behind: SPEC §2.
//   - A vkernel whose guest keeps asking for memory gets ENOMEM from vmspace_mmap, says why,
//     and goes on working; minivk's guests get ENOMEM from mmap/brk, and a guest that touches
//     more than minivk has is killed alone (docs/minivk.md).
// The 10,000 create/map/run/destroy cycles are tests/leak_test.cc.

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "guest_code.h"
#include "test_support.h"

namespace {

using vkrt_test::AllPids;
using vkrt_test::BackendName;
using vkrt_test::CountDirEntries;
using vkrt_test::StatusField;
using vkrt_test::Watchdog;

constexpr uint64_t kCodeAddr = 0x400000;
constexpr uint64_t kDataAddr = 0x401000;

// ---- /proc helpers ------------------------------------------------------------------------



struct ProcStat {
  char state = 0;
  long ppid = 0;
  unsigned long long start_time = 0;  // field 22: tells a pid from a later reuse of it
};

bool ReadStat(long pid, ProcStat& out) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  // pid (comm) state ppid ...: comm may hold spaces and parentheses.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 4 > stat.size()) return false;
  out.state = stat[close + 2];
  const char* p = stat.c_str() + close + 4;  // ppid, field 4
  char* end = nullptr;
  out.ppid = strtol(p, &end, 10);
  // Fields 5..21, then starttime.
  for (int field = 5; field <= 22 && end != nullptr; ++field) {
    const unsigned long long v = strtoull(end, &end, 10);
    if (field == 22) out.start_time = v;
  }
  return true;
}

// Every process below `root` (children, their children, ...), by the ppid chains in /proc.
std::map<long, ProcStat> Descendants(long root) {
  std::map<long, ProcStat> all;
  for (long pid : AllPids()) {
    ProcStat s;
    if (ReadStat(pid, s)) all[pid] = s;
  }
  std::map<long, ProcStat> out;
  std::set<long> frontier = {root};
  while (!frontier.empty()) {
    std::set<long> next;
    for (const auto& [pid, s] : all) {
      if (frontier.count(s.ppid) != 0 && out.count(pid) == 0) {
        out[pid] = s;
        next.insert(pid);
      }
    }
    frontier = std::move(next);
  }
  return out;
}

// Descriptors of `pid` whose link names `what` (e.g. "anon_inode:kvm-vm").
long CountFdsNamed(long pid, const std::string& what) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  long n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char link[256];
    const ssize_t len = readlink((dir + "/" + e->d_name).c_str(), link, sizeof(link) - 1);
    if (len <= 0) continue;
    link[len] = '\0';
    if (what == link) ++n;
  }
  closedir(d);
  return n;
}

struct Counts {
  long fds = 0;
  long threads = 0;
  long descendants = 0;  // host processes below this one (stubs, zombies included)
  long rss_kib = 0;
};

Counts Snapshot() {
  Counts c;
  c.fds = CountDirEntries("/proc/self/fd");
  c.threads = StatusField("/proc/self/status", "Threads:");
  c.rss_kib = StatusField("/proc/self/status", "VmRSS:");
  c.descendants = static_cast<long>(Descendants(getpid()).size());
  return c;
}

std::string ToString(const Counts& c) {
  return "fds=" + std::to_string(c.fds) + " threads=" + std::to_string(c.threads) +
         " descendants=" + std::to_string(c.descendants) + " rss_kib=" + std::to_string(c.rss_kib);
}

// Host threads and resident memory of the processes below this one (the stubs).
void DescendantUsage(long& threads, long& rss_kib) {
  threads = 0;
  rss_kib = 0;
  for (const auto& [pid, s] : Descendants(getpid())) {
    const std::string status = "/proc/" + std::to_string(pid) + "/status";
    threads += std::max(0L, StatusField(status, "Threads:"));
    rss_kib += std::max(0L, StatusField(status, "VmRSS:"));
  }
}

// ---- A vmspace with code and data pages --------------------------------------------------

// Creates `id` with a code page holding `code` and a data page holding `value` at kDataAddr;
// "" or what failed.
std::string MakeSpace(void* id, int type, const unsigned char* code, size_t len, uint64_t value) {
  if (vmspace_create(id, type, nullptr) != 0) {
    return std::string("vmspace_create: ") + vkrt_last_error();
  }
  if (vmspace_mmap(id, reinterpret_cast<void*>(kCodeAddr), 0x2000,
                   PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                   0) != reinterpret_cast<void*>(kCodeAddr)) {
    return std::string("vmspace_mmap: ") + vkrt_last_error();
  }
  if (vmspace_pwrite(id, code, len, 0, kCodeAddr) != static_cast<ssize_t>(len) ||
      vmspace_pwrite(id, &value, sizeof(value), 0, kDataAddr) != sizeof(value)) {
    return std::string("vmspace_pwrite: ") + vkrt_last_error();
  }
  return "";
}

// Runs kGuestLoad (rax = *rdi; syscall) on kDataAddr; "" if it came back with `want`.
std::string RunLoad(void* id, uint64_t want) {
  trapframe tf = {};
  tf.tf_rip = kCodeAddr;
  tf.tf_rflags = 0x202;
  tf.tf_rdi = kDataAddr;
  vextframe vf = {};
  if (vmspace_ctl(id, VMSPACE_CTL_RUN, &tf, &vf) != 0) {
    return std::string("vmspace_ctl: ") + vkrt_last_error();
  }
  if (tf.tf_trapno != T_FAST_SYSCALL || static_cast<uint64_t>(tf.tf_rax) != want) {
    return "unexpected exit: trapno " + std::to_string(tf.tf_trapno) + " rax " +
           std::to_string(tf.tf_rax) + ", want " + std::to_string(want);
  }
  return "";
}

class ResourceTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (const std::string why = vkrt_test::UnavailableReason(GetParam()); !why.empty()) {
      GTEST_SKIP() << why;
    }
  }
  const char* name() const { return BackendName(GetParam()); }
};

// ---- 1,000 live vmspaces -----------------------------------------------------------------

constexpr int kLiveSpaces = 1000;

TEST_P(ResourceTest, ThousandLiveVmspaces) {
  Watchdog watchdog(std::string("1,000 live vmspaces on ") + name(), std::chrono::seconds(300));
  // Warm up: the first vmspace of a backend sets up process-wide state (filters, a kvm self
  // test), which is not what is measured here.
  {
    char warm;
    ASSERT_EQ("", MakeSpace(&warm, GetParam(), kGuestLoad, sizeof(kGuestLoad), 7));
    ASSERT_EQ("", RunLoad(&warm, 7));
    ASSERT_EQ(0, vmspace_destroy(&warm));
  }
  const Counts before = Snapshot();
  std::vector<char> ids(kLiveSpaces);
  auto value_of = [](int i) { return 0x5EED0000ull + static_cast<uint64_t>(i); };
  int created = 0;
  for (; created < kLiveSpaces; ++created) {
    const std::string error =
        MakeSpace(&ids[created], GetParam(), kGuestLoad, sizeof(kGuestLoad), value_of(created));
    if (!error.empty()) {
      ADD_FAILURE() << "vmspace " << created << ": " << error << " (errno " << errno << ")";
      break;
    }
    // Each guest runs as soon as its space exists, while all earlier ones are alive.
    const std::string run = RunLoad(&ids[created], value_of(created));
    if (!run.empty()) {
      ADD_FAILURE() << "vmspace " << created << ": " << run;
      break;
    }
  }
  if (created == kLiveSpaces) {
    // All 1,000 at once: every guest runs again and still sees its own memory.
    for (int i = 0; i < kLiveSpaces; ++i) {
      const std::string run = RunLoad(&ids[i], value_of(i));
      if (!run.empty()) {
        ADD_FAILURE() << "second round, vmspace " << i << ": " << run;
        break;
      }
    }
  }
  const Counts during = Snapshot();
  long stub_threads = 0, stub_rss_kib = 0;
  DescendantUsage(stub_threads, stub_rss_kib);
  for (int i = 0; i < created; ++i) {
    if (vmspace_destroy(&ids[i]) != 0) {
      ADD_FAILURE() << "vmspace_destroy " << i << ": " << vkrt_last_error();
    }
  }
  const Counts after = Snapshot();
  printf("%s: %d live vmspaces: before %s\n  during %s (stubs: %ld threads, %ld KiB RSS)\n"
         "  after %s\n",
         name(), created, ToString(before).c_str(), ToString(during).c_str(), stub_threads,
         stub_rss_kib, ToString(after).c_str());
  EXPECT_EQ(kLiveSpaces, created);
  EXPECT_EQ(before.fds, after.fds);
  EXPECT_EQ(before.threads, after.threads);
  EXPECT_EQ(before.descendants, after.descendants);
}

// At a hard RLIMIT_NOFILE vkrt cannot raise, the vmspace that does not fit fails with EMFILE
// (at create, or on kvm when RUN makes the vCPU) and the vkernel goes on: in a child, so the
// test process keeps its limit.
[[noreturn]] void FdLimitedVkernel(int type, int out_fd) {
  alarm(120);
  auto fail = [out_fd](const std::string& what) {
    dprintf(out_fd, "FAIL %s\n", what.c_str());
    _exit(1);
  };
  const rlimit limit = {128, 128};
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) fail(std::string("setrlimit: ") + strerror(errno));
  std::vector<char> ids(kLiveSpaces);
  int live = 0;
  std::string error;
  int error_number = 0;
  for (; live < kLiveSpaces; ++live) {
    error = MakeSpace(&ids[live], type, kGuestLoad, sizeof(kGuestLoad), live);
    if (error.empty()) error = RunLoad(&ids[live], live);
    if (!error.empty()) {
      error_number = errno;
      break;
    }
  }
  dprintf(out_fd, "%d vmspaces under RLIMIT_NOFILE 128, then errno %d: %s\n", live,
          error_number, error.c_str());
  if (error_number != EMFILE) fail("not EMFILE");
  // The one that failed may exist (kvm: its VM fit, its vCPU did not): destroy what exists.
  for (int i = 0; i <= live && i < kLiveSpaces; ++i) {
    if (vmspace_destroy(&ids[i]) != 0 && (i < live || errno != ENOENT)) {
      fail(std::string("destroy: ") + vkrt_last_error());
    }
  }
  char fresh;
  if (std::string e = MakeSpace(&fresh, type, kGuestLoad, sizeof(kGuestLoad), 0xF00D); !e.empty()) {
    fail("fresh vmspace: " + e);
  }
  if (std::string e = RunLoad(&fresh, 0xF00D); !e.empty()) fail("fresh vmspace: " + e);
  if (vmspace_destroy(&fresh) != 0) fail(std::string("destroy fresh: ") + vkrt_last_error());
  dprintf(out_fd, "OK\n");
  _exit(0);
}

// Runs `body(out_fd)` in a forked child; returns what it wrote, and its status in `status`.
template <typename Body>
std::string RunInChild(Body body, int& status) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return "pipe failed";
  const pid_t child = fork();
  if (child < 0) return "fork failed";
  if (child == 0) {
    close(out[0]);
    body(out[1]);
    _exit(1);
  }
  close(out[1]);
  std::string report;
  char buf[1024];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) report.append(buf, static_cast<size_t>(n));
  close(out[0]);
  waitpid(child, &status, 0);
  return report;
}

TEST_P(ResourceTest, DescriptorLimitFailsCleanlyWithEmfile) {
  Watchdog watchdog(std::string("RLIMIT_NOFILE on ") + name(), std::chrono::seconds(150));
  int status = -1;
  const std::string report =
      RunInChild([type = GetParam()](int fd) { FdLimitedVkernel(type, fd); }, status);
  printf("%s: %s", name(), report.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << ": " << report;
  EXPECT_NE(std::string::npos, report.find("OK\n")) << report;
}

// ---- SIGKILL of a vkernel with 100 running guests ----------------------------------------

// 100 busy guests (and their vkernel threads, and on seccomp their stubs' servers) share 2
// CPUs: starting them all took 1.5-7 s in a normal build and 5 s to over 180 s under
// AddressSanitizer (twice on 2026-11-24, once before), where every thread is several times
// slower and a server call waits its turn behind dozens of spinning guests. Under the
// sanitizers (whose point is memory and race errors, not scale) 30 guests.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kKilledGuests = 30;
#else
constexpr int kKilledGuests = 100;
#endif
constexpr uint64_t kFlagAddr = kDataAddr;

// The vkernel the test kills: 100 vmspaces, one thread each inside RUN of a guest that sets
// a flag in its memory and spins. Writes 'R' to `ready_fd` once every flag is set (so every
// guest has run), then waits to be killed. Never returns.
[[noreturn]] void KilledVkernel(int type, int ready_fd) {
  alarm(240);  // if the test dies first, this process does not outlive it for long
  std::vector<char> ids(kKilledGuests);
  for (int i = 0; i < kKilledGuests; ++i) {
    const std::string error =
        MakeSpace(&ids[i], type, kGuestFlagThenSpin, sizeof(kGuestFlagThenSpin), 0);
    if (!error.empty()) {
      dprintf(ready_fd, "E vmspace %d: %s", i, error.c_str());
      _exit(1);
    }
  }
  for (int i = 0; i < kKilledGuests; ++i) {
    vkrt_test::SpawnWithSignalsBlocked([id = &ids[i], i, ready_fd] {
      trapframe tf = {};
      tf.tf_rip = kCodeAddr;
      tf.tf_rflags = 0x202;
      tf.tf_rdi = kFlagAddr;
      tf.tf_rsi = 1;
      vextframe vf = {};
      // Spins until the process dies: RUN never returns.
      const int rc = vmspace_ctl(id, VMSPACE_CTL_RUN, &tf, &vf);
      dprintf(ready_fd, "E RUN %d returned %d (trapno %ld): %s", i, rc,
              static_cast<long>(tf.tf_trapno), vkrt_last_error());
      _exit(1);
    }).detach();
  }
  // Each flag is set by its guest; polling them is how this process learns that every guest
  // is running (bounded by the alarm above and the test's own deadline). Between polls it
  // sleeps rather than yields: a yield queues it behind all 100 spinning guests (seconds per
  // poll on 2 CPUs), while a thread that wakes from a sleep gets a CPU soon.
  for (int i = 0; i < kKilledGuests; ++i) {
    for (;;) {
      uint64_t flag = 0;
      if (vmspace_pread(&ids[i], &flag, sizeof(flag), 0, kFlagAddr) == sizeof(flag) && flag == 1) {
        break;
      }
      const struct timespec poll_interval = {0, 1'000'000};
      nanosleep(&poll_interval, nullptr);
    }
  }
  if (write(ready_fd, "R", 1) != 1) _exit(1);
  for (;;) pause();
}

int PidfdOpen(long pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

TEST_P(ResourceTest, SigkillOfVkernelWithRunningGuestsLeavesNoGuest) {
  Watchdog watchdog(std::string("SIGKILL of a vkernel on ") + name(), std::chrono::seconds(180));
  // Orphans of the killed vkernel come to this process (not init), so none can hide; they
  // must all die by themselves, and this process reaps them.
  ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1));
  struct SubreaperOff {
    ~SubreaperOff() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } subreaper_off;
  const long kvm_vms_before = CountFdsNamed(getpid(), "anon_inode:kvm-vm");

  int ready[2];
  ASSERT_EQ(0, pipe2(ready, O_CLOEXEC));
  const pid_t vkernel = fork();
  ASSERT_LE(0, vkernel);
  if (vkernel == 0) {
    close(ready[0]);
    KilledVkernel(GetParam(), ready[1]);
  }
  close(ready[1]);
  std::string message;
  {
    pollfd p = {ready[0], POLLIN, 0};
    // Generous: 100 stubs and 100 spinning guests on a loaded 2-core machine.
    ASSERT_EQ(1, poll(&p, 1, 150 * 1000)) << "the vkernel did not start its guests in time";
    char buf[512];
    const ssize_t n = read(ready[0], buf, sizeof(buf));
    if (n > 0) message.assign(buf, static_cast<size_t>(n));
  }
  close(ready[0]);
  if (message != "R") {
    kill(vkernel, SIGKILL);
    waitpid(vkernel, nullptr, 0);
    FAIL() << "the vkernel failed: " << message;
  }

  // What the vkernel has now: its guests' host processes (stub backends) and, on kvm, VMs.
  const std::map<long, ProcStat> guests = Descendants(vkernel);
  const long vkernel_vms = CountFdsNamed(vkernel, "anon_inode:kvm-vm");
  const long vkernel_threads = StatusField("/proc/" + std::to_string(vkernel) + "/status", "Threads:");
  std::map<long, int> pidfds;  // opened before the kill: a pidfd never names a reused pid
  for (const auto& [pid, s] : guests) {
    const int fd = PidfdOpen(pid);
    if (fd >= 0) pidfds[pid] = fd;
  }
  printf("%s: vkernel %d with %d running guests: %zu host processes below it, %ld threads, "
         "%ld VM fds\n",
         name(), vkernel, kKilledGuests, guests.size(), vkernel_threads, vkernel_vms);
  if (GetParam() == VKRT_TYPE_KVM) {
    EXPECT_EQ(kKilledGuests, vkernel_vms);
  } else {
    EXPECT_GE(static_cast<long>(guests.size()), kKilledGuests);
  }

  ASSERT_EQ(0, kill(vkernel, SIGKILL));
  int status = 0;
  ASSERT_EQ(vkernel, waitpid(vkernel, &status, 0));
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;

  // Every guest process must exit by itself (the seccomp stub checks its vkernel's pidfd
  // once a second): wait on the pidfds, bounded, reaping what comes to this process.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::set<long> alive;
  for (const auto& [pid, fd] : pidfds) alive.insert(pid);
  while (!alive.empty() && std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> polls;
    for (long pid : alive) polls.push_back({pidfds[pid], POLLIN, 0});
    poll(polls.data(), polls.size(), 1000);
    for (const pollfd& p : polls) {
      if (p.revents == 0) continue;
      for (auto it = alive.begin(); it != alive.end(); ++it) {
        if (pidfds[*it] == p.fd) {
          alive.erase(it);
          break;
        }
      }
    }
  }
  // Reap the zombies that were reparented here (a stub that was not is reaped by init).
  while (waitpid(-1, nullptr, __WALL | WNOHANG) > 0) {
  }
  std::set<long> survivors;
  for (const auto& [pid, s] : guests) {
    ProcStat now;
    if (ReadStat(pid, now) && now.start_time == s.start_time && now.state != 'Z') {
      survivors.insert(pid);
    }
  }
  for (long pid : survivors) {
    ADD_FAILURE() << "guest process " << pid << " of the killed vkernel is still alive";
    kill(static_cast<pid_t>(pid), SIGKILL);
  }
  for (const auto& [pid, fd] : pidfds) close(fd);
  while (waitpid(-1, nullptr, __WALL | WNOHANG) > 0) {
  }
  EXPECT_TRUE(alive.empty()) << alive.size() << " guest processes did not exit within 30 s";
  // Nothing of the vkernel is left below this process either.
  EXPECT_EQ(0u, Descendants(getpid()).size());
  // The VMs went with the vkernel's descriptors: nobody else held them.
  EXPECT_EQ(kvm_vms_before, CountFdsNamed(getpid(), "anon_inode:kvm-vm"));
  printf("%s: after SIGKILL: %zu survivors\n", name(), survivors.size());
}

// ---- A guest that allocates until ENOMEM -------------------------------------------------

// loop: rax = 9 (mmap); syscall; if rax < 0 exit(rax); *(uint64_t*)rax = 1; repeat.
//      0: b8 09 00 00 00         mov    $0x9,%eax
//      5: 0f 05                  syscall
//      7: 48 85 c0               test   %rax,%rax
//      a: 78 09                  js     15 <done>
//      c: 48 c7 00 01 00 00 00   movq   $0x1,(%rax)
//     13: eb eb                  jmp    0 <loop>
//     15: 48 89 c7               mov    %rax,%rdi
//     18: b8 3c 00 00 00         mov    $0x3c,%eax
//     1d: 0f 05                  syscall
//     1f: 0f 0b                  ud2
const unsigned char kGuestAllocLoop[] = {
    0xb8, 0x09, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x78, 0x09, 0x48, 0xc7,
    0x00, 0x01, 0x00, 0x00, 0x00, 0xeb, 0xeb, 0x48, 0x89, 0xc7, 0xb8, 0x3c, 0x00, 0x00,
    0x00, 0x0f, 0x05, 0x0f, 0x0b,
};
constexpr size_t kChunk = 64ull << 20;
constexpr uint64_t kHeapBase = 0x10000000;
constexpr rlim_t kAddressSpaceHeadroom = 2ull << 30;

// The vkernel side, in a child under RLIMIT_AS (so the test process is not limited): serves
// the guest's mmap calls with 64 MiB vmspace_mmaps until one fails, checks the failure, then
// shows it still works. Writes its findings to `out_fd`; exit status 0 if all was as it
// should be.
[[noreturn]] void EnomemVkernel(int type, int out_fd) {
  alarm(120);
  auto fail = [out_fd](const std::string& what) {
    dprintf(out_fd, "FAIL %s\n", what.c_str());
    _exit(1);
  };
  // Room for the vkernel as it is plus kAddressSpaceHeadroom: for the stub backends each
  // stub inherits the limit, for kvm the vkernel maps guest memory itself.
  const long vm_kib = StatusField("/proc/self/status", "VmSize:");
  if (vm_kib <= 0) fail("no VmSize");
  const rlimit limit = {static_cast<rlim_t>(vm_kib) * 1024 + kAddressSpaceHeadroom,
                        static_cast<rlim_t>(vm_kib) * 1024 + kAddressSpaceHeadroom};
  if (setrlimit(RLIMIT_AS, &limit) != 0) fail(std::string("setrlimit: ") + strerror(errno));

  char id;
  if (std::string e = MakeSpace(&id, type, kGuestAllocLoop, sizeof(kGuestAllocLoop), 0);
      !e.empty()) {
    fail(e);
  }
  // Under ASan the vkernel's size includes ~20 TiB of shadow, so the limit a stub inherits
  // would leave it that much room: each process below the vkernel (the stub backends' stubs)
  // gets its own size plus the headroom instead.
  for (const auto& [pid, stat] : Descendants(getpid())) {
    const long kib = StatusField("/proc/" + std::to_string(pid) + "/status", "VmSize:");
    if (kib <= 0) continue;
    const rlimit stub_limit = {static_cast<rlim_t>(kib) * 1024 + kAddressSpaceHeadroom,
                               static_cast<rlim_t>(kib) * 1024 + kAddressSpaceHeadroom};
    if (prlimit(static_cast<pid_t>(pid), RLIMIT_AS, &stub_limit, nullptr) != 0) {
      fail("prlimit(" + std::to_string(pid) + ", RLIMIT_AS): " + strerror(errno));
    }
  }
  trapframe tf = {};
  tf.tf_rip = kCodeAddr;
  tf.tf_rflags = 0x202;
  vextframe vf = {};
  uint64_t next = kHeapBase;
  int chunks = 0;
  std::string error_text;
  int error_number = 0;
  for (int exits = 0;; ++exits) {
    if (exits > 100000) fail("the guest never finished");
    if (vmspace_ctl(&id, VMSPACE_CTL_RUN, &tf, &vf) != 0) {
      fail(std::string("RUN: ") + vkrt_last_error());
    }
    if (tf.tf_trapno != T_FAST_SYSCALL) fail("trap " + std::to_string(tf.tf_trapno));
    if (tf.tf_rax == 60) break;  // the guest's exit
    if (tf.tf_rax != 9) fail("syscall " + std::to_string(tf.tf_rax));
    void* p = vmspace_mmap(&id, reinterpret_cast<void*>(next), kChunk, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
      error_number = errno;
      error_text = vkrt_last_error();
      tf.tf_rax = -error_number;
    } else {
      if (p != reinterpret_cast<void*>(next)) fail("mmap moved");
      tf.tf_rax = static_cast<int64_t>(next);
      next += kChunk;
      ++chunks;
    }
  }
  if (error_number != ENOMEM) fail("errno " + std::to_string(error_number) + ": " + error_text);
  if (error_text.empty()) fail("vkrt_last_error() is empty");
  if (tf.tf_rdi != -ENOMEM) fail("the guest exited with " + std::to_string(tf.tf_rdi));
  dprintf(out_fd, "ENOMEM after %d chunks of 64 MiB (%d MiB) under RLIMIT_AS %llu MiB: %s\n",
          chunks, chunks * 64, static_cast<unsigned long long>(limit.rlim_cur >> 20),
          error_text.c_str());
  if (chunks == 0) fail("not even one chunk");

  // The exhausted vmspace still works: its memory can be given back and used again.
  const uint64_t last = next - kChunk;
  if (vmspace_munmap(&id, reinterpret_cast<void*>(last), kChunk) != 0) {
    fail(std::string("munmap: ") + vkrt_last_error());
  }
  if (vmspace_mmap(&id, reinterpret_cast<void*>(last), kChunk, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != reinterpret_cast<void*>(last)) {
    fail(std::string("mmap after munmap: ") + vkrt_last_error());
  }
  if (vmspace_destroy(&id) != 0) fail(std::string("destroy: ") + vkrt_last_error());
  // And the vkernel lives on: a fresh vmspace, mapped, running a guest, destroyed.
  char fresh;
  if (std::string e = MakeSpace(&fresh, type, kGuestLoad, sizeof(kGuestLoad), 0xF00D); !e.empty()) {
    fail("fresh vmspace: " + e);
  }
  if (std::string e = RunLoad(&fresh, 0xF00D); !e.empty()) fail("fresh vmspace: " + e);
  if (vmspace_destroy(&fresh) != 0) fail(std::string("destroy fresh: ") + vkrt_last_error());
  dprintf(out_fd, "OK\n");
  _exit(0);
}

TEST_P(ResourceTest, GuestAllocatingUntilEnomemGetsCleanError) {
  Watchdog watchdog(std::string("ENOMEM on ") + name(), std::chrono::seconds(150));
  int out[2];
  ASSERT_EQ(0, pipe2(out, O_CLOEXEC));
  const pid_t child = fork();
  ASSERT_LE(0, child);
  if (child == 0) {
    close(out[0]);
    EnomemVkernel(GetParam(), out[1]);
  }
  close(out[1]);
  std::string report;
  char buf[1024];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) report.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  ASSERT_EQ(child, waitpid(child, &status, 0));
  printf("%s: %s", name(), report.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "status " << status << ": " << report;
  EXPECT_NE(std::string::npos, report.find("OK\n")) << report;
}

// ---- minivk: ENOMEM for its guests, and the out-of-memory kill ---------------------------

#if defined(MINIVK_BIN) && defined(MINIVK_GUEST)

struct Result {
  std::string out;
  std::string err;
  int status = -1;  // exit status, 128 + N for signal N
};

// Runs argv with stdin /dev/null, capturing stdout and stderr (to files: no pipe juggling).
Result RunMinivk(const std::vector<std::string>& args) {
  char out_path[] = "/tmp/vkrt-resource-out-XXXXXX";
  char err_path[] = "/tmp/vkrt-resource-err-XXXXXX";
  const int out = mkstemp(out_path);
  const int err = mkstemp(err_path);
  Result r;
  if (out < 0 || err < 0) return r;
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    const int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out, 1);
    dup2(err, 2);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  // A 120 s watchdog kills the run's process group (alarm(2) would not: minivk takes SIGALRM).
  r.status = vkrt_test::AwaitChild(pid, -1, nullptr, std::chrono::seconds(120));
  auto slurp = [](int fd) {
    std::string s;
    char buf[4096];
    ssize_t n;
    lseek(fd, 0, SEEK_SET);
    while ((n = read(fd, buf, sizeof(buf))) > 0) s.append(buf, static_cast<size_t>(n));
    close(fd);
    return s;
  };
  r.out = slurp(out);
  r.err = slurp(err);
  unlink(out_path);
  unlink(err_path);
  return r;
}

TEST_P(ResourceTest, MinivkGuestAllocatingUntilEnomem) {
  // mmap and brk fail with ENOMEM once minivk's 64 MiB of guest memory is spoken for; the
  // guest prints how much it got and exits normally.
  const Result r = RunMinivk({MINIVK_BIN, std::string("--backend=") + name(), "--mem=64", MINIVK_GUEST,
                        "alloc"});
  printf("%s: %s", name(), r.out.c_str());
  EXPECT_EQ(0, r.status) << r.err;
  EXPECT_NE(std::string::npos, r.out.find("mmap: ENOMEM after")) << r.out << r.err;
  EXPECT_NE(std::string::npos, r.out.find("brk: ENOMEM after")) << r.out << r.err;
}

TEST_P(ResourceTest, MinivkOutOfMemoryKillsOnlyTheGuest) {
  // A guest that touches more than minivk has (MAP_NORESERVE: no ENOMEM at mmap) is killed
  // with SIGKILL, as Linux's OOM killer would; its shell lives on.
  // busybox-static is a build dependency (scripts/deps.sh): its absence is a broken set-up.
  ASSERT_EQ(access("/bin/busybox", X_OK), 0) << "/bin/busybox is missing (Debian package busybox-static)";
  const Result r =
      RunMinivk({MINIVK_BIN, std::string("--backend=") + name(), "--mem=64", "/bin/busybox", "sh", "-c",
           std::string(MINIVK_GUEST) + " oom; echo \"status $?\"; echo alive"});
  EXPECT_EQ(0, r.status) << r.err;
  EXPECT_EQ("status 137\nalive\n", r.out) << r.err;
  EXPECT_NE(std::string::npos, r.err.find("out of memory")) << r.err;
  // Alone, the guest is minivk's first process: minivk's own status says SIGKILL.
  const Result alone =
      RunMinivk({MINIVK_BIN, std::string("--backend=") + name(), "--mem=64", MINIVK_GUEST, "oom"});
  EXPECT_EQ(137, alone.status) << alone.err;
  EXPECT_NE(std::string::npos, alone.err.find("out of memory")) << alone.err;
}

#endif  // MINIVK_BIN && MINIVK_GUEST

std::string ParamName(const ::testing::TestParamInfo<int>& info) { return BackendName(info.param); }

INSTANTIATE_TEST_SUITE_P(Backends, ResourceTest,
                         ::testing::Values(VKRT_TYPE_PTRACE, VKRT_TYPE_SECCOMP, VKRT_TYPE_KVM),
                         ParamName);

}  // namespace
