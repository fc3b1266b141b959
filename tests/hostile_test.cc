// The cross-backend hostile-guest suite (issue 10, docs/security.md "How this is tested"):
// on every backend, a guest makes raw system calls of every kind with real arguments (create
// a file, exec, signal, trace, map, fork and clone), through `syscall`, `int $0x80` and
// `sysenter`; calls into the vsyscall page; reads, writes and jumps into every runtime page
// it can reach with crafted registers; uses huge and non-canonical addresses; runs code that
// the vkernel or the guest itself rewrote across MADV_INVAL; and never traps at all. For each
// the contract (SPEC §3) is checked twice: RUN reports the trap the contract names (or, for a
// guest that wrecked its own runtime, an EFAULT), and, checked from outside, the host shows no
// effect: no file created, changed or removed in a fresh directory, no process or thread
// created anywhere under the test process (which is a child subreaper, so even an orphan
// would come back to it), no signal received by the vkernel or by a watcher process, no
// tracer attached, no descriptor, signal disposition, name or directory of any process
// changed. The vkernel then refuses each call (rax = -ENOSYS) and the guest goes on under its
// control.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <vkrt/vmspace.h>

#include "arch/x86_64/kvm_layout.h"
#include "test_support.h"
#include "vpt_tables.h"

namespace {

using vkrt_test::BackendName;
using vkrt_test::PhysMem;
using vkrt_test::UnavailableReason;
using vkrt_test::Watchdog;

// ---- The guest's address space -----------------------------------------------------------

constexpr uint64_t kPage = 4096;
constexpr uint64_t kCodeAddr = 0x400000;
constexpr uint64_t kDataAddr = 0x500000;  // strings, argument blocks (4 pages)
constexpr uint64_t kDataLen = 4 * kPage;
constexpr uint64_t kProbeAddr = 0x600000;  // never mapped: where a forged mmap would land
constexpr uint64_t kFlagAddr = 0x680000;   // a memfd page shared with the test
constexpr uint64_t kStackBase = 0x7000000;
constexpr uint64_t kStackSize = 16 * kPage;
constexpr uint64_t kStackTop = kStackBase + kStackSize;
constexpr uint64_t kVptAddr = 0x40000000;  // a MAP_VPAGETABLE region
constexpr uint64_t kVptLen = 2ULL << 20;
constexpr uint64_t kTop = VKRT_VM_MAX_USER_ADDRESS;
constexpr uint64_t kLinuxUserEnd = 0x7FFFFFFFF000;  // TASK_SIZE with 4-level paging
constexpr uint64_t kVsyscall = 0xffffffffff600000ULL;
constexpr uint64_t kKernelSlot = vkrt::kvm_layout::kKernelVa;  // kvm's ring 0 (2 MiB)
constexpr uint64_t kKernelSlotSize = vkrt::kvm_layout::kKernelSlotSize;

// Offsets in the data pages.
constexpr uint64_t kPathCreated = kDataAddr + 0x000;  // <dir>/created
constexpr uint64_t kPathNewDir = kDataAddr + 0x100;   // <dir>/newdir
constexpr uint64_t kPathVictim = kDataAddr + 0x200;   // <dir>/victim (exists)
constexpr uint64_t kPathRenamed = kDataAddr + 0x300;  // <dir>/renamed
constexpr uint64_t kShPath = kDataAddr + 0x400;       // "/bin/sh"
constexpr uint64_t kDashC = kDataAddr + 0x410;        // "-c"
constexpr uint64_t kShCommand = kDataAddr + 0x420;    // ": > <dir>/execve"
constexpr uint64_t kArgv64 = kDataAddr + 0x500;       // {sh, -c, command, NULL}
constexpr uint64_t kArgv32 = kDataAddr + 0x540;       // the same as 32-bit pointers
constexpr uint64_t kCloneArgs = kDataAddr + 0x600;    // struct clone_args (fork-like)
constexpr uint64_t kSigaction = kDataAddr + 0x700;    // kernel sigaction: SIG_IGN
constexpr uint64_t kOpenHow = kDataAddr + 0x780;      // struct open_how: O_CREAT
constexpr uint64_t kMessage = kDataAddr + 0x800;      // "pwned\n"
constexpr uint64_t kPathDir = kDataAddr + 0x880;      // <dir>
constexpr uint64_t kBuffer = kDataAddr + 0x1000;      // scratch (vsyscall results)
constexpr uint64_t kCopyBuffer = kDataAddr + 0x2000;  // a runtime page copied by the guest

constexpr int kRw = PROT_READ | PROT_WRITE;
constexpr int kRwx = kRw | PROT_EXEC;
constexpr int kAnonFixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
constexpr int kSinkFd = 900;  // a file of the test's, open under this number
constexpr int64_t kEnosys = -ENOSYS;
constexpr uint64_t kLongRun = 60ULL * 1000 * 1000 * 1000;  // RUN's guard: ends no sane trap
constexpr uint64_t kShortRun = 200ULL * 1000 * 1000;       // for guests lost in runtime code
constexpr int64_t kUserCs = 0x33;
constexpr int64_t kUserSs = 0x2b;

// ---- Guests (GNU as 2.40, objdump -d; offsets from the first byte) ----------------------

// A system call, then the guest reports the answer it got (rdi) with getpid, then ud2.
//      0: 0f 05                  syscall
//      2: 48 89 c7               mov    %rax,%rdi
//      5: b8 27 00 00 00         mov    $0x27,%eax
//      a: 0f 05                  syscall
//      c: 0f 0b                  ud2
const std::vector<unsigned char> kSyscallReport = {0x0f, 0x05, 0x48, 0x89, 0xc7, 0xb8, 0x27,
                                                   0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b};
// The same with `int $0x80` first.
//      0: cd 80                  int    $0x80
//      2: 48 89 c7               mov    %rax,%rdi
//      5: b8 27 00 00 00         mov    $0x27,%eax
//      a: 0f 05                  syscall
//      c: 0f 0b                  ud2
const std::vector<unsigned char> kInt80Report = {0xcd, 0x80, 0x48, 0x89, 0xc7, 0xb8, 0x27,
                                                 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b};
constexpr uint64_t kReportOffset = 0x2;  // after the first trap
constexpr uint64_t kUd2Offset = 0xc;
// `sysenter`, then ud2.
//      0: 0f 34                  sysenter
//      2: 0f 0b                  ud2
const std::vector<unsigned char> kSysenter = {0x0f, 0x34, 0x0f, 0x0b};
// Jumps wherever r11 points (a guest's jump with all its registers chosen).
//      0: 41 ff e3               jmp    *%r11
const std::vector<unsigned char> kJumpR11 = {0x41, 0xff, 0xe3};
// rax = *(uint64_t*)rdi; syscall; ud2.
//      0: 48 8b 07               mov    (%rdi),%rax
//      3: 0f 05                  syscall
//      5: 0f 0b                  ud2
const std::vector<unsigned char> kLoad = {0x48, 0x8b, 0x07, 0x0f, 0x05, 0x0f, 0x0b};
// *(uint64_t*)rdi = rax; syscall; ud2.
//      0: 48 89 07               mov    %rax,(%rdi)
//      3: 0f 05                  syscall
//      5: 0f 0b                  ud2
const std::vector<unsigned char> kStore = {0x48, 0x89, 0x07, 0x0f, 0x05, 0x0f, 0x0b};
// rcx quadwords of rax from rdi on; syscall; ud2.
//      0: f3 48 ab               rep stos %rax,%es:(%rdi)
//      3: 0f 05                  syscall
//      5: 0f 0b                  ud2
const std::vector<unsigned char> kFill = {0xf3, 0x48, 0xab, 0x0f, 0x05, 0x0f, 0x0b};
// rcx bytes from rsi to rdi; syscall; ud2.
//      0: f3 a4                  rep movsb %ds:(%rsi),%es:(%rdi)
//      2: 0f 05                  syscall
//      4: 0f 0b                  ud2
const std::vector<unsigned char> kCopy = {0xf3, 0xa4, 0x0f, 0x05, 0x0f, 0x0b};
// Calls rdx with the guest's other registers as they are; ud2 if the call returns.
//      0: ff d2                  call   *%rdx
//      2: 0f 0b                  ud2
const std::vector<unsigned char> kCallRdx = {0xff, 0xd2, 0x0f, 0x0b};
// Writes rsi to the flag page (rdi), then spins: never traps.
//      0: 48 89 37               mov    %rsi,(%rdi)
//      3: eb fe                  jmp    3
const std::vector<unsigned char> kFlagThenSpin = {0x48, 0x89, 0x37, 0xeb, 0xfe};
constexpr uint64_t kSpinOffset = 0x3;
// Pushes (with rsp wherever the frame put it); syscall.
//      0: 50                     push   %rax
//      1: 0f 05                  syscall
const std::vector<unsigned char> kPush = {0x50, 0x0f, 0x05};
// Patches the immediate of its own next instruction (1 -> 2), then reports it.
//      0: c6 05 01 00 00 00 02   movb   $0x2,0x1(%rip)        # 8, the immediate below
//      7: b8 01 00 00 00         mov    $0x1,%eax
//      c: 0f 05                  syscall
//      e: 0f 0b                  ud2
const std::vector<unsigned char> kPatchNext = {0xc6, 0x05, 0x01, 0x00, 0x00, 0x00, 0x02, 0xb8,
                                               0x01, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b};
// Stores rsi at rdi (through another address of the code's page), syscall (the vkernel
// answers), then jumps to rdx, the patched code.
//      0: 48 89 37               mov    %rsi,(%rdi)
//      3: 0f 05                  syscall
//      5: ff e2                  jmp    *%rdx
const std::vector<unsigned char> kStoreThenJump = {0x48, 0x89, 0x37, 0x0f, 0x05, 0xff, 0xe2};

// mov $imm, %eax; syscall; ud2: a guest whose identity the vkernel sees in rax.
//      0: b8 xx xx xx xx         mov    $imm,%eax
//      5: 0f 05                  syscall
//      7: 0f 0b                  ud2
std::vector<unsigned char> Marker(uint32_t imm) {
  return {0xb8,
          static_cast<unsigned char>(imm),
          static_cast<unsigned char>(imm >> 8),
          static_cast<unsigned char>(imm >> 16),
          static_cast<unsigned char>(imm >> 24),
          0x0f,
          0x05,
          0x0f,
          0x0b};
}
// mov $imm8, %al; syscall; ud2; nop; nop (8 bytes: one guest store).
//      0: b0 xx                  mov    $imm,%al
//      2: 0f 05                  syscall
//      4: 0f 0b                  ud2
//      6: 90                     nop
//      7: 90                     nop
uint64_t SmallMarker(uint8_t imm) {
  const unsigned char b[8] = {0xb0, imm, 0x0f, 0x05, 0x0f, 0x0b, 0x90, 0x90};
  uint64_t v;
  memcpy(&v, b, 8);
  return v;
}

// ---- Describing frames ------------------------------------------------------------------

std::string Hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string Describe(const trapframe& tf) {
  return "trapno=" + std::to_string(tf.tf_trapno) + " err=" + Hex(tf.tf_err) +
         " addr=" + Hex(tf.tf_addr) + " rip=" + Hex(tf.tf_rip) + " rsp=" + Hex(tf.tf_rsp) +
         " rax=" + Hex(tf.tf_rax) + " rdi=" + Hex(tf.tf_rdi);
}

trapframe Frame(uint64_t rip) {
  trapframe tf = {};
  tf.tf_rip = static_cast<int64_t>(rip);
  tf.tf_rsp = static_cast<int64_t>(kStackTop - 256);
  tf.tf_rflags = 0x202;
  tf.tf_cs = kUserCs;
  tf.tf_ss = kUserSs;
  return tf;
}

// ---- Looking at the host from outside ----------------------------------------------------

std::atomic<int> g_vkernel_signals{0};
void CountVkernelSignal(int) { g_vkernel_signals.fetch_add(1); }

std::string ReadFile(const std::string& path) {
  std::string out;
  if (FILE* f = fopen(path.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    fclose(f);
  }
  return out;
}

// The value of "Key:" in a /proc status file ("" if absent).
std::string StatusField(const std::string& status, const std::string& key) {
  const size_t at = status.find("\n" + key + ":");
  if (at == std::string::npos) return "";
  size_t begin = at + key.size() + 2;
  while (begin < status.size() && (status[begin] == ' ' || status[begin] == '\t')) ++begin;
  return status.substr(begin, status.find('\n', begin) - begin);
}

std::string Readlink(const std::string& path) {
  char buf[4096];
  const ssize_t n = readlink(path.c_str(), buf, sizeof(buf));
  return n < 0 ? "?" : std::string(buf, static_cast<size_t>(n));
}


// Everything about one process that a guest's escaped system call could change.
struct ProcessState {
  pid_t ppid = 0, pgid = 0, sid = 0;
  char state = 0;
  std::string comm, cwd, sig_ign, sig_cgt;
  int fds = 0;
  std::map<pid_t, std::string> tasks;  // tid -> "comm tracer"
};
using HostState = std::map<pid_t, ProcessState>;

bool ReadStat(pid_t pid, pid_t* ppid, pid_t* pgid, pid_t* sid, char* state) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t close_paren = stat.rfind(')');
  if (close_paren == std::string::npos) return false;
  return sscanf(stat.c_str() + close_paren + 1, " %c %d %d %d", state, ppid, pgid, sid) == 4;
}

// The test process and every process below it.
HostState SnapshotHost() {
  std::map<pid_t, pid_t> parent;
  if (DIR* dir = opendir("/proc")) {
    while (dirent* e = readdir(dir)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      pid_t ppid, pgid, sid;
      char state;
      const pid_t pid = atoi(e->d_name);
      if (ReadStat(pid, &ppid, &pgid, &sid, &state)) parent[pid] = ppid;
    }
    closedir(dir);
  }
  std::set<pid_t> tree = {getpid()};
  for (bool grew = true; grew;) {
    grew = false;
    for (const auto& [pid, ppid] : parent) {
      if (tree.count(ppid) && !tree.count(pid)) grew = tree.insert(pid).second;
    }
  }
  HostState out;
  for (pid_t pid : tree) {
    ProcessState p;
    const std::string base = "/proc/" + std::to_string(pid);
    if (!ReadStat(pid, &p.ppid, &p.pgid, &p.sid, &p.state)) continue;
    const std::string status = ReadFile(base + "/status");
    p.comm = StatusField(status, "Name");
    p.sig_ign = StatusField(status, "SigIgn");
    p.sig_cgt = StatusField(status, "SigCgt");
    p.cwd = Readlink(base + "/cwd");
    p.fds = static_cast<int>(std::max(0L, vkrt_test::CountDirEntries(base + "/fd")));
    if (DIR* dir = opendir((base + "/task").c_str())) {
      while (dirent* e = readdir(dir)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        const std::string task = ReadFile(base + "/task/" + e->d_name + "/status");
        p.tasks[atoi(e->d_name)] =
            StatusField(task, "Name") + " tracer " + StatusField(task, "TracerPid");
      }
      closedir(dir);
    }
    out[pid] = p;
  }
  return out;
}

// What changed from `before` to `after` that no backend does by design while a guest is
// stopped: a process appeared, vanished or changed; a process has more threads; a thread
// kept by both got another name or tracer. ("" if nothing.) A thread may vanish (a guest can
// end its own context thread) and be replaced by one new thread.
std::string HostDiff(const HostState& before, const HostState& after) {
  std::string diff;
  for (const auto& [pid, p] : after) {
    auto it = before.find(pid);
    if (it == before.end()) {
      diff += " new process " + std::to_string(pid) + " (" + p.comm + ", parent " +
              std::to_string(p.ppid) + ");";
      continue;
    }
    const ProcessState& b = it->second;
    if (b.ppid != p.ppid || b.pgid != p.pgid || b.sid != p.sid) {
      diff += " process " + std::to_string(pid) + " moved (parent/group/session);";
    }
    if (b.comm != p.comm) diff += " process " + std::to_string(pid) + " renamed to " + p.comm + ";";
    if (b.cwd != p.cwd) diff += " process " + std::to_string(pid) + " changed directory to " + p.cwd + ";";
    if (b.sig_ign != p.sig_ign || b.sig_cgt != p.sig_cgt) {
      diff += " process " + std::to_string(pid) + " changed its signal dispositions;";
    }
    if (b.fds != p.fds) {
      diff += " process " + std::to_string(pid) + " has " + std::to_string(p.fds) +
              " descriptors, had " + std::to_string(b.fds) + ";";
    }
    if (p.tasks.size() > b.tasks.size()) {
      diff += " process " + std::to_string(pid) + " has " + std::to_string(p.tasks.size()) +
              " threads, had " + std::to_string(b.tasks.size()) + ";";
    }
    for (const auto& [tid, what] : p.tasks) {
      auto t = b.tasks.find(tid);
      if (t != b.tasks.end() && t->second != what) {
        diff += " thread " + std::to_string(tid) + " was '" + t->second + "', is '" + what + "';";
      }
    }
  }
  for (const auto& [pid, p] : before) {
    if (!after.count(pid)) diff += " process " + std::to_string(pid) + " (" + p.comm + ") vanished;";
  }
  return diff;
}

// ---- The fixture -------------------------------------------------------------------------

class Hostile : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (const std::string why = UnavailableReason(GetParam()); !why.empty()) {
      GTEST_SKIP() << why;
    }
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(
        std::string(info->test_suite_name()) + "." + info->name(), std::chrono::seconds(900));
    // Orphans of a process that escaped would be reparented here, not to init, so that the
    // snapshots still see them.
    ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1)) << strerror(errno);
    char dir_template[] = "/tmp/vkrt-hostile-XXXXXX";
    ASSERT_NE(nullptr, mkdtemp(dir_template)) << strerror(errno);
    dir_ = dir_template;
    {
      const int fd = open((dir_ + "/victim").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
      ASSERT_LE(0, fd) << strerror(errno);
      ASSERT_EQ(7, write(fd, "victim\n", 7));
      close(fd);
    }
    // A descriptor of the test's under a fixed number: on kvm the guest runs in this very
    // process, so an escaped write(kSinkFd) would land in this file.
    const int sink = open((dir_ + "/sink").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
    ASSERT_LE(0, sink) << strerror(errno);
    ASSERT_EQ(kSinkFd, dup2(sink, kSinkFd)) << strerror(errno);
    close(sink);
    StartWatcher();
    ASSERT_GT(watcher_, 0);
    struct sigaction sa = {};
    sa.sa_handler = CountVkernelSignal;
    sigaction(SIGUSR2, &sa, &old_usr2_);
    g_vkernel_signals = 0;
    ASSERT_NO_FATAL_FAILURE(CreateVmspace());
  }

  void TearDown() override {
    if (live_) {
      EXPECT_EQ(0, vmspace_destroy(&id_)) << strerror(errno);
    }
    live_ = false;
    if (watcher_ > 0) {
      kill(watcher_, SIGKILL);
      waitpid(watcher_, nullptr, 0);
    }
    // Reap anything an escape may have left (this process is a subreaper).
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    sigaction(SIGUSR2, &old_usr2_, nullptr);
    close(kSinkFd);
    if (!dir_.empty()) {
      if (DIR* dir = opendir(dir_.c_str())) {
        while (dirent* e = readdir(dir)) {
          if (e->d_name[0] == '.') continue;
          const std::string path = dir_ + "/" + e->d_name;
          if (unlink(path.c_str()) != 0) rmdir(path.c_str());
        }
        closedir(dir);
      }
      rmdir(dir_.c_str());
    }
    watchdog_.reset();
  }

  // A process that does nothing, with SIGUSR1 blocked: a signal sent to it stays pending,
  // where /proc shows it; SIGKILL or a tracer would show as well.
  void StartWatcher() {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    watcher_ = fork();
    if (watcher_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      for (;;) pause();
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }

  // A fresh vmspace: code, data with the strings the guests use, the stack, a shared flag
  // page. A first RUN creates the calling thread's guest context (backends create their
  // context threads then, by design), and the host's state is recorded after it.
  void CreateVmspace() {
    ASSERT_EQ(0, vmspace_create(&id_, GetParam(), nullptr)) << strerror(errno);
    live_ = true;
    ASSERT_NO_FATAL_FAILURE(Map(kCodeAddr, kPage, kRwx));
    ASSERT_NO_FATAL_FAILURE(Map(kDataAddr, kDataLen, kRw));
    ASSERT_NO_FATAL_FAILURE(Map(kStackBase, kStackSize, kRw));
    auto put = [&](uint64_t addr, const std::string& s) {
      ASSERT_EQ(static_cast<ssize_t>(s.size() + 1),
                vmspace_pwrite(&id_, s.c_str(), s.size() + 1, 0, static_cast<off_t>(addr)));
    };
    put(kPathCreated, dir_ + "/created");
    put(kPathNewDir, dir_ + "/newdir");
    put(kPathVictim, dir_ + "/victim");
    put(kPathRenamed, dir_ + "/renamed");
    put(kShPath, "/bin/sh");
    put(kDashC, "-c");
    put(kShCommand, ": > " + dir_ + "/execve");
    put(kMessage, "pwned\n");
    put(kPathDir, dir_);
    const uint64_t argv64[4] = {kShPath, kDashC, kShCommand, 0};
    ASSERT_EQ(32, vmspace_pwrite(&id_, argv64, 32, 0, kArgv64));
    const uint32_t argv32[4] = {kShPath, kDashC, kShCommand, 0};
    ASSERT_EQ(16, vmspace_pwrite(&id_, argv32, 16, 0, kArgv32));
    clone_args ca = {};
    ca.exit_signal = SIGCHLD;
    ASSERT_EQ(static_cast<ssize_t>(sizeof(ca)), vmspace_pwrite(&id_, &ca, sizeof(ca), 0, kCloneArgs));
    const uint64_t ksa[4] = {reinterpret_cast<uint64_t>(SIG_IGN), 0, 0, 0};
    ASSERT_EQ(32, vmspace_pwrite(&id_, ksa, 32, 0, kSigaction));
    const uint64_t how[3] = {O_CREAT | O_WRONLY, 0600, 0};
    ASSERT_EQ(24, vmspace_pwrite(&id_, how, 24, 0, kOpenHow));
    ASSERT_NO_FATAL_FAILURE(WarmUp());
  }

  void RecreateVmspace() {
    if (live_) {
      EXPECT_EQ(0, vmspace_destroy(&id_)) << strerror(errno);
    }
    live_ = false;
    ASSERT_NO_FATAL_FAILURE(ExpectHostSettlesWithoutVmspace());
    ASSERT_NO_FATAL_FAILURE(CreateVmspace());
  }

  void WarmUp() {
    ASSERT_NO_FATAL_FAILURE(Load(kSyscallReport));
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rax = SYS_getpid;
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
    baseline_ = SnapshotHost();
  }

  // With no vmspace, the host is what it was before the first: the test process and its
  // watcher (a dying stub may take a moment to be reaped: poll, within a limit).
  void ExpectHostSettlesWithoutVmspace() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    std::string diff;
    for (;;) {
      const HostState now = SnapshotHost();
      diff.clear();
      for (const auto& [pid, p] : now) {
        if (pid != getpid() && pid != watcher_) {
          diff += " process " + std::to_string(pid) + " (" + p.comm + ", state " + p.state + ")";
        }
      }
      if (diff.empty() || std::chrono::steady_clock::now() > deadline) break;
      sched_yield();
    }
    EXPECT_EQ("", diff) << "processes left under the test process with no vmspace";
  }

  void Map(uint64_t addr, uint64_t len, int prot) {
    ASSERT_EQ(reinterpret_cast<void*>(addr),
              vmspace_mmap(&id_, reinterpret_cast<void*>(addr), len, prot, kAnonFixed, -1, 0))
        << Hex(addr) << ": " << strerror(errno);
  }

  void Load(const std::vector<unsigned char>& code, uint64_t addr = kCodeAddr) {
    ASSERT_EQ(static_cast<ssize_t>(code.size()),
              vmspace_pwrite(&id_, code.data(), code.size(), 0, static_cast<off_t>(addr)))
        << strerror(errno);
  }

  int Run(trapframe* tf, uint64_t limit_ns = kLongRun) {
    vextframe vf = {};
    return vkrt_vmspace_run(&id_, tf, &vf, limit_ns);
  }

  void RunExpect(trapframe* tf, int64_t trapno) {
    errno = 0;
    const int rc = Run(tf);
    const int err = errno;
    ASSERT_EQ(0, rc) << "RUN: " << strerror(err) << " (" << vkrt_last_error() << ")";
    ASSERT_EQ(trapno, tf->tf_trapno) << Describe(*tf);
    EXPECT_EQ(kUserCs, tf->tf_cs);
    EXPECT_EQ(kUserSs, tf->tf_ss);
  }

  // No effect on the host so far: the directory holds only what the test put there,
  // unchanged; no signal reached the vkernel or the watcher; nobody traces the watcher; and
  // no process anywhere under the test process changed since the last WarmUp.
  // With `runtime_died` (RUN said the guest's address space died), the dying stub is left
  // out: RecreateVmspace then checks that nothing at all is left under the test process.
  void ExpectNoHostEffect(const std::string& what, bool runtime_died = false) {
    std::set<std::string> names;
    if (DIR* dir = opendir(dir_.c_str())) {
      while (dirent* e = readdir(dir)) {
        if (e->d_name[0] != '.') names.insert(e->d_name);
      }
      closedir(dir);
    }
    const std::set<std::string> expected = {"sink", "victim"};
    std::string listing;
    for (const std::string& n : names) listing += " " + n;
    EXPECT_EQ(expected, names) << what << ": the directory holds" << listing;
    EXPECT_EQ("victim\n", ReadFile(dir_ + "/victim")) << what << ": the victim file changed";
    struct stat st = {};
    EXPECT_EQ(0, stat((dir_ + "/sink").c_str(), &st));
    EXPECT_EQ(0, st.st_size) << what << ": something was written to the sink";
    EXPECT_EQ(0, g_vkernel_signals.load()) << what << ": the vkernel received a signal";
    const std::string status = ReadFile("/proc/" + std::to_string(watcher_) + "/status");
    EXPECT_EQ("0", StatusField(status, "TracerPid")) << what << ": the watcher is traced";
    EXPECT_EQ("0000000000000000", StatusField(status, "SigPnd")) << what << ": watcher signalled";
    EXPECT_EQ("0000000000000000", StatusField(status, "ShdPnd")) << what << ": watcher signalled";
    const std::string state = StatusField(status, "State");
    EXPECT_TRUE(!state.empty() && (state[0] == 'S' || state[0] == 'R'))
        << what << ": the watcher is " << state;
    if (live_ && !runtime_died) {
      EXPECT_EQ("", HostDiff(baseline_, SnapshotHost())) << what;
    }
  }

  // Records the host's state again, after the test itself opened descriptors or mapped
  // objects (which the backends hold by design).
  void Rebaseline() { baseline_ = SnapshotHost(); }

  char id_ = 0;
  bool live_ = false;
  std::string dir_;
  pid_t watcher_ = -1;
  HostState baseline_;
  struct sigaction old_usr2_ = {};
  std::unique_ptr<Watchdog> watchdog_;
};

