#include "backend/host.h"

#include <dirent.h>
#include <stddef.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "arch/x86_64/frame.h"
#include "common/errno_status.h"
#include "vkrt/vmspace.h"

namespace vkrt {

int SelfPidfd() {
  static std::mutex mu;
  static pid_t owner = 0;
  static int fd = -1;
  std::lock_guard<std::mutex> lock(mu);
  if (owner != getpid()) {  // first use, or we are a fork() child of the process that made it
    fd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
    owner = getpid();
  }
  return fd;
}

void EnsureFdHeadroom() {
  // Enough for the creation itself and the vCPU (kvm) or context work of the calls after
  // it, so that the limit is raised before anything fails with EMFILE.
  constexpr rlim_t kFdHeadroom = 64;
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  // Descriptors are handed out lowest-free first, so the number a new one gets is what
  // decides whether the next ones hit the limit (not how many are open).
  const int probe = static_cast<int>(syscall(SYS_eventfd2, 0, EFD_CLOEXEC));
  if (probe >= 0) close(probe);
  if (probe >= 0 && static_cast<rlim_t>(probe) + kFdHeadroom < limit.rlim_cur) return;
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);  // if refused, creation fails with EMFILE as before
}

absl::Status SendFdOverSocket(int sock, int fd, pid_t pid) {
  char byte = 'F';
  struct iovec iov = {&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  if (sendmsg(sock, &msg, MSG_NOSIGNAL) != 1) {
    return SyscallError(absl::StrFormat("sendmsg(SCM_RIGHTS fd %d to stub %d)", fd, pid));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> CopyProcessMemory(pid_t pid, bool write, uint64_t addr, void* buf,
                                         size_t len) {
  struct iovec local = {buf, len};
  struct iovec remote = {reinterpret_cast<void*>(addr), len};
  const ssize_t n = write ? process_vm_writev(pid, &local, 1, &remote, 1, 0)
                          : process_vm_readv(pid, &local, 1, &remote, 1, 0);
  if (n < 0) {
    return ErrnoError(errno == ESRCH ? EFAULT : errno,
                      absl::StrFormat("%s(stub %d, %#x, %zu)",
                                      write ? "process_vm_writev" : "process_vm_readv", pid,
                                      addr, len));
  }
  return static_cast<size_t>(n);
}

int LinuxAdvice(int behav) {
  switch (behav) {
    case MADV_NORMAL: case MADV_RANDOM: case MADV_SEQUENTIAL: case MADV_WILLNEED:
    case MADV_DONTNEED:
      return behav;  // DragonFly and Linux agree on 0..4
    case VKRT_MADV_FREE: return MADV_DONTNEED;
    case MADV_NOCORE: return MADV_DONTDUMP;
    case MADV_CORE: return MADV_DODUMP;
    default: return -1;
  }
}

absl::StatusOr<std::vector<pid_t>> ListTasks(pid_t pid) {
  std::string path = absl::StrFormat("/proc/%d/task", pid);
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) return SyscallError(absl::StrFormat("opendir(%s)", path));
  std::vector<pid_t> tids;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') tids.push_back(atoi(e->d_name));
  }
  closedir(dir);
  std::sort(tids.begin(), tids.end());
  return tids;
}

struct rseq* ThreadRseq(bool register_own) {
  if (__rseq_size != 0) {
    return reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) +
                                          __rseq_offset);
  }
  struct alignas(32) OwnRseq {
    struct rseq area;
  };
  thread_local OwnRseq own = {};
  thread_local int state = 0;  // 0 = not tried, 1 = registered, -1 = unavailable
  if (state == 0 && register_own) {
    own.area.cpu_id = RSEQ_CPU_ID_UNINITIALIZED;
    state = syscall(SYS_rseq, &own.area, 32, 0, RSEQ_SIG) == 0 ? 1 : -1;
  }
  return state == 1 ? &own.area : nullptr;
}

