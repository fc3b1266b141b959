// sigsys_probe.h - the raw "seccomp SIGSYS + spin handoff" floor for roundtrip_bench.
//
// No vkrt code: a forked guest process traps one otherwise unused syscall number (kTrapNr) with a
// seccomp RET_TRAP filter. Its SIGSYS handler (on its own sigaltstack) copies all of
// uc_mcontext.gregs into a MAP_SHARED page, publishes a request sequence number and spins until
// the controller (the benchmark thread, in the parent) publishes the matching response sequence
// number; it then sets gregs[REG_RAX] to the controller's result and returns (rt_sigreturn). This
// is the shape of a seccomp-based guest syscall round trip with nothing else in it, so it is what
// such a backend can at best approach.
//
// The guest loops `syscall(kTrapNr, i)` for i = 0, 1, 2, ... and counts every result != i + 1 in
// the shared page; the controller answers rdi + 1. Both sides spin (polling, without
// PAUSE, which exits to the hypervisor on PVM: ~1.1 us each), so they need two
// different CPUs (Start() takes the guest's CPU). The guest never times out (this is a floor),
// but it leaves as soon as Stop() raises the stop flag, and Stop() (also run by the destructor)
// kills and reaps it in any case. The controller's waits give up after kTimeoutNs.
//
// Park()/Unpark() (untimed, for benchmarks that interleave the probe with something else that
// wants the guest's CPU): Park() makes the guest, spinning for its next answer, sleep on a futex
// instead, and returns once it does; Unpark() wakes it and returns once it spins again.
//
// Header-only, no vkrt dependency; everything is in namespace sigsys_probe.

#ifndef VKRT_BENCH_SIGSYS_PROBE_H_
#define VKRT_BENCH_SIGSYS_PROBE_H_

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/ucontext.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>

namespace sigsys_probe {

constexpr int kSiCodeSeccomp = 1;                 // SYS_SECCOMP (asm-generic/siginfo.h; not in glibc)
constexpr long kTrapNr = 1000;                    // not a syscall on x86-64; RET_TRAP'd
constexpr size_t kAltStackSize = 64 * 1024;       // the guest's sigaltstack (mmap'd)
constexpr int64_t kTimeoutNs = 5'000'000'000;     // the controller's waits give up after this
constexpr unsigned kSpinsPerCheck = 2048;         // pause loops between clock/child checks

// Guest set-up steps, for the error message when one fails.
enum SetupStep : int {
  kStepNone = 0,
  kStepPdeathsig,
  kStepParentGone,
  kStepAffinity,
  kStepAltStackMmap,
  kStepSigaltstack,
  kStepSigaction,
  kStepSigprocmask,
  kStepNoNewPrivs,
  kStepSeccomp,
};

inline const char* StepName(int step) {
  switch (step) {
    case kStepPdeathsig: return "prctl(PR_SET_PDEATHSIG)";
    case kStepParentGone: return "parent exited during set-up";
    case kStepAffinity: return "sched_setaffinity";
    case kStepAltStackMmap: return "mmap(sigaltstack)";
    case kStepSigaltstack: return "sigaltstack";
    case kStepSigaction: return "sigaction(SIGSYS)";
    case kStepSigprocmask: return "sigprocmask(unblock SIGSYS)";
    case kStepNoNewPrivs: return "prctl(PR_SET_NO_NEW_PRIVS)";
    case kStepSeccomp: return "seccomp(SECCOMP_SET_MODE_FILTER)";
    default: return "unknown step";
  }
}

// The MAP_SHARED page. Each sequence number has its own cache line; the result shares the
// response's line (the controller writes both, the guest reads both).
struct Shared {
  alignas(64) std::atomic<uint64_t> req_seq;   // guest -> controller
  alignas(64) std::atomic<uint64_t> resp_seq;  // controller -> guest
  uint64_t result;                             // written before resp_seq (release)
  alignas(64) greg_t gregs[NGREG];             // written before req_seq (release)
  alignas(64) std::atomic<uint32_t> stop;      // controller -> guest: leave now
  alignas(64) std::atomic<uint32_t> park;      // controller -> guest: sleep on this futex word
  std::atomic<uint32_t> parked;                // guest: 1 while it is parked
  alignas(64) std::atomic<uint64_t> mismatches;   // guest: results != i + 1
  std::atomic<uint64_t> bad_signals;              // guest: SIGSYS that is not our seccomp trap
  std::atomic<int> setup_step;                    // guest: failed SetupStep, or kStepNone
  std::atomic<int> setup_errno;
};
static_assert(sizeof(Shared) <= 4096, "Shared must fit in one page");
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "cross-process atomics must be lock-free");

