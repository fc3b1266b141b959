#include "thread_state.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <memory>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "common/errno_status.h"
#include "registry.h"

namespace vkrt {
namespace {

// tid -> state of the live threads that used vkrt. Guarded by TableMutex(); only the
// interrupt call and thread start/exit take it (never the RUN path).
std::mutex& TableMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
absl::flat_hash_map<pid_t, ThreadState*>& Table() {
  static auto* table = new absl::flat_hash_map<pid_t, ThreadState*>;
  return *table;
}

// Counts the kick handler's runs in this thread (initial-exec TLS: safe in a handler).
__attribute__((tls_model("initial-exec"))) thread_local volatile uint32_t t_kicks = 0;

void KickHandler(int) { t_kicks = t_kicks + 1; }

void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = KickHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a kicked wait returns EINTR even without rseq
    sigaction(ThreadState::KickSignal(), &sa, nullptr);
  });
}

struct Holder {
  std::unique_ptr<ThreadState> state;
  ~Holder() {
    if (state != nullptr) {
      // Drop this thread's guest contexts while it still exists: a traced thread must be
      // released by its tracer.
      Registry::Get().ReleaseThread();
    }
  }
};
thread_local Holder holder;
thread_local pid_t cached_tid = 0;

}  // namespace

pid_t ThreadState::CurrentTid() {
  if (cached_tid == 0) cached_tid = static_cast<pid_t>(syscall(SYS_gettid));
  return cached_tid;
}

void ThreadState::ForgetAfterFork() {
  // Only the forking thread exists in the child; its state names the parent's thread.
  cached_tid = 0;
  (void)holder.state.release();  // its timer and table entry belong to the parent
  new (&TableMutex()) std::mutex;
  Table().clear();
}

ThreadState::ThreadState() : tid_(CurrentTid()) {}

ThreadState::~ThreadState() {
  if (have_timer_) timer_delete(timer_);
  std::lock_guard<std::mutex> lock(TableMutex());
  Table().erase(tid_);
}

ThreadState& ThreadState::Current() {
  if (holder.state == nullptr) {
    InstallKickHandler();
    holder.state.reset(new ThreadState());
    std::lock_guard<std::mutex> lock(TableMutex());
    Table()[holder.state->tid_] = holder.state.get();
  }
  return *holder.state;
}

int ThreadState::KickSignal() { return SIGRTMAX - 1; }

uint32_t ThreadState::Kicks() { return t_kicks; }

absl::Status ThreadState::Interrupt(pid_t tid) {
  std::lock_guard<std::mutex> lock(TableMutex());
  auto it = Table().find(tid);
  if (it == Table().end()) {
    return ErrnoError(ESRCH, absl::StrFormat("vkrt_interrupt(%d): not a vkrt thread", tid));
  }
  it->second->interrupt_requested_.store(true, std::memory_order_release);
  if (syscall(SYS_tgkill, getpid(), tid, KickSignal()) != 0) {
    return SyscallError(absl::StrFormat("tgkill(%d, %d, %d)", getpid(), tid, KickSignal()));
  }
  return absl::OkStatus();
}

absl::Status ThreadState::ArmTimer(uint64_t ns) {
  if (!have_timer_) {
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = KickSignal();
    sev._sigev_un._tid = tid_;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer_) != 0) {
      return SyscallError(absl::StrFormat("timer_create(CLOCK_MONOTONIC, SIGEV_THREAD_ID %d)", tid_));
    }
    have_timer_ = true;
  }
  struct itimerspec its = {};
  its.it_value.tv_sec = static_cast<time_t>(ns / 1000000000u);
  its.it_value.tv_nsec = static_cast<long>(ns % 1000000000u);
  if (timer_settime(timer_, 0, &its, nullptr) != 0) {
    return SyscallError(absl::StrFormat("timer_settime(%llu ns)", static_cast<unsigned long long>(ns)));
  }
  return absl::OkStatus();
}

void ThreadState::DisarmTimer() {
  if (!have_timer_) return;
  struct itimerspec its = {};
  timer_settime(timer_, 0, &its, nullptr);
}

}  // namespace vkrt
