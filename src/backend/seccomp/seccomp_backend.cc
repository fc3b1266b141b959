#include "backend/seccomp/seccomp_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/auxv.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "arch/x86_64/frame.h"
#include "arch/x86_64/seccomp_layout.h"
#include "arch/x86_64/xstate.h"
#include "backend/host.h"
#include "backend/seccomp/stub_filter.h"
#include "common/errno_status.h"
#include "thread_state.h"

extern "C" {
// arch/x86_64/seccomp_spin.S: releases the guest and spins for its report in a restartable
// sequence, signals as they are. The layout is the assembly's.
struct SeccompSpin {
  uint32_t* resp;              // the command page's CMD_RESP_SEQ
  uint32_t seq;                // stored there: releases the guest
  uint32_t want;               // the report awaited
  const uint8_t* mailbox;
  uint64_t deadline;           // TSC
  uint64_t pass;               // signals (bit sig-1) whose report RUN returns as it is
  const uint64_t* all;         // what to block on the way out to a blocked wait
  uint64_t* old;               // the mask before
  uint64_t* rseq_cs;           // &rseq->rseq_cs
  uint64_t nonce;              // held in rbp meanwhile (AltStackHandlerRan)
};
int vkrt_seccomp_spin_in_rseq(const SeccompSpin* spin);
}
static_assert(offsetof(SeccompSpin, deadline) == 24 && offsetof(SeccompSpin, rseq_cs) == 56 &&
              offsetof(SeccompSpin, nonce) == 64);