// ---- System calls ------------------------------------------------------------------------

struct Call {
  std::string name;
  int64_t nr;
  int64_t a[6];
};

// Every kind of host system call a guest could want, with arguments that would take effect
// if the host ran them (and that, if one escaped, could harm nothing but this test). For
// `int $0x80`, i386 numbers and a[] = ebx ecx edx esi edi ebp.
std::vector<Call> NativeCalls(pid_t watcher) {
  const int64_t me = getpid();
  const int64_t thread_flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                               CLONE_SYSVSEM;
  const int64_t excl = O_CREAT | O_WRONLY | O_EXCL;
  const int64_t dir = static_cast<int64_t>(kPathCreated);  // strings live in the data page
  return {
      {"open(O_CREAT)", SYS_open, {dir, excl, 0600}},
      {"openat(O_CREAT)", SYS_openat, {AT_FDCWD, dir, excl, 0600}},
      {"openat2(O_CREAT)", SYS_openat2, {AT_FDCWD, dir, static_cast<int64_t>(kOpenHow), 24}},
      {"creat", SYS_creat, {dir, 0600}},
      {"mkdir", SYS_mkdir, {static_cast<int64_t>(kPathNewDir), 0700}},
      {"mknod(S_IFREG)", SYS_mknod, {dir, S_IFREG | 0600, 0}},
      {"link", SYS_link, {static_cast<int64_t>(kPathVictim), dir}},
      {"symlink", SYS_symlink, {static_cast<int64_t>(kPathVictim), dir}},
      {"unlink(victim)", SYS_unlink, {static_cast<int64_t>(kPathVictim)}},
      {"rename(victim)", SYS_rename,
       {static_cast<int64_t>(kPathVictim), static_cast<int64_t>(kPathRenamed)}},
      {"truncate(victim)", SYS_truncate, {static_cast<int64_t>(kPathVictim), 0}},
      {"write(sink)", SYS_write, {kSinkFd, static_cast<int64_t>(kMessage), 6}},
      {"chdir(dir)", SYS_chdir, {static_cast<int64_t>(kPathDir)}},
      {"execve(/bin/sh)", SYS_execve, {static_cast<int64_t>(kShPath), static_cast<int64_t>(kArgv64), 0}},
      {"execveat(/bin/sh)", SYS_execveat,
       {AT_FDCWD, static_cast<int64_t>(kShPath), static_cast<int64_t>(kArgv64), 0, 0}},
      {"kill(watcher, SIGUSR1)", SYS_kill, {watcher, SIGUSR1}},
      {"kill(watcher, SIGKILL)", SYS_kill, {watcher, SIGKILL}},
      {"tgkill(watcher, SIGUSR1)", SYS_tgkill, {watcher, watcher, SIGUSR1}},
      {"tkill(watcher, SIGUSR1)", SYS_tkill, {watcher, SIGUSR1}},
      {"kill(vkernel, SIGUSR2)", SYS_kill, {me, SIGUSR2}},
      {"tgkill(vkernel, SIGUSR2)", SYS_tgkill, {me, static_cast<int64_t>(gettid()), SIGUSR2}},
      {"ptrace(PTRACE_ATTACH, watcher)", SYS_ptrace, {PTRACE_ATTACH, watcher}},
      {"ptrace(PTRACE_SEIZE, watcher)", SYS_ptrace, {PTRACE_SEIZE, watcher}},
      {"ptrace(PTRACE_TRACEME)", SYS_ptrace, {PTRACE_TRACEME}},
      {"fork", SYS_fork, {}},
      {"vfork", SYS_vfork, {}},
      {"clone(SIGCHLD)", SYS_clone, {SIGCHLD}},
      {"clone(thread)", SYS_clone, {thread_flags, static_cast<int64_t>(kStackTop - 4096)}},
      {"clone3(fork)", SYS_clone3, {static_cast<int64_t>(kCloneArgs), sizeof(clone_args)}},
      {"mmap(MAP_FIXED)", SYS_mmap,
       {static_cast<int64_t>(kProbeAddr), kPage, kRw, kAnonFixed, -1, 0}},
      {"mprotect(code, PROT_NONE)", SYS_mprotect, {static_cast<int64_t>(kCodeAddr), kPage, 0}},
      {"munmap(code)", SYS_munmap, {static_cast<int64_t>(kCodeAddr), kPage}},
      {"mremap(code -> probe)", SYS_mremap,
       {static_cast<int64_t>(kCodeAddr), kPage, kPage, MREMAP_MAYMOVE | MREMAP_FIXED,
        static_cast<int64_t>(kProbeAddr)}},
      {"socket(AF_INET)", SYS_socket, {AF_INET, SOCK_STREAM, 0}},
      {"socket(AF_UNIX)", SYS_socket, {AF_UNIX, SOCK_DGRAM, 0}},
      {"eventfd2", SYS_eventfd2, {0, 0}},
      {"dup(0)", SYS_dup, {0}},
      {"close(0)", SYS_close, {0}},
      {"rt_sigaction(SIGTERM, SIG_IGN)", SYS_rt_sigaction,
       {SIGTERM, static_cast<int64_t>(kSigaction), 0, 8}},
      {"prctl(PR_SET_NAME)", SYS_prctl, {PR_SET_NAME, static_cast<int64_t>(kMessage)}},
      {"setsid", SYS_setsid, {}},
      {"setpgid(0, 0)", SYS_setpgid, {0, 0}},
      {"arch_prctl(ARCH_SET_FS)", SYS_arch_prctl, {0x1002, 0x12340000}},
      {"exit(0)", SYS_exit, {0}},
      {"exit_group(0)", SYS_exit_group, {0}},
  };
}

