// The backend contract: what every way of running guests (ptrace, seccomp, kvm) must
// provide. Written as a contract in the manner of gVisor's platform.go: each method states
// its preconditions and every outcome. The machine-independent layer (src/vmspace.h)
// validates arguments against SPEC §2/§4 and keeps the mapping table before calling in,
// so backends receive only well-formed requests.
//
// Threads. A vkernel thread that calls into an AddressSpace is "the caller". Backends may
// keep per-(caller, address space) state (a guest context: the ptrace backend's traced
// thread); such state is created on first use and released by ReleaseCallerContext() or
// by destruction of the AddressSpace.
//
// Errors. Host failures are absl::Status values whose message names the failing call and
// its arguments and whose errno (common/errno_status.h) is what the C layer reports.
// Guest events are never errors: Run() returns them as a GuestExit value.
#ifndef VKRT_SRC_BACKEND_BACKEND_H_
#define VKRT_SRC_BACKEND_BACKEND_H_

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "vkrt/vmspace.h"
#include "vpagetable/space.h"

namespace vkrt {

// Why a RUN ended: a value, not an error (Firecracker/crosvm style).
struct GuestExit {
  enum class Kind {
    kSyscall,      // `syscall`: trapno T_FAST_SYSCALL, err = 2
    kSyscall80,    // `int $0x80`: trapno T_SYSCALL80, err = 2
    kPageFault,    // trapno T_PAGEFLT, addr = faulting address, err = PGEX_* bits
    kException,    // any other trap: trapno = its T_ code, err = hardware error code
    kInterrupted,  // a signal handler ran, the run timeout expired or vkrt_interrupt(): trapno 0
  };
  Kind kind = Kind::kInterrupted;
  int trapno = 0;
  uint64_t err = 0;
  uint64_t addr = 0;
};

// The guest register state RUN loads and returns. `tf` follows SPEC §3 (sanitised by the
// caller); the TLS bases are inputs only (the guest cannot change them; SPEC §3).
struct GuestState {
  trapframe* tf;
  uint64_t fs_base;
  uint64_t gs_base;
  // Standard-format XSAVE area of x86_64::XstateSize() bytes, 64-byte aligned: on entry the
  // FPU state the guest starts with; on return (any outcome of Run) the guest's FPU state.
  void* xstate;
};

// A validated mmap request (SPEC §4). MAP_FIXED in `flags` means: replace what is there.
struct MapRequest {
  uint64_t addr = 0;
  uint64_t len = 0;    // > 0, page multiple
  int prot = 0;
  int flags = 0;       // Linux MAP_* flags, MAP_VPAGETABLE removed
  int fd = -1;         // the vkernel's fd, or -1 for anonymous memory
  off_t offset = 0;    // page multiple
};

// How long a RUN may last: 0 = no limit.
struct RunLimits {
  uint64_t timeout_ns = 0;
};

// One guest address space. Methods may be called from any vkernel thread; each method says
// what it needs from the caller. The MI layer serialises Map/Unmap/Advise on one address
// space (it holds the vmspace's admin lock); Run/Read/Write may run concurrently with each
// other and with those.
class AddressSpace {
 public:
  virtual ~AddressSpace() = default;

  // Maps memory. Precondition: the request was validated; with MAP_FIXED, [addr, addr+len)
  // lies below VKRT_VM_MAX_USER_ADDRESS. Outcomes: the address of the new mapping (without
  // MAP_FIXED chosen by the backend, `addr` a hint; the caller unmaps a result above the
  // top); or EBADF, EACCES, ENODEV, ENOMEM, EINVAL as mmap(2) reports them.
  virtual absl::StatusOr<uint64_t> Map(const MapRequest& request) = 0;

  // Unmaps [addr, addr+len) (page aligned, fully mapped). Outcome: OK or a host error.
  virtual absl::Status Unmap(uint64_t addr, uint64_t len) = 0;

  // Applies DragonFly madvise `behav` (0..9, INVAL) to a mapped, page-aligned range.
  // Hints the host refuses are ignored; outcome: OK or a host error.
  virtual absl::Status Advise(uint64_t addr, uint64_t len, int behav) = 0;

  // Copies between the guest's memory at `addr` and the caller's buffer, honouring the
  // guest mapping's protection (a write to a page the guest cannot write is refused).
  // Outcomes: the number of bytes copied, short if the copy stopped at a page that is
  // unmapped or not accessible; EFAULT if nothing could be copied.
  virtual absl::StatusOr<size_t> Read(uint64_t addr, void* buf, size_t len) = 0;
  virtual absl::StatusOr<size_t> Write(uint64_t addr, const void* buf, size_t len) = 0;

