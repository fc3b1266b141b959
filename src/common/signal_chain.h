// The program's own disposition of a signal that vkrt's handler sits in front of (SIGSEGV for
// MAP_VPAGETABLE on the own space, SIGSYS for the preload shim). vkrt's interposed sigaction()
// records the program's handler here instead of installing it; vkrt's handler forwards every
// signal it does not own, as the kernel would have delivered it.
//
// Two slots and an index, so that a handler reads a complete record while sigaction() writes
// the other one. Writers (Set) are serialised by the owner, with signals blocked.
#ifndef VKRT_SRC_COMMON_SIGNAL_CHAIN_H_
#define VKRT_SRC_COMMON_SIGNAL_CHAIN_H_

#include <signal.h>

#include <atomic>

namespace vkrt {

class SignalChain {
 public:
  explicit SignalChain(int sig) : sig_(sig) {}

  void Set(const struct sigaction& act) {
    const int next = 1 - slot_.load(std::memory_order_relaxed);
    actions_[next] = act;
    slot_.store(next, std::memory_order_release);
  }
  struct sigaction Get() const { return actions_[slot_.load(std::memory_order_acquire)]; }

  // Hands a signal vkrt does not own to the program's disposition. With SIG_DFL or SIG_IGN
  // recorded: `on_default` runs (the owner takes its handler away), the signal's disposition
  // becomes SIG_DFL, and the signal is sent again unless returning re-executes the faulting
  // instruction (`refaults`), which then takes the default action by itself.
  void Forward(siginfo_t* si, void* uc, bool refaults, void (*on_default)());

 private:
  const int sig_;
  struct sigaction actions_[2] = {};
  std::atomic<int> slot_{0};
};

}  // namespace vkrt

#endif  // VKRT_SRC_COMMON_SIGNAL_CHAIN_H_
