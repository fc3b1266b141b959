// minivk's kernel: guest processes (fork/vfork/clone, execve, wait4, exit), their open files
// (passed through to host descriptors; pipes are host pipes), signals with frames on the guest
// stack, and a scheduler that runs each process's kernel context on a Boost.Context fiber.
//
// Threading and locking: `--cpus=N` runs N vkernel threads. All kernel state (this class, every
// Process, AddressSpace, PhysMem) is guarded by one lock, mu_, held by whichever thread runs
// kernel code; a fiber releases it only around VMSPACE_CTL_RUN and the idle thread around its
// ppoll. A fiber always releases the lock on the thread that took it (it never switches while
// unlocked), so ownership never crosses threads. Each thread has a SIGALRM timer (10 ms) that
// ends RUN (tf_trapno 0) so the scheduler can rotate.
#ifndef VKRT_EXAMPLES_MINIVK_KERNEL_H_
#define VKRT_EXAMPLES_MINIVK_KERNEL_H_

#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

#include <boost/context/fiber.hpp>
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "pmap.h"
#include "vm.h"

namespace minivk {

struct Options {
  int backend_type = VKRT_TYPE_DEFAULT;
  bool trace = false;
  bool stats = false;
  int cpus = 1;
  // Each vkernel thread stays on one CPU of its own while minivk may use more CPUs than
  // `cpus` (see Kernel::VkernelCpus). false: the host scheduler places them.
  bool pin = true;
  std::string root = "/";  // guest "/" is this host directory
  bool read_only = false;   // the guest may not change files under root
};

// The CPU each of `threads` vkernel threads stays on, given the CPUs minivk may use
// (`allowed`, ascending) and the one it runs on `now`: consecutive allowed CPUs from `now` on
// (from the first if `now` is not allowed), wrapping around. Empty (nothing pinned) unless
// CPUs are left over for the guests (the seccomp backend runs each on another CPU than its
// vkernel thread).
std::vector<int> VkernelCpus(const std::vector<int>& allowed, int now, int threads);

// An open file description: a host descriptor shared by every guest descriptor that refers
// to it (dup, fork), closed when the last goes.
struct File {
  int host = -1;
  bool own = true;         // false for minivk's own 0/1/2: never closed
  bool may_block = false;  // a pipe, socket or terminal: read/write wait through poll
  bool host_nonblock = false;  // minivk set O_NONBLOCK on the host descriptor (its pipes)
  bool guest_nonblock = false;  // the guest asked for O_NONBLOCK
  ~File();
};

struct FdEntry {
  std::shared_ptr<File> file;
  bool cloexec = false;
};

struct SigAction {
  uint64_t handler = 0;  // SIG_DFL 0, SIG_IGN 1, else the guest address
  uint64_t flags = 0;
  uint64_t restorer = 0;
  uint64_t mask = 0;
};

// Tells ThreadSanitizer about fiber switches (Boost 1.74's fibers do not), so that TSan sees each
// process's kernel context as one fiber that may move between vkernel threads rather than as
// stack memory shared by unrelated threads. TSan also gives each fiber its own mutex
// ownership, while the kernel lock is held across every switch: HandOver and TakeOver move the
// lock's ownership with the switch (released by the side that leaves, taken by the side that
// arrives), which is what happens. All of it compiles to nothing without TSan.
struct TsanFiber {
#if defined(__SANITIZE_THREAD__)
  void* self = __tsan_create_fiber(0);
  void* caller = nullptr;  // the context that resumed this fiber last
  // Before resuming the fiber, on the resuming side.
  void Enter() {
    caller = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(self, 0);
  }
  // Before the fiber gives the thread back (SwitchOut, or returning from its function), and
  // on the destroying side after a suspended fiber was unwound by its destruction.
  void Leave() { __tsan_switch_to_fiber(caller, 0); }
  static void HandOver(void* lock) {
    __tsan_mutex_pre_unlock(lock, 0);
    __tsan_mutex_post_unlock(lock, 0);
  }
  static void TakeOver(void* lock) {
    __tsan_mutex_pre_lock(lock, 0);
    __tsan_mutex_post_lock(lock, 0, 1);
  }
  ~TsanFiber() { __tsan_destroy_fiber(self); }
#else
  void Enter() {}
  void Leave() {}
  static void HandOver(void*) {}
  static void TakeOver(void*) {}
#endif
};

// A guest interval timer: setitimer(ITIMER_REAL)/alarm, or one of timer_create's. Deadlines
// are CLOCK_MONOTONIC nanoseconds (a CLOCK_REALTIME absolute time is converted when set).
struct GuestTimer {
  bool used = false;      // (timer_create's) the id is allocated
  int signo = SIGALRM;    // 0: SIGEV_NONE
  int clock = CLOCK_MONOTONIC;  // what an absolute time (TIMER_ABSTIME) is measured on
  int64_t deadline = -1;  // armed while >= 0
  int64_t interval = 0;   // re-armed by this much at expiry (0: once)
  uint64_t value = 0;     // (timer_create's) sigev_value, the signal's si_value
  // (timer_create's) expirations its pending signal stands for beyond the first, and what
  // the last delivered one stood for (timer_getoverrun).
  int overrun = 0, last_overrun = 0;
};

// Linux's x86-64 siginfo_t (128 bytes): what a pending signal carries to its handler (or to
// sigtimedwait). `fields` holds the union: for SI_USER/SI_TKILL/SI_QUEUE pid | uid << 32
// (and si_value in fields[1]), for a fault si_addr, for SI_TIMER timer id | overrun << 32
// and si_value, for SIGCHLD pid | uid << 32, si_status, si_utime, si_stime.
struct GuestSigInfo {
  int32_t signo = 0, err = 0, code = 0, pad = 0;
  uint64_t fields[14] = {};
};
static_assert(sizeof(GuestSigInfo) == 128);
constexpr int kSiKernel = 0x80, kSiUser = 0, kSiQueue = -1, kSiTimer = -2, kSiTkill = -6;

// The siginfo of a signal from process `pid` (kill, tgkill, SIGPIPE, SIGCHLD): si_code
// `code`, si_pid and minivk's uid (every guest's).
inline GuestSigInfo SenderInfo(int code, int pid) {
  GuestSigInfo info;
  info.code = code;
  info.fields[0] = static_cast<uint32_t>(pid) | (static_cast<uint64_t>(getuid()) << 32);
  return info;
}

struct Process {
  enum class State { kRunnable, kRunning, kBlocked, kZombie };