// The guest's pointer to the shared page (set in the child before the handler is installed).
inline Shared* g_shared = nullptr;

inline uint64_t RawSyscall1(long nr, uint64_t a0) {
  uint64_t ret;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a0) : "rcx", "r11", "memory");
  return ret;
}

inline void OnSigsys(int, siginfo_t* si, void* ctx) {
  Shared* s = g_shared;
  auto* uc = static_cast<ucontext_t*>(ctx);
  if (si->si_code != kSiCodeSeccomp || si->si_syscall != kTrapNr) {
    s->bad_signals.fetch_add(1, std::memory_order_relaxed);
  }
  std::memcpy(s->gregs, uc->uc_mcontext.gregs, sizeof s->gregs);
  const uint64_t seq = s->req_seq.load(std::memory_order_relaxed) + 1;  // the only writer
  s->req_seq.store(seq, std::memory_order_release);
  while (s->resp_seq.load(std::memory_order_acquire) != seq) {
    if (s->stop.load(std::memory_order_relaxed) != 0) _exit(0);
    if (s->park.load(std::memory_order_relaxed) != 0) {
      s->parked.store(1, std::memory_order_release);
      while (s->park.load(std::memory_order_acquire) != 0) {
        if (s->stop.load(std::memory_order_relaxed) != 0) _exit(0);
        // Shared (not PRIVATE): the controller is another process. 1 = still parked.
        syscall(SYS_futex, reinterpret_cast<uint32_t*>(&s->park), FUTEX_WAIT, 1, nullptr,
                nullptr, 0);
      }
      s->parked.store(0, std::memory_order_release);
    }
    asm volatile("" ::: "memory");  // no PAUSE: it exits to the hypervisor here
  }
  uc->uc_mcontext.gregs[REG_RAX] = static_cast<greg_t>(s->result);
}

[[noreturn]] inline void GuestFail(Shared* s, SetupStep step) {
  s->setup_errno.store(errno, std::memory_order_relaxed);
  s->setup_step.store(step, std::memory_order_release);
  _exit(121);
}

// The forked child. Only async-signal-safe calls (fork from a possibly threaded process).
[[noreturn]] inline void GuestMain(Shared* s, pid_t parent, int cpu) {
  g_shared = s;
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) GuestFail(s, kStepPdeathsig);
  if (getppid() != parent) GuestFail(s, kStepParentGone);
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) GuestFail(s, kStepAffinity);
  }

  void* alt = mmap(nullptr, kAltStackSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (alt == MAP_FAILED) GuestFail(s, kStepAltStackMmap);
  stack_t ss = {};
  ss.ss_sp = alt;
  ss.ss_size = kAltStackSize;
  if (sigaltstack(&ss, nullptr) != 0) GuestFail(s, kStepSigaltstack);

  struct sigaction sa = {};
  sa.sa_sigaction = OnSigsys;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0) GuestFail(s, kStepSigaction);
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, SIGSYS);  // a blocked forced SIGSYS would kill us instead
  if (sigprocmask(SIG_UNBLOCK, &unblock, nullptr) != 0) GuestFail(s, kStepSigprocmask);

  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(kTrapNr), 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {};
  prog.len = static_cast<unsigned short>(sizeof filter / sizeof filter[0]);
  prog.filter = filter;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) GuestFail(s, kStepNoNewPrivs);
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) GuestFail(s, kStepSeccomp);

  for (uint64_t i = 0;; ++i) {
    if (RawSyscall1(kTrapNr, i) != i + 1) s->mismatches.fetch_add(1, std::memory_order_relaxed);
  }
}

inline int64_t MonoNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The controller side, run by the benchmark thread.
class Probe {
 public:
  Probe() = default;
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;
  ~Probe() { Stop(); }

