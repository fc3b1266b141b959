// libvkrt_preload.so (SPEC §6): `LD_PRELOAD=libvkrt_preload.so ./prog` gives a program written
// against DragonFly's API the whole library (its vmspace_* and mcontrol symbols, and the
// interposed mmap/munmap/sigaction of the own space), and makes the raw system calls work too:
//
// - A seccomp filter (libseccomp, installed at load on every thread with TSYNC, inherited by
//   threads created later) answers SECCOMP_RET_TRAP for DragonFly's numbers 485..493 and for
//   mmap with the MAP_VPAGETABLE bit in its flags; everything else is allowed.
// - The SIGSYS handler emulates those calls with the library's functions and puts the result
//   in rax as the kernel would (-errno on failure). Any other SIGSYS (the program's own
//   seccomp filter, kill()) goes to the program's handler: vkrt's sigaction() records the
//   program's SIGSYS disposition instead of replacing vkrt's handler (common/signal_chain.h).
//
// The seventh argument of vmspace_mmap (the offset), which x86-64 cannot pass in a register,
// is read from the caller's stack at rsp + 16 at the `syscall` instruction: where glibc's
// syscall(3) leaves its eighth argument. An unreadable stack word counts as offset 0.
#include <errno.h>
#include <linux/audit.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "common/signal_chain.h"
#include "vkrt/vmspace.h"

extern "C" {
int __sigaction(int sig, const struct sigaction* act, struct sigaction* oldact);
// src/interpose.cc calls this for sigaction(SIGSYS, ...) once set.
__attribute__((visibility("hidden"))) extern int (*vkrt_sigsys_hook)(const struct sigaction*,
                                                                     struct sigaction*);
__attribute__((visibility("hidden"))) void* vkrt_own_mmap(void* addr, size_t len, int prot,
                                                         int flags, int fd, off_t offset);
}