  int pid = 0, ppid = 0, pgid = 0, sid = 0;
  State state = State::kRunnable;
  std::shared_ptr<AddressSpace> as;  // shared by a vfork child until it execs or exits
  std::vector<FdEntry> fds;
  int cwd = -1;           // host O_PATH descriptor of the working directory
  mode_t umask = 022;
  std::vector<struct iovec> iov;  // ReadFd/WriteFd's scratch (keeps its capacity)
  GuestTimer itimer_real;          // setitimer(ITIMER_REAL) and alarm: kept across execve
  std::vector<GuestTimer> timers;  // timer_create's, by id: deleted by execve, not inherited
  int nice = 0;  // getpriority/setpriority (-20..19); minivk's scheduler does not use it
  struct trapframe tf = {};
  struct vextframe vf = {};
  std::unique_ptr<unsigned char, void (*)(void*)> fpu{nullptr, free};  // vkrt_vmspace_run_fpu's
  // The FPU state of each live signal frame, by the frame's guest address (a frame a
  // handler left by longjmp is dropped once the stack is reused, or at the sigreturn of an
  // older frame).
  struct SavedFpu {
    uint64_t frame;
    std::vector<unsigned char> state;
  };
  std::vector<SavedFpu> fpu_saved;
  std::vector<std::vector<unsigned char>> fpu_spare;  // buffers to reuse: no allocation per frame
  // sigaltstack: the alternate signal stack [sp, sp + size), or none (size 0); SS_AUTODISARM
  // in flags. Inherited by fork, reset by execve.
  struct AltStack {
    uint64_t sp = 0, size = 0;
    int flags = 0;
  } altstack;
  SigAction actions[65];
  uint64_t blocked = 0, pending = 0;
  uint64_t clear_child_tid = 0;
  int wait_status = 0;     // for wait4, once a zombie
  Process* vfork_parent = nullptr;  // blocked until this child execs or exits
  bool in_vfork = false;   // this process waits for its vfork child
  bool sigsuspended = false;  // rt_sigsuspend: the mask to restore after the handler
  uint64_t saved_mask = 0;
  // What a blocked process waits for (any wakeup makes it retry its call).
  std::vector<struct pollfd> waits;  // host descriptors and events
  int64_t wait_deadline = -1;  // CLOCK_MONOTONIC ns, -1 none
  int64_t kernel_since = 0;    // when its kernel work last started or resumed
  // CPU time as minivk accounts it: user time is time inside RUN, system time the kernel
  // work done for it (not its waits); c*: of the children it reaped, with theirs. Kept
  // across execve; a fork starts at 0.
  int64_t utime_ns = 0, stime_ns = 0, cutime_ns = 0, cstime_ns = 0;
  // setitimer's ITIMER_VIRTUAL (on utime_ns) and ITIMER_PROF (on utime_ns + stime_ns):
  // deadlines in those nanoseconds. Kept across execve, not inherited.
  GuestTimer itimer_virtual, itimer_prof;
  pid_t vcpu_tid = 0;          // the vkernel thread running it (for vkrt_interrupt)
  bool in_run = false;         // inside VMSPACE_CTL_RUN (without the kernel lock)
  int64_t orig_rax = 0;        // the system call number, for restarts
  GuestSigInfo info[65];       // what each pending signal carries (one instance per signal)
  uint64_t sigwait_set = 0;    // what rt_sigtimedwait waits for (they wake it, kept if ignored)
  boost::context::fiber fiber, caller;
  TsanFiber tsan;              // `fiber` as ThreadSanitizer knows it
  std::string comm;            // for --trace
  std::string exe;             // the program's guest path (/proc/self/exe)

