// LD_PRELOAD=libvkrt_preload.so (SPEC §6): the same DragonFly program (tests/dfly_prog.c),
// linked with libvkrt, linked with nothing, and making raw system calls, prints the same
// thing; without the shim the raw build gets ENOSYS (so the shim is what makes it work).
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <string>

#include <gtest/gtest.h>

namespace {

// Runs `command` through the shell; its standard output and exit status.
std::string RunCommand(const std::string& command, int& status) {
  std::string out;
  FILE* f = popen(command.c_str(), "r");
  if (f == nullptr) return "popen failed";
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  status = pclose(f);
  return out;
}

const std::string kPreload = std::string("LD_PRELOAD=") + VKRT_PRELOAD_LIB + " ";

TEST(Preload, RawSystemCallsUnderTheShimBehaveLikeTheLibrary) {
  int linked_status = -1, raw_status = -1;
  const std::string linked = RunCommand(DFLY_LINKED, linked_status);
  const std::string raw = RunCommand(kPreload + DFLY_RAW, raw_status);
  ASSERT_EQ(0, linked_status) << linked;
  EXPECT_EQ(0, raw_status) << raw;
  EXPECT_NE(std::string::npos, linked.find("guest stopped")) << linked;
  EXPECT_EQ(linked, raw);
}

TEST(Preload, ProgramsLinkedWithNothingGetTheFunctionsFromTheShim) {
  int linked_status = -1, plain_status = -1;
  const std::string linked = RunCommand(DFLY_LINKED, linked_status);
  const std::string plain = RunCommand(kPreload + DFLY_PLAIN, plain_status);
  ASSERT_EQ(0, linked_status) << linked;
  EXPECT_EQ(0, plain_status) << plain;
  EXPECT_EQ(linked, plain);
}

TEST(Preload, WithoutTheShimRawCallsAreEnosys) {
  int status = -1;
  const std::string raw = RunCommand(DFLY_RAW, status);
  EXPECT_NE(std::string::npos, raw.find("vmspace_create                           -1 "
                                        "Function not implemented"))
      << raw;
}

}  // namespace