std::vector<Call> I386Calls(pid_t watcher) {
  const int64_t excl = O_CREAT | O_WRONLY | O_EXCL;
  const int64_t path = static_cast<int64_t>(kPathCreated);
  return {
      {"i386 open(O_CREAT)", 5, {path, excl, 0600}},
      {"i386 creat", 8, {path, 0600}},
      {"i386 openat(O_CREAT)", 295, {AT_FDCWD, path, excl, 0600}},
      {"i386 mkdir", 39, {static_cast<int64_t>(kPathNewDir), 0700}},
      {"i386 unlink(victim)", 10, {static_cast<int64_t>(kPathVictim)}},
      {"i386 rename(victim)", 38,
       {static_cast<int64_t>(kPathVictim), static_cast<int64_t>(kPathRenamed)}},
      {"i386 write(sink)", 4, {kSinkFd, static_cast<int64_t>(kMessage), 6}},
      {"i386 execve(/bin/sh)", 11, {static_cast<int64_t>(kShPath), static_cast<int64_t>(kArgv32), 0}},
      {"i386 kill(watcher, SIGUSR1)", 37, {watcher, SIGUSR1}},
      {"i386 tgkill(watcher, SIGUSR1)", 270, {watcher, watcher, SIGUSR1}},
      {"i386 kill(vkernel, SIGUSR2)", 37, {getpid(), SIGUSR2}},
      {"i386 ptrace(PTRACE_ATTACH, watcher)", 26, {PTRACE_ATTACH, watcher}},
      {"i386 ptrace(PTRACE_TRACEME)", 26, {PTRACE_TRACEME}},
      {"i386 fork", 2, {}},
      {"i386 vfork", 190, {}},
      {"i386 clone(SIGCHLD)", 120, {SIGCHLD}},
      {"i386 mmap2(MAP_FIXED)", 192, {static_cast<int64_t>(kProbeAddr), kPage, kRw, kAnonFixed, -1, 0}},
      {"i386 munmap(code)", 91, {static_cast<int64_t>(kCodeAddr), kPage}},
      {"i386 socket(AF_INET)", 359, {AF_INET, SOCK_STREAM, 0}},
      {"i386 exit(0)", 1, {0}},
      {"i386 exit_group(0)", 252, {0}},
  };
}