  // A suspended fiber unwinds its stack when destroyed, which runs on it: done here, before
  // `tsan` goes, so that TSan sees that switch too.
  ~Process() {
    if (fiber) {
      tsan.Enter();
      fiber = boost::context::fiber();
      tsan.Leave();
    }
  }
};

class Kernel {
 public:
  Kernel(PhysMem& mem, const Options& options);
  ~Kernel();
  Kernel(const Kernel&) = delete;
  Kernel& operator=(const Kernel&) = delete;

  // Makes process 1 running `path`. False with `error` (the program cannot be loaded, a host
  // call failed).
  bool Start(const std::string& path, const std::vector<std::string>& argv,
             const std::vector<std::string>& envp, std::string& error);
  // Runs until process 1 exits; its exit status as a shell reports it (128 + signal number
  // if a signal ended it), or -1 with `error` for a host failure.
  int Run(std::string& error);

  struct Stats {
    uint64_t syscalls = 0, faults = 0, interrupts = 0, signals = 0, forks = 0, execs = 0;
    uint64_t context_switches = 0;
    double run_seconds = 0, kernel_seconds = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  // Scheduler (mu_ held).
  void SchedulerLoop(std::unique_lock<std::mutex>& lock);
  // The CPU each vkernel thread stays on (options_.cpus of them), or nothing when they are
  // not pinned: --no-pin, or no CPU would be left for the guests.
  std::vector<int> VkernelCpus() const;
  // Keeps the calling thread, vkernel thread number `thread`, on its CPU in pin_cpus_.
  void StayOnCpu(int thread) const;
  void PollIdle(std::unique_lock<std::mutex>& lock);
  void Wake(Process& p);
  // The calling fiber gives the thread back to the scheduler until woken (kBlocked) or at
  // once requeued (kRunnable).
  void SwitchOut(Process& p);
  // Adds the kernel work since p.kernel_since to its system time (and --stats).
  void ChargeKernel(Process& p, int64_t now);
  // The nanoseconds until p's next CPU-time timer is due (at least 1; 0: none armed). With
  // `fire`, first sends SIGVTALRM / SIGPROF for those its CPU time has reached and re-arms
  // the periodic ones.
  int64_t CpuTimers(Process& p, bool fire);
  void Block(Process& p);
  // Blocks until host descriptor `fd` has `events` (or any other wakeup).
  void BlockOn(Process& p, int fd, short events);
  void StartFiber(Process& p);
  void ProcessMain(Process& p);

