// minivk: small helpers shared by kernel.cc and syscalls.cc (not part of any interface).
#ifndef VKRT_EXAMPLES_MINIVK_INTERNAL_H_
#define VKRT_EXAMPLES_MINIVK_INTERNAL_H_

#include <stdint.h>
#include <sys/stat.h>

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
std::string BaseName(const std::string& path);
}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_INTERNAL_H_
