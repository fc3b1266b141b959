#include "backend/ptrace/ptrace_backend.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/rseq.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "arch/x86_64/frame.h"
#include "arch/x86_64/stub_layout.h"
#include "arch/x86_64/xstate.h"
#include "common/errno_status.h"
#include "backend/host.h"
#include "thread_state.h"

namespace vkrt {
namespace {

using x86_64::kStubBase;

constexpr uint64_t SigBit(int sig) { return uint64_t{1} << (sig - 1); }
// Signals the kernel ignores unless a handler is installed.
constexpr uint64_t kIgnoredByDefault =
    SigBit(SIGCHLD) | SigBit(SIGCONT) | SigBit(SIGWINCH) | SigBit(SIGURG);
const uint64_t kAllSignals = ~uint64_t{0};  // a sigset for rt_sigprocmask

// ---- raw/checked pairs for the kernel calls used on the hot path ---------------------------

absl::Status Ptrace(int request, pid_t tid, uint64_t addr, uint64_t data, const char* name) {
  if (ptrace(static_cast<__ptrace_request>(request), tid, addr, data) == -1) {
    return SyscallError(absl::StrFormat("ptrace(%s, %d, %#x, %#x)", name, tid, addr, data));
  }
  return absl::OkStatus();
}

// True if a synchronous fault signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP: the guest's
// own faults and traps, which Linux queues to the thread) waits in stopped thread `tid`'s
// private queue (its first entries: blocked signals may precede it). A failed peek reads as
// none.
bool FaultSignalPending(pid_t tid) {
  struct __ptrace_peeksiginfo_args args = {0, 0, 8};  // from offset 0 of the thread's queue
  siginfo_t si[8];
  const long n = ptrace(PTRACE_PEEKSIGINFO, tid, &args, si);
  for (long i = 0; i < n; ++i) {
    switch (si[i].si_signo) {
      case SIGSEGV:
      case SIGBUS:
      case SIGFPE:
      case SIGILL:
      case SIGTRAP:
        return true;
      default:
        break;
    }
  }
  return false;
}

absl::Status GetRegs(pid_t tid, user_regs_struct& regs) {
  if (ptrace(PTRACE_GETREGS, tid, 0, &regs) == -1) {
    return SyscallError(absl::StrFormat("ptrace(PTRACE_GETREGS, %d)", tid));
  }
  return absl::OkStatus();
}

absl::Status SetRegs(pid_t tid, const user_regs_struct& regs) {
  if (ptrace(PTRACE_SETREGS, tid, 0, &regs) == -1) {
    return SyscallError(absl::StrFormat("ptrace(PTRACE_SETREGS, %d, rip %#llx)", tid, regs.rip));
  }
  return absl::OkStatus();
}

// Reads the guest-visible part of the thread's FPU state: a prefix of the area, through AVX
// while the guest leaves AVX-512 unused (reading less is cheaper), through AVX-512 once it
// uses it. `wide` remembers which.
absl::Status GetXstate(pid_t tid, void* area, bool& wide) {
  for (;;) {
    const size_t size = wide ? x86_64::GuestXstateSize() : x86_64::AvxXstateSize();
    struct iovec iov = {area, size};
    if (ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, &iov) == -1) {
      return SyscallError(absl::StrFormat(
          "ptrace(PTRACE_GETREGSET, %d, NT_X86_XSTATE, %zu bytes)", tid, size));
    }
    const bool avx512 = x86_64::UsesAvx512(area);
    if (!wide && avx512) {
      wide = true;  // the short read missed AVX-512 state the guest now uses: read it all
      continue;
    }
    wide = avx512;
    return absl::OkStatus();
  }
}

// Loads the thread's FPU state; Linux takes only the whole standard-format area. `scratch`
// (XstateSize() bytes) receives a copy where Linux would drop the area's MXCSR otherwise.
absl::Status SetXstate(pid_t tid, const void* area, unsigned char* scratch) {
  if (x86_64::LinuxWouldDropMxcsr(area)) {
    memcpy(scratch, area, x86_64::XstateSize());
    x86_64::MarkSseInUse(scratch);
    area = scratch;
  }
  struct iovec iov = {const_cast<void*>(area), x86_64::XstateSize()};
  if (ptrace(PTRACE_SETREGSET, tid, NT_X86_XSTATE, &iov) == -1) {
    return SyscallError(absl::StrFormat("ptrace(PTRACE_SETREGSET, %d, NT_X86_XSTATE, %zu bytes)",
                                        tid, x86_64::XstateSize()));
  }
  return absl::OkStatus();
}

// wait4 for one traced thread, retrying EINTR. Signals may be blocked or not.
absl::StatusOr<int> WaitTid(pid_t tid) {
  int status;
  for (;;) {
    pid_t r = static_cast<pid_t>(syscall(SYS_wait4, tid, &status, __WALL, nullptr));
    if (r == tid) return status;
    if (r < 0 && errno == EINTR) continue;
    return SyscallError(absl::StrFormat("wait4(%d, __WALL)", tid));
  }
}

// ---- process-wide helpers ---------------------------------------------------------------


// The stub's seccomp filter: system calls are admitted only from the stub's code, only the
// ones it makes; anything else (the vsyscall page emulation, which Linux performs even
// under PTRACE_SYSEMU) traps with SIGSYS and is reported to the vkernel as a fault.
const sock_fprog* StubFilter() {
  static const std::vector<sock_filter>* filter = [] {
    auto* f = new std::vector<sock_filter>;
    constexpr int kAllowed[] = {SYS_read,         SYS_write,          SYS_close,
                                SYS_poll,         SYS_mmap,           SYS_mprotect,
                                SYS_munmap,       SYS_rt_sigaction,   SYS_rt_sigprocmask,
                                SYS_rt_sigreturn, SYS_madvise,        SYS_pause,
                                SYS_recvmsg,      SYS_clone,          SYS_exit,
                                SYS_sigaltstack,  SYS_exit_group};
    constexpr int n = sizeof(kAllowed) / sizeof(kAllowed[0]);
    const uint32_t ip_lo_start = static_cast<uint32_t>(kStubBase);
    const uint32_t ip_lo_end = static_cast<uint32_t>(kStubBase + VKRT_STUB_CODE_SIZE);
    const uint32_t ip_hi = static_cast<uint32_t>(kStubBase >> 32);
    // Layout: [0..7] checks, [8..8+n) allow list, then KILL, TRAP, ALLOW.
    const int kill = 8 + n, trap = kill + 1, allow = trap + 1;
    auto jump = [&](int at, int target) { return static_cast<uint8_t>(target - at - 1); };
    f->push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));            // 0
    f->push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, jump(1, kill)));    // 1
    f->push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, instruction_pointer) + 4));  // 2
    f->push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ip_hi, 0, jump(3, trap)));                // 3
    f->push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, instruction_pointer)));  // 4
    f->push_back(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, ip_lo_start, 0, jump(5, trap)));          // 5
    f->push_back(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, ip_lo_end, jump(6, trap), 0));            // 6
    f->push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));              // 7
    for (int i = 0; i < n; ++i) {
      int at = 8 + i;
      f->push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(kAllowed[i]),
                            jump(at, allow), 0));
    }
    f->push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    f->push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP));
    f->push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    return f;
  }();
  static const sock_fprog prog = {static_cast<unsigned short>(filter->size()),
                                  const_cast<sock_filter*>(filter->data())};
  return &prog;
}


