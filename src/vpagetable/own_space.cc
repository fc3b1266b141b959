#include "vpagetable/own_space.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "absl/strings/str_format.h"
#include "common/errno_status.h"
#include "common/signal_chain.h"
#include "vkrt/vmspace.h"
#include "vpagetable/backing.h"
#include "vpagetable/space.h"

extern "C" int __sigaction(int sig, const struct sigaction* act, struct sigaction* oldact);
extern "C" int vkrt_own_active;  // src/interpose.cc

namespace vkrt::vpt {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPgexProtectionKey = 0x20;

// Installs by mapping the backing object (handle = the Backing's own fd) into this process;
// drops by putting an inaccessible reservation back. Raw system calls only: this runs in
// the SIGSEGV handler.
class OwnInstaller : public Installer {
 public:
  absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                       uint64_t offset) override {
    const long r = syscall(SYS_mmap, addr, len, prot, MAP_SHARED | MAP_FIXED, handle, offset);
    if (r == -1) {
      return SyscallError(absl::StrFormat("mmap(%#x, %#x, %#x, MAP_SHARED|MAP_FIXED, %d, %#x)",
                                          addr, len, prot, handle, offset));
    }
    return absl::OkStatus();
  }
  absl::Status Drop(uint64_t addr, uint64_t len) override {
    const long r = syscall(SYS_mmap, addr, len, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (r == -1) return SyscallError(absl::StrFormat("mmap(%#x, %#x, PROT_NONE)", addr, len));
    return absl::OkStatus();
  }
};

size_t OwnBudget() {
  // The vkernel process holds its own mappings too: an eighth of vm.max_map_count.
  return std::clamp<size_t>(Space::StubBudget() / 2, 64, 8192);
}

struct Own {
  Space space{OwnBudget()};
  OwnInstaller installer;
  std::mutex admin_mu;  // serialises region changes and mcontrol (taken with signals blocked)
};

std::atomic<Own*> g_own{nullptr};
std::atomic<bool> g_has_regions{false};

Own& GetOwn() {
  static Own* own = [] {
    Own* o = new Own;  // never destroyed: the handler may run until the process ends
    g_own.store(o, std::memory_order_release);
    return o;
  }();
  return *own;
}

// Blocks every signal for the scope: a handler that touched a region while this thread holds
// the space's lock would deadlock.
class SignalsBlocked {
 public:
  SignalsBlocked() {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old_);
  }
  ~SignalsBlocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

// The program's SIGSEGV disposition while vkrt's handler is installed.
std::atomic<bool> g_handler_installed{false};
SignalChain g_program(SIGSEGV);
std::mutex g_program_mu;  // serialises writers (signals blocked)

void HandlerRemoved() { g_handler_installed.store(false, std::memory_order_release); }

// Hands a fault vkrt does not own to the program, as the kernel would have (a fault
// re-executes; a SIGSEGV sent by kill() is sent again).
void Chain(int /*sig*/, siginfo_t* si, void* ucv) {
  g_program.Forward(si, ucv, si->si_code > 0, HandlerRemoved);
}

void OnSegv(int sig, siginfo_t* si, void* ucv) {
  const int saved_errno = errno;
  Own* own = g_own.load(std::memory_order_acquire);
  if (own != nullptr && si->si_code > 0) {  // a fault, not a kill()
    const auto* uc = static_cast<const ucontext_t*>(ucv);
    const uint64_t err = static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_ERR]);
    const Access access = (err & PGEX_W)   ? Access::kWrite
                          : (err & PGEX_I) ? Access::kExecute
                                           : Access::kRead;
    if (!(err & kPgexProtectionKey)) {
      auto resolved =
          own->space.Resolve(reinterpret_cast<uint64_t>(si->si_addr), access, own->installer);
      if (resolved.ok() && resolved->outcome == Resolution::Outcome::kInstalled) {
        errno = saved_errno;
        return;  // the access is retried and succeeds
      }
    }
  }
  errno = saved_errno;
  Chain(sig, si, ucv);
  errno = saved_errno;
}

