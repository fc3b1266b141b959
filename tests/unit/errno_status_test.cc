#include "common/errno_status.h"

#include <errno.h>

#include <gtest/gtest.h>

namespace vkrt {
namespace {

TEST(ErrnoStatus, CarriesTheExactErrnoAndNamesTheCall) {
  absl::Status s = ErrnoError(EBADF, "mmap(0x1000, 4096)");
  EXPECT_EQ(ErrnoOf(s), EBADF);
  EXPECT_NE(s.message().find("mmap(0x1000, 4096)"), absl::string_view::npos);
  EXPECT_EQ(ErrnoOf(ErrnoError(ENOTTY, "x")), ENOTTY);
}

TEST(ErrnoStatus, SyscallErrorReadsErrno) {
  errno = EACCES;
  EXPECT_EQ(ErrnoOf(SyscallError("open(/x)")), EACCES);
}

TEST(ErrnoStatus, CodesWithoutPayloadMapToErrno) {
  EXPECT_EQ(ErrnoOf(absl::OkStatus()), 0);
  EXPECT_EQ(ErrnoOf(absl::NotFoundError("x")), ENOENT);
  EXPECT_EQ(ErrnoOf(absl::InvalidArgumentError("x")), EINVAL);
}

}  // namespace
}  // namespace vkrt
