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

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_HOST_H_