// Installs vkrt's SIGSEGV handler in front of the program's (admin_mu held, signals blocked).
absl::Status InstallHandler() {
  std::lock_guard<std::mutex> lock(g_program_mu);
  if (g_handler_installed.load(std::memory_order_acquire)) return absl::OkStatus();
  struct sigaction ours = {};
  ours.sa_sigaction = OnSegv;
  ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigfillset(&ours.sa_mask);
  struct sigaction old = {};
  if (__sigaction(SIGSEGV, &ours, &old) != 0) return SyscallError("sigaction(SIGSEGV)");
  if (old.sa_sigaction != OnSegv) g_program.Set(old);
  g_handler_installed.store(true, std::memory_order_release);
  __atomic_store_n(&vkrt_own_active, 1, __ATOMIC_RELEASE);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> OwnMap(uint64_t addr, uint64_t len, int prot, int flags, int fd,
                                off_t offset) {
  const auto what = [&] {
    return absl::StrFormat("mmap(%#x, %#x, prot %#x, flags %#x, fd %d, off %d) with "
                           "MAP_VPAGETABLE", addr, len, prot, flags, fd,
                           static_cast<long long>(offset));
  };
  if (len == 0) return ErrnoError(EINVAL, what() + ": zero length");
  if ((prot & (PROT_READ | PROT_WRITE)) != (PROT_READ | PROT_WRITE)) {
    return ErrnoError(EINVAL, what() + ": MAP_VPAGETABLE needs PROT_READ|PROT_WRITE");
  }
  if ((flags & MAP_SHARED_VALIDATE) != MAP_SHARED && (flags & MAP_SHARED_VALIDATE) != MAP_SHARED_VALIDATE) {
    return ErrnoError(EINVAL, what() + ": MAP_VPAGETABLE needs MAP_SHARED");
  }
  if (flags & (MAP_ANONYMOUS | MAP_STACK)) {
    return ErrnoError(EINVAL, what() + ": MAP_VPAGETABLE needs a backing object, not "
                                       "MAP_ANONYMOUS (nor MAP_STACK)");
  }
  if (offset < 0 || (static_cast<uint64_t>(offset) & (kPage - 1)) != 0) {
    return ErrnoError(EINVAL, what() + ": offset is not a page multiple");
  }
  const bool fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) != 0;
  if (fixed && (addr & (kPage - 1)) != 0) {
    return ErrnoError(EINVAL, what() + ": MAP_FIXED address not aligned");
  }
  if (fcntl(fd, F_GETFL) < 0) return ErrnoError(EBADF, what() + ": bad file descriptor");
  const uint64_t rlen = (len + kPage - 1) & ~(kPage - 1);
  if (rlen < len) return ErrnoError(ENOMEM, what() + ": too long");
  auto backing = Backing::ForFd(fd);
  if (!backing.ok()) {
    return ErrnoError(ErrnoOf(backing.status()),
                      what() + ": " + std::string(backing.status().message()));
  }
  SignalsBlocked blocked;
  Own& own = GetOwn();
  std::lock_guard<std::mutex> lock(own.admin_mu);
  const long r = syscall(SYS_mmap, addr, rlen, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
                             (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)),
                         -1, 0);
  if (r == -1) return ErrnoError(errno, what() + ": reserving the range: " + strerror(errno));
  const uint64_t start = static_cast<uint64_t>(r);
  if (auto s = InstallHandler(); !s.ok()) {
    syscall(SYS_munmap, start, rlen);
    return s;
  }
  const int handle = (*backing)->fd();
  own.space.AddRegion(start, rlen, prot, static_cast<uint64_t>(offset), *std::move(backing),
                      handle);
  g_has_regions.store(true, std::memory_order_release);
  return start;
}

void OwnForget(uint64_t addr, uint64_t len) {
  if (!g_has_regions.load(std::memory_order_acquire)) return;
  SignalsBlocked blocked;
  Own& own = GetOwn();
  std::lock_guard<std::mutex> lock(own.admin_mu);
  own.space.RemoveRange(addr & ~(kPage - 1), (len + (addr & (kPage - 1)) + kPage - 1) & ~(kPage - 1));
  g_has_regions.store(own.space.HasRegions(), std::memory_order_release);
}

bool OwnHasRegions() { return g_has_regions.load(std::memory_order_acquire); }

absl::Status OwnControl(uint64_t start, uint64_t end, int behav, uint64_t value) {
  SignalsBlocked blocked;
  std::vector<std::pair<uint64_t, uint64_t>> regions;
  Own* own = g_has_regions.load(std::memory_order_acquire) ? &GetOwn() : nullptr;
  std::unique_lock<std::mutex> lock;
  if (own != nullptr) {
    lock = std::unique_lock<std::mutex>(own->admin_mu);
    regions = own->space.RegionPieces(start, end - start);
  }
  bool plain = false;
  if (behav == MADV_SETMAP) {
    // Parts outside the regions: holes are skipped, mapped memory is EINVAL (DragonFly).
    uint64_t cur = start;
    regions.emplace_back(end, end);
    for (const auto& [s, e] : regions) {
      if (cur < s && syscall(SYS_msync, cur, s - cur, MS_ASYNC) == 0) plain = true;
      cur = std::max(cur, e);
    }
    regions.pop_back();
  }
  if (own != nullptr) {
    auto s = behav == MADV_SETMAP ? own->space.SetMap(start, end - start, value, own->installer)
                                  : own->space.Invalidate(start, end - start, own->installer);
    if (!s.ok()) return s;
  }
  if (plain) {
    return ErrnoError(EINVAL, absl::StrFormat("mcontrol(%#x, %#x, MADV_SETMAP): part of the "
                                              "range is not a MAP_VPAGETABLE mapping",
                                              start, end - start));
  }
  return absl::OkStatus();
}

bool OwnSigaction(int sig, const struct sigaction* act, struct sigaction* oldact) {
  if (sig != SIGSEGV || !g_handler_installed.load(std::memory_order_acquire)) return false;
  SignalsBlocked blocked;
  std::lock_guard<std::mutex> lock(g_program_mu);
  if (!g_handler_installed.load(std::memory_order_acquire)) return false;
  if (oldact != nullptr) *oldact = g_program.Get();
  if (act != nullptr) g_program.Set(*act);
  return true;
}

uint64_t OwnInstalled() {
  Own* own = g_own.load(std::memory_order_acquire);
  return own == nullptr ? 0 : own->space.installed();
}

}  // namespace vkrt::vpt
