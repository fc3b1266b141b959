#include "common/errno_status.h"

#include <errno.h>
#include <string.h>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace vkrt {
namespace {

constexpr char kErrnoPayload[] = "vkrt/errno";

absl::StatusCode CodeForErrno(int err) {
  switch (err) {
    case EINVAL: return absl::StatusCode::kInvalidArgument;
    case ENOENT: case ESRCH: return absl::StatusCode::kNotFound;
    case EEXIST: return absl::StatusCode::kAlreadyExists;
    case EBUSY: case EAGAIN: return absl::StatusCode::kUnavailable;
    case ENOMEM: return absl::StatusCode::kResourceExhausted;
    case EACCES: case EPERM: return absl::StatusCode::kPermissionDenied;
    case EOPNOTSUPP: case ENOSYS: return absl::StatusCode::kUnimplemented;
    case EFAULT: return absl::StatusCode::kOutOfRange;
    default: return absl::StatusCode::kInternal;
  }
}

}  // namespace

absl::Status ErrnoError(int err, absl::string_view what) {
  absl::Status status(CodeForErrno(err), absl::StrCat(what, ": ", strerror(err)));
  status.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return status;
}

absl::Status SyscallError(absl::string_view call) { return ErrnoError(errno, call); }

int ErrnoOf(const absl::Status& status) {
  if (status.ok()) return 0;
  if (auto payload = status.GetPayload(kErrnoPayload)) {
    int err = 0;
    for (char c : std::string(*payload)) err = err * 10 + (c - '0');
    if (err > 0) return err;
  }
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument: return EINVAL;
    case absl::StatusCode::kNotFound: return ENOENT;
    case absl::StatusCode::kAlreadyExists: return EEXIST;
    case absl::StatusCode::kUnavailable: return EBUSY;
    case absl::StatusCode::kResourceExhausted: return ENOMEM;
    case absl::StatusCode::kPermissionDenied: return EACCES;
    case absl::StatusCode::kUnimplemented: return EOPNOTSUPP;
    case absl::StatusCode::kOutOfRange: return EFAULT;
    default: return EIO;
  }
}

}  // namespace vkrt