  // One exit of RUN.
  void HandleExit(Process& p);
  int64_t Syscall(Process& p);  // traces, then Dispatch
  int64_t Dispatch(Process& p, uint64_t nr, const uint64_t* args);
  bool RunGuest(Process& p);

  // Processes.
  Process* NewProcess();
  int64_t Fork(Process& p, uint64_t flags, uint64_t stack, uint64_t ptid, uint64_t ctid,
               uint64_t tls);
  int64_t Execve(Process& p, uint64_t path, uint64_t argv, uint64_t envp);
  void Exit(Process& p, int wait_status);
  // `usage` (if not null) gets the reaped child's CPU time, with its reaped children's.
  int64_t Wait4(Process& p, int64_t pid, uint64_t status, int options, struct rusage* usage);
  void Reap(Process& child);
  void ReleaseVfork(Process& child);

  // Signals.
  // Makes `sig` pending for p with `info` (unless it already is: one instance per signal)
  // and wakes or interrupts p if it is not blocked; discarded if p ignores it. Without
  // `info`: SI_KERNEL (a timer's, the kernel's own).
  void SendSignal(Process& p, int sig, const GuestSigInfo& info);
  void SendSignal(Process& p, int sig);
  // Dequeues pending signal `sig` of p: its siginfo, an SI_TIMER one with the overruns of
  // its timer until now.
  GuestSigInfo TakeSignal(Process& p, int sig);
  // Forgets p's pending signals that are no longer blocked and that it ignores: one kept
  // while blocked (Linux never discards a blocked signal) is dropped once unblocked.
  void DropIgnored(Process& p);
  // Timers: arming one (`when` >= 0) makes the scheduler look at it; FireTimers sends the
  // signals of those due at `now` and re-arms the periodic ones.
  void ArmTimer(GuestTimer& t, int64_t when, int64_t interval);
  void FireTimers(int64_t now);
  int64_t TimerCall(Process& p, uint64_t nr, const uint64_t* a);
  // CPU clock `clock` (IsCpuClock in syscalls.cc) as p reads it, in nanoseconds; -EINVAL
  // for a pid that is no live guest process.
  int64_t CpuClockNs(const Process& p, clockid_t clock) const;
  // kill(2) (tkill/tgkill with `code` SI_TKILL): p is the sender.
  int64_t Kill(Process& p, int64_t pid, int sig, int code = kSiUser);
  // rt_sigtimedwait(2): waits for a signal of the set at guest address `set_at`.
  int64_t SigTimedWait(Process& p, uint64_t set_at, uint64_t info_at, uint64_t timeout_at);
  // Delivers what is pending and unblocked before the guest resumes, after storing `result`
  // (a system call's result; kRestart: restart or EINTR depending on the handler; kKeepRax:
  // the registers are already set).
  void DeliverSignals(Process& p, int64_t result);
  // A synchronous fault's signal: delivered even if blocked or ignored (then it kills).
  void ForceSignal(Process& p, int sig, int code, uint64_t addr);
  bool PushFrame(Process& p, int sig, const SigAction& act, const GuestSigInfo& info);
  int64_t SigReturn(Process& p);
  // sigaltstack(2) at guest addresses `ss` and `old_ss` (0: none), as the stack pointer `sp`
  // sees it (on the alternate stack, it cannot be changed: EPERM).
  int64_t SigAltStack(Process& p, uint64_t ss, uint64_t old_ss, uint64_t sp);
  bool SignalPending(const Process& p) const;