  // Maps the shared page, forks the guest (pinned to `guest_cpu`, or left with the caller's
  // affinity if < 0) and completes its first round trip (rdi 0) untimed. "" or an error; on
  // error nothing is left running.
  std::string Start(int guest_cpu) {
    void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return Err("mmap(MAP_SHARED)");
    s_ = new (p) Shared();  // the mapping is zero-filled; this just makes the objects official
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) {
      std::string err = Err("fork");
      Stop();
      return err;
    }
    if (pid_ == 0) GuestMain(s_, parent, guest_cpu);
    std::string err = RoundTrip();
    if (!err.empty()) Stop();
    return err;
  }

  // One round trip: wait for the guest's next request, check it, answer rdi + 1.
  std::string RoundTrip() {
    const uint64_t seq = next_seq_;
    std::string err = WaitRequest(seq);
    if (!err.empty()) return err;
    const greg_t rdi = s_->gregs[REG_RDI];
    const greg_t rax = s_->gregs[REG_RAX];
    const greg_t rip = s_->gregs[REG_RIP];
    if (rax != kTrapNr) return "request with rax " + std::to_string(rax) + ", not the syscall number";
    if (static_cast<uint64_t>(rdi) != expect_) {
      return "request with rdi " + std::to_string(rdi) + ", expected " + std::to_string(expect_);
    }
    if (seq == 1) {
      rip_ = rip;
    } else if (rip != rip_) {
      return "request from a different rip";
    }
    if (s_->mismatches.load(std::memory_order_relaxed) != 0) {
      return "the guest saw a wrong syscall result";
    }
    if (s_->bad_signals.load(std::memory_order_relaxed) != 0) {
      return "the guest got a SIGSYS that is not its seccomp trap";
    }
    s_->result = static_cast<uint64_t>(rdi) + 1;
    s_->resp_seq.store(seq, std::memory_order_release);
    ++next_seq_;
    ++expect_;
    return "";
  }

  // Untimed. Puts the guest to sleep while it waits for its next answer; "" once it sleeps.
  std::string Park() {
    s_->park.store(1, std::memory_order_release);
    return WaitParked(1);
  }

  // Untimed. Wakes a parked guest; "" once it is back to spinning for its answer.
  std::string Unpark() {
    s_->park.store(0, std::memory_order_release);
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&s_->park), FUTEX_WAKE, 1, nullptr, nullptr,
            0);
    return WaitParked(0);
  }

  // Tells the guest to leave, kills and reaps it, unmaps the page. Safe to call more than once.
  void Stop() {
    if (s_ != nullptr) s_->stop.store(1, std::memory_order_relaxed);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int st;
      while (waitpid(pid_, &st, __WALL) < 0 && errno == EINTR) {
      }
    }
    pid_ = -1;
    if (s_ != nullptr) {
      s_->~Shared();
      munmap(s_, 4096);
      s_ = nullptr;
    }
  }

 private:
  static std::string Err(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

  // Spins until req_seq reaches `seq`. Every kSpinsPerCheck pauses: guest set-up failure, guest
  // death (reaped here, so Stop() does not wait for it again) and the kTimeoutNs deadline.
  std::string WaitRequest(uint64_t seq) {
    unsigned spins = 0;
    int64_t deadline = 0;
    uint64_t cur;
    while ((cur = s_->req_seq.load(std::memory_order_acquire)) < seq) {
      asm volatile("" ::: "memory");  // no PAUSE: it exits to the hypervisor here
      if (++spins < kSpinsPerCheck) continue;
      spins = 0;
      if (const int step = s_->setup_step.load(std::memory_order_acquire); step != kStepNone) {
        return std::string("guest set-up failed: ") + StepName(step) + ": " +
               std::strerror(s_->setup_errno.load(std::memory_order_relaxed));
      }
      int st;
      if (waitpid(pid_, &st, WNOHANG | __WALL) == pid_) {
        pid_ = -1;
        if (WIFSIGNALED(st)) return "guest killed by signal " + std::to_string(WTERMSIG(st));
        return "guest exited with status " + std::to_string(WEXITSTATUS(st));
      }
      const int64_t now = MonoNs();
      if (deadline == 0) {
        deadline = now + kTimeoutNs;
      } else if (now > deadline) {
        return "timed out waiting for guest request " + std::to_string(seq);
      }
    }
    if (cur != seq) return "guest request sequence skipped to " + std::to_string(cur);
    return "";
  }

  // Waits (sched_yield between polls) until the guest's parked flag is `want`.
  std::string WaitParked(uint32_t want) {
    const int64_t deadline = MonoNs() + kTimeoutNs;
    while (s_->parked.load(std::memory_order_acquire) != want) {
      int st;
      if (waitpid(pid_, &st, WNOHANG | __WALL) == pid_) {
        pid_ = -1;
        return "guest died while (un)parking";
      }
      if (MonoNs() > deadline) return want ? "timed out parking the guest" : "timed out unparking";
      sched_yield();
    }
    return "";
  }

  Shared* s_ = nullptr;
  pid_t pid_ = -1;
  uint64_t next_seq_ = 1;  // the request sequence number the next RoundTrip() waits for
  uint64_t expect_ = 0;    // the rdi of the next request
  greg_t rip_ = 0;         // the guest's rip after its trapping `syscall`, from the first request
};

}  // namespace sigsys_probe

#endif  // VKRT_BENCH_SIGSYS_PROBE_H_
