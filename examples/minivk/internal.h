// minivk: small helpers shared by kernel.cc and syscalls.cc (not part of any interface).
#ifndef VKRT_EXAMPLES_MINIVK_INTERNAL_H_
#define VKRT_EXAMPLES_MINIVK_INTERNAL_H_

#include <stdint.h>

#include <string>
#include <vector>


namespace minivk {

// Syscall() results that are not values for rax.
constexpr int64_t kKeepRax = INT64_MIN;  // the registers are already what the guest sees
constexpr int64_t kRestart = -512;       // interrupted: restart, or EINTR (Linux's ERESTARTSYS)

constexpr uint64_t Bit(int sig) { return uint64_t{1} << (sig - 1); }
int64_t MonotonicNs();
// Signals whose default action is to do nothing here.
bool DefaultIgnore(int sig);
std::string BaseName(const std::string& path);
}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_INTERNAL_H_
