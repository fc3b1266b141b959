// Host failures as absl::Status, carrying the errno the C layer will report.
//
// Every failing system call becomes an error whose message names the call and its
// arguments ("ptrace(PTRACE_SETREGS, 1234): No such process"). The errno travels as a
// payload so that the C layer (src/api.cc), the only place that sets errno, reports
// exactly what the kernel or the contract said.
#ifndef VKRT_SRC_COMMON_ERRNO_STATUS_H_
#define VKRT_SRC_COMMON_ERRNO_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace vkrt {

// An error for errno `err`, with `what` naming the call or rule that failed.
absl::Status ErrnoError(int err, absl::string_view what);

// ErrnoError(errno, call) for the call that just failed; reads errno itself.
absl::Status SyscallError(absl::string_view call);

// The errno a Status stands for: its payload if it has one, else a mapping of its code.
// Returns 0 for OK.
int ErrnoOf(const absl::Status& status);

}  // namespace vkrt

#endif  // VKRT_SRC_COMMON_ERRNO_STATUS_H_