uint64_t SlotBase(int slot) { return x86_64::kStubSlots + slot * x86_64::kStubSlotSize; }


// ---- the address space ------------------------------------------------------------------

// One guest context: a stub thread traced by one vkernel thread.
struct Context {
  std::atomic<pid_t> tracer{0};  // the owning vkernel thread; 0 = slot free
  pid_t tid = 0;                 // the stub thread
  // Owned by the tracer thread only:
  bool pending_event_stop = false;  // a PTRACE_INTERRUPT whose stop was not consumed yet
  // The FPU state the stub thread holds, when known (GuestXstateSize() bytes).
  bool xstate_known = false;
  std::unique_ptr<unsigned char[]> xstate;
  std::unique_ptr<unsigned char[]> xstate_scratch;  // XstateSize() bytes, for SetXstate
  // The registers the stub thread holds, when known: RUN then writes only what changed
  // (one PTRACE_POKEUSER costs a third of a PTRACE_SETREGS here).
  bool regs_known = false;
  user_regs_struct regs = {};
  // After a system call exit tf_rcx reports r10 (DragonFly); if the vkernel leaves it so,
  // the guest keeps the rcx the `syscall` instruction left (the return address). Only for
  // the address space's next RUN (`rcx_run` + 1): after a RUN in another context the guest
  // has moved on, and rcx equal to r10 is then its own state.
  bool rcx_reported_as_r10 = false;
  uint64_t rcx_run = 0;
  // RUNs left before WaitGuest tries a yield again (see there).
  int spin_backoff = 0;
  // The guest used AVX-512 at its last stop: read its FPU state through AVX-512.
  bool wide_xstate = false;
  // The one CPU the stub thread may run on (the tracer's at its last RUN); -1 before the
  // first RUN or if pinning failed (then it keeps the stub's inherited affinity).
  int cpu = -1;
};

constexpr int kSpinBackoff = 32;
constexpr uint64_t kVsyscallPage = 0xFFFFFFFFFF600000ULL;  // Linux's fixed vsyscall page
constexpr uint64_t kPgexProtectionKey = 0x20;  // a page fault's PK bit

// Loads `want` into the stopped stub thread of `c`, writing only the registers that differ
// from what it holds when that is known.
absl::Status LoadRegs(Context& c, user_regs_struct& want) {
  if (c.rcx_reported_as_r10 && want.rcx == want.r10) want.rcx = c.regs.rcx;
  c.rcx_reported_as_r10 = false;
  if (c.regs_known) {
    // orig_rax >= 0 with rax in -ERESTART* would make the kernel restart a system call on
    // the way back to the guest; any other rax is safe with a stale orig_rax.
    const auto rax = static_cast<long long>(want.rax);
    if (rax < -516 || rax > -512) want.orig_rax = c.regs.orig_rax;
    constexpr int kWords = sizeof(user_regs_struct) / sizeof(unsigned long long);
    const auto* have = reinterpret_cast<const unsigned long long*>(&c.regs);
    const auto* next = reinterpret_cast<const unsigned long long*>(&want);
    constexpr int kMaxPokes = 2;  // beyond that one PTRACE_SETREGS is cheaper
    int changed[kMaxPokes];
    int n = 0;
    for (int i = 0; i < kWords && n <= kMaxPokes; ++i) {
      if (have[i] == next[i]) continue;
      if (n < kMaxPokes) changed[n] = i;
      ++n;
    }
    if (n <= kMaxPokes) {
      for (int k = 0; k < n; ++k) {
        const uint64_t offset = changed[k] * sizeof(unsigned long long);
        if (ptrace(PTRACE_POKEUSER, c.tid, offset, next[changed[k]]) == -1) {
          c.regs_known = false;
          return SyscallError(absl::StrFormat("ptrace(PTRACE_POKEUSER, %d, %#x, %#llx)", c.tid,
                                              offset, next[changed[k]]));
        }
      }
      c.regs = want;
      return absl::OkStatus();
    }
  }
  c.regs_known = false;
  if (auto s = SetRegs(c.tid, want); !s.ok()) return s;
  c.regs = want;
  c.regs_known = true;
  return absl::OkStatus();
}

// Reads the stopped stub thread's registers and remembers them.
absl::Status ReadRegs(Context& c, user_regs_struct& regs) {
  c.regs_known = false;
  if (auto s = GetRegs(c.tid, regs); !s.ok()) return s;
  c.regs = regs;
  c.regs_known = true;
  return absl::OkStatus();
}

// Records that the stub thread of `c` holds the FPU state in `area` (as far as GetXstate
// read it: the AVX-512 bytes only matter when the in-use bits say so).
void RememberXstate(Context& c, const void* area) {
  memcpy(c.xstate.get(), area,
         c.wide_xstate ? x86_64::GuestXstateSize() : x86_64::AvxXstateSize());
  c.xstate_known = true;
}

class PtraceAddressSpace : public AddressSpace {
 public:
  PtraceAddressSpace(pid_t pid, int ctl_fd, int fd_sock, int stub_fd_sock)
      : pid_(pid),
        ctl_fd_(ctl_fd),
        fd_sock_(fd_sock),
        stub_fd_sock_(stub_fd_sock) {}
  ~PtraceAddressSpace() override;

