// minivk's kernel: scheduler and fibers, process life cycle, signals. System calls and files
// are in syscalls.cc.
#include "kernel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <boost/context/protected_fixedsize_stack.hpp>
#include <thread>

#include "internal.h"

namespace minivk {
namespace {

constexpr size_t kFiberStack = 256 * 1024;

// The preemption tick: it ends RUN (tf_trapno 0); if it lands while the kernel is running
// instead, the flag makes the next exit rotate all the same.
thread_local volatile sig_atomic_t tick_seen = 0;
void OnTick(int) { tick_seen = 1; }

// Linux's signal frame (arch/x86/include/uapi/asm/sigcontext.h, ucontext.h, siginfo.h).
struct SigContext {
  uint64_t r8, r9, r10, r11, r12, r13, r14, r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip,
      eflags;
  uint16_t cs, gs, fs, ss;
  uint64_t err, trapno, oldmask, cr2, fpstate, reserved[8];
};
static_assert(sizeof(SigContext) == 256);
struct StackT {
  uint64_t sp;
  int32_t flags, pad;
  uint64_t size;
};
struct UContext {
  uint64_t flags, link;
  StackT stack;
  SigContext mcontext;
  uint64_t sigmask;
};
static_assert(sizeof(UContext) == 304);
struct SigFrame {
  uint64_t pretcode;
  UContext uc;
  GuestSigInfo info;
};
static_assert(offsetof(SigFrame, uc) == 8 && offsetof(SigFrame, info) == 312);

constexpr uint64_t kUnblockable = Bit(SIGKILL) | Bit(SIGSTOP);
constexpr uint64_t kSaRestorer = 0x04000000;  // SA_RESTORER (not in glibc's headers)
constexpr int kSsAutodisarm = static_cast<int>(1u << 31);  // SS_AUTODISARM (linux/signal.h)
constexpr uint64_t kMinSigStackSize = 2048;             // Linux's MINSIGSTKSZ for sigaltstack

// Whether stack pointer `sp` is on p's alternate signal stack (as Linux's on_sig_stack: the
// top counts, the bottom does not).
bool OnAltStack(const Process& p, uint64_t sp) {
  return sp > p.altstack.sp && sp - p.altstack.sp <= p.altstack.size;
}

// p's alternate stack as sigaltstack reports it for stack pointer `sp` (and as a signal
// frame keeps it for sigreturn).
StackT ReportedAltStack(const Process& p, uint64_t sp) {
  const int state = p.altstack.size == 0 ? SS_DISABLE : OnAltStack(p, sp) ? SS_ONSTACK : 0;
  return {p.altstack.sp, state | p.altstack.flags, 0, p.altstack.size};
}

// Sets p's alternate stack as sigaltstack(2) would, the stack pointer being `sp`: EPERM on
// it, EINVAL for unknown flags, ENOMEM below MINSIGSTKSZ.
int64_t SetAltStack(Process& p, uint64_t stack, int flags, uint64_t size, uint64_t sp) {
  if (OnAltStack(p, sp)) return -EPERM;
  const int mode = flags & ~kSsAutodisarm;
  if (mode != 0 && mode != SS_ONSTACK && mode != SS_DISABLE) return -EINVAL;
  if (mode == SS_DISABLE) {
    p.altstack = {};
    return 0;
  }
  if (size < kMinSigStackSize) return -ENOMEM;
  p.altstack = {stack, size, flags & kSsAutodisarm};
  return 0;
}

}  // namespace

int64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

bool MayBlock(const struct stat& st) {
  if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISBLK(st.st_mode)) return false;
  if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 1) {
    switch (minor(st.st_rdev)) {
      case 3: case 5: case 7: case 8: case 9:  // null, zero, full, random, urandom
        return false;
    }
  }
  return true;
}