  // Files.
  std::shared_ptr<File> FileOf(Process& p, int64_t fd);
  int64_t Install(Process& p, std::shared_ptr<File> file, bool cloexec, int64_t at = -1);
  int64_t ReadFd(Process& p, int64_t fd, uint64_t buf, uint64_t len, int64_t offset);
  int64_t WriteFd(Process& p, int64_t fd, uint64_t buf, uint64_t len, int64_t offset);
  int64_t Openat(Process& p, int64_t dirfd, uint64_t path, int flags, int mode);
  // Openat of a FIFO (`rel` under host directory `dir`): waits in the fiber, not the host,
  // for the other end; the host descriptor is non-blocking.
  int64_t OpenFifo(Process& p, int dir, const std::string& rel, int flags, mode_t create_mode);
  int64_t Pipe(Process& p, uint64_t fds, int flags);
  // A guest path → (host directory descriptor, relative path). Absolute paths start at the
  // root; `dirfd` AT_FDCWD is the working directory. False: -errno in *err.
  bool Resolve(Process& p, int64_t dirfd, uint64_t path, int& host_dir, std::string& rel,
               int64_t* err, bool empty_ok = false);
  int64_t PathCall(Process& p, uint64_t nr, const uint64_t* a);
  int64_t Getcwd(Process& p, uint64_t buf, uint64_t size);
  // The working directory as the guest names it (under the root), and `path` made absolute.
  std::string GuestCwd(const Process& p) const;
  // The host directory a guest path starts from (the root's for an absolute path, else
  // `cwd`) and the rest of the path relative to it ("." for "/").
  int HostDir(int cwd, const std::string& path, std::string& rel) const;
  // A host path as the guests see it (under --root); false if it lies outside the root.
  bool GuestPathOf(std::string& host_path) const;
  std::string AbsolutePath(const Process& p, const std::string& path) const;
  int64_t Ioctl(Process& p, int64_t fd, uint64_t request, uint64_t arg);
  int64_t Fcntl(Process& p, int64_t fd, int cmd, uint64_t arg);
  int64_t Poll(Process& p, uint64_t fds, uint64_t nfds, int64_t timeout_ms);
  int64_t Sleep(Process& p, int64_t deadline_ns);

  // The program at guest path `path` (relative to host directory `cwd`), from the cache or
  // loaded; nullptr with the errno execve reports in `err` and a sentence in `error`. For a
  // "#!" script, `interpreter` (if given) gets the rest of its first line. A dynamically
  // linked program comes with its ELF interpreter (the dynamic linker, under the guest's
  // root), loaded with `as_interpreter` set: at kInterpBias, its own PT_INTERP ignored.
  std::shared_ptr<Program> GetProgram(int cwd, const std::string& path, int& err,
                                      std::string& error, std::string* interpreter,
                                      bool as_interpreter = false);

  void Trace(const Process& p, const char* format, ...) __attribute__((format(printf, 3, 4)));

  PhysMem& mem_;
  Options options_;
  std::vector<int> pin_cpus_;  // VkernelCpus(), from Start on
  VmspacePool pool_;
  int root_fd_ = -1;
  std::string root_path_;  // realpath of options_.root
  struct ProgramKey {
    dev_t dev;
    ino_t ino;
    int64_t mtime_ns;
    off_t size;
    bool as_interpreter;  // loaded at another place
    bool operator<(const ProgramKey& o) const {
      return std::tie(dev, ino, mtime_ns, size, as_interpreter) <
             std::tie(o.dev, o.ino, o.mtime_ns, o.size, o.as_interpreter);
    }
  };
  std::map<ProgramKey, std::shared_ptr<Program>> programs_;  // loaded programs, by file
  size_t fpu_size_ = 0;  // vkrt_fpu_area_size()
  std::vector<unsigned char> fpu_initial_;

  std::mutex mu_;  // the kernel lock (see the file comment)
  std::condition_variable idle_cv_;
  std::map<int, std::unique_ptr<Process>> procs_;
  std::deque<Process*> runq_;
  int next_pid_ = 1;
  int live_ = 0;             // processes not yet zombies
  bool polling_ = false;     // a thread sits in ppoll (wake it with wake_fd_)
  int64_t next_timer_ = -1;  // no guest timer is due before this (-1: none armed)
  int wake_fd_ = -1;         // eventfd
  int init_status_ = 0;
  std::string fatal_;        // a host failure that ends Run()
  Stats stats_;
};

}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_KERNEL_H_