  absl::StatusOr<uint64_t> Map(const MapRequest& request) override;
  absl::Status Unmap(uint64_t addr, uint64_t len) override;
  absl::Status Advise(uint64_t addr, uint64_t len, int behav) override;
  absl::StatusOr<size_t> Read(uint64_t addr, void* buf, size_t len) override;
  absl::StatusOr<size_t> Write(uint64_t addr, const void* buf, size_t len) override;
  absl::StatusOr<GuestExit> Run(GuestState& state, const RunLimits& limits) override;
  void ReleaseCallerContext() override;
  absl::StatusOr<int> AttachObject(int fd) override;
  absl::Status DetachObject(int handle) override;
  absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                       uint64_t offset) override;

  // Creates the calling thread's context (also used right after the fork, to check the
  // stub booted).
  absl::StatusOr<Context*> CallerContext();

 private:
  absl::StatusOr<Context*> CreateContext(pid_t tracer);
  // Passes the vkernel's `fd` to the stub (SCM_RIGHTS); returns its number there.
  absl::StatusOr<int> SendFd(Context& c, int fd);
  // Runs one system call in context `c` (stopped) and returns its raw result.
  absl::StatusOr<long> Inject(Context& c, long nr, uint64_t a0 = 0, uint64_t a1 = 0,
                              uint64_t a2 = 0, uint64_t a3 = 0, uint64_t a4 = 0,
                              uint64_t a5 = 0);
  // Waits for the next stop of `c` while guest code runs, noticing signal handlers that
  // run in the caller. Sets *signalled when one did.
  absl::StatusOr<int> WaitGuest(Context& c, const uint64_t& wait_mask, bool& signalled,
                                bool& unblocked);
  // The stub thread of `c` is gone (killed, or its process died): the address space is dead.
  absl::Status Died(Context& c);
  // `status` unless it says the stub thread of `c` vanished; then Died(c).
  absl::Status IfLost(Context& c, absl::Status status);
  absl::StatusOr<GuestExit> RunContext(Context& c, GuestState& state, const RunLimits& limits);
  absl::StatusOr<size_t> Transfer(bool write, uint64_t addr, void* buf, size_t len);

  const pid_t pid_;
  const int ctl_fd_;
  const int fd_sock_;
  const int stub_fd_sock_;  // the stub's end of the fd socket, as numbered in the stub
  std::atomic<bool> dead_{false};
  std::mutex contexts_mu_;  // serialises context creation and release
  std::array<Context, x86_64::kStubMaxSlots> contexts_;
  std::atomic<uint64_t> runs_{0};  // RUNs of this address space so far, in any context
};

PtraceAddressSpace::~PtraceAddressSpace() {
  kill(pid_, SIGKILL);
  for (Context& c : contexts_) {
    if (c.tid != 0) {
      int status;
      // Any thread of the tracer's process may reap a tracee (wait4 walks every thread's
      // ptraced list), so contexts of other vkernel threads are reaped here too.
      while (syscall(SYS_wait4, c.tid, &status, __WALL, nullptr) < 0 && errno == EINTR) {
      }
    }
  }
  int status;
  while (syscall(SYS_wait4, pid_, &status, __WALL, nullptr) < 0 && errno == EINTR) {
  }
  close(ctl_fd_);
  close(fd_sock_);
}

absl::StatusOr<Context*> PtraceAddressSpace::CallerContext() {
  const pid_t me = ThreadState::CurrentTid();
  for (Context& c : contexts_) {
    if (c.tracer.load(std::memory_order_acquire) == me) return &c;
  }
  return CreateContext(me);
}