bool DefaultIgnore(int sig) {
  // Stops are ignored too: minivk has no job control.
  return sig == SIGCHLD || sig == SIGURG || sig == SIGWINCH || sig == SIGCONT ||
         sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

File::~File() {
  if (own && host >= 0) close(host);
}

Kernel::Kernel(PhysMem& mem, const Options& options)
    : mem_(mem), options_(options), pool_(options.backend_type) {
  // Each process's FPU state lives in its own area, which RUN reads and writes
  // (vkrt_vmspace_run_fpu): this thread's registers never hold a guest's.
  fpu_size_ = vkrt_fpu_area_size();
  fpu_initial_.assign(fpu_size_, 0);
  vkrt_fpu_area_init(fpu_initial_.data());
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

Kernel::~Kernel() {
  // Suspended fibers unwind their stacks when destroyed; nothing else refers to them.
  procs_.clear();
  if (root_fd_ >= 0) close(root_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void Kernel::Trace(const Process& p, const char* format, ...) {
  char line[512];
  va_list ap;
  va_start(ap, format);
  vsnprintf(line, sizeof(line), format, ap);
  va_end(ap);
  fprintf(stderr, "minivk[%d %s]: %s\n", p.pid, p.comm.c_str(), line);
}

Process* Kernel::NewProcess() {
  auto owned = std::make_unique<Process>();
  Process* p = owned.get();
  p->pid = next_pid_++;
  p->fpu.reset(static_cast<unsigned char*>(aligned_alloc(64, fpu_size_)));
  procs_[p->pid] = std::move(owned);
  ++live_;
  return p;
}

bool Kernel::Start(const std::string& path, const std::vector<std::string>& argv,
                   const std::vector<std::string>& envp, std::string& error) {
  // Before the first vmspace and its contexts exist: seccomp places a guest context, on
  // another CPU than its vkernel thread's, when it creates it.
  pin_cpus_ = VkernelCpus();
  StayOnCpu(0);
  root_fd_ = open(options_.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  char* real = root_fd_ >= 0 ? realpath(options_.root.c_str(), nullptr) : nullptr;
  if (real == nullptr) {
    error = "--root=" + options_.root + ": " + strerror(errno);
    return false;
  }
  root_path_ = real;
  free(real);
  if (wake_fd_ < 0) {
    error = std::string("eventfd: ") + strerror(errno);
    return false;
  }
  Process* p = NewProcess();
  p->pgid = p->sid = p->pid;
  p->cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (p->cwd < 0) p->cwd = fcntl(root_fd_, F_DUPFD_CLOEXEC, 3);
  for (int fd = 0; fd < 3; ++fd) {
    auto file = std::make_shared<File>();
    file->host = fd;
    file->own = false;
    struct stat st;
    file->may_block = fstat(fd, &st) != 0 || MayBlock(st);
    if (fcntl(fd, F_GETFD) < 0) file.reset();  // not open: the guest's stays closed too
    p->fds.push_back(FdEntry{file, false});
  }
  memcpy(p->fpu.get(), fpu_initial_.data(), fpu_size_);
  int err = 0;
  std::shared_ptr<Program> program = GetProgram(p->cwd, path, err, error, nullptr);
  if (!program) return false;
  auto as = std::make_shared<AddressSpace>(mem_, pool_);
  LoadedProgram loaded;
  if (!as->Load(program, argv, envp, loaded, error)) return false;
  p->as = std::move(as);
  p->tf.tf_rip = static_cast<int64_t>(loaded.entry);
  p->tf.tf_rsp = static_cast<int64_t>(loaded.rsp);
  p->tf.tf_rflags = 0x202;
  p->comm = BaseName(path);
  p->exe = AbsolutePath(*p, path);
  StartFiber(*p);
  runq_.push_back(p);
  return true;
}

void Kernel::StartFiber(Process& p) {
  p.fiber = boost::context::fiber(
      std::allocator_arg, boost::context::protected_fixedsize_stack(kFiberStack),
      [this, &p](boost::context::fiber&& caller) {
        p.caller = std::move(caller);
        TsanFiber::TakeOver(&mu_);
        ProcessMain(p);
        TsanFiber::HandOver(&mu_);
        p.tsan.Leave();
        return std::move(p.caller);
      });
}

std::vector<int> VkernelCpus(const std::vector<int>& allowed, int now, int threads) {
  std::vector<int> cpus;
  if (threads < 1 || static_cast<int>(allowed.size()) <= threads) return cpus;
  // From the CPU minivk runs on now: two minivks started at once need not share CPUs.
  size_t first = 0;
  for (size_t i = 0; i < allowed.size(); ++i) {
    if (allowed[i] == now) first = i;
  }
  for (int i = 0; i < threads; ++i) cpus.push_back(allowed[(first + i) % allowed.size()]);
  return cpus;
}

std::vector<int> Kernel::VkernelCpus() const {
  // Why pin: the seccomp backend runs a guest on another CPU than the vkernel thread that
  // runs it (chosen when it creates the guest's context), and the two spin for each other's
  // answer there. Left to itself, the host scheduler now and then moves a vkernel thread
  // onto its guest's CPU, where the two then take turns (busybox sha256sum of 32 MiB, 8 runs
  // each: median 188 ms and up to 241 unpinned, 186 ms and up to 226 pinned; native 148).
  cpu_set_t set;
  if (!options_.pin || sched_getaffinity(0, sizeof(set), &set) != 0) return {};
  std::vector<int> allowed;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) allowed.push_back(cpu);
  }
  return minivk::VkernelCpus(allowed, sched_getcpu(), options_.cpus);
}

void Kernel::StayOnCpu(int thread) const {
  if (static_cast<size_t>(thread) >= pin_cpus_.size()) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(pin_cpus_[thread], &one);
  sched_setaffinity(0, sizeof(one), &one);  // a failure leaves it to the scheduler
}

int Kernel::Run(std::string& error) {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<std::thread> threads;
  for (int i = 1; i < options_.cpus; ++i) {
    threads.emplace_back([this, i] {
      StayOnCpu(i);
      std::unique_lock<std::mutex> l(mu_);
      SchedulerLoop(l);
    });
  }
  SchedulerLoop(lock);
  lock.unlock();
  for (auto& t : threads) t.join();
  lock.lock();
  if (!fatal_.empty()) {
    error = fatal_;
    return -1;
  }
  if (WIFSIGNALED(init_status_)) return 128 + WTERMSIG(init_status_);
  return WEXITSTATUS(init_status_);
}

void Kernel::SchedulerLoop(std::unique_lock<std::mutex>& lock) {
  // This thread's preemption tick.
  struct sigaction sa = {};
  sa.sa_handler = OnTick;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, nullptr);
  timer_t timer;
  struct sigevent sev = {};
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SIGALRM;
  sev._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
  const bool have_timer = timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0;
  if (have_timer) {
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    timer_settime(timer, 0, &its, nullptr);
  }
  while (live_ > 0 && fatal_.empty()) {
    if (next_timer_ >= 0) FireTimers(MonotonicNs());
    if (!runq_.empty()) {
      Process* p = runq_.front();
      runq_.pop_front();
      p->state = Process::State::kRunning;
      ++stats_.context_switches;
      TsanFiber::HandOver(&mu_);
      p->tsan.Enter();
      p->fiber = std::move(p->fiber).resume();
      TsanFiber::TakeOver(&mu_);
      if (p->state == Process::State::kZombie && !p->fiber && p->ppid == 0) {
        procs_.erase(p->pid);  // nobody will wait for it
      }
      continue;
    }
    if (!polling_) {
      PollIdle(lock);
      continue;
    }
    idle_cv_.wait(lock);
  }
  // Wake the other threads so they see the end too.
  idle_cv_.notify_all();
  if (polling_) {
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
  }
  if (have_timer) timer_delete(timer);
}

void Kernel::PollIdle(std::unique_lock<std::mutex>& lock) {
  polling_ = true;
  std::vector<struct pollfd> fds = {{wake_fd_, POLLIN, 0}};
  std::vector<int> pids = {0};
  int64_t deadline = -1;
  for (auto& [pid, p] : procs_) {
    if (p->state != Process::State::kBlocked) continue;
    for (const struct pollfd& w : p->waits) {
      fds.push_back(w);
      pids.push_back(pid);
    }
    if (p->wait_deadline >= 0 && (deadline < 0 || p->wait_deadline < deadline)) {
      deadline = p->wait_deadline;
    }
  }
  if (next_timer_ >= 0 && (deadline < 0 || next_timer_ < deadline)) deadline = next_timer_;
  struct timespec timeout, *timeout_ptr = nullptr;
  if (deadline >= 0) {
    const int64_t left = std::max<int64_t>(0, deadline - MonotonicNs());
    timeout = {static_cast<time_t>(left / 1000000000), static_cast<long>(left % 1000000000)};
    timeout_ptr = &timeout;
  }
  // The tick stays pending while idle (it would only wake this thread).
  sigset_t mask;
  pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  sigaddset(&mask, SIGALRM);
  lock.unlock();
  const int n = ppoll(fds.data(), fds.size(), timeout_ptr, &mask);
  lock.lock();
  polling_ = false;
  uint64_t drain;
  while (read(wake_fd_, &drain, sizeof(drain)) > 0) {
  }
  if (n > 0) {
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      auto it = procs_.find(pids[i]);
      if (it != procs_.end() && it->second->state == Process::State::kBlocked &&
          !it->second->waits.empty()) {
        Wake(*it->second);
      }
    }
  }
  const int64_t now = MonotonicNs();
  FireTimers(now);
  for (auto& [pid, p] : procs_) {
    if (p->state == Process::State::kBlocked && p->wait_deadline >= 0 &&
        p->wait_deadline <= now) {
      Wake(*p);
    }
  }
}

void Kernel::Wake(Process& p) {
  if (p.state != Process::State::kBlocked) return;
  p.state = Process::State::kRunnable;
  p.waits.clear();
  p.wait_deadline = -1;
  runq_.push_back(&p);
  idle_cv_.notify_one();
  if (polling_) {
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
  }
}

void Kernel::SwitchOut(Process& p) {
  // System time counts while the process's kernel work runs, not while it waits.
  ChargeKernel(p, MonotonicNs());
  TsanFiber::HandOver(&mu_);
  p.tsan.Leave();
  p.caller = std::move(p.caller).resume();
  TsanFiber::TakeOver(&mu_);  // not reached when resumed only to unwind (~Process)
  p.kernel_since = MonotonicNs();
}

void Kernel::ChargeKernel(Process& p, int64_t now) {
  const int64_t spent = now - p.kernel_since;
  p.stime_ns += spent;
  if (options_.stats) stats_.kernel_seconds += spent / 1e9;
  p.kernel_since = now;
}

int64_t Kernel::CpuTimers(Process& p, bool fire) {
  int64_t next = 0;
  auto visit = [&](GuestTimer& t, int64_t used, int sig) {
    if (t.deadline < 0) return;
    if (!fire) {
      const int64_t left = std::max<int64_t>(1, t.deadline - used);
      if (next == 0 || left < next) next = left;
      return;
    }
    if (used >= t.deadline) {
      SendSignal(p, sig);
      if (t.interval <= 0) {
        t.deadline = -1;
        return;
      }
      t.deadline += ((used - t.deadline) / t.interval + 1) * t.interval;
    }
    if (next == 0 || t.deadline - used < next) next = t.deadline - used;
  };
  visit(p.itimer_virtual, p.utime_ns, SIGVTALRM);
  visit(p.itimer_prof, p.utime_ns + p.stime_ns, SIGPROF);
  return next;
}

void Kernel::Block(Process& p) {
  p.state = Process::State::kBlocked;
  if (polling_ && (!p.waits.empty() || p.wait_deadline >= 0)) {
    // Another thread sleeps in ppoll on a set made before this wait: make it start over.
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
  }
  SwitchOut(p);
}

void Kernel::BlockOn(Process& p, int fd, short events) {
  p.waits.assign(1, pollfd{fd, events, 0});
  Block(p);
}

bool Kernel::RunGuest(Process& p) {
  // This vCPU thread's id (kill() of a running process interrupts it there): asked of the host
  // once per thread, not once per RUN (a system call, ~0.1 us).
  static thread_local const pid_t vcpu_tid = static_cast<pid_t>(syscall(SYS_gettid));
  p.vcpu_tid = vcpu_tid;
  p.in_run = true;
  // A CPU-time timer due within this RUN ends it (tf_trapno 0) when due: a guest that never
  // traps still gets its SIGVTALRM/SIGPROF.
  const int64_t cpu_timer = CpuTimers(p, false);
  const int64_t t0 = MonotonicNs();
  ChargeKernel(p, t0);
  mu_.unlock();
  const int rc = vkrt_vmspace_run_fpu(p.as->id(), &p.tf, &p.vf,
                                      static_cast<uint64_t>(cpu_timer), p.fpu.get());
  mu_.lock();
  p.in_run = false;
  const int64_t t1 = MonotonicNs();
  p.utime_ns += t1 - t0;
  p.kernel_since = t1;
  if (options_.stats) stats_.run_seconds += (t1 - t0) / 1e9;
  CpuTimers(p, true);
  if (rc != 0 && fatal_.empty()) fatal_ = std::string("vmspace_ctl: ") + vkrt_last_error();
  return rc == 0;
}

void Kernel::ProcessMain(Process& p) {
  p.kernel_since = MonotonicNs();
  while (p.state != Process::State::kZombie) {
    if (!RunGuest(p)) {
      Exit(p, SIGKILL);
      break;
    }
    HandleExit(p);
  }
  ChargeKernel(p, MonotonicNs());
}

void Kernel::HandleExit(Process& p) {
  int64_t result = kKeepRax;
  switch (p.tf.tf_trapno) {
    case T_FAST_SYSCALL: {
      ++stats_.syscalls;
      p.orig_rax = p.tf.tf_rax;
      result = Syscall(p);
      break;
    }
    case 0:
      ++stats_.interrupts;  // the tick (rotation below) or a signal for this process
      break;
    case T_PAGEFLT:
      ++stats_.faults;
      if (options_.trace) {
        Trace(p, "fault at %#lx (%s%s) rip %#lx", static_cast<unsigned long>(p.tf.tf_addr),
              (p.tf.tf_err & PGEX_W) ? "write" : (p.tf.tf_err & PGEX_I) ? "fetch" : "read",
              (p.tf.tf_err & PGEX_P) ? ", protection" : "",
              static_cast<unsigned long>(p.tf.tf_rip));
      }
      switch (p.as->Fault(static_cast<uint64_t>(p.tf.tf_addr),
                          static_cast<uint64_t>(p.tf.tf_err))) {
        case AddressSpace::FaultResult::kResolved:
          break;
        case AddressSpace::FaultResult::kNotAllowed:
          ForceSignal(p, SIGSEGV, (p.tf.tf_err & PGEX_P) ? 2 /* SEGV_ACCERR */ : 1 /* MAPERR */,
                      static_cast<uint64_t>(p.tf.tf_addr));
          break;
        case AddressSpace::FaultResult::kOutOfMemory:
          // As Linux's OOM killer: the process that needs a page nobody can give it dies
          // (SIGKILL, which no handler sees); the vkernel and every other process go on.
          fprintf(stderr,
                  "minivk: out of memory (%zu MiB of guest memory in use): killed process %d "
                  "(%s), which faulted at %#lx\n",
                  (mem_.size() - mem_.free_frames() * 4096) >> 20, p.pid, p.comm.c_str(),
                  static_cast<unsigned long>(p.tf.tf_addr));
          SendSignal(p, SIGKILL);
          break;
      }
      break;
    case T_SYSCALL80:
      p.tf.tf_rax = -ENOSYS;  // the i386 system call ABI is not offered
      break;
    default: {
      int sig = SIGSEGV;
      switch (p.tf.tf_trapno) {
        case T_PRIVINFLT: sig = SIGILL; break;
        case T_BPTFLT:
        case T_TRCTRAP: sig = SIGTRAP; break;
        case T_DIVIDE:
        case T_ARITHTRAP:
        case T_XMMFLT: sig = SIGFPE; break;
        case T_ALIGNFLT: sig = SIGBUS; break;
        default: break;
      }
      if (options_.trace) {
        Trace(p, "trap %ld at rip %#lx: signal %d", static_cast<long>(p.tf.tf_trapno),
              static_cast<unsigned long>(p.tf.tf_rip), sig);
      }
      ForceSignal(p, sig, 0x80 /* SI_KERNEL */, 0);
      break;
    }
  }
  if (p.state != Process::State::kZombie) DeliverSignals(p, result);
  if (tick_seen && p.state == Process::State::kRunning) {
    tick_seen = 0;
    if (!runq_.empty()) {  // its time slice is over and someone else can run
      p.state = Process::State::kRunnable;
      runq_.push_back(&p);
      SwitchOut(p);
    }
  }
}

// ---- Processes ---------------------------------------------------------------------------

int64_t Kernel::Fork(Process& p, uint64_t flags, uint64_t stack, uint64_t ptid, uint64_t ctid,
                     uint64_t tls) {
  constexpr uint64_t kSupported = CLONE_VM | CLONE_VFORK | CLONE_SETTLS | CLONE_PARENT_SETTID |
                                  CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | 0xFF;
  if ((flags & ~kSupported) != 0) return -ENOSYS;  // threads and namespaces: not in minivk
  if ((flags & CLONE_VM) && !(flags & CLONE_VFORK)) return -ENOSYS;
  ++stats_.forks;
  Process* c = NewProcess();
  c->ppid = p.pid;
  c->pgid = p.pgid;
  c->sid = p.sid;
  c->fds = p.fds;
  c->cwd = fcntl(p.cwd, F_DUPFD_CLOEXEC, 3);
  c->umask = p.umask;
  c->nice = p.nice;
  c->tf = p.tf;
  c->tf.tf_rax = 0;
  c->vf = p.vf;
  memcpy(c->fpu.get(), p.fpu.get(), fpu_size_);
  std::copy(std::begin(p.actions), std::end(p.actions), std::begin(c->actions));
  c->blocked = p.blocked;
  c->fpu_saved = p.fpu_saved;  // a fork in a handler: the child returns from it too
  c->altstack = p.altstack;
  c->comm = p.comm;
  c->exe = p.exe;
  if (flags & CLONE_VM) {
    c->as = p.as;
  } else {
    auto as = std::make_shared<AddressSpace>(mem_, pool_);
    std::string error;
    if (!as->ForkFrom(*p.as, error)) {
      Trace(p, "fork failed: %s", error.c_str());  // a host failure: always said
      c->state = Process::State::kZombie;
      --live_;
      procs_.erase(c->pid);
      return -ENOMEM;
    }
    c->as = std::move(as);
  }
  if (stack != 0) c->tf.tf_rsp = static_cast<int64_t>(stack);
  if (flags & CLONE_SETTLS) c->vf.vx_tls.info[0].base = reinterpret_cast<void*>(tls);
  const int32_t pid = c->pid;
  if (flags & CLONE_PARENT_SETTID) p.as->CopyOut(ptid, &pid, sizeof(pid));
  if (flags & CLONE_CHILD_SETTID) c->as->CopyOut(ctid, &pid, sizeof(pid));
  if (flags & CLONE_CHILD_CLEARTID) c->clear_child_tid = ctid;
  StartFiber(*c);
  runq_.push_back(c);
  idle_cv_.notify_one();
  if (flags & CLONE_VFORK) {
    c->vfork_parent = &p;
    p.in_vfork = true;
    while (p.in_vfork && !(p.pending & Bit(SIGKILL))) Block(p);
  }
  return pid;
}

void Kernel::ReleaseVfork(Process& child) {
  if (child.vfork_parent == nullptr) return;
  child.vfork_parent->in_vfork = false;
  Wake(*child.vfork_parent);
  child.vfork_parent = nullptr;
}

void Kernel::Exit(Process& p, int wait_status) {
  if (p.state == Process::State::kZombie) return;
  if (options_.trace) Trace(p, "exit, status %#x", wait_status);
  ReleaseVfork(p);
  if (p.clear_child_tid != 0 && p.as) {
    const int32_t zero = 0;
    p.as->CopyOut(p.clear_child_tid, &zero, sizeof(zero));
  }
  p.fds.clear();
  if (p.cwd >= 0) close(p.cwd);
  p.cwd = -1;
  p.as.reset();
  p.fpu_saved.clear();
  p.state = Process::State::kZombie;
  p.wait_status = wait_status;
  --live_;
  Process* init = nullptr;
  if (auto it = procs_.find(1); it != procs_.end() && it->second.get() != &p &&
                                it->second->state != Process::State::kZombie) {
    init = it->second.get();
  }
  std::vector<int> orphaned_zombies;
  for (auto& [pid, c] : procs_) {
    if (c->ppid != p.pid) continue;
    if (init != nullptr) {
      c->ppid = 1;
      if (c->state == Process::State::kZombie) Wake(*init);
    } else {
      c->ppid = 0;  // reaped by the scheduler once its fiber is done
      if (c->state == Process::State::kZombie && !c->fiber) orphaned_zombies.push_back(pid);
    }
  }
  for (int pid : orphaned_zombies) procs_.erase(pid);
  if (p.pid == 1) {
    init_status_ = wait_status;
    // As when a PID namespace's init dies: everyone else goes.
    for (auto& [pid, c] : procs_) SendSignal(*c, SIGKILL);
  }
  auto parent = procs_.find(p.ppid);
  if (parent == procs_.end() || parent->second->state == Process::State::kZombie) {
    p.ppid = 0;
    return;
  }
  Process& pp = *parent->second;
  const SigAction& chld = pp.actions[SIGCHLD];
  if (chld.handler == 1 /* SIG_IGN */ || (chld.flags & SA_NOCLDWAIT)) {
    p.ppid = 0;  // the parent said it will not wait
  } else {
    // CLD_EXITED with the exit code, or CLD_KILLED with the signal; times in clock ticks.
    const bool exited = (wait_status & 0x7F) == 0;
    GuestSigInfo info = SenderInfo(exited ? CLD_EXITED : CLD_KILLED, p.pid);
    info.fields[1] = static_cast<uint32_t>(exited ? (wait_status >> 8) & 0xFF : wait_status & 0x7F);
    info.fields[2] = static_cast<uint64_t>(p.utime_ns / kNsPerClockTick);
    info.fields[3] = static_cast<uint64_t>(p.stime_ns / kNsPerClockTick);
    SendSignal(pp, SIGCHLD, info);
  }
  Wake(pp);  // a wait4 retries (any other wait just waits again)
}

int64_t Kernel::Wait4(Process& p, int64_t pid, uint64_t status, int options,
                      struct rusage* usage) {
  if (options & ~(WNOHANG | WUNTRACED | WCONTINUED | __WALL | __WCLONE)) return -EINVAL;
  for (;;) {
    bool any = false;
    Process* zombie = nullptr;
    for (auto& [cpid, c] : procs_) {
      if (c->ppid != p.pid) continue;
      if (pid > 0 && cpid != pid) continue;
      if (pid == 0 && c->pgid != p.pgid) continue;
      if (pid < -1 && c->pgid != -pid) continue;
      any = true;
      if (c->state == Process::State::kZombie && !c->fiber) {
        zombie = c.get();
        break;
      }
    }
    if (!any) return -ECHILD;
    if (zombie != nullptr) {
      const int32_t st = zombie->wait_status;
      if (status != 0 && !p.as->CopyOut(status, &st, sizeof(st))) return -EFAULT;
      const int64_t reaped = zombie->pid;
      const int64_t user = zombie->utime_ns + zombie->cutime_ns;
      const int64_t sys = zombie->stime_ns + zombie->cstime_ns;
      p.cutime_ns += user;
      p.cstime_ns += sys;
      if (usage != nullptr) {
        *usage = {};
        usage->ru_utime = NsToTimeval(user);
        usage->ru_stime = NsToTimeval(sys);
      }
      procs_.erase(zombie->pid);
      return reaped;
    }
    if (options & WNOHANG) return 0;
    if (SignalPending(p)) return kRestart;
    Block(p);
  }
}

// ---- Signals -----------------------------------------------------------------------------

bool Kernel::SignalPending(const Process& p) const {
  return (p.pending & ~(p.blocked & ~kUnblockable)) != 0;
}

void Kernel::SendSignal(Process& p, int sig) {
  GuestSigInfo info;
  info.code = kSiKernel;
  SendSignal(p, sig, info);
}

void Kernel::SendSignal(Process& p, int sig, const GuestSigInfo& info) {
  if (p.state == Process::State::kZombie || sig < 1 || sig > 64) return;
  const SigAction& act = p.actions[sig];
  const bool blocked = (p.blocked & Bit(sig)) && !(kUnblockable & Bit(sig));
  const bool awaited = p.sigwait_set & Bit(sig);  // by rt_sigtimedwait
  if (sig != SIGKILL && sig != SIGSTOP && !blocked && !awaited && Ignores(act.handler, sig)) {
    return;  // discarded, as Linux discards ignored signals (not blocked or awaited ones)
  }
  if (!(p.pending & Bit(sig))) {
    p.info[sig] = info;
    p.info[sig].signo = sig;
  }
  p.pending |= Bit(sig);
  if (blocked && !awaited) return;
  if (p.state == Process::State::kBlocked) {
    Wake(p);
  } else if (p.state == Process::State::kRunning && p.in_run) {
    vkrt_interrupt(p.vcpu_tid);  // running on another vkernel thread: end its RUN
  }
}

void Kernel::ArmTimer(GuestTimer& t, int64_t when, int64_t interval) {
  t.deadline = when;
  t.interval = when >= 0 ? interval : 0;
  if (when >= 0 && (next_timer_ < 0 || when < next_timer_)) {
    next_timer_ = when;
    if (polling_) {  // a thread sleeps in ppoll with a later timeout
      const uint64_t one = 1;
      (void)!write(wake_fd_, &one, sizeof(one));
    }
  }
}

void Kernel::FireTimers(int64_t now) {
  if (next_timer_ < 0 || now < next_timer_) return;
  next_timer_ = -1;
  auto visit = [&](Process& p, GuestTimer& t) {
    if (t.deadline < 0) return;
    if (t.deadline <= now) {
      const int64_t missed = t.interval > 0 ? (now - t.deadline) / t.interval : 0;
      const bool timer_create = &t != &p.itimer_real;
      if (t.signo != 0 && timer_create) {
        const int id = static_cast<int>(&t - p.timers.data());
        const GuestSigInfo& queued = p.info[t.signo];
        if ((p.pending & Bit(t.signo)) && queued.code == kSiTimer &&
            static_cast<int32_t>(queued.fields[0]) == id) {
          // Its signal has not been taken yet: these expirations are overruns.
          t.overrun = static_cast<int>(std::min<int64_t>(INT32_MAX, t.overrun + 1 + missed));
        } else {
          GuestSigInfo info;
          info.code = kSiTimer;
          info.fields[0] = static_cast<uint32_t>(id);
          info.fields[1] = t.value;
          t.overrun = static_cast<int>(std::min<int64_t>(INT32_MAX, missed));
          SendSignal(p, t.signo, info);
        }
      } else if (t.signo != 0) {
        SendSignal(p, t.signo);  // alarm, ITIMER_REAL: SI_KERNEL
      }
      if (t.interval > 0) {
        t.deadline += (missed + 1) * t.interval;
      } else {
        t.deadline = -1;
        return;
      }
    }
    if (next_timer_ < 0 || t.deadline < next_timer_) next_timer_ = t.deadline;
  };
  for (auto& [pid, p] : procs_) {
    if (p->state == Process::State::kZombie) continue;
    visit(*p, p->itimer_real);
    for (GuestTimer& t : p->timers) visit(*p, t);
  }
}

void Kernel::ForceSignal(Process& p, int sig, int code, uint64_t addr) {
  // A synchronous fault: blocked or ignored, it still kills (as Linux's force_sig).
  if ((p.blocked & Bit(sig)) || p.actions[sig].handler == 1) {
    p.blocked &= ~Bit(sig);
    p.actions[sig] = SigAction{};
  }
  p.info[sig] = GuestSigInfo{};
  p.info[sig].signo = sig;
  p.info[sig].code = code;
  p.info[sig].fields[0] = addr;  // si_addr
  p.pending |= Bit(sig);
}

void Kernel::DropIgnored(Process& p) {
  uint64_t unblocked = p.pending & ~p.blocked & ~kUnblockable;
  while (unblocked != 0) {
    const int sig = __builtin_ctzll(unblocked) + 1;
    unblocked &= unblocked - 1;
    if (Ignores(p.actions[sig].handler, sig)) p.pending &= ~Bit(sig);
  }
}

GuestSigInfo Kernel::TakeSignal(Process& p, int sig) {
  p.pending &= ~Bit(sig);
  GuestSigInfo info = p.info[sig];
  info.signo = sig;
  if (info.code == kSiTimer) {
    const size_t id = static_cast<uint32_t>(info.fields[0]);
    if (id < p.timers.size() && p.timers[id].used) {
      GuestTimer& t = p.timers[id];
      info.fields[0] = id | (static_cast<uint64_t>(static_cast<uint32_t>(t.overrun)) << 32);
      t.last_overrun = t.overrun;
      t.overrun = 0;
    }
  }
  return info;
}

int64_t Kernel::SigTimedWait(Process& p, uint64_t set_at, uint64_t info_at,
                             uint64_t timeout_at) {
  uint64_t set;
  if (!p.as->CopyIn(set_at, &set, sizeof(set))) return -EFAULT;
  set &= ~kUnblockable;
  int64_t deadline = -1;
  if (timeout_at != 0) {
    struct timespec ts;
    if (!p.as->CopyIn(timeout_at, &ts, sizeof(ts))) return -EFAULT;
    if (ts.tv_sec < 0 || ts.tv_nsec < 0 || ts.tv_nsec >= 1000000000) return -EINVAL;
    deadline = MonotonicNs() + ts.tv_sec * 1000000000ll + ts.tv_nsec;
  }
  for (;;) {
    if (const uint64_t ready = p.pending & set; ready != 0) {
      const int sig = __builtin_ctzll(ready) + 1;
      const GuestSigInfo info = TakeSignal(p, sig);
      if (info_at != 0 && !p.as->CopyOut(info_at, &info, sizeof(info))) return -EFAULT;
      return sig;
    }
    if (SignalPending(p)) return -EINTR;  // another signal: its handler runs
    if (deadline >= 0 && MonotonicNs() >= deadline) return -EAGAIN;
    // Its signals wake it (and are kept even if ignored), as Linux's real_blocked.
    p.sigwait_set = set;
    p.waits.clear();
    p.wait_deadline = deadline;
    Block(p);
    p.sigwait_set = 0;
  }
}

int64_t Kernel::Kill(Process& p, int64_t pid, int sig, int code) {
  if (sig < 0 || sig > 64) return -EINVAL;
  int found = 0;
  for (auto& [cpid, c] : procs_) {
    if (c->state == Process::State::kZombie) continue;
    const bool match = pid > 0    ? cpid == pid
                       : pid == 0 ? c->pgid == p.pgid
                       : pid == -1 ? cpid != 1 && cpid != p.pid
                                   : c->pgid == -pid;
    if (!match) continue;
    ++found;
    if (sig != 0) SendSignal(*c, sig, SenderInfo(code, p.pid));
  }
  return found > 0 ? 0 : -ESRCH;
}

void Kernel::DeliverSignals(Process& p, int64_t result) {
  int sig = 0;
  SigAction act;
  for (;;) {
    const uint64_t ready = p.pending & ~(p.blocked & ~kUnblockable);
    if (ready == 0) break;
    sig = __builtin_ctzll(ready) + 1;
    act = p.actions[sig];
    if (sig != SIGKILL && Ignores(act.handler, sig)) {
      p.pending &= ~Bit(sig);
      sig = 0;
      continue;
    }
    break;
  }
  if (result == kRestart) {
    if (sig != 0 && sig != SIGKILL && act.handler > 1 && !(act.flags & SA_RESTART)) {
      p.tf.tf_rax = -EINTR;
    } else {
      p.tf.tf_rip -= 2;  // the syscall instruction again
      p.tf.tf_rax = p.orig_rax;
    }
  } else if (result != kKeepRax) {
    p.tf.tf_rax = result;
  }
  if (sig == 0) {
    if (p.sigsuspended) {
      p.blocked = p.saved_mask;
      DropIgnored(p);
      p.sigsuspended = false;
    }
    return;
  }
  const GuestSigInfo info = TakeSignal(p, sig);
  ++stats_.signals;
  if (options_.trace) Trace(p, "signal %d (%s)", sig, sig == SIGKILL || act.handler == 0 ? "default" : "handler");
  if (sig == SIGKILL || act.handler == 0) {
    Exit(p, sig);  // terminated by the signal
    return;
  }
  if (!PushFrame(p, sig, act, info)) {
    Exit(p, SIGSEGV);
    return;
  }
  p.blocked |= act.mask | ((act.flags & SA_NODEFER) ? 0 : Bit(sig));
  p.blocked &= ~kUnblockable;
  if (act.flags & SA_RESETHAND) p.actions[sig] = SigAction{};
}

namespace {

// Forgets p's saved FPU state `i`, keeping its buffer for the next frame.
void DropSavedFpu(Process& p, size_t i) {
  p.fpu_spare.push_back(std::move(p.fpu_saved[i].state));
  p.fpu_saved.erase(p.fpu_saved.begin() + static_cast<ptrdiff_t>(i));
}

}  // namespace

bool Kernel::PushFrame(Process& p, int sig, const SigAction& act, const GuestSigInfo& info) {
  if (!(act.flags & kSaRestorer) || act.restorer == 0) return false;
  const uint64_t rsp = static_cast<uint64_t>(p.tf.tf_rsp);
  SigFrame f = {};
  f.pretcode = act.restorer;
  // The settings as they were, for sigreturn to restore (SS_AUTODISARM disarms until then).
  f.uc.stack = ReportedAltStack(p, rsp);
  uint64_t sp = rsp - 128;  // past the red zone
  const bool onto_altstack =
      (act.flags & SA_ONSTACK) && p.altstack.size != 0 && !OnAltStack(p, rsp);
  if (onto_altstack) sp = p.altstack.sp + p.altstack.size;
  sp = ((sp - sizeof(SigFrame)) & ~uint64_t{15}) - 8;  // as after a call
  // A frame that does not fit on the alternate stack it is on is not written (SIGSEGV).
  if ((onto_altstack || OnAltStack(p, rsp)) && !OnAltStack(p, sp)) return false;
  if (onto_altstack && (p.altstack.flags & kSsAutodisarm)) p.altstack = {};
  const struct trapframe& tf = p.tf;
  SigContext& m = f.uc.mcontext;
  m.r8 = tf.tf_r8; m.r9 = tf.tf_r9; m.r10 = tf.tf_r10; m.r11 = tf.tf_r11;
  m.r12 = tf.tf_r12; m.r13 = tf.tf_r13; m.r14 = tf.tf_r14; m.r15 = tf.tf_r15;
  m.rdi = tf.tf_rdi; m.rsi = tf.tf_rsi; m.rbp = tf.tf_rbp; m.rbx = tf.tf_rbx;
  m.rdx = tf.tf_rdx; m.rax = tf.tf_rax; m.rcx = tf.tf_rcx; m.rsp = tf.tf_rsp;
  m.rip = tf.tf_rip; m.eflags = tf.tf_rflags;
  m.cs = 0x33; m.ss = 0x2b;
  const bool fault = (sig == SIGSEGV || sig == SIGBUS) && info.code > 0 && info.code < kSiKernel;
  m.err = tf.tf_err; m.trapno = tf.tf_trapno; m.cr2 = fault ? info.fields[0] : 0;
  const uint64_t old_mask = p.sigsuspended ? p.saved_mask : p.blocked;
  p.sigsuspended = false;
  m.oldmask = old_mask;
  f.uc.sigmask = old_mask;
  f.info = info;
  if (!p.as->CopyOut(sp, &f, sizeof(f))) return false;
  // Frames between this one and the interrupted stack pointer were left by longjmp.
  for (size_t i = p.fpu_saved.size(); i-- > 0;) {
    if (p.fpu_saved[i].frame >= sp && p.fpu_saved[i].frame < rsp) DropSavedFpu(p, i);
  }
  std::vector<unsigned char> state;
  if (!p.fpu_spare.empty()) {
    state = std::move(p.fpu_spare.back());
    p.fpu_spare.pop_back();
  }
  state.assign(p.fpu.get(), p.fpu.get() + fpu_size_);
  p.fpu_saved.push_back({sp, std::move(state)});
  p.tf.tf_rdi = sig;
  p.tf.tf_rsi = static_cast<int64_t>(sp + offsetof(SigFrame, info));
  p.tf.tf_rdx = static_cast<int64_t>(sp + offsetof(SigFrame, uc));
  p.tf.tf_rax = 0;
  p.tf.tf_rip = static_cast<int64_t>(act.handler);
  p.tf.tf_rsp = static_cast<int64_t>(sp);
  p.tf.tf_rflags &= ~int64_t{0x500};  // DF and TF clear in the handler
  return true;
}

int64_t Kernel::SigReturn(Process& p) {
  SigFrame f;
  const uint64_t at = static_cast<uint64_t>(p.tf.tf_rsp) - 8;  // the handler's ret took pretcode
  if (!p.as->CopyIn(at, &f, sizeof(f))) {
    ForceSignal(p, SIGSEGV, 0x80, 0);
    return kKeepRax;
  }
  const SigContext& m = f.uc.mcontext;
  struct trapframe& tf = p.tf;
  tf.tf_r8 = m.r8; tf.tf_r9 = m.r9; tf.tf_r10 = m.r10; tf.tf_r11 = m.r11;
  tf.tf_r12 = m.r12; tf.tf_r13 = m.r13; tf.tf_r14 = m.r14; tf.tf_r15 = m.r15;
  tf.tf_rdi = m.rdi; tf.tf_rsi = m.rsi; tf.tf_rbp = m.rbp; tf.tf_rbx = m.rbx;
  tf.tf_rdx = m.rdx; tf.tf_rax = m.rax; tf.tf_rcx = m.rcx; tf.tf_rsp = m.rsp;
  tf.tf_rip = m.rip; tf.tf_rflags = m.eflags;
  p.blocked = f.uc.sigmask & ~kUnblockable;
  DropIgnored(p);
  // This frame's FPU state; frames pushed after it were left by longjmp.
  for (size_t i = p.fpu_saved.size(); i-- > 0;) {
    if (p.fpu_saved[i].frame != at) continue;
    memcpy(p.fpu.get(), p.fpu_saved[i].state.data(), fpu_size_);
    while (p.fpu_saved.size() > i) DropSavedFpu(p, p.fpu_saved.size() - 1);
    break;
  }
  // The alternate stack's settings as the frame holds them (as Linux, errors other than a
  // bad address are ignored: on the alternate stack they stay as they are).
  (void)SetAltStack(p, f.uc.stack.sp, f.uc.stack.flags, f.uc.stack.size, at);
  return kKeepRax;
}

int64_t Kernel::SigAltStack(Process& p, uint64_t ss, uint64_t old_ss, uint64_t sp) {
  const StackT now = ReportedAltStack(p, sp);
  if (ss != 0) {
    StackT set;
    if (!p.as->CopyIn(ss, &set, sizeof(set))) return -EFAULT;
    const int64_t r = SetAltStack(p, set.sp, set.flags, set.size, sp);
    if (r != 0) return r;
  }
  if (old_ss != 0 && !p.as->CopyOut(old_ss, &now, sizeof(now))) return -EFAULT;
  return 0;
}

}  // namespace minivk