void SetNativeArgs(trapframe* tf, const int64_t a[6]) {
  tf->tf_rdi = a[0];
  tf->tf_rsi = a[1];
  tf->tf_rdx = a[2];
  tf->tf_r10 = a[3];
  tf->tf_r8 = a[4];
  tf->tf_r9 = a[5];
}

void SetI386Args(trapframe* tf, const int64_t a[6]) {
  tf->tf_rbx = a[0];
  tf->tf_rcx = a[1];
  tf->tf_rdx = a[2];
  tf->tf_rsi = a[3];
  tf->tf_rdi = a[4];
  tf->tf_rbp = a[5];
}

class HostileSyscalls : public Hostile {
 protected:
  // One call: the trap with every argument as the guest made it, no host effect, then the
  // vkernel's refusal reaches the guest, which reports it (getpid with rdi = -ENOSYS) and
  // ends in ud2, still under the vkernel's control.
  void ExpectRefused(const Call& c, bool int80) {
    SCOPED_TRACE(c.name);
    ASSERT_NO_FATAL_FAILURE(Load(int80 ? kInt80Report : kSyscallReport));
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rax = c.nr;
    (int80 ? SetI386Args : SetNativeArgs)(&tf, c.a);
    const trapframe sent = tf;
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, int80 ? T_SYSCALL80 : T_FAST_SYSCALL));
    EXPECT_EQ(c.nr, tf.tf_rax) << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr + kReportOffset), tf.tf_rip) << Describe(tf);
    EXPECT_EQ(2, tf.tf_err);
    if (int80) {
      EXPECT_EQ(sent.tf_rbx, tf.tf_rbx);
      EXPECT_EQ(sent.tf_rcx, tf.tf_rcx);
      EXPECT_EQ(sent.tf_rbp, tf.tf_rbp);
    } else {
      EXPECT_EQ(sent.tf_r10, tf.tf_r10);
      EXPECT_EQ(sent.tf_r8, tf.tf_r8);
      EXPECT_EQ(sent.tf_r9, tf.tf_r9);
      EXPECT_EQ(tf.tf_r10, tf.tf_rcx) << "tf_rcx = r10, as DragonFly stores it";
    }
    EXPECT_EQ(sent.tf_rdi, tf.tf_rdi);
    EXPECT_EQ(sent.tf_rsi, tf.tf_rsi);
    EXPECT_EQ(sent.tf_rdx, tf.tf_rdx);
    ExpectNoHostEffect(c.name + ", stopped at the trap");
    tf.tf_rax = kEnosys;
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
    EXPECT_EQ(SYS_getpid, tf.tf_rax) << Describe(tf);
    EXPECT_EQ(kEnosys, tf.tf_rdi) << "the guest got the vkernel's answer";
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr + kUd2Offset), tf.tf_rip);
    ExpectNoHostEffect(c.name + ", after the refusal");
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_PRIVINFLT));
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr + kUd2Offset), tf.tf_rip);
    ExpectNoHostEffect(c.name + ", at the end");
  }
};

TEST_P(HostileSyscalls, RawSyscallsWithRealArgumentsNeverReachTheHost) {
  for (const Call& c : NativeCalls(watcher_)) {
    ASSERT_NO_FATAL_FAILURE(ExpectRefused(c, false));
  }
}

TEST_P(HostileSyscalls, Int80SyscallsWithRealArgumentsNeverReachTheHost) {
  for (const Call& c : I386Calls(watcher_)) {
    ASSERT_NO_FATAL_FAILURE(ExpectRefused(c, true));
  }
}

// Numbers the host kernel would read differently from what the guest's rax says: x32
// calls, high bits above the 32 the kernel looks at, numbers beyond any table.
TEST_P(HostileSyscalls, OddSyscallNumbersNeverReachTheHost) {
  const int64_t path = static_cast<int64_t>(kPathCreated);
  const int64_t excl = O_CREAT | O_WRONLY | O_EXCL;
  const Call calls[] = {
      {"x32 openat(O_CREAT)", 0x40000000 | SYS_openat, {AT_FDCWD, path, excl, 0600}},
      {"x32 execve", 0x40000000 | 520, {static_cast<int64_t>(kShPath), static_cast<int64_t>(kArgv64), 0}},
      {"x32 kill(watcher)", 0x40000000 | SYS_kill, {watcher_, SIGUSR1}},
      {"x32 fork", 0x40000000 | SYS_fork, {}},
      {"openat with bit 32 set", (int64_t{1} << 32) | SYS_openat, {AT_FDCWD, path, excl, 0600}},
      {"kill with high bits", static_cast<int64_t>(0xffffffff00000000ULL) | SYS_kill,
       {watcher_, SIGUSR1}},
      {"fork with bit 62 set", (int64_t{1} << 62) | SYS_fork, {}},
      {"-1", -1, {}},
      {"0x7fffffff", 0x7fffffff, {}},
      {"0x80000000", 0x80000000LL, {}},
  };
  for (const Call& c : calls) ASSERT_NO_FATAL_FAILURE(ExpectRefused(c, false));
}

TEST_P(HostileSyscalls, ForkAndCloneCreateNoHostProcess) {
  // The process-creating subset, also from inside the guest's own stack frame layout: a
  // second time each, after the guest already was refused once.
  for (int round = 0; round < 2; ++round) {
    for (const Call& c : NativeCalls(watcher_)) {
      if (c.nr == SYS_fork || c.nr == SYS_vfork || c.nr == SYS_clone || c.nr == SYS_clone3) {
        ASSERT_NO_FATAL_FAILURE(ExpectRefused(c, false));
      }
    }
    for (const Call& c : I386Calls(watcher_)) {
      if (c.nr == 2 || c.nr == 190 || c.nr == 120) {
        ASSERT_NO_FATAL_FAILURE(ExpectRefused(c, true));
      }
    }
  }
}

// System calls that would harm the machine if one escaped even with zero arguments (the
// hostname, reboot, kexec, modules, swap, the clock, accounting, the terminal), or hang
// the caller, are left out of the sweeps; the calls above cover the kinds of effect.
bool UnsafeWithZeroArguments(int64_t nr, bool i386) {
  static const std::set<int64_t> native = {SYS_vhangup,       SYS_reboot,        SYS_sethostname,
                                           SYS_setdomainname, SYS_acct,          SYS_settimeofday,
                                           SYS_swapon,        SYS_swapoff,       SYS_init_module,
                                           SYS_delete_module, SYS_finit_module,  SYS_kexec_load,
                                           SYS_kexec_file_load, SYS_pause,       SYS_sync,
                                           SYS_syncfs,        SYS_adjtimex,      SYS_clock_settime,
                                           SYS_clock_adjtime};
  // i386: stime 25, pause 29, sync 36, acct 51, sigsuspend 72, sethostname 74,
  // settimeofday 79, swapon 87, reboot 88, vhangup 111, swapoff 115, setdomainname 121,
  // adjtimex 124, init_module 128, delete_module 129, clock_settime 264, kexec_load 283,
  // clock_adjtime 343, syncfs 344, finit_module 350.
  static const std::set<int64_t> compat = {25,  29,  36,  51,  72,  74,  79,  87,  88,  111,
                                           115, 121, 124, 128, 129, 264, 283, 343, 344, 350};
  return (i386 ? compat : native).count(nr & 0x3fffffff) != 0;
}

// Every number, native and x32 (0..547 each) and i386 (0..470), all arguments zero: each
// traps with its number, and the guest goes on after the vkernel's answer.
TEST_P(HostileSyscalls, EverySyscallNumberTraps) {
  std::vector<int64_t> numbers;
  for (int64_t n = 0; n < 548; ++n) {
    if (UnsafeWithZeroArguments(n, false)) continue;
    numbers.push_back(n);
    numbers.push_back(0x40000000 | n);
  }
  int native = 0, compat = 0, not_trapped = 0;
  for (int pass = 0; pass < 2; ++pass) {
    const bool int80 = pass == 1;
    ASSERT_NO_FATAL_FAILURE(Load(int80 ? kInt80Report : kSyscallReport));
    std::vector<int64_t> list = numbers;
    if (int80) {
      list.clear();
      for (int64_t n = 0; n < 471; ++n) {
        if (!UnsafeWithZeroArguments(n, true)) list.push_back(n);
      }
    }
    for (int64_t nr : list) {
      trapframe tf = Frame(kCodeAddr);
      tf.tf_rax = nr;
      errno = 0;
      ASSERT_EQ(0, Run(&tf)) << "number " << Hex(nr) << ": " << strerror(errno);
      if (!int80 && nr == 336 && GetParam() == VKRT_TYPE_SECCOMP &&
          tf.tf_trapno == T_FAST_SYSCALL && tf.tf_rax == SYS_getpid && tf.tf_rdi == -ENXIO) {
        // docs/security.md, "Known limit": Linux 6.11+ lets 336 (uprobe) past every seccomp
        // filter; outside a uprobe it returns -ENXIO and does nothing else.
        ++not_trapped;
        tf.tf_rax = 0;
        ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_PRIVINFLT));
        continue;
      }
      ASSERT_EQ(int80 ? T_SYSCALL80 : T_FAST_SYSCALL, tf.tf_trapno)
          << "number " << Hex(nr) << ": " << Describe(tf);
      ASSERT_EQ(nr, tf.tf_rax) << Describe(tf);
      ASSERT_EQ(static_cast<int64_t>(kCodeAddr + kReportOffset), tf.tf_rip) << Describe(tf);
      tf.tf_rax = kEnosys;
      ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL)) << "after number " << Hex(nr);
      ASSERT_EQ(kEnosys, tf.tf_rdi);
      ++(int80 ? compat : native);
      if ((native + compat) % 128 == 0) ExpectNoHostEffect("sweep up to " + Hex(nr));
    }
  }
  ExpectNoHostEffect("the sweeps");
  printf("%d native/x32 and %d i386 numbers trapped; %d passed untrapped (documented)\n",
         native, compat, not_trapped);
}

