#include "common/signal_chain.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

extern "C" int __sigaction(int sig, const struct sigaction* act, struct sigaction* oldact);

namespace vkrt {

void SignalChain::Forward(siginfo_t* si, void* ucv, bool refaults, void (*on_default)()) {
  struct sigaction act = Get();
  if (act.sa_handler == SIG_DFL || act.sa_handler == SIG_IGN) {
    // Nobody handles it: the default action, as if vkrt's handler had never been there.
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    __sigaction(sig_, &dfl, nullptr);
    if (on_default != nullptr) on_default();
    if (!refaults) syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig_);
    return;
  }
  if (act.sa_flags & SA_RESETHAND) {
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    Set(dfl);
  }
  // The program's handler runs with the mask the kernel would have given it.
  auto* uc = static_cast<ucontext_t*>(ucv);
  sigset_t mask = uc->uc_sigmask;
  sigorset(&mask, &mask, &act.sa_mask);
  if (!(act.sa_flags & SA_NODEFER)) sigaddset(&mask, sig_);
  pthread_sigmask(SIG_SETMASK, &mask, nullptr);
  if (act.sa_flags & SA_SIGINFO) {
    act.sa_sigaction(sig_, si, ucv);
  } else {
    act.sa_handler(sig_);
  }
}

}  // namespace vkrt