absl::StatusOr<Context*> PtraceAddressSpace::CreateContext(pid_t tracer) {
  if (dead_.load()) return ErrnoError(EFAULT, "the guest address space's stub died");
  // The tracer must release its contexts when it exits (PTRACE_O_EXITKILL would otherwise
  // kill the whole stub): its ThreadState's exit hook does that.
  (void)ThreadState::Current();
  std::lock_guard<std::mutex> lock(contexts_mu_);
  int slot = -1;
  for (int i = 0; i < x86_64::kStubMaxSlots; ++i) {
    if (contexts_[i].tracer.load(std::memory_order_relaxed) == 0 && contexts_[i].tid == 0) {
      slot = i;
      break;
    }
  }
  if (slot < 0) {
    return ErrnoError(EAGAIN, absl::StrFormat("vmspace: more than %d vkernel threads use it",
                                              x86_64::kStubMaxSlots));
  }
  auto before = ListTasks(pid_);
  if (!before.ok()) return before.status();
  uint32_t request = static_cast<uint32_t>(slot);
  if (send(ctl_fd_, &request, sizeof(request), MSG_NOSIGNAL) != sizeof(request)) {
    return SyscallError(absl::StrFormat("send(stub %d control socket, slot %d)", pid_, slot));
  }
  // The new thread answers once its signal stack and mask are set up.
  struct pollfd pfd = {ctl_fd_, POLLIN, 0};
  int ready;
  do {
    ready = poll(&pfd, 1, 30000);
  } while (ready < 0 && errno == EINTR);
  uint32_t reply = 0;
  if (ready <= 0 || read(ctl_fd_, &reply, sizeof(reply)) != sizeof(reply)) {
    dead_.store(true);
    return ErrnoError(EFAULT, absl::StrFormat("stub %d did not start a context thread", pid_));
  }
  auto after = ListTasks(pid_);
  if (!after.ok()) return after.status();
  std::vector<pid_t> fresh;
  std::set_difference(after->begin(), after->end(), before->begin(), before->end(),
                      std::back_inserter(fresh));
  if (fresh.size() != 1) {
    return ErrnoError(EFAULT, absl::StrFormat("stub %d: %zu new threads, expected 1", pid_,
                                              fresh.size()));
  }
  const pid_t tid = fresh[0];
  if (auto s = Ptrace(PTRACE_SEIZE, tid, 0,
                      PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL, "PTRACE_SEIZE");
      !s.ok()) {
    return s;
  }
  if (auto s = Ptrace(PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT"); !s.ok()) return s;
  for (;;) {
    auto status = WaitTid(tid);
    if (!status.ok()) return status.status();
    if (!WIFSTOPPED(*status)) return ErrnoError(EFAULT, "stub context thread died at start");
    if ((*status >> 16) == PTRACE_EVENT_STOP) break;
    // A signal-delivery stop cannot happen (all asynchronous signals are blocked); be safe.
    (void)Ptrace(PTRACE_CONT, tid, 0, 0, "PTRACE_CONT");
  }
  Context& c = contexts_[slot];
  c.tid = tid;
  c.pending_event_stop = false;
  c.xstate_known = false;
  c.regs_known = false;
  c.rcx_reported_as_r10 = false;
  c.spin_backoff = 0;
  c.cpu = -1;
  c.wide_xstate = false;
  if (c.xstate == nullptr) c.xstate.reset(new unsigned char[x86_64::GuestXstateSize()]);
  if (c.xstate_scratch == nullptr) {
    c.xstate_scratch.reset(new unsigned char[x86_64::XstateSize()]);
  }
  c.tracer.store(tracer, std::memory_order_release);
  return &c;
}

void PtraceAddressSpace::ReleaseCallerContext() {
  const pid_t me = ThreadState::CurrentTid();
  std::lock_guard<std::mutex> lock(contexts_mu_);
  for (Context& c : contexts_) {
    if (c.tracer.load(std::memory_order_relaxed) != me) continue;
    // The thread leaves by itself: exit(0) through the injection gadget.
    (void)Inject(c, SYS_exit, 0);
    c.tracer.store(0, std::memory_order_release);
    c.tid = 0;
  }
}

absl::StatusOr<long> PtraceAddressSpace::Inject(Context& c, long nr, uint64_t a0, uint64_t a1,
                                                uint64_t a2, uint64_t a3, uint64_t a4,
                                                uint64_t a5) {
  user_regs_struct regs = {};
  regs.rip = kStubBase + x86_64::vkrt_stub_offsets.inject_syscall;
  regs.rax = static_cast<unsigned long long>(nr);
  regs.rdi = a0;
  regs.rsi = a1;
  regs.rdx = a2;
  regs.r10 = a3;
  regs.r8 = a4;
  regs.r9 = a5;
  regs.rsp = SlotBase(static_cast<int>(&c - contexts_.data())) + x86_64::kStubSlotSize - 64;
  regs.eflags = 0x202;
  regs.cs = x86_64::kUserCs;
  regs.ss = x86_64::kUserSs;
  regs.orig_rax = static_cast<unsigned long long>(-1);
  c.regs_known = false;
  c.rcx_reported_as_r10 = false;
  if (auto s = SetRegs(c.tid, regs); !s.ok()) return IfLost(c, s);
  if (auto s = Ptrace(PTRACE_CONT, c.tid, 0, 0, "PTRACE_CONT"); !s.ok()) return IfLost(c, s);
  for (;;) {
    auto status = WaitTid(c.tid);
    if (!status.ok()) return status.status();
    if (!WIFSTOPPED(*status)) {
      if (nr == SYS_exit) return 0;
      dead_.store(true);
      return ErrnoError(EFAULT, absl::StrFormat("stub thread %d died in system call %ld",
                                                c.tid, nr));
    }
    if ((*status >> 16) == PTRACE_EVENT_STOP) {
      c.pending_event_stop = false;
    } else if (WSTOPSIG(*status) == SIGTRAP) {
      break;
    }
    if (auto s = Ptrace(PTRACE_CONT, c.tid, 0, 0, "PTRACE_CONT"); !s.ok()) return s;
  }
  if (auto s = GetRegs(c.tid, regs); !s.ok()) return s;
  return static_cast<long>(regs.rax);
}

absl::StatusOr<int> PtraceAddressSpace::SendFd(Context& c, int fd) {
  // Hand the vkernel's file to the stub over its fd socket (SCM_RIGHTS): the stub gets the
  // same open file description.
  if (auto s = SendFdOverSocket(fd_sock_, fd, pid_); !s.ok()) return s;
  // The stub's msghdr lives in the context's slot scratch page.
  const uint64_t base = SlotBase(static_cast<int>(&c - contexts_.data())) + 0x100;
  struct Remote {
    struct msghdr msg;
    char pad0[64 - sizeof(struct msghdr)];
    struct iovec iov;
    char pad1[32 - sizeof(struct iovec)];
    char byte[32];
    alignas(cmsghdr) char control[64];
  } remote = {};
  static_assert(sizeof(struct msghdr) <= 64 && sizeof(Remote) == 192);
  remote.msg.msg_iov = reinterpret_cast<struct iovec*>(base + offsetof(Remote, iov));
  remote.msg.msg_iovlen = 1;
  remote.msg.msg_control = reinterpret_cast<void*>(base + offsetof(Remote, control));
  remote.msg.msg_controllen = sizeof(remote.control);
  remote.iov.iov_base = reinterpret_cast<void*>(base + offsetof(Remote, byte));
  remote.iov.iov_len = 1;
  auto written = Transfer(true, base, &remote, sizeof(remote));
  if (!written.ok() || *written != sizeof(remote)) {
    return ErrnoError(EFAULT, "could not prepare the stub's fd message");
  }
  auto got = Inject(c, SYS_recvmsg, static_cast<uint64_t>(stub_fd_sock_), base,
                    MSG_CMSG_CLOEXEC);
  if (!got.ok()) return got.status();
  if (*got != 1) {
    return ErrnoError(*got < 0 ? static_cast<int>(-*got) : EIO,
                      absl::StrFormat("recvmsg(SCM_RIGHTS) in stub %d", pid_));
  }
  // The number the stub's kernel gave the fd, from the control message it received.
  int stub_fd = -1;
  auto read = Transfer(false, base + offsetof(Remote, control) + CMSG_LEN(0), &stub_fd,
                       sizeof(stub_fd));
  if (!read.ok() || *read != sizeof(stub_fd) || stub_fd < 0) {
    return ErrnoError(EIO, absl::StrFormat("recvmsg(SCM_RIGHTS) in stub %d: no fd", pid_));
  }
  return stub_fd;
}

absl::StatusOr<uint64_t> PtraceAddressSpace::Map(const MapRequest& r) {
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  Context& c = **ctx;
  int flags = r.flags & ~MAP_VPAGETABLE;
  int fd = -1;
  if (r.fd >= 0) {
    // The stub maps the received duplicate and closes it at once.
    auto sent = SendFd(c, r.fd);
    if (!sent.ok()) return sent.status();
    fd = *sent;
  }
  auto result = Inject(c, SYS_mmap, r.addr, r.len, static_cast<uint64_t>(r.prot),
                       static_cast<uint64_t>(flags), static_cast<uint64_t>(fd),
                       static_cast<uint64_t>(r.offset));
  if (fd >= 0) {
    auto closed = Inject(c, SYS_close, static_cast<uint64_t>(fd));
    if (!closed.ok()) return closed.status();
  }
  if (!result.ok()) return result.status();
  if (*result < 0 && *result > -4096) {
    return ErrnoError(static_cast<int>(-*result),
                      absl::StrFormat("mmap(%#x, %#x, %#x, %#x, %d, %d) in stub %d", r.addr,
                                      r.len, r.prot, flags, fd, static_cast<long long>(r.offset),
                                      pid_));
  }
  return static_cast<uint64_t>(*result);
}

absl::StatusOr<int> PtraceAddressSpace::AttachObject(int fd) {
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  return SendFd(**ctx, fd);  // kept open in the stub until DetachObject
}

absl::Status PtraceAddressSpace::DetachObject(int handle) {
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  auto closed = Inject(**ctx, SYS_close, static_cast<uint64_t>(handle));
  return closed.ok() ? absl::OkStatus() : closed.status();
}

absl::Status PtraceAddressSpace::Install(uint64_t addr, uint64_t len, int prot, int handle,
                                         uint64_t offset) {
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  auto result = Inject(**ctx, SYS_mmap, addr, len, static_cast<uint64_t>(prot),
                       MAP_SHARED | MAP_FIXED, static_cast<uint64_t>(handle), offset);
  if (!result.ok()) return result.status();
  if (*result < 0 && *result > -4096) {
    return ErrnoError(static_cast<int>(-*result),
                      absl::StrFormat("mmap(%#x, %#x, %#x, MAP_SHARED|MAP_FIXED, %d, %#x) in "
                                      "stub %d (a VPAGETABLE translation)",
                                      addr, len, prot, handle, offset, pid_));
  }
  return absl::OkStatus();
}

absl::Status PtraceAddressSpace::Unmap(uint64_t addr, uint64_t len) {
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  auto result = Inject(**ctx, SYS_munmap, addr, len);
  if (!result.ok()) return result.status();
  if (*result < 0) {
    return ErrnoError(static_cast<int>(-*result),
                      absl::StrFormat("munmap(%#x, %#x) in stub %d", addr, len, pid_));
  }
  return absl::OkStatus();
}

absl::Status PtraceAddressSpace::Advise(uint64_t addr, uint64_t len, int behav) {
  const int advice = LinuxAdvice(behav);
  if (advice < 0) return absl::OkStatus();  // NOSYNC, AUTOSYNC: nothing to do on Linux
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  auto result = Inject(**ctx, SYS_madvise, addr, len, static_cast<uint64_t>(advice));
  if (!result.ok()) return result.status();
  // Hints the host refuses (e.g. on a shared mapping) are ignored, as the contract allows.
  return absl::OkStatus();
}

absl::StatusOr<size_t> PtraceAddressSpace::Transfer(bool write, uint64_t addr, void* buf,
                                                    size_t len) {
  return CopyProcessMemory(pid_, write, addr, buf, len);
}

absl::StatusOr<size_t> PtraceAddressSpace::Read(uint64_t addr, void* buf, size_t len) {
  return Transfer(false, addr, buf, len);
}

absl::StatusOr<size_t> PtraceAddressSpace::Write(uint64_t addr, const void* buf, size_t len) {
  return Transfer(true, addr, const_cast<void*>(buf), len);
}

absl::Status PtraceAddressSpace::Died(Context& c) {
  dead_.store(true);
  c.tracer.store(0);
  c.tid = 0;
  return ErrnoError(EFAULT, absl::StrFormat("the guest address space (stub %d) died", pid_));
}

// Waits for the guest to stop. The difficulty is noticing a signal handler that runs in
// this thread meanwhile: with SA_RESTART the kernel restarts wait4 and nobody would know.
// Signals are blocked on entry (since the start of RUN).
//
// First, still blocked, one sched_yield() and a non-blocking wait: when the guest shares
// this thread's CPU, the yield runs it to its next stop and no wakeup is needed (a round
// trip ~15% cheaper here). Where the guest runs elsewhere the yield returns at once; after
// a miss the next kSpinBackoff RUNs skip it.
//
// Then a signal that arrived since RUN began is pending: unblocking delivers it, and that
// alone ends the wait. Otherwise SyscallWithSignalsOpen (host.h) unblocks, waits and blocks
// again inside a restartable sequence, which tells a handler that ran anywhere in between
// from a preemption; a stop and a handler can come together (both are reported). Without
// rseq (kernels before 4.18, valgrind) handlers without SA_RESTART and vkrt's own kicks are
// still noticed (EINTR).
//
// Returns the stop's wait status, or -1 if none was taken. `signalled`: a handler ran.
// `unblocked`: signals are left as `wait_mask` says (else all blocked).
absl::StatusOr<int> PtraceAddressSpace::WaitGuest(Context& c, const uint64_t& wait_mask,
                                                  bool& signalled, bool& unblocked) {
  unblocked = false;
  if (c.spin_backoff > 0) {
    --c.spin_backoff;
  } else {
    sched_yield();
    int status = 0;
    if (syscall(SYS_wait4, c.tid, &status, __WALL | WNOHANG, nullptr) == c.tid) return status;
    c.spin_backoff = kSpinBackoff;
  }
  // With signals blocked: if one the wait would let in is pending, let it in (its handler
  // runs on the way out of rt_sigprocmask) and report that.
  auto deliver_pending = [&] {
    uint64_t pending = 0;
    syscall(SYS_rt_sigpending, &pending, 8);
    if ((pending & ~wait_mask) == 0) return false;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &wait_mask, nullptr, 8);
    unblocked = true;
    signalled = true;
    return true;
  };
  if (deliver_pending()) return -1;
  struct rseq* rs = ThreadRseq();
  int preemptions = 0;
  for (;;) {
    int status = 0;
    long r;
    // Preempted before wait4 returned again and again (a debugger or strace stops the
    // thread at every system call): wait without rseq rather than spin here.
    if (rs != nullptr && preemptions < 3) {
      const OpenCall call =
          SyscallWithSignalsOpen(rs, wait_mask, SYS_wait4, static_cast<uint64_t>(c.tid),
                                 reinterpret_cast<uint64_t>(&status), __WALL, 0, &status);
      signalled = call.handler_ran;
      if (call.result == c.tid) return status;  // (a handler may have run too)
      if (call.handler_ran || call.result == -EINTR) {
        signalled = true;
        return -1;
      }
      if (call.result == OpenCall::kNotReturned) {
        ++preemptions;
        if (deliver_pending()) return -1;
        continue;
      }
      r = call.result;
    } else {
      unblocked = true;
      syscall(SYS_rt_sigprocmask, SIG_SETMASK, &wait_mask, nullptr, 8);
      r = syscall(SYS_wait4, c.tid, &status, __WALL, nullptr);
      if (r < 0) r = -errno;
    }
    if (r == c.tid) return status;
    if (r == -EINTR) {
      signalled = true;
      return -1;
    }
    return ErrnoError(static_cast<int>(-r), absl::StrFormat("wait4(%d, __WALL)", c.tid));
  }
}

absl::StatusOr<GuestExit> PtraceAddressSpace::Run(GuestState& state, const RunLimits& limits) {
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  auto exit = RunContext(**ctx, state, limits);
  if (!exit.ok()) return IfLost(**ctx, exit.status());
  return exit;
}

absl::Status PtraceAddressSpace::IfLost(Context& c, absl::Status status) {
  // ptrace answers ESRCH when our stopped tracee is no longer stopped: only SIGKILL (the
  // stub was killed from outside) does that. Collect its exit, then report the death.
  if (ErrnoOf(status) != ESRCH || c.tid == 0) return status;
  auto waited = WaitTid(c.tid);
  if (waited.ok() && WIFSTOPPED(*waited)) return status;  // not a death after all
  return Died(c);
}

absl::StatusOr<GuestExit> PtraceAddressSpace::RunContext(Context& c, GuestState& state,
                                                         const RunLimits& limits) {
  ThreadState& ts = ThreadState::Current();
  const pid_t tid = c.tid;

  uint64_t old_mask = 0;
  syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, &old_mask, 8);
  bool blocked = true;
  // While the guest runs, the signals whose default is to be ignored stay blocked: every
  // ptrace stop of every guest sends SIGCHLD to this process, and an ignored signal would
  // restart wait4 in a way the rseq abort cannot tell from a handler that ran.
  const uint64_t wait_mask = old_mask | kIgnoredByDefault;
  bool timer_armed = false;
  absl::Cleanup cleanup = [&] {  // no allocation: the RUN path allocates nothing
    if (timer_armed) ts.DisarmTimer();
    if (blocked) syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old_mask, nullptr, 8);
  };

  // This RUN's number in the address space (see Context::rcx_run).
  const uint64_t run = runs_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (c.rcx_reported_as_r10 && c.rcx_run + 1 != run) c.rcx_reported_as_r10 = false;
  if (ts.TakeInterrupt()) {
    c.rcx_run = run;  // the guest did not run: the next RUN may still restore rcx
    GuestExit exit;
    exit.kind = GuestExit::Kind::kInterrupted;
    return exit;
  }
  if (limits.timeout_ns != 0) {
    if (auto s = ts.ArmTimer(limits.timeout_ns); !s.ok()) return s;
    timer_armed = true;
  }

  user_regs_struct regs;
  x86_64::FrameToUserRegs(*state.tf, state.fs_base, state.gs_base, regs);
  if (auto s = LoadRegs(c, regs); !s.ok()) return s;
  c.regs_known = false;  // until the stop is read
  // The context usually still holds the state the caller got back from the last RUN; load
  // it only if the caller's differs.
  if (!c.xstate_known || !x86_64::SameGuestXstate(c.xstate.get(), state.xstate)) {
    if (auto s = SetXstate(tid, state.xstate, c.xstate_scratch.get()); !s.ok()) return s;
  }
  c.xstate_known = false;  // set again once the guest's state has been read at the exit
  // The guest runs on this thread's CPU: every stop wakes this thread and every resume the
  // guest, and a wakeup on another CPU costs several times a local one (9.5 against 73 us per
  // round trip here, docs/performance.md). Pinned here, not at creation, so that the guest
  // follows a vkernel thread the scheduler moves. One system call when it has moved since
  // this context's last RUN (and at the first: c.cpu starts at -1).
  if (const int cpu = sched_getcpu(); cpu >= 0 && cpu != c.cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    c.cpu = sched_setaffinity(tid, sizeof(one), &one) == 0 ? cpu : -1;
  }
  if (auto s = Ptrace(PTRACE_SYSEMU, tid, 0, 0, "PTRACE_SYSEMU"); !s.ok()) return s;

  // A signal the wait would let in is pending: let its handler run now and say so (RUN then
  // ends with kInterrupted, as if the handler had run during the wait).
  // A RUN goes on after resolving a VPAGETABLE fault. The wait may have left signals
  // unblocked; block them again before the resolution's own waits (which retry EINTR and
  // would swallow a handler), and notice a kick whose handler ran since the RUN began.
  const uint32_t kicks_at_start = ThreadState::Kicks();
  bool open_after_wait = false;
  bool handler_seen = false;  // a handler ran while the wait took a stop
  auto TakePendingSignal = [&] {
    if (handler_seen || ThreadState::Kicks() != kicks_at_start) return true;
    uint64_t pending = 0;
    syscall(SYS_rt_sigpending, &pending, 8);
    if ((pending & ~wait_mask) == 0) return false;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &wait_mask, nullptr, 8);
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, nullptr, 8);
    blocked = true;
    (void)ts.TakeInterrupt();
    return true;
  };
  bool stopping = false;           // we sent PTRACE_INTERRUPT for this RUN
  bool awaiting_report = false;    // a fault signal was delivered to the stub's handler
  user_regs_struct fault_regs;     // guest registers at that fault
  bool vpt_fault = false;          // that fault hit a VPAGETABLE region...
  uint64_t vpt_addr = 0;           // ...at this address
  for (;;) {
    int status;
    if (!stopping) {
      // A handler that ran as a stop came (below) ends RUN at the next wait.
      bool signalled = handler_seen;
      absl::StatusOr<int> waited = -1;
      if (!signalled) {
        bool unblocked = false;
        waited = WaitGuest(c, wait_mask, signalled, unblocked);
        // Restore old_mask at the end unless the wait already left exactly that in place.
        blocked = !unblocked || wait_mask != old_mask;
        open_after_wait = unblocked;
        if (!waited.ok()) return waited.status();
      }
      if (signalled && *waited >= 0) {
        handler_seen = true;  // the stop first: RUN may return it anyway
      } else if (signalled) {
        // A handler ran in this thread (a signal, the timeout or vkrt_interrupt): stop the
        // guest and report its state with tf_trapno = 0.
        (void)ts.TakeInterrupt();
        syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, nullptr, 8);
        blocked = true;
        if (auto s = Ptrace(PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT"); !s.ok()) return s;
        c.pending_event_stop = true;
        stopping = true;
        continue;
      }
      status = *waited;
    } else {
      auto waited = WaitTid(tid);
      if (!waited.ok()) return waited.status();
      status = *waited;
    }
    if (!WIFSTOPPED(status)) return Died(c);
    const int sig = WSTOPSIG(status);
    const int event = status >> 16;
    GuestExit exit;

    if (event == PTRACE_EVENT_STOP) {
      c.pending_event_stop = false;
      if (stopping && !awaiting_report) {
        // The stop PTRACE_INTERRUPT asked for comes before the delivery of a signal already
        // queued: a fault the guest took just before it would stay pending in the thread and
        // be delivered on a later RUN, after the vkernel changed the registers or the tables
        // (or another context installed the page), and be read as a fault of that new state.
        // Let it be delivered now and handled as this RUN's fault.
        if (FaultSignalPending(tid)) {
          if (auto s = Ptrace(PTRACE_SYSEMU, tid, 0, 0, "PTRACE_SYSEMU"); !s.ok()) return s;
          continue;
        }
        if (auto s = ReadRegs(c, regs); !s.ok()) return s;
        x86_64::UserRegsToFrame(regs, *state.tf);
        if (auto s = GetXstate(tid, state.xstate, c.wide_xstate); !s.ok()) return s;
        RememberXstate(c, state.xstate);
        exit.kind = GuestExit::Kind::kInterrupted;
        return exit;
      }
      // A stale interrupt or a group stop somebody else caused: keep going.
      if (auto s = Ptrace(PTRACE_SYSEMU, tid, 0, 0, "PTRACE_SYSEMU"); !s.ok()) return s;
      continue;
    }

    if (sig == (SIGTRAP | 0x80)) {  // system call entry (PTRACE_O_TRACESYSGOOD)
      if (auto s = ReadRegs(c, regs); !s.ok()) return s;
      if (awaiting_report &&
          regs.rip == kStubBase + x86_64::vkrt_stub_offsets.fault_report_end) {
        // The stub's handler reports (vector, error code, fault address) of the fault.
        const int vector = static_cast<int>(regs.rdi);
        exit.trapno = x86_64::TrapCodeForVector(vector);
        exit.kind = GuestExit::Kind::kException;
        exit.err = regs.rsi;
        if (exit.trapno == T_PAGEFLT) {
          exit.kind = GuestExit::Kind::kPageFault;
          exit.addr = regs.rdx;
          exit.err = (regs.rsi & (PGEX_P | PGEX_W | PGEX_RSV | PGEX_I)) | PGEX_U;
          // A page the guest may not access in this way is a protection fault even when
          // Linux had not populated it yet (the hardware then reports "not present").
          const int si_code = static_cast<int>(regs.r10);
          if (si_code == SEGV_ACCERR || si_code == SEGV_PKUERR) exit.err |= PGEX_P;
          if (vpt_fault && !(regs.rsi & kPgexProtectionKey)) {
            if (open_after_wait) {
              syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, nullptr, 8);
              blocked = true;
              open_after_wait = false;
            }
            // A VPAGETABLE fault whose access the signal could not tell: now it is known.
            const vpt::Access access = (regs.rsi & PGEX_W)   ? vpt::Access::kWrite
                                       : (regs.rsi & PGEX_I) ? vpt::Access::kExecute
                                                             : vpt::Access::kRead;
            SpaceInstaller installer(*this);
            auto resolved = vpt()->Resolve(vpt_addr, access, installer);
            if (!resolved.ok()) return resolved.status();
            using Outcome = vpt::Resolution::Outcome;
            if (resolved->outcome == Outcome::kInstalled) {
              // Back to the faulting instruction, with the FPU state the handler reset.
              c.regs_known = false;
              if (auto s = LoadRegs(c, fault_regs); !s.ok()) return s;
              if (auto s = SetXstate(tid, state.xstate, c.xstate_scratch.get()); !s.ok()) return s;
              awaiting_report = false;
              vpt_fault = false;
              if ((stopping && !c.pending_event_stop) || TakePendingSignal()) {
                // The install consumed the stop our PTRACE_INTERRUPT asked for, or a signal
                // came meanwhile (see above).
                x86_64::UserRegsToFrame(fault_regs, *state.tf);
                return GuestExit{};  // kInterrupted
              }
              c.regs_known = false;
              if (auto s = Ptrace(PTRACE_SYSEMU, tid, 0, 0, "PTRACE_SYSEMU"); !s.ok()) {
                return s;
              }
              continue;
            }
            if (resolved->outcome == Outcome::kFault) {
              exit.addr = vpt_addr;
              exit.err = resolved->err;
            }
          }
        }
        x86_64::UserRegsToFrame(fault_regs, *state.tf);
        c.regs_known = false;  // the thread holds the handler's registers
        return exit;  // state.xstate was read at the fault
      }
      x86_64::UserRegsToFrame(regs, *state.tf);
      state.tf->tf_rax = static_cast<int64_t>(regs.orig_rax);
      exit.err = 2;
      exit.kind = GuestExit::Kind::kSyscall;
      exit.trapno = T_FAST_SYSCALL;
      // `syscall` loads rcx with the return address and r11 with rflags; `int $0x80`
      // leaves them alone. Look at the instruction only when they say it was not `syscall`.
      if (regs.rcx != regs.rip || regs.r11 != regs.eflags || regs.rip > kStubBase) {
        errno = 0;
        long word = ptrace(PTRACE_PEEKTEXT, tid, regs.rip - 2, 0);
        const unsigned opcode = errno == 0 ? static_cast<unsigned>(word) & 0xFFFF : 0;
        if (opcode == 0x80CD) {
          exit.kind = GuestExit::Kind::kSyscall80;
          exit.trapno = T_SYSCALL80;
        } else if (opcode != 0x050F) {
          // Neither `syscall` nor `int $0x80`: sysenter, which Linux runs as a 32-bit
          // system call where the CPU allows it in long mode. The CPU does not save rip;
          // Linux points it at its vDSO landing pad. Refused as AMD refuses it.
          exit.kind = GuestExit::Kind::kException;
          exit.trapno = T_PRIVINFLT;
          exit.err = 0;
          state.tf->tf_rax = static_cast<int64_t>(regs.orig_rax);
        }
      }
      if (auto s = GetXstate(tid, state.xstate, c.wide_xstate); !s.ok()) return s;
      RememberXstate(c, state.xstate);
      c.rcx_reported_as_r10 = exit.kind == GuestExit::Kind::kSyscall;  // (vmspace.cc)
      c.rcx_run = run;
      return exit;
    }

    switch (sig) {
      case SIGSEGV:
      case SIGBUS:
      case SIGFPE:
        if (awaiting_report) {
          // The stub's handler itself faulted (its signal stack was destroyed by the
          // guest): this address space cannot go on.
          kill(pid_, SIGKILL);
          continue;
        }
        if (auto s = GetRegs(tid, fault_regs); !s.ok()) return s;
        c.regs = fault_regs;  // what the thread holds: resuming it needs no register write
        c.regs_known = true;
        vpt_fault = false;
        if (sig == SIGSEGV && (fault_regs.rip & ~uint64_t{0xFFF}) == kVsyscallPage) {
          // A jump into the vsyscall page at no entry point: Linux refuses to emulate it and
          // sends a bare SIGSEGV (SI_KERNEL) whose frame carries a stale trap number and
          // error code. To the guest it is what any other vsyscall call is, a fetch from a
          // page that is not there (docs/api.md). The thread stays at the delivery stop;
          // the next RUN's resume discards the signal.
          x86_64::UserRegsToFrame(fault_regs, *state.tf);
          if (auto s = GetXstate(tid, state.xstate, c.wide_xstate); !s.ok()) return s;
          RememberXstate(c, state.xstate);
          exit.kind = GuestExit::Kind::kPageFault;
          exit.trapno = T_PAGEFLT;
          exit.err = PGEX_U | PGEX_I;
          exit.addr = fault_regs.rip;
          return exit;
        }
        if (sig == SIGSEGV && vpt() != nullptr) {
          // A VPAGETABLE fault is resolved here, before any handler runs, when the signal
          // tells the access (vpagetable/space.h InferAccess): one stop for the fault, one
          // for the install.
          siginfo_t si = {};
          int installed = -1;
          if (open_after_wait) {
            syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, nullptr, 8);
            blocked = true;
            open_after_wait = false;
          }
          if (ptrace(PTRACE_GETSIGINFO, tid, 0, &si) == 0 &&
              vpt()->Lookup(reinterpret_cast<uint64_t>(si.si_addr), installed)) {
            vpt_fault = true;
            vpt_addr = reinterpret_cast<uint64_t>(si.si_addr);
            vpt::Access access;
            const vpt::Inference inference =
                vpt::InferAccess(vpt_addr, fault_regs.rip, si.si_code, installed, access);
            if (inference != vpt::Inference::kUnknown) {
              SpaceInstaller installer(*this);
              auto resolved = vpt()->Resolve(vpt_addr, access, installer,
                                             inference == vpt::Inference::kGuessRead);
              if (!resolved.ok()) return resolved.status();
              using Outcome = vpt::Resolution::Outcome;
              if (resolved->outcome == Outcome::kInstalled ||
                  resolved->outcome == Outcome::kNotVpt) {
                // Retry the access; the SIGSEGV is discarded.
                if (auto s = LoadRegs(c, fault_regs); !s.ok()) return s;
                if ((stopping && !c.pending_event_stop) || TakePendingSignal()) {
                  // The install consumed the stop our PTRACE_INTERRUPT asked for, or a signal
                  // came meanwhile (WaitGuest's fast path does not look, and a fault storm
                  // would never end RUN): end the RUN here, at the faulting instruction (it
                  // retries and succeeds next time).
                  x86_64::UserRegsToFrame(fault_regs, *state.tf);
                  if (auto s = GetXstate(tid, state.xstate, c.wide_xstate); !s.ok()) return s;
                  RememberXstate(c, state.xstate);
                  exit.kind = GuestExit::Kind::kInterrupted;
                  return exit;
                }
                c.regs_known = false;
                if (auto s = Ptrace(PTRACE_SYSEMU, tid, 0, 0, "PTRACE_SYSEMU"); !s.ok()) {
                  return s;
                }
                continue;
              }
              if (resolved->outcome == Outcome::kFault) {
                x86_64::UserRegsToFrame(fault_regs, *state.tf);
                if (auto s = GetXstate(tid, state.xstate, c.wide_xstate); !s.ok()) return s;
                RememberXstate(c, state.xstate);
                // The thread stays at the SIGSEGV's delivery stop; the next RUN's resume
                // discards the signal.
                exit.kind = GuestExit::Kind::kPageFault;
                exit.trapno = T_PAGEFLT;
                exit.addr = vpt_addr;
                exit.err = resolved->err;
                return exit;
              }
              // kUnsure: the hardware error code decides (below).
            }
          }
        }
        // Let the stub's handler read the hardware trap number and error code.
        if (auto s = GetXstate(tid, state.xstate, c.wide_xstate); !s.ok()) return s;
        awaiting_report = true;
        if (auto s = Ptrace(PTRACE_SYSEMU, tid, 0, static_cast<uint64_t>(sig), "PTRACE_SYSEMU");
            !s.ok()) {
          return s;
        }
        continue;
      case SIGILL:
      case SIGTRAP:
      case SIGSYS: {
        if (auto s = ReadRegs(c, regs); !s.ok()) return s;
        x86_64::UserRegsToFrame(regs, *state.tf);
        if (auto s = GetXstate(tid, state.xstate, c.wide_xstate); !s.ok()) return s;
        RememberXstate(c, state.xstate);
        exit.kind = GuestExit::Kind::kException;
        if (sig == SIGILL) {
          exit.trapno = T_PRIVINFLT;
        } else if (sig == SIGTRAP) {
          siginfo_t si = {};
          ptrace(PTRACE_GETSIGINFO, tid, 0, &si);
          exit.trapno = si.si_code == TRAP_TRACE ? T_TRCTRAP : T_BPTFLT;
        } else {
          // The seccomp filter trapped a call into the vsyscall page: to the guest, an
          // instruction fetch from a page that is not there. Linux has already emulated
          // the `ret` (rip = return address, rsp popped); undo it.
          siginfo_t si = {};
          ptrace(PTRACE_GETSIGINFO, tid, 0, &si);
          const uint64_t target = reinterpret_cast<uint64_t>(si.si_call_addr);
          exit.kind = GuestExit::Kind::kPageFault;
          exit.trapno = T_PAGEFLT;
          exit.err = PGEX_U | PGEX_I;
          exit.addr = target != 0 ? target : regs.rip;
          if (target != 0 && target != regs.rip) {
            state.tf->tf_rip = static_cast<int64_t>(target);
            state.tf->tf_rsp -= 8;
          }
        }
        return exit;
      }
      default:
        // A signal somebody else sent to the stub: not the guest's business.
        if (auto s = Ptrace(PTRACE_SYSEMU, tid, 0, 0, "PTRACE_SYSEMU"); !s.ok()) return s;
        continue;
    }
  }
}

}  // namespace

