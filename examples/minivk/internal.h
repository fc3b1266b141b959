// minivk: small helpers shared by kernel.cc and syscalls.cc (not part of any interface).
#ifndef VKRT_EXAMPLES_MINIVK_INTERNAL_H_
#define VKRT_EXAMPLES_MINIVK_INTERNAL_H_

#include <stdint.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <string>
#include <vector>


namespace minivk {

// Syscall() results that are not values for rax.
constexpr int64_t kKeepRax = INT64_MIN;  // the registers are already what the guest sees
constexpr int64_t kRestart = -512;       // interrupted: restart, or EINTR (Linux's ERESTARTSYS)

constexpr uint64_t Bit(int sig) { return uint64_t{1} << (sig - 1); }
int64_t MonotonicNs();
// Whether I/O on a host file of this kind may wait (a pipe, a socket, a terminal, most
// devices): minivk then makes sure first that it will not, so that its vkernel thread never
// blocks. Regular files, directories, block devices and the memory devices that never wait
// (/dev/null, zero, full, random, urandom) need no such look (a system call per read or write).
bool MayBlock(const struct stat& st);
// Signals whose default action is to do nothing here.
bool DefaultIgnore(int sig);
// Whether a process whose action for `sig` has this handler (0 SIG_DFL, 1 SIG_IGN) ignores it.
inline bool Ignores(uint64_t handler, int sig) {
  return handler == 1 || (handler == 0 && DefaultIgnore(sig));
}
// Clock ticks as times(2) and siginfo count them (the guests' AT_CLKTCK is 100).
constexpr int64_t kNsPerClockTick = 10000000;
inline struct timeval NsToTimeval(int64_t ns) {
  return {ns / 1000000000, ns % 1000000000 / 1000};
}
std::string BaseName(const std::string& path);
}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_INTERNAL_H_
