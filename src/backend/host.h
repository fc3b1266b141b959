// Host helpers the process-based backends (ptrace, seccomp) share.
#ifndef VKRT_SRC_BACKEND_HOST_H_
#define VKRT_SRC_BACKEND_HOST_H_

#include <sys/rseq.h>
#include <sys/types.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vkrt {

// A pidfd for this process, inherited by stubs: it polls readable when we are gone. -1 if
// the kernel has none. Created once per process (again in a fork() child).
int SelfPidfd();

// Called before a vmspace is created. Each vmspace holds descriptors in the vkernel (two:
// a stub's socket and eventfd, or a VM and a vCPU), so a vkernel with a thousand vmspaces
// passes the usual soft RLIMIT_NOFILE of 1024 long before any hard limit. When fewer than
// kFdHeadroom descriptor numbers are left below the soft limit, raises it to the hard limit
// (as Go's runtime does at start-up). Lazily: a vkernel with few vmspaces keeps its limit.
void EnsureFdHeadroom();

// Sends the vkernel's descriptor `fd` over the Unix socket `sock` to stub `pid` (one byte
// with SCM_RIGHTS): the stub then holds the same open file description.
absl::Status SendFdOverSocket(int sock, int fd, pid_t pid);

// Copies between this process's `buf` and `len` bytes at `addr` in process `pid`
// (process_vm_readv/writev). Outcomes: the bytes copied (short at an inaccessible page), or
// the error (EFAULT, also when `pid` is gone).
absl::StatusOr<size_t> CopyProcessMemory(pid_t pid, bool write, uint64_t addr, void* buf,
                                         size_t len);

// The Linux madvise advice for DragonFly behaviour `behav` (0..9), or -1 where Linux has
// nothing to do (MADV_NOSYNC, MADV_AUTOSYNC, MADV_INVAL/SETMAP are handled elsewhere).
int LinuxAdvice(int behav);

// The thread ids of process `pid`, sorted.
absl::StatusOr<std::vector<pid_t>> ListTasks(pid_t pid);

// This thread's registered rseq area: glibc's, or, where glibc did not register one
// (GLIBC_TUNABLES=glibc.pthread.rseq=0), vkrt's own, registered on first use. nullptr if the
// kernel has no rseq or somebody else registered an area glibc does not know about.
// `register_own` false: never registers, only reports.
struct rseq* ThreadRseq(bool register_own = true);

// What SyscallWithSignalsOpen's call did.
struct OpenCall {
  static constexpr long kNotReturned = -1000;  // never a result of the calls used here
  long result = kNotReturned;  // the call's result, or kNotReturned: it did not return
  bool handler_ran = false;    // a signal handler ran in this thread during the call
};

// Precondition: every signal is blocked in this thread, and `rs` is its rseq area
// (ThreadRseq()). Sets the signal mask to `open`, makes system call `nr` with arguments
// `a0`..`a3`, and blocks every signal again, all in one restartable sequence
// (vkrt_syscall_in_rseq, arch/x86_64/entry.S): so a signal handler that runs anywhere in
// between is seen, even one installed with SA_RESTART (whose restarted call would otherwise
// hide it). Returns with every signal blocked. Outcomes:
//   - result set, handler_ran false: the call returned.
//   - result set, handler_ran true: the call returned (perhaps -EINTR) and a handler ran.
//   - kNotReturned, handler_ran true: a handler ran before the call returned.
//   - kNotReturned, handler_ran false: preempted before the call returned: call again.
// `written`, for a call whose result can equal its own number (wait4 may return pid 61):
// a word the call writes only when it succeeds; it is preset to ~0 here, and tells a
// result from the kernel's restart marker. Other calls pass nullptr. A handler that ran on
// the alternate signal stack is looked for only after an abort (AltStackHandlerRan).
// No allocation, no lock: on the RUN path.
OpenCall SyscallWithSignalsOpen(struct rseq* rs, const uint64_t& open, long nr, uint64_t a0,
                                uint64_t a1, uint64_t a2, uint64_t a3, int* written);

// A value for rbp during one call of vkrt_syscall_in_rseq or vkrt_seccomp_spin_in_rseq
// (different for each call of this thread, and unlike what rbp holds elsewhere). No
// allocation, no lock.
uint64_t NextRseqNonce();

// After a restartable sequence that guards a wait was aborted and no signal frame showed
// under the stack's red zone (a preemption, a sleep, or a handler on another stack): whether
// a handler ran on this thread's alternate signal stack while the call that held `nonce` in
// rbp was in progress (true also when that cannot be told). A frame left there by an earlier
// handler (one that ran before the wait, or ran during an earlier one) holds another rbp and
// does not count. Each frame is looked at once (its FP_XSTATE_MAGIC2 is cleared). A few
// system calls (and an allocation when a frame is there): only for the aborted case.
bool AltStackHandlerRan(uint64_t nonce);

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_HOST_H_
