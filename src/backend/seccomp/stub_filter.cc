#include "backend/seccomp/stub_filter.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "absl/strings/str_format.h"
#include "arch/x86_64/seccomp_layout.h"
#include "arch/x86_64/stub_layout.h"
#include "common/errno_status.h"

namespace vkrt::seccomp_filter {
namespace {

constexpr uint64_t kStubBlockMask = ~uint64_t{0x1FFFFF};  // the stub's aligned 2 MiB block
static_assert((VKRT_STUB_BASE & 0x1FFFFF) == 0);
constexpr int kArchSetGs = 0x1001;
constexpr int kArchSetFs = 0x1002;
constexpr uint64_t kContextCloneFlags = 0x50F00;  // VM|FS|FILES|SIGHAND|THREAD|SYSVSEM

// The prefix: another ABI, or an instruction pointer outside [start, end): SECCOMP_RET_TRAP.
// Falls through into the libseccomp program otherwise.
std::vector<sock_filter> IpPrefix(uint64_t start, uint64_t end) {
  const uint32_t hi = static_cast<uint32_t>(start >> 32);
  // The code lies inside one 4 GiB-aligned block (it is 64 KiB at VKRT_STUB_BASE).
  const uint32_t lo_start = static_cast<uint32_t>(start);
  const uint32_t lo_end = static_cast<uint32_t>(end);
  return {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, instruction_pointer) + 4),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, hi, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, instruction_pointer)),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, lo_start, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, lo_end, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
  };
}

struct Rule {
  int nr;
  std::vector<scmp_arg_cmp> args;
};

absl::StatusOr<std::vector<sock_filter>> Build(uint64_t start, uint64_t end,
                                               const std::vector<Rule>& rules,
                                               const char* what) {
  // The prefix compares the low 32 bits of the instruction pointer: both ends must lie in
  // one 4 GiB block (an end exactly on the next block's start would compare as 0).
  if ((start >> 32) != (end >> 32) || end <= start) {
    return ErrnoError(EINVAL, absl::StrFormat("%s: stub code [%#x, %#x) is empty or not inside "
                                              "one 4 GiB block", what, start, end));
  }
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (ctx == nullptr) return ErrnoError(ENOMEM, absl::StrFormat("%s: seccomp_init", what));
  struct Release {
    scmp_filter_ctx ctx;
    ~Release() { seccomp_release(ctx); }
  } release{ctx};
  // x32 calls (an x86-64 arch with bit 30 in the number) reach libseccomp's "bad arch"
  // answer: that too must end the whole stub, not one thread.
  if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc != 0) {
    return ErrnoError(-rc, absl::StrFormat("%s: seccomp_attr_set(ACT_BADARCH)", what));
  }
  for (const Rule& r : rules) {
    const int rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, r.nr,
                                          static_cast<unsigned>(r.args.size()),
                                          r.args.empty() ? nullptr : r.args.data());
    if (rc != 0) {
      return ErrnoError(-rc, absl::StrFormat("%s: seccomp_rule_add(system call %d)", what, r.nr));
    }
  }
  const int fd = static_cast<int>(syscall(SYS_memfd_create, "vkrt-bpf", MFD_CLOEXEC));
  if (fd < 0) return SyscallError(absl::StrFormat("%s: memfd_create", what));
  struct Close {
    int fd;
    ~Close() { close(fd); }
  } closer{fd};
  if (int rc = seccomp_export_bpf(ctx, fd); rc != 0) {
    return ErrnoError(-rc, absl::StrFormat("%s: seccomp_export_bpf", what));
  }
  const off_t size = lseek(fd, 0, SEEK_END);
  if (size <= 0 || size % sizeof(sock_filter) != 0) {
    return ErrnoError(EIO, absl::StrFormat("%s: libseccomp exported %lld bytes", what,
                                           static_cast<long long>(size)));
  }
  std::vector<sock_filter> program = IpPrefix(start, end);
  const size_t prefix = program.size();
  program.resize(prefix + size / sizeof(sock_filter));
  if (pread(fd, program.data() + prefix, size, 0) != size) {
    return SyscallError(absl::StrFormat("%s: reading the exported program", what));
  }
  if (program.size() > BPF_MAXINSNS) {
    return ErrnoError(E2BIG, absl::StrFormat("%s: %zu instructions", what, program.size()));
  }
  return program;
}

scmp_arg_cmp Eq(unsigned arg, uint64_t value) {
  return scmp_arg_cmp{arg, SCMP_CMP_EQ, value, 0};
}
scmp_arg_cmp InStub(unsigned arg) {
  return scmp_arg_cmp{arg, SCMP_CMP_MASKED_EQ, kStubBlockMask, VKRT_STUB_BASE};
}

}  // namespace

absl::StatusOr<std::vector<sock_filter>> ServerProgram(uint64_t code_start, uint64_t code_end) {
  // The server runs only the vkernel's batches and its own set-up; the rules keep what it
  // can do narrow even so (and a guest that jumps into the server's code runs under the
  // context program, which refuses all of these).
  std::vector<Rule> rules = {
      {SCMP_SYS(write), {Eq(0, SC_FD_ACK), Eq(2, 8)}},  // acknowledgements (the eventfd)
      {SCMP_SYS(close), {}},
      {SCMP_SYS(close_range), {}},
      {SCMP_SYS(dup3), {}},
      {SCMP_SYS(mmap), {}},
      {SCMP_SYS(munmap), {}},
      {SCMP_SYS(mprotect), {}},
      {SCMP_SYS(madvise), {}},
      {SCMP_SYS(recvmsg), {Eq(0, 0)}},
      {SCMP_SYS(poll), {}},
      {SCMP_SYS(clone), {Eq(0, kContextCloneFlags)}},
      {SCMP_SYS(futex), {InStub(0)}},
      {SCMP_SYS(rt_sigaction), {}},
      {SCMP_SYS(rt_sigprocmask), {}},
      {SCMP_SYS(rt_sigreturn), {}},
      {SCMP_SYS(sigaltstack), {}},
      {SCMP_SYS(seccomp), {Eq(0, SECCOMP_SET_MODE_FILTER), Eq(1, 0)}},
      {SCMP_SYS(exit_group), {}},
      {SCMP_SYS(exit), {Eq(0, 0)}},
      {SCMP_SYS(sched_yield), {}},
      {SCMP_SYS(arch_prctl), {Eq(0, kArchSetFs)}},
      {SCMP_SYS(arch_prctl), {Eq(0, kArchSetGs)}},
  };
#ifdef __NR_mseal
  rules.push_back({__NR_mseal, {}});
#else
  rules.push_back({462, {}});
#endif
  return Build(code_start, code_end, rules, "stub server filter");
}

absl::StatusOr<std::vector<sock_filter>> ContextProgram(uint64_t code_start, uint64_t code_end) {
  std::vector<Rule> rules = {
      {SCMP_SYS(futex), {InStub(0), Eq(1, FUTEX_WAIT)}},
      {SCMP_SYS(futex), {InStub(0), Eq(1, FUTEX_WAKE), Eq(2, 1)}},
      {SCMP_SYS(rt_sigreturn), {}},
      {SCMP_SYS(sched_yield), {}},
      {SCMP_SYS(arch_prctl), {Eq(0, kArchSetFs)}},
      {SCMP_SYS(arch_prctl), {Eq(0, kArchSetGs)}},
      {SCMP_SYS(exit), {Eq(0, 0)}},  // the context leaves when its vkernel thread does
  };
  return Build(code_start, code_end, rules, "stub context filter");
}

}  // namespace vkrt::seccomp_filter