extern "C" {
// The layout vkrt_syscall_in_rseq (arch/x86_64/entry.S) reads and writes.
struct RseqSyscall {
  const uint64_t* mask;  // in: the signal mask during the call
  long nr;               // in: the call
  uint64_t args[4];      // in: rdi rsi rdx r10
  uint64_t* rseq_cs;     // in: &rseq->rseq_cs, armed and disarmed there
  long result;           // out: the call's result, or OpenCall::kNotReturned
  int32_t handler;       // out: 1 = a handler's frame showed on this stack
  int32_t stage;         // out: 0 = not aborted; 1 = aborted before the unblocking; 2 = after
  int32_t ambiguous;     // out: 1 = the result may be the kernel's restart marker (rax = nr)
  uint64_t nonce;        // in: held in rbp during the call (AltStackHandlerRan)
};
void vkrt_syscall_in_rseq(RseqSyscall* call);
}
static_assert(offsetof(RseqSyscall, rseq_cs) == 48 && offsetof(RseqSyscall, result) == 56 &&
              offsetof(RseqSyscall, handler) == 64 && offsetof(RseqSyscall, stage) == 68 &&
              offsetof(RseqSyscall, ambiguous) == 72 && offsetof(RseqSyscall, nonce) == 80);

OpenCall SyscallWithSignalsOpen(struct rseq* rs, const uint64_t& open, long nr, uint64_t a0,
                                uint64_t a1, uint64_t a2, uint64_t a3, int* written) {
  if (written != nullptr) *written = ~0;
  RseqSyscall call = {&open, nr, {a0, a1, a2, a3}, reinterpret_cast<uint64_t*>(&rs->rseq_cs),
                      0, 0, 0, 0, NextRseqNonce()};
  vkrt_syscall_in_rseq(&call);
  OpenCall out;
  out.result = call.result;
  out.handler_ran = call.handler != 0;
  if (call.ambiguous != 0 && (written == nullptr || *written == ~0)) {
    out.result = OpenCall::kNotReturned;  // set up to restart: it did not return
  }
  // No frame here after an abort once signals were open: a preemption, or a handler on the
  // alternate stack.
  if (call.stage == 2 && !out.handler_ran) out.handler_ran = AltStackHandlerRan(call.nonce);
  return out;
}

uint64_t NextRseqNonce() {
  // Unlike any value rbp is likely to hold elsewhere (a small number, an address): a counter
  // spread over 64 bits, different in each thread.
  thread_local uint64_t count = 0;  // constant-initialised: no guard on this path
  return (++count * 0x9E3779B97F4A7C15ULL) ^ reinterpret_cast<uint64_t>(&count);
}

namespace {
constexpr uint64_t kAltWindow = 32 * 1024;  // the XSAVE area is at most ~11 KiB (AMX)
}  // namespace

bool AltStackHandlerRan(uint64_t nonce) {
  stack_t ss;
  if (syscall(SYS_sigaltstack, nullptr, &ss) != 0) return true;  // cannot tell
  if ((ss.ss_flags & (SS_DISABLE | SS_ONSTACK)) != 0 || ss.ss_size < 128) return false;
  const uint64_t top = reinterpret_cast<uint64_t>(ss.ss_sp) + ss.ss_size;
  // Through the kernel: the stack's memory may have gone meanwhile. First the top, where a
  // frame shows (usually none does: a preemption or a sleep aborted the wait).
  uint8_t area[128];
  auto read = CopyProcessMemory(getpid(), false, top - sizeof(area), area, sizeof(area));
  if (!read.ok() || *read != sizeof(area)) return true;
  std::vector<uint64_t> magics;
  for (uint64_t i = 0; i + 4 <= sizeof(area); ++i) {
    uint32_t v;
    memcpy(&v, area + i, 4);
    if (v != x86_64::kFpXstateMagic2) continue;
    magics.push_back(top - sizeof(area) + i);
    // Cleared, so that this frame is never looked at again.
    const uint32_t zero = 0;
    (void)CopyProcessMemory(getpid(), true, magics.back(), const_cast<uint32_t*>(&zero), 4);
  }
  if (magics.empty()) return false;
  const uint64_t len = std::min<uint64_t>(ss.ss_size, kAltWindow) & ~uint64_t{63};
  const uint64_t base = top - len;
  std::vector<uint8_t> window(len);
  read = CopyProcessMemory(getpid(), false, base, window.data(), len);
  if (!read.ok() || *read != len) return true;
  for (const uint64_t magic2 : magics) {
    uint64_t gregs[x86_64::kSigGregs];
    // A frame laid out otherwise (a future kernel): cannot tell.
    if (!x86_64::SigframeGregsAt(window.data(), base, len, magic2, gregs)) return true;
    // Its saved rbp: the nonce of the call it interrupted.
    if (gregs[x86_64::kSigRbp] == nonce) return true;
  }
  return false;
}

}  // namespace vkrt