TEST_P(HostileSyscalls, SysenterNeverReachesTheHost) {
  // i386 open(O_CREAT) in the registers; Linux's 32-bit entry takes its sixth argument from
  // the stack at ebp: an unreadable and a readable one.
  ASSERT_NO_FATAL_FAILURE(Load(kSysenter));
  for (uint64_t rbp : {uint64_t{0}, kStackTop - 0x100}) {
    const int64_t args[6] = {static_cast<int64_t>(kPathCreated), O_CREAT | O_WRONLY | O_EXCL,
                             0600, 0, 0, static_cast<int64_t>(rbp)};
    for (int64_t nr : {5, 2, 11, 37}) {  // open, fork, execve, kill
      trapframe tf = Frame(kCodeAddr);
      tf.tf_rax = nr;
      SetI386Args(&tf, args);
      if (nr == 11) {
        tf.tf_rbx = static_cast<int64_t>(kShPath);
        tf.tf_rcx = static_cast<int64_t>(kArgv32);
        tf.tf_rdx = 0;
      } else if (nr == 37) {
        tf.tf_rbx = watcher_;
        tf.tf_rcx = SIGUSR1;
      }
      errno = 0;
      ASSERT_EQ(0, Run(&tf)) << strerror(errno);
      // docs/api.md: T_PRIVINFLT at the instruction; where Linux enters its 32-bit path
      // (Intel) and cannot read the stack at ebp, a fetch fault at its landing pad. Never a
      // system call.
      EXPECT_TRUE(tf.tf_trapno == T_PRIVINFLT || tf.tf_trapno == T_PAGEFLT)
          << "nr " << nr << " rbp " << Hex(rbp) << ": " << Describe(tf);
      ExpectNoHostEffect("sysenter " + std::to_string(nr));
      tf = Frame(kCodeAddr + 2);  // the guest is still there
      ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_PRIVINFLT));
    }
  }
}

// The vsyscall page, which Linux emulates inside the kernel even under PTRACE_SYSEMU: each
// entry (gettimeofday, time, getcpu) called, jumped to by a RUN, and a non-entry offset.
TEST_P(HostileSyscalls, VsyscallPageIsNeverEmulatedForTheGuest) {
  ASSERT_NO_FATAL_FAILURE(Load(kCallRdx));
  const std::vector<unsigned char> pattern(64, 0xa5);
  for (uint64_t entry : {kVsyscall, kVsyscall + 0x400, kVsyscall + 0x800, kVsyscall + 0x10}) {
    for (int how = 0; how < 2; ++how) {
      ASSERT_EQ(64, vmspace_pwrite(&id_, pattern.data(), 64, 0, kBuffer));
      trapframe tf = Frame(how == 0 ? kCodeAddr : entry);
      tf.tf_rdx = static_cast<int64_t>(entry);
      tf.tf_rdi = static_cast<int64_t>(kBuffer);  // tv / tloc / cpu
      tf.tf_rsi = static_cast<int64_t>(kBuffer + 32);
      const int64_t rsp = tf.tf_rsp;
      ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_PAGEFLT));
      EXPECT_EQ(static_cast<int64_t>(entry), tf.tf_addr) << Describe(tf);
      EXPECT_EQ(static_cast<int64_t>(entry), tf.tf_rip) << Describe(tf);
      EXPECT_EQ(PGEX_U | PGEX_I, tf.tf_err & ~int64_t{PGEX_P}) << Describe(tf);
      EXPECT_EQ(how == 0 ? rsp - 8 : rsp, tf.tf_rsp) << "no emulated return: " << Describe(tf);
      std::vector<unsigned char> got(64);
      ASSERT_EQ(64, vmspace_pread(&id_, got.data(), 64, 0, kBuffer));
      EXPECT_EQ(pattern, got) << "the host wrote guest memory for a vsyscall at " << Hex(entry);
      ExpectNoHostEffect("vsyscall " + Hex(entry));
    }
  }
}

// ---- Runtime pages -----------------------------------------------------------------------

enum class Reach { kFault, kReadable };

// The pages a guest might reach outside its own range: everything from the top of its range
// to the end of Linux's user range (the process backends' stubs, kvm's stub and exit page),
// the vsyscall page, kvm's ring-0 slot, and the corners of the kernel half.
std::vector<uint64_t> RuntimeCandidates() {
  std::vector<uint64_t> pages;
  for (uint64_t p = kTop; p < kLinuxUserEnd; p += kPage) pages.push_back(p);
  pages.push_back(kVsyscall);
  for (uint64_t p = kKernelSlot; p < kKernelSlot + kKernelSlotSize; p += kPage) pages.push_back(p);
  pages.push_back(0xffff800000000000ULL);
  pages.push_back(0xfffffffffffff000ULL);
  return pages;
}

class HostileRuntimePages : public Hostile {
 protected:
  // Reads the first qword of `page` from the guest: readable, or a page fault there.
  Reach Probe(uint64_t page) {
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rdi = static_cast<int64_t>(page);
    errno = 0;
    const int rc = Run(&tf);
    EXPECT_EQ(0, rc) << Hex(page) << ": " << strerror(errno);
    if (rc == 0 && tf.tf_trapno == T_FAST_SYSCALL) return Reach::kReadable;
    EXPECT_EQ(T_PAGEFLT, tf.tf_trapno) << "read " << Hex(page) << ": " << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(page), tf.tf_addr) << Describe(tf);
    EXPECT_EQ(PGEX_U, tf.tf_err & (PGEX_U | PGEX_W | PGEX_I)) << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip) << Describe(tf);
    return Reach::kFault;
  }

  std::map<uint64_t, Reach> ProbeAll() {
    EXPECT_NO_FATAL_FAILURE(Load(kLoad));
    std::map<uint64_t, Reach> out;
    for (uint64_t page : RuntimeCandidates()) out[page] = Probe(page);
    return out;
  }

  // After a RUN that may have wrecked the guest's runtime: EFAULT is an acceptable answer
  // (RUN says the guest's space died); then a fresh vmspace.
  void AfterWreck(int rc, int err, const std::string& what, int* deaths) {
    if (rc == 0) return;
    EXPECT_EQ(EFAULT, err) << what << ": " << strerror(err);
    ++*deaths;
    ASSERT_NO_FATAL_FAILURE(RecreateVmspace());
  }
};

TEST_P(HostileRuntimePages, EveryReachablePageIsReadOnlyFaultingOrHarmlessToWrite) {
  std::map<uint64_t, Reach> reach = ProbeAll();
  ASSERT_FALSE(HasFailure());
  int readable = 0, writable = 0, deaths = 0;
  for (const auto& [page, r] : reach) readable += r == Reach::kReadable;
  ExpectNoHostEffect("reading runtime pages");
  // Fetches from the pages a guest cannot read: a fetch fault there.
  ASSERT_NO_FATAL_FAILURE(Load(kJumpR11));
  for (const auto& [page, r] : reach) {
    if (r != Reach::kFault) continue;
    trapframe tf = Frame(kCodeAddr);
    tf.tf_r11 = static_cast<int64_t>(page);
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_PAGEFLT)) << "fetch " << Hex(page);
    EXPECT_EQ(static_cast<int64_t>(page), tf.tf_addr) << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(page), tf.tf_rip) << Describe(tf);
    EXPECT_EQ(PGEX_U | PGEX_I, tf.tf_err & (PGEX_U | PGEX_W | PGEX_I)) << Describe(tf);
  }
  ExpectNoHostEffect("fetching from runtime pages");
  // Writes, a whole page of a pattern each: a write fault at the page, or (a page of the
  // guest's own runtime that it may scribble on) RUN goes on or says the runtime died.
  for (const auto& [page, r] : reach) {
    ASSERT_NO_FATAL_FAILURE(Load(kFill));
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rdi = static_cast<int64_t>(page);
    tf.tf_rcx = kPage / 8;
    tf.tf_rax = static_cast<int64_t>(0x4141414141414141ULL ^ page);
    errno = 0;
    const int rc = Run(&tf, kShortRun * 10);
    const int err = errno;
    const std::string what = "write " + Hex(page);
    if (rc == 0 && tf.tf_trapno == T_PAGEFLT && tf.tf_rip == static_cast<int64_t>(kCodeAddr)) {
      EXPECT_EQ(static_cast<int64_t>(page), tf.tf_addr) << what << ": " << Describe(tf);
      EXPECT_EQ(PGEX_U | PGEX_W, tf.tf_err & (PGEX_U | PGEX_W | PGEX_I)) << what;
      if (r == Reach::kReadable) {
        EXPECT_EQ(PGEX_P, tf.tf_err & PGEX_P) << what << ": readable, so present";
      }
      continue;
    }
    ++writable;
    ExpectNoHostEffect(what, rc != 0);
    ASSERT_NO_FATAL_FAILURE(AfterWreck(rc, err, what, &deaths));
  }
  ExpectNoHostEffect("writing runtime pages");
  // The vmspace (perhaps a fresh one) still works.
  ASSERT_NO_FATAL_FAILURE(Load(kSyscallReport));
  trapframe tf = Frame(kCodeAddr);
  ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
  printf("%s: %zu candidate pages, %d readable, %d writable or otherwise not refused, "
         "%d runtime deaths\n",
         BackendName(GetParam()), reach.size(), readable, writable, deaths);
}

struct Payload {
  const char* name;
  int64_t rax, rdi, rsi, rdx, r10, r8, r9, rbx, rcx, rbp;
};

