// The C layer: the only place where internal errors become errno (SPEC §1).
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/str_format.h"
#include "arch/x86_64/xstate.h"
#include "backend/backend.h"
#include "common/errno_status.h"
#include "registry.h"
#include "thread_state.h"
#include "vkrt/vmspace.h"
#include "vpagetable/own_space.h"

namespace vkrt {
namespace {

// The message of the calling thread's last failure, for vkrt_last_error().
thread_local std::string last_error;

// Sets errno from `status` and returns -1 (or the given failure value).
template <typename T = int>
T Fail(const absl::Status& status, T failure = T(-1)) {
  last_error = std::string(status.message());
  errno = ErrnoOf(status);
  return failure;
}

absl::StatusOr<Vmspace*> Lookup(void* id) { return Registry::Get().Find(id); }

}  // namespace
}  // namespace vkrt

using vkrt::Fail;

extern "C" {

int vmspace_create(void* id, int type, void* data) {
  auto s = vkrt::Registry::Get().Create(id, type, data);
  return s.ok() ? 0 : Fail(s);
}

int vmspace_destroy(void* id) {
  auto s = vkrt::Registry::Get().Destroy(id);
  return s.ok() ? 0 : Fail(s);
}

namespace {

// What XRSTOR would refuse in `fpu`, a caller's buffer for vkrt_vmspace_run_fpu (nullptr: it
// takes it), as an error naming the problem.
absl::Status CheckFpuArea(const void* fpu) {
  if (fpu == nullptr) return vkrt::ErrnoError(EFAULT, "vkrt_vmspace_run_fpu: NULL FPU area");
  if (reinterpret_cast<uintptr_t>(fpu) % 64 != 0) {
    return vkrt::ErrnoError(
        EINVAL, "vkrt_vmspace_run_fpu: the FPU area is not 64-byte aligned (XSAVE's rule)");
  }
  if (const char* why = vkrt::x86_64::XrstorRefusal(fpu, vkrt::x86_64::EnabledFeatures(),
                                                     vkrt::x86_64::MxcsrMask());
      why != nullptr) {
    return vkrt::ErrnoError(
        EINVAL, absl::StrFormat("vkrt_vmspace_run_fpu: the FPU area is not one XRSTOR takes in "
                                "XSAVE's standard format: %s", why));
  }
  return absl::OkStatus();
}

// RUN for vmspace_ctl (`xstate`: the caller's registers, saved by the entry stub) and for
// vkrt_vmspace_run_fpu (`xstate`: the caller's buffer, checked here once the id is known to
// be a vmspace: an unknown id is ENOENT whatever else is wrong, as for every call).
int RunImpl(void* id, int cmd, trapframe* tf, vextframe* vf, int64_t timeout_ns, void* xstate,
            bool caller_area) {
  auto vs = vkrt::Lookup(id);
  if (!vs.ok()) return Fail(vs.status());
  vkrt::VmspaceRef ref(*vs);
  if (cmd != VMSPACE_CTL_RUN) {
    return Fail(vkrt::ErrnoError(EOPNOTSUPP, "vmspace_ctl: the only command is VMSPACE_CTL_RUN"));
  }
  if (caller_area) {
    if (auto s = CheckFpuArea(xstate); !s.ok()) return Fail(s);
  }
  if (tf == nullptr || vf == nullptr) {
    return Fail(vkrt::ErrnoError(EFAULT, "vmspace_ctl(RUN): NULL trapframe or vextframe"));
  }
  if (vkrt::x86_64::XstateSize() > 16384 - 64) {  // the entry stub reserves 16 KiB for it
    return Fail(vkrt::ErrnoError(EOPNOTSUPP, "vmspace_ctl(RUN): XSAVE area larger than 16 KiB"));
  }
  auto exit = (*vs)->Run(*tf, *vf, xstate, timeout_ns);
  return exit.ok() ? 0 : Fail(exit.status());
}

}  // namespace

// Called by the assembly entry points (arch/x86_64/entry.S) with the caller's FPU state
// already saved in `xstate`; whatever `xstate` holds on return is loaded into the caller.
__attribute__((visibility("hidden"))) int vkrt_ctl_impl(void* id, int cmd, trapframe* tf,
                                                        vextframe* vf, int64_t timeout_ns,
                                                        void* xstate) {
  return RunImpl(id, cmd, tf, vf, timeout_ns, xstate, false);
}

size_t vkrt_fpu_area_size(void) {
  return (vkrt::x86_64::XstateSize() + 63) & ~size_t{63};
}

void vkrt_fpu_area_init(void* fpu) {
  // Linux's state for a new thread: FCW 0x37F, MXCSR 0x1F80 (its mask as this CPU reports
  // it does not matter to XRSTOR), every register zero, no component in use.
  auto* p = static_cast<unsigned char*>(fpu);
  memset(p, 0, vkrt_fpu_area_size());
  const uint16_t fcw = 0x037F;
  const uint32_t mxcsr = 0x1F80;
  memcpy(p, &fcw, sizeof(fcw));
  memcpy(p + 24, &mxcsr, sizeof(mxcsr));
}

int vkrt_vmspace_run_fpu(void* id, trapframe* tf, vextframe* vf, uint64_t timeout_ns,
                         void* fpu) {
  // The caller's registers stay the caller's: the guest's state is read from and written
  // to `fpu` only, and nothing here changes MXCSR or the x87 control word.
  return RunImpl(id, VMSPACE_CTL_RUN, tf, vf,
                 timeout_ns == 0 ? -1 : static_cast<int64_t>(timeout_ns), fpu, true);
}

void* vmspace_mmap(void* id, void* addr, size_t len, int prot, int flags, int fd, off_t offset) {
  auto vs = vkrt::Lookup(id);
  if (!vs.ok()) return Fail<void*>(vs.status(), MAP_FAILED);
  vkrt::VmspaceRef ref(*vs);
  auto mapped = (*vs)->Map(reinterpret_cast<uint64_t>(addr), len, prot, flags, fd, offset);
  if (!mapped.ok()) return Fail<void*>(mapped.status(), MAP_FAILED);
  return reinterpret_cast<void*>(*mapped);
}

int vmspace_munmap(void* id, void* addr, size_t len) {
  auto vs = vkrt::Lookup(id);
  if (!vs.ok()) return Fail(vs.status());
  vkrt::VmspaceRef ref(*vs);
  auto s = (*vs)->Unmap(reinterpret_cast<uint64_t>(addr), len);
  return s.ok() ? 0 : Fail(s);
}

int vmspace_mcontrol(void* id, void* addr, size_t len, int behav, off_t value) {
  auto vs = vkrt::Lookup(id);
  if (!vs.ok()) return Fail(vs.status());
  vkrt::VmspaceRef ref(*vs);
  auto s = (*vs)->Control(reinterpret_cast<uint64_t>(addr), len, behav, value);
  return s.ok() ? 0 : Fail(s);
}

ssize_t vmspace_pread(void* id, void* buf, size_t nbyte, int flags, off_t offset) {
  auto vs = vkrt::Lookup(id);
  if (!vs.ok()) return Fail<ssize_t>(vs.status());
  vkrt::VmspaceRef ref(*vs);
  auto n = (*vs)->Read(buf, nbyte, flags, static_cast<uint64_t>(offset));
  return n.ok() ? static_cast<ssize_t>(*n) : Fail<ssize_t>(n.status());
}

ssize_t vmspace_pwrite(void* id, const void* buf, size_t nbyte, int flags, off_t offset) {
  auto vs = vkrt::Lookup(id);
  if (!vs.ok()) return Fail<ssize_t>(vs.status());
  vkrt::VmspaceRef ref(*vs);
  auto n = (*vs)->Write(buf, nbyte, flags, static_cast<uint64_t>(offset));
  return n.ok() ? static_cast<ssize_t>(*n) : Fail<ssize_t>(n.status());
}

int mcontrol(void* addr, size_t len, int behav, off_t value) {
  const uint64_t a = reinterpret_cast<uint64_t>(addr);
  if (behav < 0 || behav > MADV_SETMAP || a + len < a || a + len > VKRT_VM_MAX_USER_ADDRESS) {
    return Fail(vkrt::ErrnoError(EINVAL, "mcontrol: behav outside 0..11, or the range wraps or "
                                         "ends above the top"));
  }
  const uintptr_t start = a & ~uintptr_t{4095};
  const uintptr_t end = (a + len + 4095) & ~uintptr_t{4095};
  if (end == start) return 0;
  int advice;
  switch (behav) {
    case MADV_SETMAP:
    case MADV_INVAL: {
      auto s = vkrt::vpt::OwnControl(start, end, behav, static_cast<uint64_t>(value));
      return s.ok() ? 0 : Fail(s);
    }
    case MADV_NOSYNC:
    case MADV_AUTOSYNC:
      return 0;
    case VKRT_MADV_FREE: advice = MADV_DONTNEED; break;
    case MADV_NOCORE: advice = MADV_DONTDUMP; break;
    case MADV_CORE: advice = MADV_DODUMP; break;
    default: advice = behav; break;  // 0..4 are Linux's values too
  }
  // DragonFly skips holes; Linux reports them as ENOMEM after advising the mapped parts.
  if (madvise(reinterpret_cast<void*>(start), end - start, advice) != 0 && errno != ENOMEM) {
    return Fail(vkrt::SyscallError("mcontrol: madvise"));
  }
  return 0;
}

// ---- the caller's own address space (vpagetable/own_space.h) ----------------------------
// The interposed mmap/munmap/sigaction live in src/interpose.cc (built without sanitizer
// instrumentation, since sanitizer runtimes call mmap before they are initialised); they
// come here for everything that involves MAP_VPAGETABLE.

__attribute__((visibility("hidden"))) void* vkrt_own_mmap(void* addr, size_t len, int prot,
                                                         int flags, int fd, off_t offset) {
  auto mapped = vkrt::vpt::OwnMap(reinterpret_cast<uint64_t>(addr), len, prot,
                                  flags & ~MAP_VPAGETABLE, fd, offset);
  if (!mapped.ok()) return Fail<void*>(mapped.status(), MAP_FAILED);
  return reinterpret_cast<void*>(*mapped);
}

__attribute__((visibility("hidden"))) void vkrt_own_forget(void* addr, size_t len) {
  vkrt::vpt::OwnForget(reinterpret_cast<uint64_t>(addr), len);
}

__attribute__((visibility("hidden"))) int vkrt_own_sigaction(int sig,
                                                            const struct sigaction* act,
                                                            struct sigaction* oldact) {
  return vkrt::vpt::OwnSigaction(sig, act, oldact) ? 1 : 0;
}

const char* vkrt_backend_name(void) {
  auto backend = vkrt::BackendForType(VKRT_TYPE_DEFAULT);
  if (!backend.ok()) return Fail<const char*>(backend.status(), nullptr);
  return (*backend)->Name();
}

int vkrt_set_backend(const char* name) {
  auto s = vkrt::SetDefaultBackend(name);
  return s.ok() ? 0 : Fail(s);
}

int vkrt_backend_available(const char* name, const char** why) {
  const int type = vkrt::BackendTypeForName(name);
  const char* reason = type < 0 ? "unknown backend name" : vkrt::BackendUnavailable(type);
  if (reason == nullptr) return 0;
  if (why != nullptr) *why = reason;
  return Fail(vkrt::ErrnoError(type < 0 ? EINVAL : EOPNOTSUPP, reason));
}

int vkrt_set_run_timeout(uint64_t timeout_ns) {
  vkrt::ThreadState::Current().set_default_timeout_ns(timeout_ns);
  return 0;
}

int vkrt_interrupt(pid_t tid) {
  auto s = vkrt::ThreadState::Interrupt(tid);
  return s.ok() ? 0 : Fail(s);
}

int vkrt_kick_signal(void) { return vkrt::ThreadState::KickSignal(); }

const char* vkrt_last_error(void) { return vkrt::last_error.c_str(); }

}  // extern "C"