namespace vkrt {
namespace {

constexpr long kFirstDragonFly = 485;  // mcontrol
constexpr long kLastDragonFly = 493;   // vmspace_pwrite

SignalChain g_program(SIGSYS);
std::mutex g_program_mu;  // serialises writers (signals blocked)

// The seventh argument of a raw vmspace_mmap: see the file comment.
long SeventhArgument(const greg_t* gregs) {
  long value = 0;
  struct iovec local = {&value, sizeof(value)};
  struct iovec remote = {reinterpret_cast<void*>(gregs[REG_RSP] + 16), sizeof(value)};
  if (syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0) != sizeof(value)) {
    return 0;
  }
  return value;
}

// Runs DragonFly call `nr` with the trapped registers; the raw system call's result.
// vmspace_ctl from the SIGSYS handler. The signal gave the handler a fresh FPU state and
// sigreturn reloads the program's from the signal frame: so the guest starts from the frame's
// (x87, SSE, AVX, AVX-512) and its state goes back into the frame, as the library call
// would leave it in the calling thread.
long RunFromHandler(long id, long cmd, long tf, long vf, void* fpstate) {
  constexpr uint32_t kMask = 0xE7;
  if (fpstate != nullptr) {
    asm volatile("xrstor64 (%0)" : : "r"(fpstate), "a"(kMask), "d"(0) : "memory");
  }
  const long r = vmspace_ctl(reinterpret_cast<void*>(id), static_cast<int>(cmd),
                             reinterpret_cast<struct trapframe*>(tf),
                             reinterpret_cast<struct vextframe*>(vf));
  const int saved_errno = errno;
  if (fpstate != nullptr) {
    asm volatile("xsave64 (%0)" : : "r"(fpstate), "a"(kMask), "d"(0) : "memory");
  }
  errno = saved_errno;
  return r;
}

long Emulate(long nr, const greg_t* g, void* fpstate) {
  const long a0 = g[REG_RDI], a1 = g[REG_RSI], a2 = g[REG_RDX], a3 = g[REG_R10],
             a4 = g[REG_R8], a5 = g[REG_R9];
  auto ptr = [](long v) { return reinterpret_cast<void*>(v); };
  errno = 0;
  long r = -1;
  switch (nr) {
    case 485:
      r = mcontrol(ptr(a0), static_cast<size_t>(a1), static_cast<int>(a2), a3);
      break;
    case 486:
      r = vmspace_create(ptr(a0), static_cast<int>(a1), ptr(a2));
      break;
    case 487:
      r = vmspace_destroy(ptr(a0));
      break;
    case 488:
      r = RunFromHandler(a0, a1, a2, a3, fpstate);
      break;
    case 489: {
      void* p = vmspace_mmap(ptr(a0), ptr(a1), static_cast<size_t>(a2), static_cast<int>(a3),
                             static_cast<int>(a4), static_cast<int>(a5), SeventhArgument(g));
      return p == MAP_FAILED ? -errno : reinterpret_cast<long>(p);
    }
    case 490:
      r = vmspace_munmap(ptr(a0), ptr(a1), static_cast<size_t>(a2));
      break;
    case 491:
      r = vmspace_mcontrol(ptr(a0), ptr(a1), static_cast<size_t>(a2), static_cast<int>(a3), a4);
      break;
    case 492:
      r = vmspace_pread(ptr(a0), ptr(a1), static_cast<size_t>(a2), static_cast<int>(a3), a4);
      break;
    case 493:
      r = vmspace_pwrite(ptr(a0), ptr(a1), static_cast<size_t>(a2), static_cast<int>(a3), a4);
      break;
    case SYS_mmap: {
      void* p = vkrt_own_mmap(ptr(a0), static_cast<size_t>(a1), static_cast<int>(a2),
                              static_cast<int>(a3), static_cast<int>(a4), a5);
      return p == MAP_FAILED ? -errno : reinterpret_cast<long>(p);
    }
    default:
      return -ENOSYS;
  }
  return r == -1 ? -errno : r;
}

bool Ours(const siginfo_t* si, const greg_t* gregs) {
  constexpr int kSysSeccomp = 1;  // si_code of a seccomp RET_TRAP (SYS_SECCOMP)
  if (si->si_code != kSysSeccomp || si->si_arch != AUDIT_ARCH_X86_64) return false;
  const long nr = si->si_syscall;
  if (nr >= kFirstDragonFly && nr <= kLastDragonFly) return true;
  return nr == SYS_mmap && (gregs[REG_R10] & MAP_VPAGETABLE) != 0;
}

void OnSigsys(int sig, siginfo_t* si, void* ucv) {
  const int saved_errno = errno;
  auto* uc = static_cast<ucontext_t*>(ucv);
  if (Ours(si, uc->uc_mcontext.gregs)) {
    // The program's own signal mask while the library works (RUN waits for its signals).
    pthread_sigmask(SIG_SETMASK, &uc->uc_sigmask, nullptr);
    // The frame's FPU area is in XSAVE layout when the kernel says so (FP_XSTATE_MAGIC1 in
    // its software-reserved bytes); otherwise RUN keeps to the handler's own state.
    void* fpstate = uc->uc_mcontext.fpregs;
    uint32_t magic = 0;
    if (fpstate != nullptr) memcpy(&magic, static_cast<char*>(fpstate) + 464, sizeof(magic));
    if (magic != 0x46505853U) fpstate = nullptr;  // FP_XSTATE_MAGIC1
    uc->uc_mcontext.gregs[REG_RAX] = Emulate(si->si_syscall, uc->uc_mcontext.gregs, fpstate);
  } else {
    g_program.Forward(si, ucv, false, nullptr);
  }
  (void)sig;
  errno = saved_errno;
}

// sigaction(SIGSYS, ...) from the program: recorded, vkrt's handler stays.
int SigsysHook(const struct sigaction* act, struct sigaction* oldact) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  {
    std::lock_guard<std::mutex> lock(g_program_mu);
    if (oldact != nullptr) *oldact = g_program.Get();
    if (act != nullptr) g_program.Set(*act);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return 1;
}

// Loads the filter; "" or what failed.
const char* InstallFilter() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) return "seccomp_init";
  const char* failed = nullptr;
  for (long nr = kFirstDragonFly; nr <= kLastDragonFly && failed == nullptr; ++nr) {
    if (seccomp_rule_add(ctx, SCMP_ACT_TRAP, static_cast<int>(nr), 0) != 0) {
      failed = "seccomp_rule_add(485..493)";
    }
  }
  if (failed == nullptr &&
      seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(mmap), 1,
                       SCMP_A3(SCMP_CMP_MASKED_EQ, MAP_VPAGETABLE, MAP_VPAGETABLE)) != 0) {
    failed = "seccomp_rule_add(mmap with MAP_VPAGETABLE)";
  }
  // A binary tree of comparisons rather than a list: fewer instructions for the system calls
  // that pass (all of them, in a program that never uses the shim).
  (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
  // Every thread that exists now, and (by inheritance) every thread created later.
  if (failed == nullptr && seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) != 0) {
    failed = "seccomp_attr_set(TSYNC)";
  }
  if (failed == nullptr && seccomp_load(ctx) != 0) failed = "seccomp_load";
  seccomp_release(ctx);
  return failed == nullptr ? "" : failed;
}

__attribute__((constructor)) void LoadShim() {
  struct sigaction ours = {};
  ours.sa_sigaction = OnSigsys;
  ours.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  sigfillset(&ours.sa_mask);
  struct sigaction old = {};
  if (__sigaction(SIGSYS, &ours, &old) != 0) {
    fprintf(stderr, "libvkrt_preload: sigaction(SIGSYS): %s; raw DragonFly system calls "
            "will fail with ENOSYS\n", strerror(errno));
    return;
  }
  g_program.Set(old);
  vkrt_sigsys_hook = SigsysHook;
  if (const char* failed = InstallFilter(); *failed != '\0') {
    fprintf(stderr, "libvkrt_preload: %s failed; raw DragonFly system calls will fail with "
            "ENOSYS (the vmspace_* functions still work)\n", failed);
  }
}

}  // namespace
}  // namespace vkrt
