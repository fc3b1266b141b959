// Per-vkernel-thread state: the run timeout, the sticky interrupt request and the "kick"
// signal that wakes a thread out of RUN. Owned by the thread (thread_local); other threads
// reach it only through Interrupt(), under the table lock.
#ifndef VKRT_SRC_THREAD_STATE_H_
#define VKRT_SRC_THREAD_STATE_H_

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <atomic>

#include "absl/status/status.h"

namespace vkrt {

class ThreadState {
 public:
  // The calling thread's state, created (and the kick handler installed) on first use.
  static ThreadState& Current();

  // Sets the interrupt request of thread `tid` and kicks it. ESRCH if `tid` never used vkrt.
  static absl::Status Interrupt(pid_t tid);

  // The signal vkrt reserves (SIGRTMAX - 1): its handler does nothing; its delivery ends
  // the wait of a RUN.
  static int KickSignal();
  // How many times the kick signal's handler has run in the calling thread (timeouts and
  // vkrt_interrupt), so that a RUN can tell one ran outside its wait.
  static uint32_t Kicks();

  // gettid() of the calling thread, cached (glibc does not cache it).
  static pid_t CurrentTid();

  // In the child of fork(): forgets the parent's threads (called by the atfork handler).
  static void ForgetAfterFork();

  pid_t tid() const { return tid_; }

  // Consumes a pending interrupt request: true if there was one.
  bool TakeInterrupt() { return interrupt_requested_.exchange(false, std::memory_order_acq_rel); }

  uint64_t default_timeout_ns() const { return default_timeout_ns_; }
  void set_default_timeout_ns(uint64_t ns) { default_timeout_ns_ = ns; }

  // One-shot kick after `ns` nanoseconds (CLOCK_MONOTONIC), aimed at this thread.
  absl::Status ArmTimer(uint64_t ns);
  // Cancels it; a kick that already fired is harmless (its handler does nothing).
  void DisarmTimer();

  ThreadState(const ThreadState&) = delete;
  ThreadState& operator=(const ThreadState&) = delete;
  ~ThreadState();

 private:
  ThreadState();

  const pid_t tid_;
  std::atomic<bool> interrupt_requested_{false};
  uint64_t default_timeout_ns_ = 0;
  timer_t timer_{};
  bool have_timer_ = false;
};

}  // namespace vkrt

#endif  // VKRT_SRC_THREAD_STATE_H_
