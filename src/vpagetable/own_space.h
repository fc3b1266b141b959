// MAP_VPAGETABLE on the vkernel's own address space (SPEC §4, last bullet): DragonFly's vkernel
// maps its kernel space with mmap(MAP_VPAGETABLE) and governs it with mcontrol(MADV_SETMAP /
// MADV_INVAL). vkrt provides the same in-process: the region is reserved inaccessible, faults
// in it arrive as SIGSEGV in the faulting thread, where vkrt's handler walks the tables (the
// same walker and vpt::Space as every backend) and installs the page with mmap(MAP_FIXED) of
// the backing object. Faults the walk cannot resolve reach the program's own SIGSEGV handler
// (or its default action), as on DragonFly.
//
// The handler is installed with the first region and stays first: sigaction()/signal() for
// SIGSEGV are interposed (src/api.cc) and record the program's handler, which vkrt calls for
// every fault it does not own, with the program's sa_mask and flags honoured.
//
// Limits: a system call given an address in the region whose page is not installed yet fails
// with EFAULT (the host kernel does not raise SIGSEGV inside system calls); touch it first.
// Threads: all entry points are thread-safe; they block signals while they hold the space's
// lock, so a signal handler that touches the region cannot deadlock against them.
#ifndef VKRT_SRC_VPAGETABLE_OWN_SPACE_H_
#define VKRT_SRC_VPAGETABLE_OWN_SPACE_H_

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vkrt::vpt {

// mmap(addr, len, prot, flags | MAP_VPAGETABLE, fd, offset) on the caller's space: validates
// as vmspace_mmap does (EINVAL, EBADF, EACCES, ENODEV, ENOMEM) and returns the address.
absl::StatusOr<uint64_t> OwnMap(uint64_t addr, uint64_t len, int prot, int flags, int fd,
                                off_t offset);
// Forgets the regions in [addr, addr+len) after the caller unmapped or replaced the range.
void OwnForget(uint64_t addr, uint64_t len);
// True while any own region exists (cheap).
bool OwnHasRegions();
// MADV_SETMAP (value = root) or MADV_INVAL over [start, end) of the caller's space. SETMAP
// fails with EINVAL if part of the range is mapped but not MAP_VPAGETABLE (holes skipped).
absl::Status OwnControl(uint64_t start, uint64_t end, int behav, uint64_t value);

// sigaction(SIGSEGV, act, oldact) as the program sees it once vkrt's handler is installed:
// records `act` as the program's handler and reports the previous one. Returns false (and
// does nothing) for other signals or before vkrt's handler exists: the caller then performs
// the real sigaction.
bool OwnSigaction(int sig, const struct sigaction* act, struct sigaction* oldact);

// Statistics for tests.
uint64_t OwnInstalled();

}  // namespace vkrt::vpt

#endif  // VKRT_SRC_VPAGETABLE_OWN_SPACE_H_