  // Runs the caller's guest context with `state` until the guest needs the vkernel.
  // Preconditions: state.tf sanitised (x86_64::SanitizeFrame); the caller is not already
  // inside Run on this address space. Outcomes:
  //   - a GuestExit; *state.tf holds the guest's registers at that moment (rip after the
  //     instruction for system calls and traps, at the instruction for faults) and
  //     state.xstate the guest's FPU state;
  //   - kInterrupted if a signal handler ran in the caller while the guest ran (with or
  //     without SA_RESTART), if `limits.timeout_ns` elapsed, or if vkrt_interrupt() named
  //     the caller; *state.tf is the guest's state at the stop;
  //   - a host error (EFAULT if the address space died, ENOMEM/EAGAIN if no guest context
  //     can be created); *state.tf is then unspecified and the guest did not resume.
  // MAP_VPAGETABLE (SPEC §4): a page fault at an address of a region of vpt() never
  // reaches the vkernel while vpt()->Resolve() can install a translation (through this
  // space's Install, in the caller's context); it ends RUN as kPageFault only when the walk
  // fails, with the walk's PGEX_* bits and the exact address.
  virtual absl::StatusOr<GuestExit> Run(GuestState& state, const RunLimits& limits) = 0;

  // ---- MAP_VPAGETABLE support (the decisions are vpagetable/space.h's) ----
  // Makes the vkernel's memory object `fd` usable by Install until DetachObject(handle).
  // Outcomes: a handle; or a host error.
  virtual absl::StatusOr<int> AttachObject(int fd) = 0;
  virtual absl::Status DetachObject(int handle) = 0;
  // Maps `len` bytes of object `handle` at byte `offset` to guest page `addr` with PROT_*
  // `prot`, shared, replacing what is there. Called with the vpt::Space lock held, from
  // Run's fault path or from mcontrol. Outcome: OK or a host error.
  virtual absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                               uint64_t offset) = 0;
  // Install for a translation ahead of any access (MADV_WILLNEED): a backend may queue it
  // until the next Run, and a failure is never reported (the page faults later instead).
  virtual absl::Status InstallHint(uint64_t addr, uint64_t len, int prot, int handle,
                                   uint64_t offset) {
    return Install(addr, len, prot, handle, offset);
  }
  // Carries out queued Installs (a backend may batch them, and queue them until the next
  // Run while none is in progress). Outcome: OK or the first failure.
  virtual absl::Status FlushInstalls() { return absl::OkStatus(); }
  // Removes the translations in [addr, addr+len) (page aligned, inside a VPAGETABLE region):
  // from its return on, no guest access there succeeds through one of them. The default
  // re-reserves the range (an inaccessible anonymous mapping, so nothing else is placed
  // there). A backend may queue the host work and carry it out before any guest code of
  // this space runs again, if none runs now. Called with the vpt::Space lock held, from
  // mcontrol (SETMAP, INVAL) or Run's fault path. Outcome: OK or a host error.
  virtual absl::Status DropTranslations(uint64_t addr, uint64_t len);
  // The VPAGETABLE state Run consults; set once, before the first VPAGETABLE mapping exists,
  // by the owner, which keeps it alive longer than this space.
  void set_vpt(vpt::Space* space) { vpt_.store(space, std::memory_order_release); }
  vpt::Space* vpt() const { return vpt_.load(std::memory_order_acquire); }

  // How many VPAGETABLE translations may be installed at once (vpt::Space's budget): a
  // process-based backend pays host mappings for them, a VM only page-table entries.
  virtual size_t TranslationBudget() const { return vpt::Space::StubBudget(); }

  // Drops the caller's guest context, if any (the caller thread is exiting).
  virtual void ReleaseCallerContext() = 0;

 private:
  std::atomic<vpt::Space*> vpt_{nullptr};
};

// The vpt::Installer of an AddressSpace: installs with Install(), drops with
// DropTranslations().
class SpaceInstaller : public vpt::Installer {
 public:
  explicit SpaceInstaller(AddressSpace& space) : space_(space) {}
  absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                       uint64_t offset) override {
    return space_.Install(addr, len, prot, handle, offset);
  }
  absl::Status InstallHint(uint64_t addr, uint64_t len, int prot, int handle,
                           uint64_t offset) override {
    return space_.InstallHint(addr, len, prot, handle, offset);
  }
  absl::Status Drop(uint64_t addr, uint64_t len) override {
    return space_.DropTranslations(addr, len);
  }
  absl::Status Flush() override { return space_.FlushInstalls(); }

 private:
  AddressSpace& space_;
};

// A way of running guests. Thread-safe.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* Name() const = 0;
  // Creates an empty address space covering [0, VKRT_VM_MAX_USER_ADDRESS) minus the pages
  // Linux forbids (vm.mmap_min_addr). Outcomes: the space; or a host error (EAGAIN,
  // ENOMEM when processes or memory run out).
  virtual absl::StatusOr<std::unique_ptr<AddressSpace>> CreateAddressSpace() = 0;
};

// Backend registry: VKRT_TYPE_* <-> backends.
// The backend for `type` (VKRT_TYPE_*), or EINVAL for an unknown type and EOPNOTSUPP (with
// the reason) for one this machine cannot run.
absl::StatusOr<Backend*> BackendForType(int type);
// Type for a name ("ptrace", "seccomp", "kvm"); -1 if unknown.
int BackendTypeForName(const char* name);
// Why backend `type` cannot run on this machine, or nullptr if it can.
const char* BackendUnavailable(int type);
// The process default for VKRT_TYPE_DEFAULT (VKRT_BACKEND in the environment wins).
absl::Status SetDefaultBackend(const char* name);

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_BACKEND_H_