// Jumps into every readable runtime page at its first byte and at every `syscall`,
// `int $0x80` and `sysenter` found in it (at any byte, aligned or not), with registers that
// would create a file, exec, signal, trace, fork or map if a host system call ran.
TEST_P(HostileRuntimePages, JumpsIntoRuntimeCodeWithCraftedRegistersNeverReachTheHost) {
  std::map<uint64_t, Reach> reach = ProbeAll();
  ASSERT_FALSE(HasFailure());
  const int64_t path = static_cast<int64_t>(kPathCreated);
  const int64_t excl = O_CREAT | O_WRONLY | O_EXCL;
  const Payload native[] = {
      {"openat(O_CREAT)", SYS_openat, AT_FDCWD, path, excl, 0600, 0, 0, 0, 0, 0},
      {"execve(/bin/sh)", SYS_execve, static_cast<int64_t>(kShPath), static_cast<int64_t>(kArgv64),
       0, 0, 0, 0, 0, 0, 0},
      {"kill(watcher)", SYS_kill, watcher_, SIGUSR1, 0, 0, 0, 0, 0, 0, 0},
      {"kill(vkernel)", SYS_kill, getpid(), SIGUSR2, 0, 0, 0, 0, 0, 0, 0},
      {"ptrace(ATTACH)", SYS_ptrace, PTRACE_ATTACH, watcher_, 0, 0, 0, 0, 0, 0, 0},
      {"clone(SIGCHLD)", SYS_clone, SIGCHLD, 0, 0, 0, 0, 0, 0, 0, 0},
      {"mmap(MAP_FIXED)", SYS_mmap, static_cast<int64_t>(kProbeAddr), kPage, kRw, kAnonFixed, -1,
       0, 0, 0, 0},
  };
  const Payload i386[] = {
      {"i386 open(O_CREAT)", 5, 0, 0, 0600, 0, 0, 0, path, excl, 0},
      {"i386 kill(watcher)", 37, 0, 0, 0, 0, 0, 0, watcher_, SIGUSR1, 0},
      {"i386 fork", 2, 0, 0, 0, 0, 0, 0, 0, 0, 0},
      {"i386 execve", 11, 0, 0, 0, 0, 0, 0, static_cast<int64_t>(kShPath),
       static_cast<int64_t>(kArgv32), 0},
  };
  struct Site {
    uint64_t va;
    bool i386;
    bool page_start;  // not a system call instruction: two payloads are enough
  };
  std::vector<Site> sites;
  ASSERT_NO_FATAL_FAILURE(Load(kCopy));
  for (const auto& [page, r] : reach) {
    if (r != Reach::kReadable) continue;
    trapframe tf = Frame(kCodeAddr);
    tf.tf_rsi = static_cast<int64_t>(page);
    tf.tf_rdi = static_cast<int64_t>(kCopyBuffer);
    tf.tf_rcx = kPage;
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL)) << "copy " << Hex(page);
    std::vector<unsigned char> bytes(kPage);
    ASSERT_EQ(static_cast<ssize_t>(kPage), vmspace_pread(&id_, bytes.data(), kPage, 0, kCopyBuffer));
    sites.push_back({page, false, true});
    for (size_t i = 0; i + 1 < kPage; ++i) {
      if (bytes[i] == 0x0f && bytes[i + 1] == 0x05) sites.push_back({page + i, false, false});
      if ((bytes[i] == 0xcd && bytes[i + 1] == 0x80) || (bytes[i] == 0x0f && bytes[i + 1] == 0x34)) {
        sites.push_back({page + i, true, false});
      }
    }
  }
  int traps = 0, syscalls = 0, interrupts = 0, deaths = 0, not_executable = 0;
  for (const Site& site : sites) {
    const Payload* list = site.i386 ? i386 : native;
    const size_t n = site.i386 ? std::size(i386) : std::size(native);
    for (size_t k = 0; k < n; ++k) {
      if (site.page_start && k != 0 && k != 5) continue;  // openat, clone
      const Payload& p = list[k];
      const std::string what = std::string(p.name) + " at " + Hex(site.va);
      ASSERT_NO_FATAL_FAILURE(Load(kJumpR11));
      trapframe tf = Frame(kCodeAddr);
      tf.tf_r11 = static_cast<int64_t>(site.va);
      tf.tf_rax = p.rax;
      tf.tf_rdi = p.rdi;
      tf.tf_rsi = p.rsi;
      tf.tf_rdx = p.rdx;
      tf.tf_r10 = p.r10;
      tf.tf_r8 = p.r8;
      tf.tf_r9 = p.r9;
      tf.tf_rbx = p.rbx;
      tf.tf_rcx = p.rcx;
      tf.tf_rbp = p.rbp;
      int rc = 0, err = 0;
      // The vkernel refuses whatever system calls the guest makes from there and lets it
      // go on, a few times.
      for (int step = 0; step < 4; ++step) {
        errno = 0;
        rc = Run(&tf, kShortRun);
        err = errno;
        if (rc != 0) break;
        if (tf.tf_trapno == T_PAGEFLT && tf.tf_addr == static_cast<int64_t>(site.va) &&
            (tf.tf_err & PGEX_I)) {
          ++not_executable;
          break;
        }
        if (tf.tf_trapno != T_FAST_SYSCALL && tf.tf_trapno != T_SYSCALL80) {
          ++(tf.tf_trapno == 0 ? interrupts : traps);
          break;
        }
        ++syscalls;
        tf.tf_rax = kEnosys;
      }
      ExpectNoHostEffect(what, rc != 0);
      ASSERT_NO_FATAL_FAILURE(AfterWreck(rc, err, what, &deaths));
      if (HasFailure()) return;
      // A page the guest cannot execute needs one payload only.
      if (rc == 0 && tf.tf_trapno == T_PAGEFLT && (tf.tf_err & PGEX_I) &&
          tf.tf_addr == static_cast<int64_t>(site.va)) {
        break;
      }
    }
  }
  // Anything vkrt let the guest run of its runtime left the vmspace usable.
  ASSERT_NO_FATAL_FAILURE(Load(kSyscallReport));
  trapframe tf = Frame(kCodeAddr);
  ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
  printf("%s: %zu sites; %d fetch faults, %d system calls refused, %d other traps, "
         "%d interrupted, %d runtime deaths\n",
         BackendName(GetParam()), sites.size(), not_executable, syscalls, traps, interrupts,
         deaths);
}

// The vkernel's own memory (its stack, heap, code, libc) is nowhere in a guest's space.
TEST_P(HostileRuntimePages, VkernelMemoryIsUnreachable) {
  static int in_data = 42;
  int on_stack = 7;
  auto* on_heap = new int(9);
  std::unique_ptr<int> owner(on_heap);
  const uint64_t targets[] = {
      reinterpret_cast<uint64_t>(&in_data), reinterpret_cast<uint64_t>(&on_stack),
      reinterpret_cast<uint64_t>(on_heap), reinterpret_cast<uint64_t>(&vmspace_ctl),
      reinterpret_cast<uint64_t>(&syscall), reinterpret_cast<uint64_t>(&id_)};
  for (uint64_t target : targets) {
    if (target >= kCodeAddr && target < kStackTop) continue;  // (never: PIE and mmap ranges)
    for (int access = 0; access < 3; ++access) {
      const std::vector<unsigned char>& code = access == 0 ? kLoad : access == 1 ? kStore : kJumpR11;
      ASSERT_NO_FATAL_FAILURE(Load(code));
      trapframe tf = Frame(kCodeAddr);
      tf.tf_rdi = static_cast<int64_t>(target);
      tf.tf_r11 = static_cast<int64_t>(target);
      tf.tf_rax = 0x4141414141414141;
      ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_PAGEFLT)) << Hex(target) << " access " << access;
      EXPECT_EQ(static_cast<int64_t>(target), tf.tf_addr);
      const int64_t bits = access == 1 ? PGEX_W : access == 2 ? PGEX_I : 0;
      EXPECT_EQ(PGEX_U | bits, tf.tf_err) << Describe(tf);
    }
  }
  EXPECT_EQ(42, in_data);
  EXPECT_EQ(7, on_stack);
  EXPECT_EQ(9, *on_heap);
  ExpectNoHostEffect("touching the vkernel's addresses");
}

// ---- Huge and non-canonical addresses ----------------------------------------------------

using HostileAddresses = Hostile;

TEST_P(HostileAddresses, NonCanonicalRipOrTlsBaseIsRefusedAndTheFrameUntouched) {
  ASSERT_NO_FATAL_FAILURE(Load(kSyscallReport));
  for (uint64_t rip : std::initializer_list<uint64_t>{0x0000800000000000ULL, 0xffff7fffffffffffULL, 0x8000000000000000ULL,
                       0x7fffffffffffffffULL, 0x00ff000000000000ULL}) {
    trapframe tf = Frame(rip);
    tf.tf_rax = 0x5555;
    const trapframe before = tf;
    vextframe vf = {};
    errno = 0;
    EXPECT_EQ(-1, vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf)) << Hex(rip);
    EXPECT_EQ(EINVAL, errno) << Hex(rip);
    EXPECT_EQ(0, memcmp(&before, &tf, sizeof(tf))) << Hex(rip) << ": " << Describe(tf);
  }
  for (uint64_t base : std::initializer_list<uint64_t>{0x0000800000000000ULL, 0xffff800000000000ULL, 0xffffffffff600000ULL,
                        kLinuxUserEnd, 0x8000000000000000ULL}) {
    for (int which : {0, 1}) {
      trapframe tf = Frame(kCodeAddr);
      const trapframe before = tf;
      vextframe vf = {};
      vf.vx_tls.info[which].base = reinterpret_cast<void*>(base);
      errno = 0;
      EXPECT_EQ(-1, vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf)) << Hex(base);
      EXPECT_EQ(EINVAL, errno) << Hex(base);
      EXPECT_EQ(0, memcmp(&before, &tf, sizeof(tf))) << Hex(base);
    }
  }
  trapframe tf = Frame(kCodeAddr);
  ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
  ExpectNoHostEffect("refused frames");
}

// Canonical addresses no guest owns, started at directly: a fetch fault at exactly there.
TEST_P(HostileAddresses, RunAtUnreachableCanonicalRipFaults) {
  for (uint64_t rip : std::initializer_list<uint64_t>{uint64_t{0}, uint64_t{0x10}, kLinuxUserEnd, kLinuxUserEnd + 0xfff,
                       0xffff800000000000ULL, kKernelSlot + vkrt::kvm_layout::kCodeOff,
                       kVsyscall, kVsyscall + 0x400, 0xfffffffffffff000ULL}) {
    trapframe tf = Frame(rip);
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_PAGEFLT)) << Hex(rip);
    EXPECT_EQ(static_cast<int64_t>(rip), tf.tf_addr) << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(rip), tf.tf_rip) << Describe(tf);
    EXPECT_EQ(PGEX_U | PGEX_I, tf.tf_err & (PGEX_U | PGEX_W | PGEX_I)) << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(kStackTop - 256), tf.tf_rsp) << Describe(tf);
  }
  ExpectNoHostEffect("unreachable rips");
}

TEST_P(HostileAddresses, LoadsStoresAndJumpsToHugeAddressesTrap) {
  // Non-canonical: a general-protection fault at the instruction (no address to report).
  // Canonical but nobody's: a page fault at exactly the address.
  struct Target {
    uint64_t va;
    bool canonical;
  };
  const Target targets[] = {
      {0x0000800000000000ULL, false}, {0xffff7fffffffffffULL, false},
      {0x8000000000000000ULL, false}, {0x00ff000000000000ULL, false},
      {kLinuxUserEnd, true},          {kLinuxUserEnd + 0xff8, true},
      {0xffff800000000000ULL, true},  {0xfffffffffffff000ULL, true},
      {0xfffffffffffffff8ULL, true},  {kKernelSlot + vkrt::kvm_layout::kGdtOff, true},
      {0, true},                      {0x10, true},
  };
  for (const Target& t : targets) {
    for (int access = 0; access < 3; ++access) {
      const std::vector<unsigned char>& code = access == 0 ? kLoad : access == 1 ? kStore : kJumpR11;
      ASSERT_NO_FATAL_FAILURE(Load(code));
      trapframe tf = Frame(kCodeAddr);
      tf.tf_rdi = static_cast<int64_t>(t.va);
      tf.tf_r11 = static_cast<int64_t>(t.va);
      const std::string what = Hex(t.va) + (access == 0 ? " load" : access == 1 ? " store" : " jump");
      errno = 0;
      ASSERT_EQ(0, Run(&tf)) << what << ": " << strerror(errno);
      if (!t.canonical) {
        EXPECT_EQ(T_PROTFLT, tf.tf_trapno) << what << ": " << Describe(tf);
        EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip) << what << ": " << Describe(tf);
        continue;
      }
      EXPECT_EQ(T_PAGEFLT, tf.tf_trapno) << what << ": " << Describe(tf);
      EXPECT_EQ(static_cast<int64_t>(t.va), tf.tf_addr) << what << ": " << Describe(tf);
      const int64_t bits = access == 1 ? PGEX_W : access == 2 ? PGEX_I : 0;
      EXPECT_EQ(PGEX_U | bits, tf.tf_err & (PGEX_U | PGEX_W | PGEX_I)) << what << ": " << Describe(tf);
      EXPECT_EQ(static_cast<int64_t>(access == 2 ? t.va : kCodeAddr), tf.tf_rip) << what;
    }
  }
  // An 8-byte load that starts in the last user page and ends beyond the canonical range.
  ASSERT_NO_FATAL_FAILURE(Load(kLoad));
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rdi = 0x00007ffffffffffcLL;
  errno = 0;
  ASSERT_EQ(0, Run(&tf)) << strerror(errno);
  EXPECT_TRUE(tf.tf_trapno == T_PROTFLT || tf.tf_trapno == T_PAGEFLT) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip);
  // A stack pointer that is not canonical: the push faults (a stack fault or a protection
  // fault), RUN reports it.
  ASSERT_NO_FATAL_FAILURE(Load(kPush));
  tf = Frame(kCodeAddr);
  tf.tf_rsp = static_cast<int64_t>(0x0000800000000010ULL);
  errno = 0;
  ASSERT_EQ(0, Run(&tf)) << strerror(errno);
  EXPECT_TRUE(tf.tf_trapno == T_STKFLT || tf.tf_trapno == T_PROTFLT) << Describe(tf);
  EXPECT_EQ(static_cast<int64_t>(kCodeAddr), tf.tf_rip);
  ExpectNoHostEffect("huge addresses");
  // And the guest still runs.
  ASSERT_NO_FATAL_FAILURE(Load(kSyscallReport));
  tf = Frame(kCodeAddr);
  ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
}