PtraceBackend* PtraceBackend::Get() {
  static auto* backend = new PtraceBackend();
  return backend;
}

const char* PtraceBackend::Unavailable() {
  static const char* const reason = []() -> const char* {
    if (FILE* f = fopen("/proc/sys/kernel/yama/ptrace_scope", "r")) {
      int scope = 0;
      const bool read = fscanf(f, "%d", &scope) == 1;
      fclose(f);
      if (read && scope >= 3) return "ptrace is disabled (kernel.yama.ptrace_scope = 3)";
    }
    // Asking about a thread we do not trace answers ESRCH when ptrace itself is allowed;
    // a seccomp policy (containers) answers EPERM or ENOSYS.
    unsigned long msg = 0;
    if (syscall(SYS_ptrace, PTRACE_GETEVENTMSG, getpid(), 0, &msg) == -1 && errno != ESRCH) {
      return "the ptrace system call is refused here (a seccomp policy?)";
    }
    return nullptr;
  }();
  return reason;
}

absl::StatusOr<std::unique_ptr<AddressSpace>> PtraceBackend::CreateAddressSpace() {
  int ctl[2], fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0) {
    return SyscallError("socketpair(AF_UNIX, SOCK_STREAM) for the stub control socket");
  }
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    absl::Status s = SyscallError("socketpair(AF_UNIX, SOCK_STREAM) for the stub fd socket");
    close(ctl[0]);
    close(ctl[1]);
    return s;
  }
  const int pidfd = SelfPidfd();
  if (pidfd < 0) {
    absl::Status s = ErrnoError(errno, absl::StrFormat("pidfd_open(%d)", getpid()));
    close(ctl[0]); close(ctl[1]); close(fds[0]); close(fds[1]);
    return s;
  }
  const sock_fprog* prog = StubFilter();
  // The fds the stub keeps, in order (the child closes the ranges between them).
  int keep[3] = {ctl[1], pidfd, fds[1]};
  std::sort(keep, keep + 3);

  // fork() without running atfork handlers, with no exit signal (the stub's death must not
  // disturb the vkernel's SIGCHLD handling; it is reaped with __WALL).
  pid_t pid = static_cast<pid_t>(syscall(SYS_clone, 0, 0, 0, 0, 0));
  if (pid == 0) {
    // Child: only raw system calls from here on (another thread may hold any lock).
    int last = -1;
    for (int fd : keep) {
      if (fd > last + 1) syscall(SYS_close_range, last + 1, fd - 1, 0);
      last = fd;
    }
    syscall(SYS_close_range, last + 1, ~0U, 0);
    syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    // The rseq area glibc registered lives in memory the stub is about to unmap; the
    // kernel would raise SIGSEGV at the next preemption.
    if (struct rseq* rs = ThreadRseq(/*register_own=*/false)) {
      if (syscall(SYS_rseq, rs, __rseq_size, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) != 0) {
        syscall(SYS_rseq, rs, 32, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
      }
    }
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &kAllSignals, nullptr, 8);
    x86_64::vkrt_stub_boot(ctl[1], pidfd, prog);
  }
  const int clone_errno = errno;
  close(ctl[1]);
  close(fds[1]);
  if (pid < 0) {
    close(ctl[0]);
    close(fds[0]);
    return ErrnoError(clone_errno, "clone() of a stub process");
  }
  auto space = std::make_unique<PtraceAddressSpace>(pid, ctl[0], fds[0], fds[1]);
  // Create the creator's context now: it proves the stub booted.
  if (auto c = space->CallerContext(); !c.ok()) return c.status();
  return std::unique_ptr<AddressSpace>(std::move(space));
}

}  // namespace vkrt
