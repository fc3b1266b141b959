// The libc functions libvkrt interposes for the vkernel's own address space
// (vpagetable/own_space.h): mmap/mmap64/munmap for MAP_VPAGETABLE, sigaction/signal/bsd_signal
// so that vkrt's SIGSEGV handler (and the preload shim's SIGSYS handler) stays in front of the
// program's.
//
// Built without sanitizer instrumentation (src/meson.build): sanitizer runtimes call mmap
// while they initialise, before instrumented code may run. Until the process creates its
// first VPAGETABLE region (`vkrt_own_active`), every call goes straight to the next
// definition (libc's, or a sanitizer's interceptor), found with dlsym(RTLD_NEXT).
#include <dlfcn.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "vkrt/vmspace.h"

extern "C" {
// Set (never cleared) by own_space.cc once a region or vkrt's SIGSEGV handler exists.
__attribute__((visibility("hidden"))) int vkrt_own_active = 0;
// In src/api.cc (instrumented like the rest of the library).
__attribute__((visibility("hidden"))) void* vkrt_own_mmap(void* addr, size_t len, int prot,
                                                         int flags, int fd, off_t offset);
__attribute__((visibility("hidden"))) void vkrt_own_forget(void* addr, size_t len);
__attribute__((visibility("hidden"))) int vkrt_own_sigaction(int sig,
                                                            const struct sigaction* act,
                                                            struct sigaction* oldact);
int __sigaction(int sig, const struct sigaction* act, struct sigaction* oldact);
// Set by the preload shim (src/preload/preload.cc), which keeps its SIGSYS handler in front
// of the program's: it records the program's disposition and returns nonzero.
__attribute__((visibility("hidden"))) int (*vkrt_sigsys_hook)(const struct sigaction*,
                                                              struct sigaction*) = nullptr;
}

namespace {

bool OwnActive() { return __atomic_load_n(&vkrt_own_active, __ATOMIC_ACQUIRE) != 0; }

// dlsym may allocate, and an allocation may mmap: while a lookup is in progress anywhere, the
// raw system call stands in.
int g_resolving = 0;

void* NextDefinition(void** slot, const char* name) {
  void* fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (fn != nullptr) return fn;
  int expected = 0;
  if (!__atomic_compare_exchange_n(&g_resolving, &expected, 1, false, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    return nullptr;
  }
  fn = dlsym(RTLD_NEXT, name);
  __atomic_store_n(&g_resolving, 0, __ATOMIC_RELEASE);
  if (fn != nullptr) __atomic_store_n(slot, fn, __ATOMIC_RELEASE);
  return fn;
}

using MmapFn = void* (*)(void*, size_t, int, int, int, off_t);
using MunmapFn = int (*)(void*, size_t);
using SigactionFn = int (*)(int, const struct sigaction*, struct sigaction*);
void* g_next_mmap = nullptr;
void* g_next_munmap = nullptr;
void* g_next_sigaction = nullptr;

void* NextMmap(void* addr, size_t len, int prot, int flags, int fd, off_t offset) {
  if (auto next = reinterpret_cast<MmapFn>(NextDefinition(&g_next_mmap, "mmap"))) {
    return next(addr, len, prot, flags, fd, offset);
  }
  const long r = syscall(SYS_mmap, addr, len, prot, flags, fd, offset);
  return r == -1 ? MAP_FAILED : reinterpret_cast<void*>(r);
}

}  // namespace

// Named through asm labels: with _FILE_OFFSET_BITS=64 glibc's header renames mmap to mmap64.
extern "C" VKRT_API void* VkrtMmap(void* addr, size_t len, int prot, int flags, int fd,
                                   off_t offset) __asm__("mmap");
extern "C" VKRT_API void* VkrtMmap64(void* addr, size_t len, int prot, int flags, int fd,
                                     off_t offset) __asm__("mmap64");

void* VkrtMmap(void* addr, size_t len, int prot, int flags, int fd, off_t offset) {
  if (flags & MAP_VPAGETABLE) return vkrt_own_mmap(addr, len, prot, flags, fd, offset);
  void* p = NextMmap(addr, len, prot, flags, fd, offset);
  if (p != MAP_FAILED && (flags & MAP_FIXED) && OwnActive()) {
    vkrt_own_forget(p, len);  // it may have replaced a VPAGETABLE region
  }
  return p;
}

void* VkrtMmap64(void* addr, size_t len, int prot, int flags, int fd, off_t offset) {
  return VkrtMmap(addr, len, prot, flags, fd, offset);
}

extern "C" VKRT_API int munmap(void* addr, size_t len) {
  auto next = reinterpret_cast<MunmapFn>(NextDefinition(&g_next_munmap, "munmap"));
  const int r = next != nullptr ? next(addr, len)
                                : static_cast<int>(syscall(SYS_munmap, addr, len));
  if (r == 0 && OwnActive()) vkrt_own_forget(addr, len);
  return r;
}

extern "C" VKRT_API int sigaction(int sig, const struct sigaction* act,
                                  struct sigaction* oldact) {
  if (sig == SIGSEGV && OwnActive() && vkrt_own_sigaction(sig, act, oldact)) return 0;
  if (sig == SIGSYS) {
    if (auto hook = __atomic_load_n(&vkrt_sigsys_hook, __ATOMIC_ACQUIRE)) {
      if (hook(act, oldact)) return 0;
    }
  }
  if (auto next = reinterpret_cast<SigactionFn>(NextDefinition(&g_next_sigaction, "sigaction"))) {
    return next(sig, act, oldact);
  }
  return __sigaction(sig, act, oldact);
}

// BSD semantics, as glibc's signal(): the signal blocked in its handler, calls restarted.
extern "C" VKRT_API sighandler_t signal(int sig, sighandler_t handler) {
  struct sigaction act = {};
  struct sigaction old = {};
  act.sa_handler = handler;
  sigemptyset(&act.sa_mask);
  if (sig > 0 && sig < NSIG) sigaddset(&act.sa_mask, sig);
  act.sa_flags = SA_RESTART;
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

extern "C" VKRT_API sighandler_t bsd_signal(int sig, sighandler_t handler) {
  return signal(sig, handler);
}