#define EXPECT_FAILS(call, ...)                                                            \
  do {                                                                                     \
    errno = 0;                                                                             \
    const auto rc_ = (call);                                                               \
    const int err_ = errno;                                                                \
    EXPECT_EQ(-1, static_cast<int64_t>(rc_)) << #call;                                            \
    const std::set<int> allowed_ = {__VA_ARGS__};                                          \
    EXPECT_TRUE(allowed_.count(err_)) << #call << ": " << strerror(err_);                  \
  } while (0)

#define EXPECT_MMAP_FAILS(call, ...)                                                       \
  do {                                                                                     \
    errno = 0;                                                                             \
    void* const p_ = (call);                                                               \
    const int err_ = errno;                                                                \
    EXPECT_EQ(MAP_FAILED, p_) << #call;                                                    \
    const std::set<int> allowed_ = {__VA_ARGS__};                                          \
    EXPECT_TRUE(allowed_.count(err_)) << #call << ": " << strerror(err_);                  \
  } while (0)

TEST_P(HostileAddresses, HugeArgumentsToTheApiFailCleanly) {
  void* const id = &id_;
  auto ptr = [](uint64_t a) { return reinterpret_cast<void*>(a); };
  const size_t huge = ~size_t{0} & ~size_t{kPage - 1};
  // mmap: beyond the top, across it, in the kernel half, non-canonical, wrapping, giant.
  EXPECT_MMAP_FAILS(vmspace_mmap(id, ptr(kTop), kPage, kRw, kAnonFixed, -1, 0), EINVAL);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, ptr(kTop - kPage), 2 * kPage, kRw, kAnonFixed, -1, 0), EINVAL);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, ptr(0xffff800000000000ULL), kPage, kRw, kAnonFixed, -1, 0),
                    EINVAL);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, ptr(0x0000800000000000ULL), kPage, kRw, kAnonFixed, -1, 0),
                    EINVAL);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, ptr(kVsyscall), kPage, kRw, kAnonFixed, -1, 0), EINVAL);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, ptr(kProbeAddr), huge, kRw, kAnonFixed, -1, 0), EINVAL, ENOMEM);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, ptr(kProbeAddr), ~size_t{0}, kRw, kAnonFixed, -1, 0), EINVAL,
                    ENOMEM);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, nullptr, huge, kRw, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                    ENOMEM, EINVAL);
  EXPECT_MMAP_FAILS(vmspace_mmap(id, nullptr, kTop, kRw, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                    ENOMEM);
  // A hint out of range is only a hint: the result lies in the guest's range.
  for (uint64_t hint : std::initializer_list<uint64_t>{0xffff800000000000ULL, 0x0000800000000000ULL, kTop - kPage, kTop}) {
    void* p = vmspace_mmap(id, ptr(hint), 2 * kPage, kRw, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(MAP_FAILED, p) << Hex(hint) << ": " << strerror(errno);
    const uint64_t got = reinterpret_cast<uint64_t>(p);
    EXPECT_LE(got + 2 * kPage, kTop) << "hint " << Hex(hint) << " gave " << Hex(got);
    EXPECT_EQ(0, vmspace_munmap(id, p, 2 * kPage)) << strerror(errno);
  }
  // munmap and mcontrol over the runtime, across the top, wrapping, in the kernel half.
  EXPECT_FAILS(vmspace_munmap(id, ptr(kTop), kPage), EINVAL);
  EXPECT_FAILS(vmspace_munmap(id, ptr(kTop - kPage), 2 * kPage), EINVAL);
  EXPECT_FAILS(vmspace_munmap(id, ptr(kCodeAddr), huge), EINVAL);
  EXPECT_FAILS(vmspace_munmap(id, ptr(0xffff800000000000ULL), kPage), EINVAL);
  EXPECT_FAILS(vmspace_munmap(id, ptr(kVsyscall), kPage), EINVAL);
  for (int behav : {MADV_DONTNEED, MADV_INVAL, MADV_SETMAP, 5 /* DragonFly's MADV_FREE */}) {
    EXPECT_FAILS(vmspace_mcontrol(id, ptr(kTop), kPage, behav, 0), EINVAL);
    EXPECT_FAILS(vmspace_mcontrol(id, ptr(kTop - kPage), 2 * kPage, behav, 0), EINVAL);
    EXPECT_FAILS(vmspace_mcontrol(id, ptr(kCodeAddr), huge, behav, 0), EINVAL);
    EXPECT_FAILS(vmspace_mcontrol(id, ptr(0xffff800000000000ULL), kPage, behav, 0), EINVAL);
  }
  EXPECT_FAILS(vmspace_mcontrol(id, ptr(kCodeAddr), kPage, 12, 0), EINVAL);
  EXPECT_FAILS(vmspace_mcontrol(id, ptr(kCodeAddr), kPage, -1, 0), EINVAL);
  EXPECT_FAILS(vmspace_mcontrol(id, ptr(kCodeAddr), kPage, 0x7fffffff, 0), EINVAL);
  // pread/pwrite: at or beyond the top, negative offsets, giant counts.
  std::vector<unsigned char> buf(64 * kPage, 0x5a);
  for (uint64_t off : std::initializer_list<uint64_t>{kTop, kLinuxUserEnd, 0x0000800000000000ULL, 0xffff800000000000ULL,
                       0xffffffffffffffffULL, kVsyscall}) {
    EXPECT_FAILS(vmspace_pread(id, buf.data(), 8, 0, static_cast<off_t>(off)), EFAULT);
    EXPECT_FAILS(vmspace_pwrite(id, buf.data(), 8, 0, static_cast<off_t>(off)), EFAULT);
  }
  // Copies that run into the top stop there: nothing of the runtime is read or written.
  ASSERT_NO_FATAL_FAILURE(Map(kTop - kPage, kPage, kRw));
  ASSERT_NO_FATAL_FAILURE(Load(kLoad));
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(kTop);
  errno = 0;
  ASSERT_EQ(0, Run(&tf)) << strerror(errno);
  const trapframe top_before = tf;  // what the guest reads at the top (or its fault)
  EXPECT_EQ(static_cast<ssize_t>(kPage),
            vmspace_pwrite(id, buf.data(), 2 * kPage, 0, static_cast<off_t>(kTop - kPage)));
  EXPECT_EQ(8, vmspace_pwrite(id, buf.data(), 16, 0, static_cast<off_t>(kTop - 8)));
  EXPECT_EQ(static_cast<ssize_t>(kPage),
            vmspace_pread(id, buf.data(), 2 * kPage, 0, static_cast<off_t>(kTop - kPage)));
  tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(kTop);
  ASSERT_EQ(0, Run(&tf)) << strerror(errno);
  EXPECT_EQ(top_before.tf_trapno, tf.tf_trapno);
  EXPECT_EQ(top_before.tf_rax, tf.tf_rax) << "vmspace_pwrite wrote above the top";
  // A giant count from a mapped range: a short count at the end of what is mapped.
  EXPECT_EQ(static_cast<ssize_t>(kDataLen),
            vmspace_pread(id, buf.data(), ~size_t{0} >> 1, 0, static_cast<off_t>(kDataAddr)));
  EXPECT_EQ(static_cast<ssize_t>(kDataLen),
            vmspace_pwrite(id, buf.data(), ~size_t{0} >> 1, 0, static_cast<off_t>(kDataAddr)));
  // Nothing was mapped by any of it.
  for (uint64_t probe : {kProbeAddr, kTop - 2 * kPage}) {
    EXPECT_FAILS(vmspace_pread(id, buf.data(), 8, 0, static_cast<off_t>(probe)), EFAULT);
  }
  ASSERT_NO_FATAL_FAILURE(Load(kSyscallReport));
  tf = Frame(kCodeAddr);
  ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
  ExpectNoHostEffect("huge API arguments");
}

// ---- Self-modifying code across MADV_INVAL -------------------------------------------------

using HostileCode = Hostile;

// The vkernel rewrites the guest's code, in place or by pointing the page-table entry at
// another page, then MADV_INVAL: the next RUN runs the new code, every time (kvm keeps real
// TLBs and instruction caches that must not serve the old one).
TEST_P(HostileCode, VkernelRewritesCodeAcrossInval) {
  PhysMem pm(1 << 20);
  ASSERT_TRUE(pm.ok());
  ASSERT_EQ(reinterpret_cast<void*>(kVptAddr),
            vmspace_mmap(&id_, reinterpret_cast<void*>(kVptAddr), kVptLen, kRwx,
                         MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE, pm.fd(), 0))
      << strerror(errno);
  ASSERT_EQ(0, vmspace_mcontrol(&id_, reinterpret_cast<void*>(kVptAddr), kVptLen, MADV_SETMAP,
                                static_cast<off_t>(pm.root())));
  const uint64_t frames[2] = {pm.NewFrame(), pm.NewFrame()};
  Rebaseline();
  auto write_code = [&](uint64_t frame, uint32_t marker) {
    const std::vector<unsigned char> code = Marker(marker);
    std::vector<unsigned char> padded(16, 0xcc);
    std::copy(code.begin(), code.end(), padded.begin());
    uint64_t words[2];
    memcpy(words, padded.data(), 16);
    pm.Store(frame, words[0]);
    pm.Store(frame + 8, words[1]);
  };
  write_code(frames[0], 1000);
  write_code(frames[1], 2000);
  pm.Map(0, frames[0]);
  uint32_t expected = 1000;
  int current = 0;
  for (int i = 0; i < 64; ++i) {
    trapframe tf = Frame(kVptAddr);
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL)) << "round " << i;
    ASSERT_EQ(expected, static_cast<uint32_t>(tf.tf_rax)) << "round " << i << ": stale code";
    if (i % 2 == 0) {
      // Point the entry at the other page.
      current ^= 1;
      expected = (current == 0 ? 1000 : 2000) + static_cast<uint32_t>(i);
      write_code(frames[current], expected);
      pm.Map(0, frames[current]);
    } else {
      // Rewrite the page in place.
      expected = 5000 + static_cast<uint32_t>(i);
      write_code(frames[current], expected);
    }
    ASSERT_EQ(0, vmspace_mcontrol(&id_, reinterpret_cast<void*>(kVptAddr), kPage, MADV_INVAL, 0))
        << strerror(errno);
  }
  // An ordinary mapping rewritten with vmspace_pwrite between RUNs.
  for (uint32_t i = 0; i < 32; ++i) {
    ASSERT_NO_FATAL_FAILURE(Load(Marker(7000 + i)));
    trapframe tf = Frame(kCodeAddr);
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
    ASSERT_EQ(7000 + i, static_cast<uint32_t>(tf.tf_rax)) << "stale code after vmspace_pwrite";
  }
  ExpectNoHostEffect("rewritten code");
}