namespace vkrt {
namespace {

using x86_64::kStubBase;

constexpr long kPreempted = -1001;  // the blocked wait's own results
constexpr long kSignalled = -1003;

// vkrt_seccomp_spin_in_rseq's results.
constexpr int kSpinGot = 0;             // the report came; signals as they were
constexpr int kSpinGotBlocked = 1;      // the report came; signals now blocked
constexpr int kSpinTimeUp = 2;          // signals now blocked
constexpr int kSpinWakeContext = 3;     // the context sleeps; signals now blocked
constexpr int kSpinHandlerRan = -1;     // aborted by a handler on this stack

// TSan calls a signal's handler late, at the thread's next interceptor, not when the kernel
// delivers the signal.
#if defined(__SANITIZE_THREAD__)
constexpr bool kHandlersMayRunLate = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kHandlersMayRunLate = true;
#else
constexpr bool kHandlersMayRunLate = false;
#endif
#else
constexpr bool kHandlersMayRunLate = false;
#endif

constexpr uint64_t SigBit(int sig) { return uint64_t{1} << (sig - 1); }
constexpr uint64_t kIgnoredByDefault =
    SigBit(SIGCHLD) | SigBit(SIGCONT) | SigBit(SIGWINCH) | SigBit(SIGURG);
const uint64_t kAllSignals = ~uint64_t{0};

constexpr uint64_t kContextCloneFlags = 0x50F00;
constexpr int kUretprobeSyscall = 335;  // VM|FS|FILES|SIGHAND|THREAD|SYSVSEM
constexpr uint64_t kPage = 4096;

// Signal-frame layout (x86-64 Linux): arch/x86_64/frame.h.
using x86_64::kFpxSw;
using x86_64::kUcFpregs;
using x86_64::kUcMcontext;
constexpr uint64_t kUcSize = kUcMcontext + 256 + 8;  // uc_mcontext is 256 bytes
constexpr uint64_t kXstateBv = 512;
constexpr uint64_t kGuestFeatures = 0xE7;  // x87 SSE AVX opmask ZMM_Hi256 Hi16_ZMM

// Handoff tuning. A spin is bounded; after it the waiter sleeps on a futex. An idle guest or
// vkernel therefore burns at most one spin's worth of CPU.
// Both sides of a handoff spin, then sleep on a futex. A spin must outlast the other side's
// wakeup from a sleep (30-70 us to an idle CPU here, more under host load), or each sleeping
// side makes the other sleep too and every round trip pays two wakeups; it must stay short
// enough that an idle guest or vkernel costs nothing to speak of. Spins poll without PAUSE:
// under a hypervisor with pause-loop exiting each PAUSE may leave the guest (1.1 us here).
constexpr uint64_t kSpinNs = 100'000;

// TSC ticks per microsecond, measured once.
uint64_t TscPerUs() {
  static const uint64_t per_us = [] {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    const uint64_t t0 = __rdtsc();
    do {
      clock_gettime(CLOCK_MONOTONIC, &b);
    } while ((b.tv_sec - a.tv_sec) * 1'000'000'000L + (b.tv_nsec - a.tv_nsec) < 2'000'000);
    const uint64_t ticks = __rdtsc() - t0;
    const uint64_t ns = (b.tv_sec - a.tv_sec) * 1'000'000'000L + (b.tv_nsec - a.tv_nsec);
    return std::max<uint64_t>(1, ticks * 1000 / ns);
  }();
  return per_us;
}
uint32_t SpinTicks() {
  return static_cast<uint32_t>(std::min<uint64_t>(TscPerUs() * (kSpinNs / 1000), 0xFFFFFFFF));
}
constexpr long kWaitSliceNs = 50'000'000;  // a sleeping RUN checks the stub this often

// Time thread `tid` of process `pid` has spent on a CPU, in ns (the first field of
// /proc/<pid>/task/<tid>/schedstat), or -1 if the kernel does not say.
int64_t ThreadCpuNs(pid_t pid, pid_t tid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", static_cast<int>(pid),
           static_cast<int>(tid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[96];
  const ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  return strtoll(buf, nullptr, 10);
}
constexpr int64_t kKickGraceNs = 2'000'000'000;  // a kicked guest must report within this
// ... of which it must have spent this long on a CPU: on an overloaded machine a guest that
// honours the kick may simply not have been scheduled for seconds (found by the API fuzzer
// at a load average of ~2000: an innocent `jmp .` guest was killed). A guest that blocked the
// kick and does not trap can only spin, so it burns this quickly once it runs.
constexpr int64_t kKickGraceCpuNs = 100'000'000;
// Beyond this a silent guest is killed whatever its CPU time (a stub stopped from outside).
constexpr int64_t kKickGraceMaxNs = 60'000'000'000;

uint32_t Load(const void* p) {
  return __atomic_load_n(static_cast<const uint32_t*>(p), __ATOMIC_ACQUIRE);
}
void Store(void* p, uint32_t v) { __atomic_store_n(static_cast<uint32_t*>(p), v, __ATOMIC_RELEASE); }

long Futex(const void* uaddr, int op, uint32_t val, const struct timespec* timeout) {
  return syscall(SYS_futex, uaddr, op, val, timeout, nullptr, 0);
}

int CurrentCpu() {
  if (struct rseq* rs = ThreadRseq()) {
    const int cpu = static_cast<int>(__atomic_load_n(&rs->cpu_id, __ATOMIC_RELAXED));
    if (cpu >= 0) return cpu;
  }
  return sched_getcpu();
}

bool HaveFsgsbase() {
#ifndef HWCAP2_FSGSBASE
#define HWCAP2_FSGSBASE (1 << 1)
#endif
  return (getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE) != 0;
}

// The stub's programs, built once.
struct Programs {
  std::vector<sock_filter> server;
  std::vector<sock_filter> context;
  sock_fprog server_prog;
  sock_fprog context_prog;
  const char* error = nullptr;
};

const Programs& StubPrograms() {
  static const Programs* programs = [] {
    auto* p = new Programs;
    const uint64_t start = VKRT_SC_CODE;
    const uint64_t end = start + x86_64::vkrt_seccomp_stub_offsets.code_end;
    auto server = seccomp_filter::ServerProgram(start, end);
    auto context = seccomp_filter::ContextProgram(start, end);
    if (!server.ok() || !context.ok()) {
      static std::string why;
      why = std::string(server.ok() ? context.status().message() : server.status().message());
      p->error = why.c_str();
      return p;
    }
    p->server = *std::move(server);
    p->context = *std::move(context);
    p->server_prog = {static_cast<unsigned short>(p->server.size()), p->server.data()};
    p->context_prog = {static_cast<unsigned short>(p->context.size()), p->context.data()};
    return p;
  }();
  return *programs;
}

// One system call for the stub's server to make.
struct Op {
  uint64_t nr;
  uint64_t a[6];
};
static_assert(sizeof(Op) == SRV_OP_SIZE);
// Or'ed into Op::nr: if the call fails, the server exits the stub (seccomp_stub.S). For the
// removal of a translation, which may have been queued while nothing ran and is carried out
// just before a guest resumes: if it cannot be done, no guest of the space may run again.
constexpr uint64_t kMustSucceed = uint64_t{1} << 63;
// Or'ed into Op::nr (the server ignores it): a translation installed ahead of any access
// (MADV_WILLNEED), whose failure is nobody's error (the page faults later).
constexpr uint64_t kMayFail = uint64_t{1} << 62;
// Whether a failed `op` is an error to report.
bool FailureCounts(const Op& op) { return (op.nr & kMayFail) == 0; }

// One guest context: a context thread of the stub and its slot.
struct Context {
  std::atomic<pid_t> tracer{0};  // the owning vkernel thread; 0 = free
  pid_t tid = 0;                 // the context thread; 0 = never created
  // Owned by the tracer:
  uint32_t seq = 0;           // the report being answered (the context waits for resp == seq)
  uint64_t uc = 0;            // that report's ucontext (a stub address, validated)
  int last_cpu = -1;          // the CPU the handler last ran on
  int kicks_pending = 0;      // kick signals sent whose report has not been seen
  bool rcx_reported_as_r10 = false;
  uint64_t syscall_rcx = 0;   // rcx at the last system call (the return address)
  // The RUN (of the address space) whose system call exit set rcx_reported_as_r10: only the
  // next one restores rcx. After a RUN in another context the guest has moved on, and rcx
  // equal to r10 is then its own state.
  uint64_t rcx_run = 0;
  // The last RUN ended with a VPAGETABLE fault whose walk failed (the vkernel's to fix):
  // its address and access. If the next RUN resumes the guest with nothing changed, the guest
  // retries that access first, so RUN resolves it before the resume (one SIGSEGV less).
  bool refault = false;
  uint64_t refault_addr = 0;
  vpt::Access refault_access = vpt::Access::kRead;
  uint32_t server_wait = 0;   // a server batch the context must see done before resuming
  // The guest's FPU state as the vkernel last loaded it into the frame or read it from there
  // (GuestXstateSize() bytes, standard format): RUN writes the caller's state into the frame
  // only when it differs, and the stub's handler tells whether the frame still holds it (then
  // the vkernel need not read it across CPUs). In the slot's command page (CMD_XREF), where the
  // stub can read it, if it fits; else on the heap, and the stub does not compare.
  bool xstate_known = false;
  unsigned char* xref = nullptr;
  std::unique_ptr<unsigned char[]> xref_heap;
};

// The context whose fault the calling thread is resolving: its translations go to the
// server without waiting, and the context waits for them (see FlushInstalls).
thread_local Context* t_resolving = nullptr;

// The command pages of an address space, for vkernel threads that ran one of its contexts
// last: shm is cleared (under mu) before the pages go away.
struct NapCell {
  std::mutex mu;
  uint8_t* shm = nullptr;
};
// The context the calling vkernel thread ran last. When it runs another one, the last one
// need not spin for an answer any more (CMD_NAP): it would keep the CPU from the context
// just woken there. Touched only when the thread changes contexts.
struct LastContext {
  std::weak_ptr<NapCell> cell;
  const NapCell* id = nullptr;
  int slot = -1;
};
thread_local LastContext t_last_context;

class SeccompAddressSpace : public AddressSpace {
 public:
  SeccompAddressSpace(pid_t pid, int sock, int ack, uint8_t* shm)
      : pid_(pid), sock_(sock), ack_(ack), shm_(shm) {
    used_fds_[SC_FD_SOCKET] = used_fds_[SC_FD_PIDFD] = used_fds_[SC_FD_ACK] = true;
    nap_cell_->shm = shm;
  }
  ~SeccompAddressSpace() override;

  absl::StatusOr<uint64_t> Map(const MapRequest& request) override;
  absl::Status Unmap(uint64_t addr, uint64_t len) override;
  absl::Status Advise(uint64_t addr, uint64_t len, int behav) override;
  absl::StatusOr<size_t> Read(uint64_t addr, void* buf, size_t len) override;
  absl::StatusOr<size_t> Write(uint64_t addr, const void* buf, size_t len) override;
  absl::StatusOr<GuestExit> Run(GuestState& state, const RunLimits& limits) override;
  void ReleaseCallerContext() override;
  absl::StatusOr<int> AttachObject(int fd) override;
  absl::Status DetachObject(int handle) override;
  absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                       uint64_t offset) override;
  absl::Status InstallHint(uint64_t addr, uint64_t len, int prot, int handle,
                           uint64_t offset) override;
  absl::Status FlushInstalls() override;
  absl::Status DropTranslations(uint64_t addr, uint64_t len) override;

  absl::StatusOr<Context*> CallerContext();
  // Boot check: the server answers an empty batch.
  absl::Status Ping();

 private:
  uint8_t* Mailbox(int slot) const { return shm_ + static_cast<size_t>(slot) * VKRT_SC_SLOT_SIZE; }
  uint8_t* Command(int slot) const {
    return shm_ + VKRT_SC_RW_SIZE + static_cast<size_t>(slot) * kPage;
  }
  int SlotOf(const Context& c) const { return static_cast<int>(&c - contexts_.data()); }
  // The vkernel's view of `len` bytes at stub address `addr` inside slot `slot`'s signal
  // stack, or nullptr if they are not all there.
  uint8_t* InStack(int slot, uint64_t addr, uint64_t len) const;

  // Carries out `ops` (after any queued installs) in the server, in order; results[i] gets
  // op i's raw result. ops_mu_ held.
  absl::Status ServerRunLocked(const Op* ops, int n, int64_t* results);
  absl::Status FlushLocked();
  // Queues an install (`nr`: SYS_mmap, maybe | kMayFail) for the server.
  absl::Status QueueInstall(uint64_t nr, uint64_t addr, uint64_t len, int prot, int handle,
                            uint64_t offset);
  // After queuing: leaves pending_ for the next Run's resume if no Run is in progress
  // (queued_ / running_), else flushes now. ops_mu_ held.
  absl::Status DeferOrFlushLocked();
  // Run's entry, when queued_ says so: the queued work goes to the server with the resume of
  // `c` (as a fault's installs do), so the guest resumes only after it is done.
  absl::Status PostQueued(Context& c);
  // Posts the queued installs as a batch nobody waits for here: the context resolving a
  // fault wakes the server and waits for it itself. ops_mu_ held.
  absl::Status PostAsyncLocked(Context& c);
  // Collects the acknowledgement of a batch posted by PostAsyncLocked. ops_mu_ held.
  absl::Status DrainLocked();
  // Reads the acknowledgement of the one outstanding batch if it is there (`got`).
  absl::Status TryAck(bool& got);
  // Waits for it.
  absl::Status ReadAck();
  // Moves the server to `cpu` (if it is not there): it runs where its waker waits.
  void PinServer(int cpu) {
    if (cpu < 0 || cpu == server_cpu_) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(pid_, sizeof(set), &set) == 0) server_cpu_ = cpu;
  }
  absl::StatusOr<int64_t> ServerCall(const Op& op, const char* what);
  // Passes the vkernel's `fd` to the stub; returns its number there. ops_mu_ held.
  absl::StatusOr<int> SendFdLocked(int fd);
  int LowestFreeFd() const;

  absl::StatusOr<Context*> CreateContext(pid_t tracer);
  // Waits (bounded) for report `want` of context `c` with signals as they are.
  absl::Status AwaitReport(Context& c, uint32_t want, int64_t limit_ns);
  absl::StatusOr<GuestExit> RunContext(Context& c, GuestState& state, const RunLimits& limits);
  // Reads the report of `c` just published: validates it, fills c.uc.
  struct Report {
    int sig;
    int32_t code;     // si_code
    uint32_t arch;    // si_arch (SIGSYS)
    uint64_t addr;    // si_addr / si_call_addr
    uint64_t* gregs;   // the frame's, in shared memory
    uint8_t* fpregs;   // the frame's XSAVE area (GuestXstateSize() bytes inside the slot)
    bool fpu_same;     // the stub says: the frame's FPU state is c.xref's (guest data)
  };
  absl::Status TakeReport(Context& c, Report& report);
  // Writes `state` into the frame of `c`'s current report.
  // `unchanged` (if given): true if the frame's registers, FPU state and TLS bases were
  // already the caller's (the guest resumes exactly where it stopped).
  absl::Status LoadFrame(Context& c, const GuestState& state, bool* unchanged = nullptr);
  // Makes c.xref hold `xstate` (a standard-format area) and tells the stub it is valid.
  void SetXref(Context& c, const void* xstate);
  // Writes the caller's FPU state `xstate` into a frame's XSAVE area `fp`.
  absl::Status LoadXstate(uint8_t* fp, uint32_t frame_size, uint64_t frame_features,
                          const void* xstate);
  // What the context reads when it resumes, but the resume sequence number.
  void PrepareResume(Context& c);
  // Stores the resume sequence number (releasing the guest; storing it again changes
  // nothing) and wakes the context if it sleeps.
  void Release(Context& c);
  void Resume(Context& c);  // PrepareResume, then Release
  // If the calling thread ran another context last, tells it to stop spinning (CMD_NAP);
  // `next` becomes the last. Called once `next` was released (and woken if it slept), so
  // that the CPU the napping context leaves goes to it rather than idle.
  void NapLastContext(const Context& next);
  bool ContextAlive(const Context& c) const;
  absl::Status Died(const char* why);

  const pid_t pid_;
  const int sock_;
  const int ack_;  // the server's acknowledgements (an eventfd, non-blocking)
  uint8_t* const shm_;
  std::atomic<bool> dead_{false};
  const bool use_arch_prctl_ = !HaveFsgsbase();

  std::mutex ops_mu_;  // the server channel and the queued installs. Innermost lock.
  Op pending_[SRV_MAX_OPS];
  int npending_ = 0;
  uint32_t server_seq_ = 0;
  bool async_outstanding_ = false;  // a posted batch whose acknowledgement is unread
  int async_count_ = 0;
  int async_errno_ = 0;             // the first failure of an earlier posted batch
  int server_cpu_ = -1;             // the CPU the server is pinned to, if any
  // Removals of translations wait in pending_ while no context runs guest code (running_
  // is 0): the next Run posts them before it resumes its guest. queued_ (set under ops_mu_
  // before running_ is read; running_ raised before queued_ is read: one of the two sides
  // always sees the other) says pending_ may hold some.
  std::atomic<bool> queued_{false};
  std::atomic<int> running_{0};     // Runs in progress, in any context
  // The posted batch that carries such removals, until its acknowledgement is read (0:
  // none): a context that resumes meanwhile waits for it too.
  std::atomic<uint32_t> drop_batch_{0};
  std::array<bool, 1024> used_fds_ = {};  // the stub's descriptor table as we made it

  std::mutex contexts_mu_;  // context creation and release
  std::array<Context, VKRT_SC_SLOTS> contexts_;
  std::atomic<uint64_t> runs_{0};  // RUNs of this address space so far, in any context
  const std::shared_ptr<NapCell> nap_cell_ = std::make_shared<NapCell>();
};

SeccompAddressSpace::~SeccompAddressSpace() {
  {
    std::lock_guard<std::mutex> lock(nap_cell_->mu);
    nap_cell_->shm = nullptr;
  }
  kill(pid_, SIGKILL);
  int status;
  while (syscall(SYS_wait4, pid_, &status, __WALL, nullptr) < 0 && errno == EINTR) {
  }
  close(sock_);
  close(ack_);
  munmap(shm_, VKRT_SC_MEMFD_SIZE);
}

absl::Status SeccompAddressSpace::Died(const char* why) {
  dead_.store(true);
  return ErrnoError(EFAULT, absl::StrFormat("the guest address space (stub %d) died: %s", pid_,
                                            why));
}

uint8_t* SeccompAddressSpace::InStack(int slot, uint64_t addr, uint64_t len) const {
  const uint64_t lo = VKRT_SC_RW + static_cast<uint64_t>(slot) * VKRT_SC_SLOT_SIZE +
                      VKRT_SC_STACK_OFFSET;
  const uint64_t hi = VKRT_SC_RW + static_cast<uint64_t>(slot + 1) * VKRT_SC_SLOT_SIZE;
  if (addr < lo || addr > hi || len > hi - addr) return nullptr;
  return shm_ + (addr - VKRT_SC_RW);
}

// ---- the server channel --------------------------------------------------------------------

absl::Status SeccompAddressSpace::TryAck(bool& got) {
  // The acknowledgement comes through the kernel (an eventfd only the server writes, adding
  // the 1 in its read-only code), never through memory a guest could write. One batch at a
  // time is outstanding: anything but 1 means the stub is not what it should be.
  uint64_t n = 0;
  const ssize_t r = read(ack_, &n, sizeof(n));
  got = r == static_cast<ssize_t>(sizeof(n));
  if (got && n != 1) {
    kill(pid_, SIGKILL);
    return Died("its server acknowledged batches it was not given");
  }
  if (!got && errno != EAGAIN && errno != EINTR) return Died("its acknowledgements failed");
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::ReadAck() {
  for (;;) {
    bool got = false;
    if (auto s = TryAck(got); !s.ok() || got) return s;
    // Until it comes, or the stub is gone (its end of the socket closes).
    struct pollfd fds[2] = {{ack_, POLLIN, 0}, {sock_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) return Died("poll for its acknowledgement");
    if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0 && (fds[0].revents & POLLIN) == 0) {
      return Died("its server stopped answering");
    }
  }
}

absl::Status SeccompAddressSpace::DrainLocked() {
  if (!async_outstanding_) return absl::OkStatus();
  async_outstanding_ = false;
  // Normally the context woke the server and the acknowledgement is there; if the context's
  // RUN ended before it resumed, nobody woke the server: do it.
  bool got = false;
  if (auto s = TryAck(got); !s.ok()) return s;
  if (!got) {
    // Run it here, where we wait (the context's CPU may be busy with its handler's spin).
    PinServer(CurrentCpu());
    Futex(Command(VKRT_SC_SERVER_SLOT) + SRV_SEQ, FUTEX_WAKE, 1, nullptr);
    if (auto s = ReadAck(); !s.ok()) return s;
  }
  drop_batch_.store(0, std::memory_order_release);
  const uint8_t* res = Mailbox(VKRT_SC_SERVER_SLOT) + MB_RESULTS;
  const uint8_t* ops = Command(VKRT_SC_SERVER_SLOT) + SRV_OPS;  // ours: the stub reads only
  for (int i = 0; i < async_count_ && async_errno_ == 0; ++i) {
    int64_t r;
    memcpy(&r, res + 8 * i, sizeof(r));
    Op op;
    memcpy(&op, ops + i * sizeof(Op), sizeof(op));
    if (r < 0 && r > -4096 && FailureCounts(op)) async_errno_ = static_cast<int>(-r);
  }
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::PostAsyncLocked(Context& c) {
  if (auto s = DrainLocked(); !s.ok()) return s;
  if (async_errno_ != 0) {
    // An earlier batch failed (out of host mappings): say so now; the caller flushes and
    // retries (vpt::Space::Resolve).
    const int err = async_errno_;
    async_errno_ = 0;
    if (queued_.load(std::memory_order_relaxed)) {
      // Removals wait in pending_: they must not be lost with the failed installs.
      if (auto f = FlushLocked(); !f.ok()) return f;
    }
    npending_ = 0;
    return ErrnoError(err, absl::StrFormat("mmap of a VPAGETABLE translation in stub %d", pid_));
  }
  uint8_t* cmd = Command(VKRT_SC_SERVER_SLOT);
  memcpy(cmd + SRV_OPS, pending_, npending_ * sizeof(Op));
  Store(cmd + SRV_COUNT, static_cast<uint32_t>(npending_));
  ++server_seq_;
  Store(cmd + SRV_SEQ, server_seq_);
  async_outstanding_ = true;
  async_count_ = npending_;
  // The context hands the server its CPU: keep the server where the context runs, so the
  // handoff is a local wakeup (to an idle CPU a wakeup costs 30-70 us here).
  PinServer(c.last_cpu);

  npending_ = 0;
  c.server_wait = server_seq_ == 0 ? 1 : server_seq_;
  if (queued_.load(std::memory_order_relaxed)) {
    drop_batch_.store(c.server_wait, std::memory_order_seq_cst);
    queued_.store(false, std::memory_order_seq_cst);
  }
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::ServerRunLocked(const Op* ops, int n, int64_t* results) {
  if (dead_.load()) return Died("earlier");
  if (auto s = DrainLocked(); !s.ok()) return s;
  const int total = npending_ + n;
  if (total > SRV_MAX_OPS) return ErrnoError(E2BIG, "stub server batch too large");
  uint8_t* cmd = Command(VKRT_SC_SERVER_SLOT);
  if (n > 0) memcpy(cmd + SRV_OPS + npending_ * sizeof(Op), ops, n * sizeof(Op));
  memcpy(cmd + SRV_OPS, pending_, npending_ * sizeof(Op));
  Store(cmd + SRV_COUNT, static_cast<uint32_t>(total));
  // This thread waits for the server: run it here (our CPU is free while we wait; the
  // guest's CPU may be busy with a context spinning in its handler).
  PinServer(CurrentCpu());
  ++server_seq_;
  Store(cmd + SRV_SEQ, server_seq_);
  Futex(cmd + SRV_SEQ, FUTEX_WAKE, 1, nullptr);
  if (auto s = ReadAck(); !s.ok()) return s;
  const uint8_t* res = Mailbox(VKRT_SC_SERVER_SLOT) + MB_RESULTS;
  int64_t first_error = 0;
  for (int i = 0; i < total; ++i) {
    int64_t r;
    memcpy(&r, res + 8 * i, sizeof(r));
    if (i < npending_) {
      if (r < 0 && r > -4096 && first_error == 0 && FailureCounts(pending_[i])) first_error = r;
    } else {
      results[i - npending_] = r;
    }
  }
  npending_ = 0;
  queued_.store(false, std::memory_order_relaxed);
  if (first_error != 0) {
    return ErrnoError(static_cast<int>(-first_error),
                      absl::StrFormat("mmap of a VPAGETABLE translation in stub %d", pid_));
  }
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::FlushLocked() {
  if (npending_ == 0) return absl::OkStatus();
  return ServerRunLocked(nullptr, 0, nullptr);
}

absl::StatusOr<int64_t> SeccompAddressSpace::ServerCall(const Op& op, const char* what) {
  std::lock_guard<std::mutex> lock(ops_mu_);
  int64_t result = 0;
  if (auto s = ServerRunLocked(&op, 1, &result); !s.ok()) return s;
  if (result < 0 && result > -4096) {
    return ErrnoError(static_cast<int>(-result),
                      absl::StrFormat("%s(%#x, %#x, %#x, %#x, %#x, %#x) in stub %d", what,
                                      op.a[0], op.a[1], op.a[2], op.a[3], op.a[4], op.a[5],
                                      pid_));
  }
  return result;
}

absl::Status SeccompAddressSpace::Ping() {
  std::lock_guard<std::mutex> lock(ops_mu_);
  return ServerRunLocked(nullptr, 0, nullptr);
}

int SeccompAddressSpace::LowestFreeFd() const {
  for (int i = 0; i < static_cast<int>(used_fds_.size()); ++i) {
    if (!used_fds_[i]) return i;
  }
  return -1;
}

absl::StatusOr<int> SeccompAddressSpace::SendFdLocked(int fd) {
  const int number = LowestFreeFd();
  if (number < 0) return ErrnoError(EMFILE, "stub descriptor table full");
  if (auto s = SendFdOverSocket(sock_, fd, pid_); !s.ok()) return s;
  // The server receives into its mailbox page: a msghdr, its iovec, the byte, the control
  // buffer. (A guest could disturb these; the descriptor still lands at the lowest free
  // number, which is what we use.)
  const uint64_t base = VKRT_SC_RW + VKRT_SC_SERVER_SLOT * uint64_t{VKRT_SC_SLOT_SIZE} + 1024;
  uint8_t* view = shm_ + (base - VKRT_SC_RW);
  struct msghdr remote = {};
  remote.msg_iov = reinterpret_cast<struct iovec*>(base + 64);
  remote.msg_iovlen = 1;
  remote.msg_control = reinterpret_cast<void*>(base + 128);
  remote.msg_controllen = 64;
  struct iovec remote_iov = {reinterpret_cast<void*>(base + 96), 1};
  memcpy(view, &remote, sizeof(remote));
  memcpy(view + 64, &remote_iov, sizeof(remote_iov));
  Op op = {SYS_recvmsg, {SC_FD_SOCKET, base, MSG_CMSG_CLOEXEC, 0, 0, 0}};
  int64_t result = 0;
  if (auto s = ServerRunLocked(&op, 1, &result); !s.ok()) return s;
  if (result != 1) {
    return ErrnoError(result < 0 ? static_cast<int>(-result) : EIO,
                      absl::StrFormat("recvmsg(SCM_RIGHTS) in stub %d", pid_));
  }
  used_fds_[number] = true;
  return number;
}

// ---- memory -------------------------------------------------------------------------------

absl::StatusOr<uint64_t> SeccompAddressSpace::Map(const MapRequest& r) {
  std::lock_guard<std::mutex> lock(ops_mu_);
  const int flags = r.flags & ~MAP_VPAGETABLE;
  int fd = -1;
  if (r.fd >= 0) {
    auto sent = SendFdLocked(r.fd);
    if (!sent.ok()) return sent.status();
    fd = *sent;
  }
  Op ops[2] = {
      {SYS_mmap, {r.addr, r.len, static_cast<uint64_t>(r.prot), static_cast<uint64_t>(flags),
                  static_cast<uint64_t>(static_cast<int64_t>(fd)), static_cast<uint64_t>(r.offset)}},
      {SYS_close, {static_cast<uint64_t>(fd), 0, 0, 0, 0, 0}},
  };
  int64_t results[2] = {};
  absl::Status s = ServerRunLocked(ops, fd >= 0 ? 2 : 1, results);
  if (fd >= 0) used_fds_[fd] = false;
  if (!s.ok()) return s;
  if (results[0] < 0 && results[0] > -4096) {
    return ErrnoError(static_cast<int>(-results[0]),
                      absl::StrFormat("mmap(%#x, %#x, %#x, %#x, %d, %d) in stub %d", r.addr,
                                      r.len, r.prot, flags, fd, static_cast<long long>(r.offset),
                                      pid_));
  }
  const uint64_t addr = static_cast<uint64_t>(results[0]);
  if ((addr & (kPage - 1)) != 0 || addr >= kStubBase) {
    return ErrnoError(EFAULT, absl::StrFormat("stub %d reported mmap result %#x", pid_, addr));
  }
  return addr;
}

absl::StatusOr<int> SeccompAddressSpace::AttachObject(int fd) {
  std::lock_guard<std::mutex> lock(ops_mu_);
  return SendFdLocked(fd);
}

absl::Status SeccompAddressSpace::DetachObject(int handle) {
  std::lock_guard<std::mutex> lock(ops_mu_);
  if (handle < SC_FD_FIRST_OBJECT || handle >= static_cast<int>(used_fds_.size())) {
    return ErrnoError(EBADF, absl::StrFormat("stub %d: no object %d", pid_, handle));
  }
  Op op = {SYS_close, {static_cast<uint64_t>(handle), 0, 0, 0, 0, 0}};
  int64_t result = 0;
  absl::Status s = ServerRunLocked(&op, 1, &result);
  used_fds_[handle] = false;
  return s;
}

absl::Status SeccompAddressSpace::Install(uint64_t addr, uint64_t len, int prot, int handle,
                                          uint64_t offset) {
  return QueueInstall(SYS_mmap, addr, len, prot, handle, offset);
}

absl::Status SeccompAddressSpace::InstallHint(uint64_t addr, uint64_t len, int prot,
                                              int handle, uint64_t offset) {
  return QueueInstall(SYS_mmap | kMayFail, addr, len, prot, handle, offset);
}

absl::Status SeccompAddressSpace::QueueInstall(uint64_t nr, uint64_t addr, uint64_t len,
                                               int prot, int handle, uint64_t offset) {
  std::lock_guard<std::mutex> lock(ops_mu_);
  if (npending_ == SRV_MAX_OPS) {
    if (auto s = FlushLocked(); !s.ok()) return s;
  }
  // MAP_POPULATE: the server fills the page table entries now, so that the guest's retry
  // does not take a host page fault of its own (~1 us here, where every exception costs).
  pending_[npending_++] = {nr, {addr, len, static_cast<uint64_t>(prot),
                                MAP_SHARED | MAP_FIXED | MAP_POPULATE,
                                static_cast<uint64_t>(handle), offset}};
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::DeferOrFlushLocked() {
  queued_.store(true, std::memory_order_seq_cst);
  if (running_.load(std::memory_order_seq_cst) == 0) return absl::OkStatus();
  return FlushLocked();  // a guest runs (another thread's RUN, or this is the fault path)
}

absl::Status SeccompAddressSpace::FlushInstalls() {
  std::lock_guard<std::mutex> lock(ops_mu_);
  if (npending_ == 0) return absl::OkStatus();
  if (Context* c = t_resolving;
      c != nullptr && c >= contexts_.data() && c < contexts_.data() + contexts_.size()) {
    return PostAsyncLocked(*c);
  }
  // Not a fault's (MADV_WILLNEED): with no RUN in progress, the next one posts them with
  // its resume (as removals go: see DropTranslations).
  return DeferOrFlushLocked();
}

absl::Status SeccompAddressSpace::DropTranslations(uint64_t addr, uint64_t len) {
  std::lock_guard<std::mutex> lock(ops_mu_);
  if (dead_.load()) return Died("earlier");
  // An inaccessible reservation over the range. Contiguous removals (a fork's
  // copy-on-write ranges, a SETMAP of several regions) merge into one call.
  constexpr uint64_t kReserve = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED;
  Op* last = npending_ > 0 ? &pending_[npending_ - 1] : nullptr;
  if (last != nullptr && last->nr == (SYS_mmap | kMustSucceed) && last->a[3] == kReserve &&
      last->a[0] + last->a[1] == addr) {
    last->a[1] += len;
  } else {
    if (npending_ == SRV_MAX_OPS) {
      if (auto s = FlushLocked(); !s.ok()) return s;
    }
    pending_[npending_++] = {SYS_mmap | kMustSucceed,
                             {addr, len, PROT_NONE, kReserve, static_cast<uint64_t>(-1), 0}};
  }
  return DeferOrFlushLocked();
}

absl::Status SeccompAddressSpace::PostQueued(Context& c) {
  std::lock_guard<std::mutex> lock(ops_mu_);
  if (npending_ == 0) return absl::OkStatus();
  if (dead_.load()) return Died("earlier");
  if (auto s = DrainLocked(); !s.ok()) return s;
  // An earlier batch's failure is the next fault resolution's to report (it flushes and
  // retries); here the queue goes now, and waits for nothing.
  if (async_errno_ != 0) return FlushLocked();
  return PostAsyncLocked(c);
}

absl::Status SeccompAddressSpace::Unmap(uint64_t addr, uint64_t len) {
  auto r = ServerCall({SYS_munmap, {addr, len, 0, 0, 0, 0}}, "munmap");
  return r.ok() ? absl::OkStatus() : r.status();
}

absl::Status SeccompAddressSpace::Advise(uint64_t addr, uint64_t len, int behav) {
  const int advice = LinuxAdvice(behav);
  if (advice < 0) return absl::OkStatus();
  auto r = ServerCall({SYS_madvise, {addr, len, static_cast<uint64_t>(advice), 0, 0, 0}},
                      "madvise");
  if (!r.ok() && ErrnoOf(r.status()) == EFAULT) return r.status();
  return absl::OkStatus();  // hints the host refuses are ignored
}

absl::StatusOr<size_t> SeccompAddressSpace::Read(uint64_t addr, void* buf, size_t len) {
  return CopyProcessMemory(pid_, false, addr, buf, len);
}

absl::StatusOr<size_t> SeccompAddressSpace::Write(uint64_t addr, const void* buf, size_t len) {
  return CopyProcessMemory(pid_, true, addr, const_cast<void*>(buf), len);
}

// ---- contexts -----------------------------------------------------------------------------

absl::StatusOr<Context*> SeccompAddressSpace::CallerContext() {
  const pid_t me = ThreadState::CurrentTid();
  for (Context& c : contexts_) {
    if (c.tracer.load(std::memory_order_acquire) == me) return &c;
  }
  return CreateContext(me);
}

bool SeccompAddressSpace::ContextAlive(const Context& c) const {
  return syscall(SYS_tgkill, pid_, c.tid, 0) == 0 || errno != ESRCH;
}

absl::StatusOr<Context*> SeccompAddressSpace::CreateContext(pid_t tracer) {
  if (dead_.load()) return Died("earlier");
  (void)ThreadState::Current();  // the thread's exit hook releases its contexts
  std::lock_guard<std::mutex> lock(contexts_mu_);
  int slot = -1;
  for (int i = 0; i < VKRT_SC_SLOTS; ++i) {
    if (contexts_[i].tid == 0) {
      slot = i;
      break;
    }
  }
  if (slot < 0) {
    return ErrnoError(EAGAIN, absl::StrFormat("vmspace: more than %d vkernel threads use it",
                                              VKRT_SC_SLOTS));
  }
  uint8_t* cmd = Command(slot);
  uint8_t* mb = Mailbox(slot);
  memset(cmd, 0, kPage);
  memset(mb, 0, 128);
  Store(cmd + CMD_SPIN, SpinTicks());
  Store(cmd + CMD_USE_ARCH_PRCTL, use_arch_prctl_ ? 1 : 0);
  const struct timespec slice = {0, 10'000'000};  // the context re-checks every 10 ms
  memcpy(cmd + CMD_TIMEOUT, &slice, sizeof(slice));
  // What the handler compares of the frame's FPU state with CMD_XREF: the legacy area, the
  // in-use bits, then these components while in use (offsets and sizes are 64-byte multiples).
  x86_64::XstateComponent components[CMD_XCMP_MAX];
  const int ncomp = x86_64::GuestXstateComponents(components, CMD_XCMP_MAX);
  bool stub_compares_xstate =
      ncomp <= CMD_XCMP_MAX && x86_64::GuestXstateSize() <= CMD_XREF_MAX;
  for (int i = 0; i < ncomp && stub_compares_xstate; ++i) {
    const x86_64::XstateComponent& k = components[i];
    stub_compares_xstate = k.offset % 16 == 0 && k.size % 16 == 0 && k.size > 0 &&
                           k.offset >= 576 && k.offset + k.size <= x86_64::GuestXstateSize();
  }
  for (int i = 0; i < ncomp && stub_compares_xstate; ++i) {
    const uint32_t entry[3] = {static_cast<uint32_t>(components[i].index),
                               static_cast<uint32_t>(components[i].offset),
                               static_cast<uint32_t>(components[i].size)};
    memcpy(cmd + CMD_XCMP + 12 * i, entry, sizeof(entry));
  }
  Store(cmd + CMD_XCMP_COUNT, static_cast<uint32_t>(ncomp));
  Store(cmd + CMD_XCMP_SIZE, static_cast<uint32_t>(x86_64::GuestXstateSize()));
  auto before = ListTasks(pid_);
  if (!before.ok()) return before.status();
  auto created = ServerCall({SYS_clone, {kContextCloneFlags, 0, 0, 0, 0,
                                         static_cast<uint64_t>(slot)}}, "clone");
  if (!created.ok()) return created.status();
  auto after = ListTasks(pid_);
  if (!after.ok()) return after.status();
  std::vector<pid_t> fresh;
  std::set_difference(after->begin(), after->end(), before->begin(), before->end(),
                      std::back_inserter(fresh));
  if (fresh.size() != 1) {
    return ErrnoError(EFAULT, absl::StrFormat("stub %d: %zu new threads, expected 1", pid_,
                                              fresh.size()));
  }
  // Placement: the fast handoff is a spin with the guest on another CPU than its vkernel
  // thread, and the server, which the context hands its CPU when it needs translations, on
  // the guest's CPU. Spinning waiters block whatever else wants their CPU, so the context
  // stays on one CPU: the first one the stub may use that is not the caller's now.
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) CPU_SET(cpu, &set);
  sched_setaffinity(fresh[0], sizeof(set), &set);  // the kernel trims it to the cpuset
  if (sched_getaffinity(fresh[0], sizeof(set), &set) == 0 && CPU_COUNT(&set) > 1) {
    const int mine = CurrentCpu();
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (cpu != mine && CPU_ISSET(cpu, &set)) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        sched_setaffinity(fresh[0], sizeof(one), &one);
        break;
      }
    }
  }
  Context& c = contexts_[slot];
  c.tid = fresh[0];
  c.seq = 0;
  c.kicks_pending = 0;
  c.last_cpu = -1;
  c.rcx_reported_as_r10 = false;
  c.xstate_known = false;  // (CMD_XREF_ON is 0: the command page was cleared)
  if (stub_compares_xstate) {
    c.xref = cmd + CMD_XREF;
  } else {
    if (c.xref_heap == nullptr) c.xref_heap.reset(new unsigned char[x86_64::GuestXstateSize()]);
    c.xref = c.xref_heap.get();
  }
  // The new thread traps once on purpose (its first report): from then on it waits in its
  // handler with a signal frame the first RUN fills in.
  if (auto s = AwaitReport(c, 1, 10'000'000'000); !s.ok()) return s;
  Report first;
  if (auto s = TakeReport(c, first); !s.ok()) return s;
  const uint64_t ready = VKRT_SC_CODE + x86_64::vkrt_seccomp_stub_offsets.context_ready;
  if (first.sig != SIGILL || first.gregs[x86_64::kSigRip] != ready) {
    return ErrnoError(EFAULT, absl::StrFormat("stub %d: context thread did not start (signal "
                                              "%d at %#x)", pid_, first.sig,
                                              first.gregs[x86_64::kSigRip]));
  }
  c.tracer.store(tracer, std::memory_order_release);
  return &c;
}

void SeccompAddressSpace::ReleaseCallerContext() {
  const pid_t me = ThreadState::CurrentTid();
  std::lock_guard<std::mutex> lock(contexts_mu_);
  for (Context& c : contexts_) {
    if (c.tracer.load(std::memory_order_relaxed) != me) continue;
    // The context thread waits in its handler: tell it to exit, and wait (bounded) until it
    // is gone before the slot can be used again.
    Store(Command(SlotOf(c)) + CMD_EXIT, 1);
    Resume(c);
    for (int i = 0; i < 2000 && ContextAlive(c); ++i) {
      const struct timespec ms = {0, 1'000'000};
      nanosleep(&ms, nullptr);
    }
    if (!ContextAlive(c)) c.tid = 0;  // else the slot stays taken
    c.tracer.store(0, std::memory_order_release);
  }
}

absl::Status SeccompAddressSpace::AwaitReport(Context& c, uint32_t want, int64_t limit_ns) {
  const uint8_t* mb = Mailbox(SlotOf(c));
  const struct timespec slice = {0, kWaitSliceNs};
  int64_t waited = 0;
  while (Load(mb + MB_REPORT_SEQ) != want) {
    uint8_t* cmd = Command(SlotOf(c));
    Store(cmd + CMD_VKERNEL_SLEEPING, 1);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    const uint32_t now = Load(mb + MB_REPORT_SEQ);
    if (now != want) {
      long r = Futex(mb + MB_REPORT_SEQ, FUTEX_WAIT, now, &slice);
      if (r < 0 && errno == ETIMEDOUT) {
        waited += kWaitSliceNs;
        if (!ContextAlive(c)) {
          Store(cmd + CMD_VKERNEL_SLEEPING, 0);
          return Died("a context thread is gone");
        }
        if (limit_ns > 0 && waited >= limit_ns) {
          Store(cmd + CMD_VKERNEL_SLEEPING, 0);
          return ErrnoError(EFAULT, absl::StrFormat("stub %d: no report from thread %d", pid_,
                                                    c.tid));
        }
      }
    }
    Store(cmd + CMD_VKERNEL_SLEEPING, 0);
  }
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::TakeReport(Context& c, Report& r) {
  const int slot = SlotOf(c);
  const uint8_t* mb = Mailbox(slot);
  c.seq = Load(mb + MB_REPORT_SEQ);
  // Everything in the mailbox is guest-writable: check it all before use. What the vkernel
  // needs of the siginfo the handler copied into the mailbox's first cache line; the frame
  // is read only where it must be (each line read here crosses CPUs).
  r.sig = static_cast<int>(Load(mb + MB_SIG));
  c.last_cpu = static_cast<int>(Load(mb + MB_CPU));
  memcpy(&r.code, mb + MB_SI_CODE, 4);
  memcpy(&r.arch, mb + MB_SI_ARCH, 4);
  memcpy(&r.addr, mb + MB_SI_ADDR, 8);
  r.fpu_same = Load(mb + MB_FPU_SAME) == 1;
  uint64_t uc_addr;
  memcpy(&uc_addr, mb + MB_UC, 8);
  uint8_t* uc = InStack(slot, uc_addr, kUcSize);
  if (uc == nullptr || (uc_addr & 7) != 0) {
    kill(pid_, SIGKILL);
    return Died("its signal frame was overwritten");
  }
  c.uc = uc_addr;
  r.gregs = reinterpret_cast<uint64_t*>(uc + kUcMcontext);
  uint64_t fp_addr;
  memcpy(&fp_addr, uc + kUcFpregs, 8);
  r.fpregs = InStack(slot, fp_addr, x86_64::GuestXstateSize());
  if (r.fpregs == nullptr || (fp_addr & 63) != 0) {
    kill(pid_, SIGKILL);
    return Died("its signal frame's FPU area was overwritten");
  }
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::LoadFrame(Context& c, const GuestState& state,
                                            bool* unchanged) {
  bool same = true;
  const int slot = SlotOf(c);
  uint8_t* uc = InStack(slot, c.uc, kUcSize);
  if (uc == nullptr) return Died("no signal frame");
  auto* gregs = reinterpret_cast<uint64_t*>(uc + kUcMcontext);
  // The frame already holds the guest's FPU state as last reported: write the caller's only
  // if the vkernel changed it (the usual system call leaves it alone).
  if (!c.xstate_known || !x86_64::SameGuestXstate(c.xref, state.xstate)) {
    uint64_t fp_addr;
    memcpy(&fp_addr, uc + kUcFpregs, 8);
    uint8_t* fp = InStack(slot, fp_addr, 576);
    uint32_t frame_size = 0;
    uint64_t frame_features = 0;
    if (fp != nullptr) {
      memcpy(&frame_size, fp + kFpxSw + 16, 4);
      memcpy(&frame_features, fp + kFpxSw + 8, 8);
    }
    if (fp == nullptr || InStack(slot, fp_addr, frame_size) == nullptr) {
      kill(pid_, SIGKILL);
      return Died("its signal frame's FPU area was overwritten");
    }
    same = false;
    if (auto s = LoadXstate(fp, frame_size, frame_features, state.xstate); !s.ok()) return s;
    // What the frame holds now, as far as the stub's comparison goes: where LoadXstate had to
    // differ (features the frame does not carry), the comparison fails, which is safe.
    SetXref(c, state.xstate);
  }
  // Registers. After a system call exit the frame's rcx was reported as r10 (DragonFly); a
  // vkernel that leaves it so gets the rcx the `syscall` instruction left.
  trapframe tf = *state.tf;
  if (c.rcx_reported_as_r10 && tf.tf_rcx == tf.tf_r10) {
    tf.tf_rcx = static_cast<int64_t>(c.syscall_rcx);
  }
  c.rcx_reported_as_r10 = false;
  // Only the registers that changed: a line the vkernel writes must travel to the guest's CPU.
  uint64_t want[x86_64::kSigGregs];
  memcpy(want, gregs, sizeof(want));
  x86_64::FrameToSigGregs(tf, want);
  for (int i = 0; i <= x86_64::kSigEflags; ++i) {
    if (gregs[i] != want[i]) {
      gregs[i] = want[i];
      same = false;
    }
  }
  uint8_t* cmd = Command(slot);
  if (unchanged != nullptr) {
    uint64_t fs, gs;
    memcpy(&fs, cmd + CMD_FS_BASE, 8);
    memcpy(&gs, cmd + CMD_GS_BASE, 8);
    *unchanged = same && fs == state.fs_base && gs == state.gs_base;
  }
  memcpy(cmd + CMD_FS_BASE, &state.fs_base, 8);
  memcpy(cmd + CMD_GS_BASE, &state.gs_base, 8);
  return absl::OkStatus();
}

absl::Status SeccompAddressSpace::LoadXstate(uint8_t* fp, uint32_t frame_size,
                                             uint64_t frame_features, const void* xstate) {
  // The caller's FPU state, as sigreturn will accept it: MXCSR without reserved bits, the
  // standard (not compacted) format, only features the frame carries; the frame's own
  // software bytes and PKRU stay as the kernel wrote them.
  const auto* src = static_cast<const uint8_t*>(xstate);
  uint32_t mxcsr;
  memcpy(&mxcsr, src + 24, 4);
  if ((mxcsr & ~x86_64::MxcsrMask()) != 0) {  // what sigreturn checks (AMD's MM bit is fine)
    return ErrnoError(EINVAL, absl::StrFormat("vmspace_ctl: MXCSR %#x has bits set that this "
                                              "CPU's MXCSR_MASK %#x reserves",
                                              mxcsr, x86_64::MxcsrMask()));
  }
  uint64_t bv;
  memcpy(&bv, src + kXstateBv, 8);
  const size_t n = std::min<size_t>(
      x86_64::UsesAvx512(src) ? x86_64::GuestXstateSize() : x86_64::AvxXstateSize(),
      frame_size);
  uint64_t frame_bv;
  memcpy(&frame_bv, fp + kXstateBv, 8);
  memcpy(fp, src, kFpxSw);
  memcpy(fp + kXstateBv + 64, src + kXstateBv + 64, n - kXstateBv - 64);
  const uint64_t new_bv =
      ((bv & kGuestFeatures) | (frame_bv & ~kGuestFeatures)) & frame_features;
  memcpy(fp + kXstateBv, &new_bv, 8);
  memset(fp + kXstateBv + 8, 0, 56);  // XCOMP_BV and the reserved header bytes
  return absl::OkStatus();
}

void SeccompAddressSpace::SetXref(Context& c, const void* xstate) {
  // What SameGuestXstate and the stub compare: through AVX, and AVX-512 only while it is in
  // use. Only the lines that changed: each one written here travels to the guest's CPU,
  // where the stub reads the reference on the next report.
  const auto* src = static_cast<const unsigned char*>(xstate);
  const size_t n = x86_64::UsesAvx512(src) ? x86_64::GuestXstateSize() : x86_64::AvxXstateSize();
  for (size_t i = 0; i < n; i += 64) {
    const size_t len = std::min<size_t>(64, n - i);
    if (memcmp(c.xref + i, src + i, len) != 0) memcpy(c.xref + i, src + i, len);
  }
  if (!c.xstate_known) {
    c.xstate_known = true;
    if (c.xref_heap == nullptr) Store(Command(SlotOf(c)) + CMD_XREF_ON, 1);
  }
}

void SeccompAddressSpace::PrepareResume(Context& c) {
  uint8_t* cmd = Command(SlotOf(c));
  if (Load(cmd + CMD_NAP) != 0) Store(cmd + CMD_NAP, 0);
  // Spinning only helps when the guest runs on another CPU than ours.
  const int cpu = CurrentCpu();
  Store(cmd + CMD_SPIN, c.last_cpu == cpu ? 0 : SpinTicks());
  Store(cmd + CMD_SERVER_WAIT, c.server_wait);
  c.server_wait = 0;
}

void SeccompAddressSpace::Resume(Context& c) {
  PrepareResume(c);
  Release(c);
}

void SeccompAddressSpace::Release(Context& c) {
  uint8_t* cmd = Command(SlotOf(c));
  Store(cmd + CMD_RESP_SEQ, c.seq);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);  // against the context's "sleeping" flag (Dekker)
  if (Load(Mailbox(SlotOf(c)) + MB_STUB_SLEEPING) != 0) {
    Futex(cmd + CMD_RESP_SEQ, FUTEX_WAKE, 1, nullptr);
  }
}

void SeccompAddressSpace::NapLastContext(const Context& next) {
  LastContext& last = t_last_context;
  const int slot = SlotOf(next);
  if (last.id == nap_cell_.get() && last.slot == slot) return;
  if (auto cell = last.cell.lock()) {
    std::lock_guard<std::mutex> lock(cell->mu);
    if (cell->shm != nullptr && last.slot >= 0) {
      Store(cell->shm + VKRT_SC_RW_SIZE + static_cast<size_t>(last.slot) * kPage + CMD_NAP, 1);
    }
  }
  last.cell = nap_cell_;
  last.id = nap_cell_.get();
  last.slot = slot;
}

absl::StatusOr<GuestExit> SeccompAddressSpace::Run(GuestState& state, const RunLimits& limits) {
  auto ctx = CallerContext();
  if (!ctx.ok()) return ctx.status();
  return RunContext(**ctx, state, limits);
}

// Copies the guest's FPU state out of a frame into `area`, reading only the components the
// frame's XSTATE_BV says are in use (the rest is in its initial state, which XRSTOR and
// SameGuestXstate take from the header alone): the frame was written on the guest's CPU,
// and every cache line read here crosses CPUs.
void StoreXstate(const uint8_t* fp, void* area) {
  auto* out = static_cast<uint8_t*>(area);
  uint64_t bv;
  memcpy(&bv, fp + kXstateBv, 8);
  memcpy(out, fp, 32);                                // FCW..MXCSR_MASK (MXCSR always counts)
  if (bv & 1) memcpy(out + 32, fp + 32, 128);         // x87 registers
  if (bv & 2) memcpy(out + 160, fp + 160, 256);       // XMM registers
  memcpy(out + kXstateBv, fp + kXstateBv, 64);        // the XSAVE header
  const size_t avx_end = x86_64::AvxXstateSize();
  if (bv & 4) memcpy(out + 576, fp + 576, avx_end - 576);  // AVX upper halves
  if (x86_64::UsesAvx512(fp)) {
    memcpy(out + avx_end, fp + avx_end, x86_64::GuestXstateSize() - avx_end);
  }
}

absl::StatusOr<GuestExit> SeccompAddressSpace::RunContext(Context& c, GuestState& state,
                                                          const RunLimits& limits) {
  ThreadState& ts = ThreadState::Current();
  // Signals. RUN must end once a handler ran in this thread while the guest ran. The fast
  // wait (the guest on another CPU, a report within the spin) notices that with a
  // restartable sequence and leaves the signal mask alone; every other wait blocks all
  // signals first (once per RUN) and restores the caller's mask at the end.
  uint64_t old_mask = 0;
  uint64_t wait_mask = 0;  // while blocked: what the blocked waits let through
  bool blocked = false;
  auto Block = [&] {
    if (blocked) return;
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, &old_mask, 8);
    wait_mask = old_mask | kIgnoredByDefault;
    blocked = true;
  };
  bool timer_armed = false;
  absl::Cleanup cleanup = [&] {  // no allocation on the RUN path
    if (timer_armed) ts.DisarmTimer();
    if (blocked) syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old_mask, nullptr, 8);
  };
  struct rseq* const rs = ThreadRseq();
  // Where the guest last ran on another CPU, RUN sets up with signals open and releases the
  // guest in the fast wait's restartable sequence: a handler that runs before the release
  // ran before the guest did (as if it came before RUN), one that runs after it aborts the
  // sequence. Otherwise, and under TSan, signals are blocked from here on. (TSan runs a
  // handler late, at its next interceptor: one the kernel delivered during the setup could
  // then run, unseen, once the guest was released; EarlySignalsEndRunWithSaRestart failed.)
  if (kHandlersMayRunLate || rs == nullptr || c.last_cpu == CurrentCpu()) Block();
  // Before the interrupt request and the timer: a kick (their signal) from here on shows.
  const uint32_t kicks_at_start = ThreadState::Kicks();
  if (ts.TakeInterrupt()) return GuestExit{};
  if (limits.timeout_ns != 0) {
    if (auto s = ts.ArmTimer(limits.timeout_ns); !s.ok()) return s;
    timer_armed = true;
  }
  // From here on a removal of translations is carried out at once, or (queued before) here.
  running_.fetch_add(1, std::memory_order_seq_cst);
  absl::Cleanup not_running = [this] { running_.fetch_sub(1, std::memory_order_release); };
  const uint64_t run = runs_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (c.rcx_reported_as_r10 && c.rcx_run + 1 != run) c.rcx_reported_as_r10 = false;
  const bool rcx_reported_as_r10 = c.rcx_reported_as_r10;
  const bool refault = c.refault;
  c.refault = false;
  bool unchanged = false;
  if (auto s = LoadFrame(c, state, refault ? &unchanged : nullptr); !s.ok()) return s;
  if (refault && unchanged && vpt() != nullptr) {
    // The vkernel answered a failed walk and resumes the guest as it stopped: the guest's
    // first act is that access again. Resolve it now (what the retry's walk would do), so
    // its translation goes to the server with this resume instead of after another SIGSEGV.
    // Signals blocked, as on the fault path (a handler may call into vkrt). A failure or a
    // walk that fails again is left to the retry, which reports it as it would have.
    Block();
    SpaceInstaller installer(*this);
    t_resolving = &c;
    (void)vpt()->Resolve(c.refault_addr, c.refault_access, installer);
    t_resolving = nullptr;
  }
  // Queued removals (and the installs just made, behind them in the same batch: one batch
  // per resume; posting the removals first made the resolution above wait for the server,
  // which could not run yet, ~70 us per fault).
  if (queued_.load(std::memory_order_seq_cst)) {
    if (auto s = PostQueued(c); !s.ok()) return s;
  } else if (const uint32_t batch = drop_batch_.load(std::memory_order_seq_cst);
             batch != 0 && c.server_wait == 0) {
    c.server_wait = batch;  // posted by another context's RUN, perhaps not carried out yet
  }

  const int slot = SlotOf(c);
  uint8_t* mb = Mailbox(slot);
  uint8_t* cmd = Command(slot);
  // Reports the fast wait returns from as they are, signals unblocked: a system call (always,
  // whatever the si_code), and while si_code > 0 the exceptions RUN always returns. Not the
  // kick, and SIGSEGV only without MAP_VPAGETABLE (faults there may be resolved, and RUN goes
  // on with signals blocked).
  const uint64_t pass = SigBit(SIGILL) | SigBit(SIGTRAP) | SigBit(SIGBUS) | SigBit(SIGFPE) |
                        (vpt() == nullptr ? SigBit(SIGSEGV) : 0);
  bool interrupted = false;  // we kicked the guest in this RUN
  auto TakePendingSignal = [&] {
    if (ThreadState::Kicks() != kicks_at_start) return true;
    uint64_t pending = 0;
    syscall(SYS_rt_sigpending, &pending, 8);
    if ((pending & ~wait_mask) == 0) return false;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &wait_mask, nullptr, 8);  // let it run
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, nullptr, 8);
    return true;
  };
  int64_t waited_since_kick_ns = 0;
  int64_t cpu_at_kick_ns = -1;  // the context thread's CPU time when it was kicked
  auto Kick = [&] {
    (void)ts.TakeInterrupt();
    if (!interrupted) {
      interrupted = true;
      waited_since_kick_ns = 0;
      cpu_at_kick_ns = ThreadCpuNs(pid_, c.tid);
      ++c.kicks_pending;
      syscall(SYS_tgkill, pid_, c.tid, SC_KICK_SIGNAL);
    }
  };

  for (;;) {
    const uint32_t want = c.seq + 1;
    // Wait for the next report: spin (the guest runs on another CPU), then sleep.
    bool got = false;
    bool spin_blocked = false;  // spin with signals blocked before the sleep
    if (!blocked) {
      PrepareResume(c);
      if (Load(mb + MB_STUB_SLEEPING) == 0) NapLastContext(c);  // it runs: no wakeup to wait for
      const SeccompSpin spin = {reinterpret_cast<uint32_t*>(cmd + CMD_RESP_SEQ), c.seq, want,
                                mb, __rdtsc() + SpinTicks(), pass, &kAllSignals, &old_mask,
                                reinterpret_cast<uint64_t*>(&rs->rseq_cs), NextRseqNonce()};
      const int r = vkrt_seccomp_spin_in_rseq(&spin);
      if (r == kSpinGot) {
        got = true;
      } else {  // signals now blocked, whatever the result
        wait_mask = old_mask | kIgnoredByDefault;
        blocked = true;
        got = r == kSpinGotBlocked;
        if (r == kSpinWakeContext) {
          Futex(cmd + CMD_RESP_SEQ, FUTEX_WAKE, 1, nullptr);
          NapLastContext(c);
        }
        if (r < 0) {  // aborted
          const bool released = Load(cmd + CMD_RESP_SEQ) == c.seq;
          if (r == kSpinHandlerRan || ThreadState::Kicks() != kicks_at_start ||
              AltStackHandlerRan(spin.nonce)) {
            if (!released) {
              // The guest did not run. Its frame stays as loaded.
              c.rcx_reported_as_r10 = rcx_reported_as_r10;
              c.rcx_run = run;
              return GuestExit{};
            }
            Kick();  // RUN ends once the guest has stopped
          } else {
            Release(c);  // a preemption: release (again) and wait, blocked
            spin_blocked = true;
          }
        }
      }
    } else {
      Resume(c);
      NapLastContext(c);
      spin_blocked = true;
    }
    if (spin_blocked && c.last_cpu != CurrentCpu()) {
      const uint64_t deadline = __rdtsc() + SpinTicks();
      do {
        if (Load(mb + MB_REPORT_SEQ) == want) {
          got = true;
          break;
        }
      } while (__rdtsc() < deadline);
    }
    while (!got) {
      if (Load(mb + MB_REPORT_SEQ) == want) break;
      if (!interrupted && TakePendingSignal()) {
        Kick();
        continue;
      }
      Store(cmd + CMD_VKERNEL_SLEEPING, 1);
      __atomic_thread_fence(__ATOMIC_SEQ_CST);
      const uint32_t now = Load(mb + MB_REPORT_SEQ);
      if (now == want) {
        Store(cmd + CMD_VKERNEL_SLEEPING, 0);
        break;
      }
      const struct timespec slice = {0, kWaitSliceNs};
      long r;
      struct rseq* rs = interrupted ? nullptr : ThreadRseq();
      if (rs != nullptr) {
        // Unblock, wait and block again in one restartable sequence: a handler that runs
        // in between (even with SA_RESTART) is noticed. (The futex word is shared with the
        // stub process: not FUTEX_PRIVATE.)
        const OpenCall call = SyscallWithSignalsOpen(
            rs, wait_mask, SYS_futex, reinterpret_cast<uint64_t>(mb + MB_REPORT_SEQ), FUTEX_WAIT,
            now, reinterpret_cast<uint64_t>(&slice), nullptr);
        r = call.handler_ran                        ? kSignalled
            : call.result == OpenCall::kNotReturned ? kPreempted
                                                    : call.result;
      } else if (!interrupted) {
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &wait_mask, nullptr, 8);
        r = Futex(mb + MB_REPORT_SEQ, FUTEX_WAIT, now, &slice);
        if (r < 0) r = -errno;
        syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, nullptr, 8);
      } else {
        r = Futex(mb + MB_REPORT_SEQ, FUTEX_WAIT, now, &slice);
        if (r < 0) r = -errno;
      }
      Store(cmd + CMD_VKERNEL_SLEEPING, 0);
      if (r == kSignalled || r == -EINTR) {
        if (!interrupted) Kick();
      } else if (r == -ETIMEDOUT) {
        if (!ContextAlive(c)) return Died("a context thread is gone");
        const auto ran_long_enough = [&] {
          if (waited_since_kick_ns >= kKickGraceMaxNs || cpu_at_kick_ns < 0) return true;
          const int64_t cpu = ThreadCpuNs(pid_, c.tid);
          return cpu < 0 || cpu - cpu_at_kick_ns >= kKickGraceCpuNs;
        };
        if (interrupted && (waited_since_kick_ns += kWaitSliceNs) >= kKickGraceNs &&
            ran_long_enough()) {
          // The guest blocked the kick signal (rt_sigreturn with a forged frame can do that)
          // and does not trap: it cannot be stopped any other way.
          kill(pid_, SIGKILL);
          return Died("the guest did not answer an interrupt (it blocked the stub's kick "
                      "signal); the stub was killed");
        }
        if (!interrupted && ThreadState::Kicks() != kicks_at_start) Kick();
      } else if (r == kPreempted) {
        continue;
      }
    }

    Report rep;
    if (auto s = TakeReport(c, rep); !s.ok()) return s;
    const int sig = rep.sig;
    const int si_code = rep.code;
    uint64_t* const gregs = rep.gregs;
    uint8_t* const fpregs = rep.fpregs;
    GuestExit exit;
    auto report = [&](GuestExit e) -> GuestExit {
      x86_64::SigGregsToFrame(gregs, *state.tf);
      // The frame still holds c.xref, which LoadFrame made equal to the caller's state in
      // state.xstate: nothing to copy. (A guest that forges the stub's answer gets the
      // caller's own FPU state back, as if it had restored it itself.)
      if (c.xstate_known && rep.fpu_same) return e;
      StoreXstate(fpregs, state.xstate);
      SetXref(c, state.xstate);
      return e;
    };

    if (sig == SC_KICK_SIGNAL) {
      if (c.kicks_pending > 0) --c.kicks_pending;
      if (interrupted && c.kicks_pending == 0) return report(GuestExit{});  // kInterrupted
      Block();  // (already, unless the report changed after the fast wait read it)
      continue;  // a kick from an earlier RUN, or a forged report: the guest goes on
    }
    if (si_code <= 0 && sig != SIGSYS) {
      Block();
      continue;  // sent by somebody else: not the guest's
    }

    if (sig == SIGSYS) {
      const uint64_t call_addr = rep.addr;
      const uint32_t arch = rep.arch;
      if ((call_addr & ~uint64_t{0xFFF}) == 0xFFFFFFFFFF600000ULL) {
        // A call into the vsyscall page, which Linux emulates as a system call: to the
        // guest, an instruction fetch from a page that is not there. Linux has already
        // emulated the `ret`; undo it.
        exit.kind = GuestExit::Kind::kPageFault;
        exit.trapno = T_PAGEFLT;
        exit.err = PGEX_U | PGEX_I;
        exit.addr = call_addr;
        report(exit);
        if (gregs[x86_64::kSigRip] != call_addr) {
          state.tf->tf_rip = static_cast<int64_t>(call_addr);
          state.tf->tf_rsp -= 8;
        }
        return exit;
      }
      exit.kind = GuestExit::Kind::kSyscall;
      exit.trapno = T_FAST_SYSCALL;
      exit.err = 2;
      if (arch == AUDIT_ARCH_I386) {
        uint16_t opcode = 0;
        (void)Read(gregs[x86_64::kSigRip] - 2, &opcode, sizeof(opcode));
        if (opcode == 0x80CD) {
          exit.kind = GuestExit::Kind::kSyscall80;
          exit.trapno = T_SYSCALL80;
        } else {
          // sysenter, which Linux runs as a 32-bit system call: refused as AMD refuses it.
          exit.kind = GuestExit::Kind::kException;
          exit.trapno = T_PRIVINFLT;
          exit.err = 0;
        }
      }
      report(exit);  // rax: the number as the guest loaded it (seccomp rolled it back)
      c.syscall_rcx = gregs[x86_64::kSigRcx];
      c.rcx_reported_as_r10 = exit.kind == GuestExit::Kind::kSyscall;  // (vmspace.cc)
      c.rcx_run = run;
      return exit;
    }

    if (sig == SIGILL && si_code == SI_KERNEL && gregs[x86_64::kSigRcx] == gregs[x86_64::kSigRip]) {
      // Linux (6.11+) lets system call 335, uretprobe, past seccomp; made from anywhere but
      // its trampoline it raises SIGILL and returns -1. To the vkernel it is that call.
      uint16_t opcode = 0;
      if (Read(gregs[x86_64::kSigRip] - 2, &opcode, sizeof(opcode)).ok() && opcode == 0x050F) {
        exit.kind = GuestExit::Kind::kSyscall;
        exit.trapno = T_FAST_SYSCALL;
        exit.err = 2;
        report(exit);
        state.tf->tf_rax = kUretprobeSyscall;
        c.syscall_rcx = gregs[x86_64::kSigRcx];
        c.rcx_reported_as_r10 = true;
        c.rcx_run = run;
        return exit;
      }
    }
    if (sig == SIGSEGV && (gregs[x86_64::kSigRip] & ~uint64_t{0xFFF}) == 0xFFFFFFFFFF600000ULL) {
      // A jump into the vsyscall page at no entry point: Linux refuses to emulate it and
      // sends a bare SIGSEGV (SI_KERNEL) whose frame carries a stale trap number and error
      // code. To the guest it is what any other vsyscall call is, a fetch from a page that is
      // not there (docs/api.md).
      exit.kind = GuestExit::Kind::kPageFault;
      exit.trapno = T_PAGEFLT;
      exit.err = PGEX_U | PGEX_I;
      exit.addr = gregs[x86_64::kSigRip];
      return report(exit);
    }
    // A hardware exception: the frame has the vector, error code and fault address.
    const int vector = static_cast<int>(gregs[x86_64::kSigTrapno]);
    exit.trapno = x86_64::TrapCodeForVector(vector);
    exit.kind = GuestExit::Kind::kException;
    exit.err = gregs[x86_64::kSigErr];
    if (exit.trapno == T_PAGEFLT) {
      const uint64_t hw = gregs[x86_64::kSigErr];
      exit.kind = GuestExit::Kind::kPageFault;
      exit.addr = gregs[x86_64::kSigCr2];
      exit.err = (hw & (PGEX_P | PGEX_W | PGEX_RSV | PGEX_I)) | PGEX_U;
      if (si_code == SEGV_ACCERR || si_code == SEGV_PKUERR) exit.err |= PGEX_P;
      int installed = -1;
      if (sig == SIGSEGV && vpt() != nullptr && !(hw & 0x20) &&
          vpt()->Lookup(exit.addr, installed)) {
        const vpt::Access access = (hw & PGEX_W)   ? vpt::Access::kWrite
                                   : (hw & PGEX_I) ? vpt::Access::kExecute
                                                   : vpt::Access::kRead;
        Block();  // (already: the fast wait blocks for SIGSEGV with MAP_VPAGETABLE)
        SpaceInstaller installer(*this);
        t_resolving = &c;
        auto resolved = vpt()->Resolve(exit.addr, access, installer);
        t_resolving = nullptr;
        if (!resolved.ok()) return resolved.status();
        using Outcome = vpt::Resolution::Outcome;
        if (resolved->outcome == Outcome::kInstalled || resolved->outcome == Outcome::kNotVpt) {
          if (!interrupted && TakePendingSignal()) {
            // A signal came while resolving (a fault storm would otherwise never end RUN):
            // end here, at the faulting instruction, which retries next time.
            return report(GuestExit{});
          }
          continue;  // the guest retries the access
        }
        if (resolved->outcome == Outcome::kFault) {
          exit.err = resolved->err;
          c.refault = true;
          c.refault_addr = exit.addr;
          c.refault_access = access;
        }
      }
    }
    return report(exit);
  }
}

}  // namespace