// The guest rewrites the instruction it executes next (x86 keeps that coherent), in an
// ordinary mapping and in a MAP_VPAGETABLE page (whose first write faults inside vkrt to set
// VPTE_M); and through a second address of its code page, across a system call.
TEST_P(HostileCode, GuestRewritesItsOwnCode) {
  ASSERT_NO_FATAL_FAILURE(Load(kPatchNext));
  trapframe tf = Frame(kCodeAddr);
  ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
  EXPECT_EQ(2, tf.tf_rax) << "the patched instruction ran";

  PhysMem pm(1 << 20);
  ASSERT_TRUE(pm.ok());
  ASSERT_EQ(reinterpret_cast<void*>(kVptAddr),
            vmspace_mmap(&id_, reinterpret_cast<void*>(kVptAddr), kVptLen, kRwx,
                         MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE, pm.fd(), 0))
      << strerror(errno);
  ASSERT_EQ(0, vmspace_mcontrol(&id_, reinterpret_cast<void*>(kVptAddr), kVptLen, MADV_SETMAP,
                                static_cast<off_t>(pm.root())));
  const uint64_t frame = pm.NewFrame();
  Rebaseline();
  pm.Map(0, frame);  // code
  pm.Map(1, frame);  // the same page again, as data
  ASSERT_EQ(static_cast<ssize_t>(kPatchNext.size()),
            vmspace_pwrite(&id_, kPatchNext.data(), kPatchNext.size(), 0, kVptAddr));
  tf = Frame(kVptAddr);
  ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
  EXPECT_EQ(2, tf.tf_rax) << "the patched instruction ran (VPAGETABLE)";
  EXPECT_NE(0u, pm.Entry(0) & VPTE_M) << "the guest's write set M";

  // Through the alias: old code at +0x100 says 0x11; the guest stores new code saying 0x22
  // there via page 1, makes a system call, then jumps to it via page 0.
  for (int round = 0; round < 16; ++round) {
    const uint8_t old_marker = static_cast<uint8_t>(0x11 + round);
    const uint8_t new_marker = static_cast<uint8_t>(0x80 + round);
    const uint64_t old_code = SmallMarker(old_marker);
    ASSERT_EQ(8, vmspace_pwrite(&id_, &old_code, 8, 0, kVptAddr + 0x100));
    ASSERT_EQ(static_cast<ssize_t>(kStoreThenJump.size()),
              vmspace_pwrite(&id_, kStoreThenJump.data(), kStoreThenJump.size(), 0,
                             kVptAddr + 0x200));
    // Warm the old code into whatever caches there are.
    tf = Frame(kVptAddr + 0x100);
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
    ASSERT_EQ(old_marker, tf.tf_rax & 0xff);
    tf = Frame(kVptAddr + 0x200);
    tf.tf_rdi = static_cast<int64_t>(kVptAddr + kPage + 0x100);
    tf.tf_rsi = static_cast<int64_t>(SmallMarker(new_marker));
    tf.tf_rdx = static_cast<int64_t>(kVptAddr + 0x100);
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
    EXPECT_EQ(static_cast<int64_t>(kVptAddr + 0x205), tf.tf_rip);
    tf.tf_rax = 0;
    ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
    EXPECT_EQ(new_marker, tf.tf_rax) << "round " << round << ": the old code ran";
  }
  ExpectNoHostEffect("self-modifying code");
}

// ---- A guest that never traps -----------------------------------------------------------

using HostileSpin = Hostile;

TEST_P(HostileSpin, NeverTrappingGuestIsStoppedAndResumedAtWill) {
  const int flag_fd = memfd_create("vkrt-hostile-flag", MFD_CLOEXEC);
  ASSERT_LE(0, flag_fd);
  ASSERT_EQ(0, ftruncate(flag_fd, kPage));
  auto* flag = static_cast<volatile uint64_t*>(
      mmap(nullptr, kPage, kRw, MAP_SHARED, flag_fd, 0));
  ASSERT_NE(MAP_FAILED, flag);
  ASSERT_EQ(reinterpret_cast<void*>(kFlagAddr),
            vmspace_mmap(&id_, reinterpret_cast<void*>(kFlagAddr), kPage, kRw,
                         MAP_SHARED | MAP_FIXED, flag_fd, 0));
  Rebaseline();
  ASSERT_NO_FATAL_FAILURE(Load(kFlagThenSpin));
  // The per-call timeout, several times over, resuming where the guest was.
  trapframe tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(kFlagAddr);
  tf.tf_rsi = 1;
  // On a loaded machine a timeout may come before the guest's first instruction: run until
  // it has written its flag (then it can only be in its loop).
  for (int i = 0; i < 1000 && *flag != 1; ++i) {
    vextframe vf = {};
    ASSERT_EQ(0, vkrt_vmspace_run(&id_, &tf, &vf, 20ULL * 1000 * 1000)) << strerror(errno);
    ASSERT_EQ(0, tf.tf_trapno) << Describe(tf);
  }
  for (int i = 0; i < 5; ++i) {
    vextframe vf = {};
    errno = 0;
    ASSERT_EQ(0, vkrt_vmspace_run(&id_, &tf, &vf, 20ULL * 1000 * 1000)) << strerror(errno);
    ASSERT_EQ(0, tf.tf_trapno) << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr + kSpinOffset), tf.tf_rip) << Describe(tf);
    EXPECT_EQ(1u, *flag);
  }
  // The per-thread timeout, with plain vmspace_ctl.
  ASSERT_EQ(0, vkrt_set_run_timeout(20ULL * 1000 * 1000));
  for (int i = 0; i < 3; ++i) {
    vextframe vf = {};
    const int rc = vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf);
    EXPECT_EQ(0, rc) << strerror(errno);
    EXPECT_EQ(0, tf.tf_trapno) << Describe(tf);
    EXPECT_EQ(static_cast<int64_t>(kCodeAddr + kSpinOffset), tf.tf_rip);
  }
  ASSERT_EQ(0, vkrt_set_run_timeout(0));
  // vkrt_interrupt from another thread, once the guest has written its flag again.
  *flag = 0;
  tf = Frame(kCodeAddr);
  tf.tf_rdi = static_cast<int64_t>(kFlagAddr);
  tf.tf_rsi = 2;
  const pid_t runner = static_cast<pid_t>(gettid());
  std::atomic<bool> returned{false};
  std::thread helper = vkrt_test::SpawnWithSignalsBlocked([&] {
    while (*flag != 2 && !returned.load()) sched_yield();
    if (!returned.load()) vkrt_interrupt(runner);
  });
  vextframe vf = {};
  const int rc = vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf);
  returned = true;
  helper.join();
  ASSERT_EQ(0, rc) << strerror(errno);
  EXPECT_EQ(0, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(2u, *flag);
  EXPECT_EQ(static_cast<int64_t>(kCodeAddr + kSpinOffset), tf.tf_rip);
  // Stopped means stopped: no thread of any process under the test keeps running guest code
  // (polled within a limit: a stub may spin briefly before it sleeps).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::string running;
  do {
    running.clear();
    for (const auto& [pid, p] : SnapshotHost()) {
      if (pid == getpid()) continue;
      for (const auto& [tid, what] : p.tasks) {
        const std::string stat =
            ReadFile("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat");
        const size_t close_paren = stat.rfind(')');
        if (close_paren != std::string::npos && close_paren + 2 < stat.size() &&
            stat[close_paren + 2] == 'R') {
          running += " " + std::to_string(tid);
        }
      }
    }
    if (!running.empty()) sched_yield();
  } while (!running.empty() && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ("", running) << "threads still running after RUN returned";
  // Then the guest is redirected to a system call: under the vkernel's control throughout.
  ASSERT_NO_FATAL_FAILURE(Load(kSyscallReport, kCodeAddr + 0x100));
  tf.tf_rip = static_cast<int64_t>(kCodeAddr + 0x100);
  tf.tf_rax = 77;
  // The helper may have seen the flag just as RUN was returning for another reason: its
  // interrupt then ends the next RUN at once, before the guest runs (docs/api.md).
  {
    vextframe vf2 = {};
    ASSERT_EQ(0, vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf, &vf2)) << strerror(errno);
    if (tf.tf_trapno == 0) {
      EXPECT_EQ(static_cast<int64_t>(kCodeAddr + 0x100), tf.tf_rip) << "the guest ran";
      EXPECT_EQ(77, tf.tf_rax);
      ASSERT_NO_FATAL_FAILURE(RunExpect(&tf, T_FAST_SYSCALL));
    }
  }
  ASSERT_EQ(T_FAST_SYSCALL, tf.tf_trapno) << Describe(tf);
  EXPECT_EQ(77, tf.tf_rax);
  ExpectNoHostEffect("a spinning guest");
  vmspace_munmap(&id_, reinterpret_cast<void*>(kFlagAddr), kPage);
  munmap(const_cast<uint64_t*>(flag), kPage);
  close(flag_fd);
}

// The outside checks see what they look for: a process forked under the test, a signal
// left pending in a watcher, a tracer, a changed disposition (so that a pass above means
// "nothing happened", not "nothing was looked at").
TEST(HostileSelfCheck, OutsideChecksSeeHostEffects) {
  ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1));
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  const pid_t watcher = fork();
  if (watcher == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (;;) pause();
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ASSERT_GT(watcher, 0);
  const HostState before = SnapshotHost();
  EXPECT_EQ("", HostDiff(before, SnapshotHost()));
  // A signal: pending in the watcher.
  ASSERT_EQ(0, kill(watcher, SIGUSR1));
  const std::string status = ReadFile("/proc/" + std::to_string(watcher) + "/status");
  EXPECT_NE("0000000000000000", StatusField(status, "ShdPnd"));
  // A new process.
  const pid_t child = fork();
  if (child == 0) {
    for (;;) pause();
  }
  EXPECT_NE("", HostDiff(before, SnapshotHost())) << "a new process";
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  // A changed disposition and a new descriptor.
  struct sigaction ign = {}, saved = {};
  ign.sa_handler = SIG_IGN;
  sigaction(SIGTERM, &ign, &saved);
  EXPECT_NE("", HostDiff(before, SnapshotHost())) << "SIGTERM ignored";
  sigaction(SIGTERM, &saved, nullptr);
  const int fd = dup(0);
  EXPECT_NE("", HostDiff(before, SnapshotHost())) << "a new descriptor";
  close(fd);
  EXPECT_EQ("", HostDiff(before, SnapshotHost()));
  // A tracer: the watcher's TracerPid.
  ASSERT_EQ(0, ptrace(PTRACE_SEIZE, watcher, 0, 0)) << strerror(errno);
  EXPECT_EQ(std::to_string(getpid()),
            StatusField(ReadFile("/proc/" + std::to_string(watcher) + "/status"), "TracerPid"));
  EXPECT_NE("", HostDiff(before, SnapshotHost())) << "a traced watcher";
  kill(watcher, SIGKILL);
  waitpid(watcher, nullptr, 0);
}

std::string ParamName(const ::testing::TestParamInfo<int>& info) {
  return BackendName(info.param);
}

#define VKRT_BACKENDS ::testing::Values(VKRT_TYPE_PTRACE, VKRT_TYPE_SECCOMP, VKRT_TYPE_KVM)
INSTANTIATE_TEST_SUITE_P(Backends, HostileSyscalls, VKRT_BACKENDS, ParamName);
INSTANTIATE_TEST_SUITE_P(Backends, HostileRuntimePages, VKRT_BACKENDS, ParamName);
INSTANTIATE_TEST_SUITE_P(Backends, HostileAddresses, VKRT_BACKENDS, ParamName);
INSTANTIATE_TEST_SUITE_P(Backends, HostileCode, VKRT_BACKENDS, ParamName);
INSTANTIATE_TEST_SUITE_P(Backends, HostileSpin, VKRT_BACKENDS, ParamName);

}  // namespace