SeccompBackend* SeccompBackend::Get() {
  static auto* backend = new SeccompBackend();
  return backend;
}

const char* SeccompBackend::Unavailable() {
  static const char* const reason = []() -> const char* {
    if (prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0 && errno == EINVAL) {
      return "the kernel has no seccomp (CONFIG_SECCOMP)";
    }
    uint32_t action = SECCOMP_RET_TRAP;
    if (syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action) != 0) {
      return errno == EINVAL || errno == ENOSYS
                 ? "the kernel has no seccomp filters with SECCOMP_RET_TRAP"
                 : "the seccomp system call is refused here (a seccomp policy?)";
    }
    if (const char* why = StubPrograms().error) return why;
    return nullptr;
  }();
  return reason;
}

absl::StatusOr<std::unique_ptr<AddressSpace>> SeccompBackend::CreateAddressSpace() {
  const Programs& programs = StubPrograms();
  if (programs.error != nullptr) {
    return ErrnoError(EOPNOTSUPP, absl::StrFormat("seccomp backend: %s", programs.error));
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return SyscallError("socketpair(AF_UNIX, SOCK_STREAM) for a seccomp stub");
  }
  // The server's acknowledgements: an eventfd is a cheaper write and read than the socket
  // (~0.25 us each against ~0.8 us here), and one comes per VPAGETABLE fault.
  const int ack = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ack < 0) {
    absl::Status s = SyscallError("eventfd for a seccomp stub's acknowledgements");
    close(sv[0]);
    close(sv[1]);
    return s;
  }
  const int memfd = static_cast<int>(syscall(SYS_memfd_create, "vkrt-stub", MFD_CLOEXEC));
  if (memfd < 0 || ftruncate(memfd, VKRT_SC_MEMFD_SIZE) != 0) {
    absl::Status s = SyscallError("memfd_create/ftruncate for a seccomp stub's shared pages");
    if (memfd >= 0) close(memfd);
    close(ack);
    close(sv[0]);
    close(sv[1]);
    return s;
  }
  void* shm = mmap(nullptr, VKRT_SC_MEMFD_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (shm == MAP_FAILED) {
    absl::Status s = SyscallError("mmap of a seccomp stub's shared pages");
    close(memfd);
    close(ack);
    close(sv[0]);
    close(sv[1]);
    return s;
  }
  auto* view = static_cast<uint8_t*>(shm);
  // The server's command page: empty batch, and how often it looks for its vkernel.
  uint8_t* srv = view + VKRT_SC_RW_SIZE + VKRT_SC_SERVER_SLOT * kPage;
  const struct timespec server_slice = {1, 0};
  memcpy(srv + SRV_TIMEOUT, &server_slice, sizeof(server_slice));
  const int pidfd = SelfPidfd();
  x86_64::SeccompBootArgs args = {sv[1], pidfd, memfd, ack, &programs.server_prog,
                                  &programs.context_prog};
  pid_t pid = static_cast<pid_t>(syscall(SYS_clone, 0, 0, 0, 0, 0));
  if (pid == 0) {
    // Child: raw system calls only.
    syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (struct rseq* rs = ThreadRseq(/*register_own=*/false)) {
      if (syscall(SYS_rseq, rs, __rseq_size, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) != 0) {
        syscall(SYS_rseq, rs, 32, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
      }
    }
    // The boot moves socket, pidfd and eventfd to 0, 1, 2 with dup3: none of them may be
    // one of those numbers yet (a vkernel that closed its stdin has them handed out), or an
    // earlier dup3 would overwrite it. A copy at a free number >= 3 cannot overwrite
    // anything; close_range drops the copies. (args is this child's own copy.)
    for (int32_t* fd : {&args.socket_fd, &args.pidfd, &args.ack_fd}) {
      if (*fd < 3) *fd = static_cast<int32_t>(syscall(SYS_fcntl, *fd, F_DUPFD, 3));
    }
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &kAllSignals, nullptr, 8);
    x86_64::vkrt_seccomp_stub_boot(&args);
  }
  const int clone_errno = errno;
  close(sv[1]);
  close(memfd);
  if (pid < 0) {
    close(sv[0]);
    close(ack);
    munmap(shm, VKRT_SC_MEMFD_SIZE);
    return ErrnoError(clone_errno, "clone() of a seccomp stub process");
  }
  auto space = std::make_unique<SeccompAddressSpace>(pid, sv[0], ack, view);
  if (auto s = space->Ping(); !s.ok()) {
    return ErrnoError(EFAULT, absl::StrFormat("seccomp stub %d did not start: %s", pid,
                                              s.message()));
  }
  if (auto c = space->CallerContext(); !c.ok()) return c.status();
  return std::unique_ptr<AddressSpace>(std::move(space));
}

}  // namespace vkrt
