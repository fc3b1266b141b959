// vpt::InferAccess (what a SIGSEGV tells about its access, table-driven over every rule) and
// vpt::Space (regions, SETMAP/INVAL, fault resolution through the walker, fault-around, the
// translation budget, installer errors and vmspace_pread/pwrite copies) against a recording
// fake Installer and a real vpt::Backing over a memfd holding 4-level page tables built by
// the test.
#include "vpagetable/space.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <ostream>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "common/errno_status.h"
#include "vkrt/vmspace.h"

#ifndef SEGV_PKUERR
#define SEGV_PKUERR 4
#endif

namespace vkrt::vpt {
namespace {

constexpr uint64_t kPage = 4096;
constexpr int kR = PROT_READ;
constexpr int kRW = PROT_READ | PROT_WRITE;
constexpr int kRX = PROT_READ | PROT_EXEC;
constexpr int kRWX = PROT_READ | PROT_WRITE | PROT_EXEC;

// ---- InferAccess ----

struct InferCase {
  const char* name;
  uint64_t addr;
  uint64_t rip;
  int si_code;
  int installed_prot;  // -1: not installed
  Inference inference;
  Access access;  // checked unless kUnknown
};

std::ostream& operator<<(std::ostream& os, const InferCase& c) { return os << c.name; }

constexpr uint64_t kRip = 0x401010;      // on page 0x401000
constexpr uint64_t kRipEnd = 0x401FF8;   // 8 bytes before its page's end
constexpr uint64_t kData = 0x600123;     // far from either

const InferCase kInferCases[] = {
    // Not installed, on rip's page: the instruction could not be fetched.
    {"NotInstalledMapErrOnRipPage", 0x401800, kRip, SEGV_MAPERR, -1, Inference::kKnown,
     Access::kExecute},
    {"NotInstalledMapErrAtRip", kRip, kRip, SEGV_MAPERR, -1, Inference::kKnown,
     Access::kExecute},
    {"NotInstalledAccErrOnRipPage", 0x401000, kRip, SEGV_ACCERR, -1, Inference::kKnown,
     Access::kExecute},
    // Not installed, elsewhere: a data access, read or write.
    {"NotInstalledMapErrElsewhere", kData, kRip, SEGV_MAPERR, -1, Inference::kGuessRead,
     Access::kRead},
    {"NotInstalledAccErrElsewhere", kData, kRip, SEGV_ACCERR, -1, Inference::kGuessRead,
     Access::kRead},
    {"NotInstalledPageBeforeRip", 0x400FFF, kRip, SEGV_MAPERR, -1, Inference::kGuessRead,
     Access::kRead},
    {"NotInstalledNextPageFarFromRip", 0x402000, kRip, SEGV_MAPERR, -1,
     Inference::kGuessRead, Access::kRead},
    // Not installed, the next page within 16 bytes of rip: the instruction's tail or data.
    {"NotInstalledStraddleMapErr", 0x402000, kRipEnd, SEGV_MAPERR, -1, Inference::kUnknown,
     Access::kRead},
    {"NotInstalledStraddleAccErrLastByte", 0x402007, kRipEnd, SEGV_ACCERR, -1,
     Inference::kUnknown, Access::kRead},
    {"NotInstalledSixteenBytesPastRipIsData", 0x402008, kRipEnd, SEGV_MAPERR, -1,
     Inference::kGuessRead, Access::kRead},
    // Not installed, other si_codes: only the error code can tell.
    {"NotInstalledPkuErr", kData, kRip, SEGV_PKUERR, -1, Inference::kUnknown, Access::kRead},
    {"NotInstalledPkuErrOnRipPage", kRip, kRip, SEGV_PKUERR, -1, Inference::kUnknown,
     Access::kRead},
    {"NotInstalledSiUser", kData, kRip, SI_USER, -1, Inference::kUnknown, Access::kRead},
    // Installed R only: a write, unless a fetch could have touched the page. On rip's page
    // the fetch itself is refused (no PROT_EXEC), so it is a fetch.
    {"ReadOnlyElsewhereIsWrite", kData, kRip, SEGV_ACCERR, kR, Inference::kKnown,
     Access::kWrite},
    {"ReadOnlyOnRipPageIsFetch", 0x401000, kRip, SEGV_ACCERR, kR, Inference::kKnown,
     Access::kExecute},
    {"ReadOnlyStraddleIsUnknown", 0x402004, kRipEnd, SEGV_ACCERR, kR, Inference::kUnknown,
     Access::kRead},
    {"ReadOnlyPastStraddleIsWrite", 0x402008, kRipEnd, SEGV_ACCERR, kR, Inference::kKnown,
     Access::kWrite},
    // Installed R|X: reads and fetches pass, so a write.
    {"ReadExecElsewhereIsWrite", kData, kRip, SEGV_ACCERR, kRX, Inference::kKnown,
     Access::kWrite},
    {"ReadExecOnRipPageIsWrite", 0x401F00, kRip, SEGV_ACCERR, kRX, Inference::kKnown,
     Access::kWrite},
    {"ReadExecStraddleIsWrite", 0x402000, kRipEnd, SEGV_ACCERR, kRX, Inference::kKnown,
     Access::kWrite},
    // Installed R|W: reads and writes pass, so a fetch.
    {"ReadWriteOnRipPageIsFetch", kRip, kRip, SEGV_ACCERR, kRW, Inference::kKnown,
     Access::kExecute},
    {"ReadWriteStraddleIsFetch", 0x402000, kRipEnd, SEGV_ACCERR, kRW, Inference::kKnown,
     Access::kExecute},
    {"ReadWriteElsewhereIsFetch", kData, kRip, SEGV_ACCERR, kRW, Inference::kKnown,
     Access::kExecute},
    // Installed R|W|X: everything allowed, yet a fault: unknown.
    {"AllAllowedElsewhereIsUnknown", kData, kRip, SEGV_ACCERR, kRWX, Inference::kUnknown,
     Access::kRead},
    {"AllAllowedOnRipPageIsUnknown", kRip, kRip, SEGV_ACCERR, kRWX, Inference::kUnknown,
     Access::kRead},
    // Installed, but the signal says nothing is mapped: the record disagrees; unknown.
    {"ReadOnlyMapErrIsUnknown", kData, kRip, SEGV_MAPERR, kR, Inference::kUnknown,
     Access::kRead},
    {"ReadWriteMapErrOnRipPageIsUnknown", kRip, kRip, SEGV_MAPERR, kRW, Inference::kUnknown,
     Access::kRead},
    // Installed, protection keys: unknown.
    {"ReadOnlyPkuErrIsUnknown", kData, kRip, SEGV_PKUERR, kR, Inference::kUnknown,
     Access::kRead},
    {"ReadWritePkuErrOnRipPageIsUnknown", kRip, kRip, SEGV_PKUERR, kRW, Inference::kUnknown,
     Access::kRead},
};

class InferAccessTest : public ::testing::TestWithParam<InferCase> {};

TEST_P(InferAccessTest, FollowsTheRules) {
  const InferCase& c = GetParam();
  // Start from an access the case does not expect, so an unset result is caught.
  Access access = c.access == Access::kExecute ? Access::kRead : Access::kExecute;
  const Inference got = InferAccess(c.addr, c.rip, c.si_code, c.installed_prot, access);
  EXPECT_EQ(static_cast<int>(c.inference), static_cast<int>(got));
  if (c.inference != Inference::kUnknown && got == c.inference) {
    EXPECT_EQ(static_cast<int>(c.access), static_cast<int>(access));
  }
}

INSTANTIATE_TEST_SUITE_P(Rules, InferAccessTest, ::testing::ValuesIn(kInferCases),
                         [](const ::testing::TestParamInfo<InferCase>& info) {
                           return std::string(info.param.name);
                         });

// ---- Space ----

// One call to the installer.
struct Call {
  bool install;  // false: Drop
  uint64_t addr;
  uint64_t len;
  int prot;
  int handle;
  uint64_t offset;
  bool operator==(const Call&) const = default;
};

Call InstallCall(uint64_t addr, int prot, int handle, uint64_t offset) {
  return {true, addr, kPage, prot, handle, offset};
}
// A fault-around run of `pages` pages.
Call RunCall(uint64_t addr, uint64_t pages, int prot, int handle, uint64_t offset) {
  return {true, addr, pages * kPage, prot, handle, offset};
}
Call DropCall(uint64_t addr, uint64_t len) { return {false, addr, len, 0, 0, 0}; }

void PrintTo(const Call& c, std::ostream* os) {
  if (c.install) {
    *os << "Install(" << std::hex << "0x" << c.addr << ", 0x" << c.len << ", prot " << c.prot
        << ", handle " << std::dec << c.handle << ", offset 0x" << std::hex << c.offset << ")"
        << std::dec;
  } else {
    *os << "Drop(" << std::hex << "0x" << c.addr << ", 0x" << c.len << ")" << std::dec;
  }
}

class FakeInstaller : public Installer {
 public:
  absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                       uint64_t offset) override {
    calls.push_back({true, addr, len, prot, handle, offset});
    if (!install_failures.empty()) {  // fail (after recording the attempt)
      absl::Status s = install_failures.front();
      install_failures.erase(install_failures.begin());
      return s;
    }
    return absl::OkStatus();
  }
  absl::Status Drop(uint64_t addr, uint64_t len) override {
    calls.push_back(DropCall(addr, len));
    return absl::OkStatus();
  }
  std::vector<Call> calls;
  std::vector<absl::Status> install_failures;  // returned by the next Install calls
};

constexpr uint64_t kObjectSize = 64 * kPage;
constexpr uint64_t kTableBits = VPTE_V | VPTE_RW | VPTE_U;

// One 4-level tree in the object: a single table per level.
struct Tree {
  uint64_t pml4, pdpt, pd, pt;
  uint64_t frames;  // leaf i maps frames + i pages
  uint64_t root() const { return pml4 | kTableBits; }
};
constexpr Tree kTreeA = {0x1000, 0x2000, 0x3000, 0x4000, 0x10000};  // indices 0..31
constexpr Tree kTreeB = {0x5000, 0x6000, 0x7000, 0x8000, 0x30000};  // indices 0..15

constexpr uint64_t kStart = 0x40000000;  // the main region: 16 pages, R|W, offset 0
constexpr uint64_t kPages = 16;
constexpr uint64_t kEnd = kStart + kPages * kPage;
constexpr int kHandle = 5;

uint64_t At(uint64_t page) { return kStart + page * kPage; }

class SpaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = memfd_create("vkrt_space_test", MFD_CLOEXEC);
    ASSERT_GE(fd_, 0) << strerror(errno);
    ASSERT_EQ(0, ftruncate(fd_, kObjectSize)) << strerror(errno);
    void* p = mmap(nullptr, kObjectSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    ASSERT_NE(MAP_FAILED, p) << strerror(errno);
    mem_ = static_cast<unsigned char*>(p);
    auto backing = Backing::ForFd(fd_);
    ASSERT_TRUE(backing.ok()) << backing.status();
    backing_ = *std::move(backing);
    BuildTree(kTreeA, 32);
    BuildTree(kTreeB, 16);
  }
  void TearDown() override {
    if (mem_ != nullptr) munmap(mem_, kObjectSize);
    if (fd_ >= 0) close(fd_);
  }

  uint64_t& Entry(uint64_t offset) { return *reinterpret_cast<uint64_t*>(mem_ + offset); }
  // The leaf entry of page index `index` in `tree`, with the walk's index split.
  uint64_t& Leaf(const Tree& t, uint64_t index) { return Entry(t.pt + (index & 511) * 8); }
  void BuildTree(const Tree& t, uint64_t count) {
    for (uint64_t index = 0; index < count; ++index) {
      Entry(t.pml4 + ((index >> 27) & 511) * 8) = t.pdpt | kTableBits;
      Entry(t.pdpt + ((index >> 18) & 511) * 8) = t.pd | kTableBits;
      Entry(t.pd + ((index >> 9) & 511) * 8) = t.pt | kTableBits;
      Leaf(t, index) = (t.frames + index * kPage) | kTableBits;  // RW, M clear
    }
  }
  static uint64_t Frame(const Tree& t, uint64_t index) { return t.frames + index * kPage; }
  // Clears A and M in the first `count` leaves of `t` (as the vkernel may), so that no
  // neighbour qualifies for fault-around.
  void ClearAccessed(const Tree& t, uint64_t count) {
    for (uint64_t index = 0; index < count; ++index) Leaf(t, index) &= ~(VPTE_A | VPTE_M);
  }

  void AddMainRegion(Space& space, int prot = kRW) {
    space.AddRegion(kStart, kPages * kPage, prot, 0, backing_, kHandle);
  }
  void AddMappedMainRegion(Space& space) {
    AddMainRegion(space);
    FakeInstaller none;
    ASSERT_TRUE(space.SetMap(kStart, kPages * kPage, kTreeA.root(), none).ok());
    ASSERT_TRUE(none.calls.empty());
  }

  // Resolve, which must not fail with a Status.
  Resolution Resolve(Space& space, uint64_t addr, Access access, bool speculative = false) {
    auto r = space.Resolve(addr, access, installer_, speculative);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : Resolution{};
  }
  int Installed(Space& space, uint64_t addr) {
    int prot = -2;
    EXPECT_TRUE(space.Lookup(addr, prot)) << std::hex << addr;
    return prot;
  }

  int fd_ = -1;
  unsigned char* mem_ = nullptr;
  std::shared_ptr<Backing> backing_;
  FakeInstaller installer_;
  Space space_{64};
};

using Outcome = Resolution::Outcome;

TEST_F(SpaceTest, ResolveOutsideRegionsIsNotVpt) {
  EXPECT_EQ(Outcome::kNotVpt, Resolve(space_, kStart, Access::kRead).outcome);
  EXPECT_FALSE(space_.HasRegions());
  AddMappedMainRegion(space_);
  EXPECT_TRUE(space_.HasRegions());
  for (uint64_t addr : {uint64_t{0}, kStart - 1, kStart - kPage, kEnd, kEnd + 0x123}) {
    EXPECT_EQ(Outcome::kNotVpt, Resolve(space_, addr, Access::kRead).outcome) << addr;
    EXPECT_EQ(Outcome::kNotVpt, Resolve(space_, addr, Access::kWrite).outcome) << addr;
    int prot = -2;
    EXPECT_FALSE(space_.Lookup(addr, prot)) << addr;
  }
  EXPECT_TRUE(installer_.calls.empty());
  EXPECT_EQ(0u, space_.installed());
  // The region's own edges are in it.
  EXPECT_EQ(Outcome::kInstalled, Resolve(space_, kStart, Access::kRead).outcome);
  EXPECT_EQ(Outcome::kInstalled, Resolve(space_, kEnd - 1, Access::kRead).outcome);
}

TEST_F(SpaceTest, WithoutSetMapEveryAccessFaults) {
  AddMainRegion(space_);
  Resolution read = Resolve(space_, At(3), Access::kRead);
  EXPECT_EQ(Outcome::kFault, read.outcome);
  EXPECT_EQ(uint32_t{PGEX_U}, read.err);
  Resolution write = Resolve(space_, At(3) + 8, Access::kWrite);
  EXPECT_EQ(Outcome::kFault, write.outcome);
  EXPECT_EQ(uint32_t{PGEX_U | PGEX_W}, write.err);
  EXPECT_TRUE(installer_.calls.empty());
  EXPECT_EQ(0u, space_.installed());
  EXPECT_EQ(-1, Installed(space_, At(3)));
  // The tables were not touched.
  EXPECT_EQ(0u, Leaf(kTreeA, 3) & (VPTE_A | VPTE_M));
  EXPECT_EQ(0u, Entry(kTreeA.pml4) & VPTE_A);
}

TEST_F(SpaceTest, ReadInstallsReadOnlyWhileModifiedIsClear) {
  AddMappedMainRegion(space_);
  Resolution r = Resolve(space_, At(2) + 0x123, Access::kRead);
  EXPECT_EQ(Outcome::kInstalled, r.outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(2), kR, kHandle, Frame(kTreeA, 2))}),
            installer_.calls);
  EXPECT_EQ(VPTE_A, Leaf(kTreeA, 2) & (VPTE_A | VPTE_M));
  EXPECT_EQ(VPTE_A, Entry(kTreeA.pml4) & (VPTE_A | VPTE_M));
  EXPECT_EQ(0u, Leaf(kTreeA, 1) & VPTE_A);  // only the walked leaf
  EXPECT_EQ(1u, space_.installed());
  EXPECT_EQ(kR, Installed(space_, At(2)));
  EXPECT_EQ(kR, Installed(space_, At(2) + 0xFFF));
  EXPECT_EQ(-1, Installed(space_, At(3)));
}

TEST_F(SpaceTest, WriteInstallsWritableAndSetsModified) {
  AddMappedMainRegion(space_);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(3), Access::kRead).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(3) + 0x10, Access::kWrite).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(3), kR, kHandle, Frame(kTreeA, 3)),
                               InstallCall(At(3), kRW, kHandle, Frame(kTreeA, 3))}),
            installer_.calls);
  EXPECT_EQ(VPTE_A | VPTE_M, Leaf(kTreeA, 3) & (VPTE_A | VPTE_M));
  EXPECT_EQ(1u, space_.installed());  // the record was replaced
  EXPECT_EQ(kRW, Installed(space_, At(3)));
  // A leaf with M already set installs writable on a read.
  Leaf(kTreeA, 4) |= VPTE_M;
  installer_.calls.clear();
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(4), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(4), kRW, kHandle, Frame(kTreeA, 4))}),
            installer_.calls);
  // A read-only leaf refuses a write as a protection fault.
  Leaf(kTreeA, 6) &= ~VPTE_RW;
  Resolution refused = Resolve(space_, At(6), Access::kWrite);
  EXPECT_EQ(Outcome::kFault, refused.outcome);
  EXPECT_EQ(uint32_t{PGEX_U | PGEX_W | PGEX_P}, refused.err);
  EXPECT_EQ(2u, space_.installed());
}

TEST_F(SpaceTest, ObjectOffsetShiftsTheWalkIndex) {
  // A region over the object from page 4 on: its page 1 is index 5.
  space_.AddRegion(kStart, 8 * kPage, kRW, 4 * kPage, backing_, kHandle);
  ASSERT_TRUE(space_.SetMap(kStart, 8 * kPage, kTreeA.root(), installer_).ok());
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(1), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(1), kR, kHandle, Frame(kTreeA, 5))}),
            installer_.calls);
  EXPECT_EQ(VPTE_A, Leaf(kTreeA, 5) & VPTE_A);
  EXPECT_EQ(0u, Leaf(kTreeA, 1) & VPTE_A);
}

TEST_F(SpaceTest, FrameBeyondTheObjectFaults) {
  AddMappedMainRegion(space_);
  Leaf(kTreeA, 9) = (kObjectSize + 16 * kPage) | kTableBits;
  Resolution r = Resolve(space_, At(9), Access::kRead);
  EXPECT_EQ(Outcome::kFault, r.outcome);
  EXPECT_EQ(uint32_t{PGEX_U}, r.err);
  EXPECT_TRUE(installer_.calls.empty());
  EXPECT_EQ(0u, space_.installed());
}

TEST_F(SpaceTest, SpeculativeNeverInstallsWritableAndIsUnsureOnFailure) {
  AddMappedMainRegion(space_);
  Leaf(kTreeA, 6) |= VPTE_A | VPTE_M;  // a non-speculative read would install writable
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(6), Access::kRead, true).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(7), Access::kWrite, true).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(6), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(6), kR, kHandle, Frame(kTreeA, 6)),
                               InstallCall(At(7), kR, kHandle, Frame(kTreeA, 7)),
                               InstallCall(At(6), kRW, kHandle, Frame(kTreeA, 6))}),
            installer_.calls);
  EXPECT_EQ(kR, Installed(space_, At(7)));
  // A failing walk is kUnsure (with the walk's error), not kFault.
  Leaf(kTreeA, 8) = 0;
  Resolution unsure = Resolve(space_, At(8), Access::kRead, true);
  EXPECT_EQ(Outcome::kUnsure, unsure.outcome);
  EXPECT_EQ(uint32_t{PGEX_U}, unsure.err);
  EXPECT_EQ(Outcome::kFault, Resolve(space_, At(8), Access::kRead).outcome);
  // Likewise without a root.
  space_.AddRegion(kEnd, 4 * kPage, kRW, 0, backing_, kHandle);
  EXPECT_EQ(Outcome::kUnsure, Resolve(space_, kEnd, Access::kRead, true).outcome);
  EXPECT_EQ(3u, installer_.calls.size());
}

TEST_F(SpaceTest, FetchFromRegionWithoutExecIsAProtectionFault) {
  AddMainRegion(space_);  // R|W
  Resolution before_setmap = Resolve(space_, At(1), Access::kExecute);
  EXPECT_EQ(Outcome::kFault, before_setmap.outcome);
  EXPECT_EQ(uint32_t{PGEX_U | PGEX_I | PGEX_P}, before_setmap.err);
  ASSERT_TRUE(space_.SetMap(kStart, kPages * kPage, kTreeA.root(), installer_).ok());
  Resolution r = Resolve(space_, At(1), Access::kExecute);
  EXPECT_EQ(Outcome::kFault, r.outcome);
  EXPECT_EQ(uint32_t{PGEX_U | PGEX_I | PGEX_P}, r.err);
  EXPECT_EQ(0u, Leaf(kTreeA, 1) & VPTE_A);  // refused before the walk
  EXPECT_TRUE(installer_.calls.empty());
  // An executable region installs the page executable (not writable: M is clear).
  space_.AddRegion(kEnd, 4 * kPage, kRWX, 0, backing_, kHandle + 1);
  ASSERT_TRUE(space_.SetMap(kEnd, 4 * kPage, kTreeA.root(), installer_).ok());
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, kEnd + kPage, Access::kExecute).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(kEnd + kPage, kRX, kHandle + 1, Frame(kTreeA, 1))}),
            installer_.calls);
}

TEST_F(SpaceTest, SetMapOnPartOfARegionSplitsItAndDropsTranslationsThere) {
  AddMappedMainRegion(space_);
  for (uint64_t page : {1, 5, 6, 10}) {
    ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(page), Access::kRead).outcome);
  }
  ASSERT_EQ(4u, space_.installed());
  installer_.calls.clear();

  ASSERT_TRUE(space_.SetMap(At(4), 4 * kPage, kTreeB.root(), installer_).ok());
  EXPECT_EQ(std::vector<Call>({DropCall(At(4), 4 * kPage)}), installer_.calls);
  EXPECT_EQ(2u, space_.installed());
  EXPECT_EQ(kR, Installed(space_, At(1)));
  EXPECT_EQ(-1, Installed(space_, At(5)));
  EXPECT_EQ(-1, Installed(space_, At(6)));
  EXPECT_EQ(kR, Installed(space_, At(10)));
  using Pieces = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(Pieces({{kStart, At(4)}, {At(4), At(8)}, {At(8), kEnd}}),
            space_.RegionPieces(kStart, kPages * kPage));

  // Only the middle part walks the new tree; the tail keeps its object offset.
  installer_.calls.clear();
  for (uint64_t page : {3, 4, 7, 8, 12}) {
    ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(page), Access::kRead).outcome);
  }
  EXPECT_EQ(std::vector<Call>({InstallCall(At(3), kR, kHandle, Frame(kTreeA, 3)),
                               InstallCall(At(4), kR, kHandle, Frame(kTreeB, 4)),
                               InstallCall(At(7), kR, kHandle, Frame(kTreeB, 7)),
                               InstallCall(At(8), kR, kHandle, Frame(kTreeA, 8)),
                               InstallCall(At(12), kR, kHandle, Frame(kTreeA, 12))}),
            installer_.calls);

  // A SETMAP over a part with nothing installed drops nothing.
  installer_.calls.clear();
  ASSERT_TRUE(space_.SetMap(At(13), 3 * kPage, 0, installer_).ok());
  EXPECT_TRUE(installer_.calls.empty());
  EXPECT_EQ(Outcome::kFault, Resolve(space_, At(14), Access::kRead).outcome);  // root 0
  EXPECT_EQ(Outcome::kInstalled, Resolve(space_, At(11), Access::kRead).outcome);

  // Over several records: one Drop per record holding translations, none for the others.
  installer_.calls.clear();
  ASSERT_EQ(8u, space_.installed());  // pages 1, 3, 4, 7, 8, 10, 11, 12
  ASSERT_TRUE(space_.SetMap(kStart, kPages * kPage, kTreeA.root(), installer_).ok());
  EXPECT_EQ(std::vector<Call>({DropCall(kStart, 4 * kPage), DropCall(At(4), 4 * kPage),
                               DropCall(At(8), 5 * kPage)}),
            installer_.calls);
  EXPECT_EQ(0u, space_.installed());
  installer_.calls.clear();
  ClearAccessed(kTreeA, 32);  // no fault-around below
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(5), Access::kRead).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(14), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(5), kR, kHandle, Frame(kTreeA, 5)),
                               InstallCall(At(14), kR, kHandle, Frame(kTreeA, 14))}),
            installer_.calls);
}

TEST_F(SpaceTest, InvalidateDropsOnlyInstalledTranslations) {
  AddMappedMainRegion(space_);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(2), Access::kRead).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(3), Access::kWrite).outcome);
  installer_.calls.clear();

  // Nothing installed in the range (or no region at all): no Drop.
  ASSERT_TRUE(space_.Invalidate(At(8), 4 * kPage, installer_).ok());
  ASSERT_TRUE(space_.Invalidate(kEnd + 100 * kPage, kPage, installer_).ok());
  ASSERT_TRUE(space_.Invalidate(At(4), 0, installer_).ok());
  EXPECT_TRUE(installer_.calls.empty());
  EXPECT_EQ(2u, space_.installed());

  ASSERT_TRUE(space_.Invalidate(At(2), kPage, installer_).ok());
  EXPECT_EQ(std::vector<Call>({DropCall(At(2), kPage)}), installer_.calls);
  EXPECT_EQ(1u, space_.installed());
  EXPECT_EQ(-1, Installed(space_, At(2)));
  EXPECT_EQ(kRW, Installed(space_, At(3)));

  installer_.calls.clear();
  ASSERT_TRUE(space_.Invalidate(kStart, kPages * kPage, installer_).ok());
  EXPECT_EQ(std::vector<Call>({DropCall(kStart, kPages * kPage)}), installer_.calls);
  EXPECT_EQ(0u, space_.installed());
  EXPECT_EQ(-1, Installed(space_, At(3)));

  // The next access walks again (and sees a change to the tables).
  ClearAccessed(kTreeA, 32);  // no fault-around of page 3
  Leaf(kTreeA, 2) = Frame(kTreeA, 20) | kTableBits;
  installer_.calls.clear();
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(2), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(2), kR, kHandle, Frame(kTreeA, 20))}),
            installer_.calls);
}

TEST_F(SpaceTest, RemoveRangeReturnsHandlesNoLongerUsed) {
  // Handle 7 for two regions, 9 for one in between.
  space_.AddRegion(kStart, 8 * kPage, kRW, 0, backing_, 7);
  space_.AddRegion(At(16), 8 * kPage, kRW, 0, backing_, 9);
  space_.AddRegion(At(32), 8 * kPage, kRW, 0, backing_, 7);
  ASSERT_TRUE(space_.SetMap(kStart, 40 * kPage, kTreeA.root(), installer_).ok());
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(1), Access::kRead).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(5), Access::kRead).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(17), Access::kRead).outcome);
  installer_.calls.clear();

  EXPECT_EQ(std::vector<int>({9}), space_.RemoveRange(At(16), 8 * kPage));
  EXPECT_EQ(2u, space_.installed());
  EXPECT_EQ(Outcome::kNotVpt, Resolve(space_, At(17), Access::kRead).outcome);
  // Part of a region: its handle is still in use.
  EXPECT_EQ(std::vector<int>(), space_.RemoveRange(kStart, 4 * kPage));
  EXPECT_EQ(1u, space_.installed());
  EXPECT_EQ(kR, Installed(space_, At(5)));
  int prot = -2;
  EXPECT_FALSE(space_.Lookup(At(1), prot));
  // The rest of the first region: handle 7 still used by the third.
  EXPECT_EQ(std::vector<int>(), space_.RemoveRange(At(4), 4 * kPage));
  EXPECT_EQ(0u, space_.installed());
  EXPECT_EQ(7, space_.HandleFor(backing_.get()));
  EXPECT_EQ(std::vector<int>({7}), space_.RemoveRange(At(32), 8 * kPage));
  EXPECT_FALSE(space_.HasRegions());
  EXPECT_EQ(-1, space_.HandleFor(backing_.get()));
  // The caller unmapped the range: the Space itself drops nothing.
  EXPECT_TRUE(installer_.calls.empty());
}

TEST_F(SpaceTest, RemoveRangeOverSeveralRegionsReportsEachHandleOnce) {
  space_.AddRegion(kStart, 8 * kPage, kRW, 0, backing_, 7);
  space_.AddRegion(At(16), 8 * kPage, kRW, 0, backing_, 9);
  space_.AddRegion(At(32), 8 * kPage, kRW, 0, backing_, 7);
  space_.AddRegion(At(48), 8 * kPage, kRW, 0, backing_, 11);
  std::vector<int> released = space_.RemoveRange(kStart, 44 * kPage);
  std::sort(released.begin(), released.end());
  EXPECT_EQ(std::vector<int>({7, 9}), released);
  EXPECT_TRUE(space_.HasRegions());
  EXPECT_EQ(11, space_.HandleFor(backing_.get()));
}

TEST_F(SpaceTest, FullBudgetEvictsEveryRegionBeforeInstalling) {
  Space space(8);
  AddMappedMainRegion(space);
  // A second region over indices 16..23.
  space.AddRegion(At(64), 8 * kPage, kRW, 16 * kPage, backing_, kHandle + 1);
  ASSERT_TRUE(space.SetMap(At(64), 8 * kPage, kTreeA.root(), installer_).ok());
  for (uint64_t page : {0, 1, 2, 3, 4, 64, 65, 66}) {
    ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(page), Access::kRead).outcome) << page;
  }
  EXPECT_EQ(8u, space.installed());
  EXPECT_EQ(0u, space.evictions());
  // Re-installing a page already there needs no room.
  ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(0), Access::kWrite).outcome);
  EXPECT_EQ(8u, space.installed());
  EXPECT_EQ(0u, space.evictions());
  for (const Call& c : installer_.calls) EXPECT_TRUE(c.install);

  // The ninth distinct page: everything is flushed first, then it is installed, and with it
  // the evicted pages of its group (A set by their walks; page 0 also M: writable), in
  // runs of contiguous frames with one protection.
  installer_.calls.clear();
  ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(10), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({DropCall(kStart, kPages * kPage), DropCall(At(64), 8 * kPage),
                               InstallCall(At(0), kRW, kHandle, Frame(kTreeA, 0)),
                               RunCall(At(1), 4, kR, kHandle, Frame(kTreeA, 1)),
                               InstallCall(At(10), kR, kHandle, Frame(kTreeA, 10))}),
            installer_.calls);
  EXPECT_EQ(1u, space.evictions());
  EXPECT_EQ(6u, space.installed());
  EXPECT_EQ(kRW, Installed(space, At(0)));
  EXPECT_EQ(-1, Installed(space, At(65)));
  EXPECT_EQ(kR, Installed(space, At(10)));
  // The second region still resolves through its own offset. Its evicted pages 64..66
  // (indices 16..18, A set) may come back by fault-around, but the budget has room for one
  // neighbour only: the first of the group, 64.
  installer_.calls.clear();
  ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(67), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(64), kR, kHandle + 1, Frame(kTreeA, 16)),
                               InstallCall(At(67), kR, kHandle + 1, Frame(kTreeA, 19))}),
            installer_.calls);
  EXPECT_EQ(8u, space.installed());
  EXPECT_EQ(1u, space.evictions());
}

TEST_F(SpaceTest, FaultAroundInstallsOnlyNeighboursAWalkWouldNotChange) {
  AddMappedMainRegion(space_);
  // Group of page 3: indices 0..15. Entries: 0, 1 accessed (contiguous frames: one run);
  // 2 not accessed (skipped); 4 accessed and modified (writable); 5 accessed; 6 accessed
  // with a frame elsewhere; 7 accessed but beyond the object (skipped); 8 accessed; 9..15
  // not accessed. Page 3 itself goes in alone: its neighbours' frames follow its own, but
  // with other rights (4) or after a gap (2).
  Leaf(kTreeA, 0) |= VPTE_A;
  Leaf(kTreeA, 1) |= VPTE_A;
  Leaf(kTreeA, 4) |= VPTE_A | VPTE_M;
  Leaf(kTreeA, 5) |= VPTE_A;
  Leaf(kTreeA, 6) = Frame(kTreeA, 31) | kTableBits | VPTE_A;
  Leaf(kTreeA, 7) = (kObjectSize + 8 * kPage) | kTableBits | VPTE_A;
  Leaf(kTreeA, 8) |= VPTE_A;
  const uint64_t leaf0 = Leaf(kTreeA, 0), leaf2 = Leaf(kTreeA, 2), leaf4 = Leaf(kTreeA, 4);

  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(3), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({RunCall(At(0), 2, kR, kHandle, Frame(kTreeA, 0)),
                               InstallCall(At(3), kR, kHandle, Frame(kTreeA, 3)),
                               RunCall(At(4), 1, kRW, kHandle, Frame(kTreeA, 4)),
                               RunCall(At(5), 1, kR, kHandle, Frame(kTreeA, 5)),
                               RunCall(At(6), 1, kR, kHandle, Frame(kTreeA, 31)),
                               RunCall(At(8), 1, kR, kHandle, Frame(kTreeA, 8))}),
            installer_.calls);
  EXPECT_EQ(5u, space_.fault_around_runs());
  EXPECT_EQ(7u, space_.installed());
  EXPECT_EQ(kR, Installed(space_, At(0)));
  EXPECT_EQ(kR, Installed(space_, At(1)));
  EXPECT_EQ(-1, Installed(space_, At(2)));
  EXPECT_EQ(kRW, Installed(space_, At(4)));
  EXPECT_EQ(-1, Installed(space_, At(7)));
  EXPECT_EQ(kR, Installed(space_, At(8)));
  EXPECT_EQ(-1, Installed(space_, At(9)));
  // The neighbours' entries are left as they were.
  EXPECT_EQ(leaf0, Leaf(kTreeA, 0));
  EXPECT_EQ(leaf2, Leaf(kTreeA, 2));
  EXPECT_EQ(leaf4, Leaf(kTreeA, 4));

  // Installed neighbours are not installed again.
  installer_.calls.clear();
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(2), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(2), kR, kHandle, Frame(kTreeA, 2))}),
            installer_.calls);
  EXPECT_EQ(5u, space_.fault_around_runs());
}

TEST_F(SpaceTest, FaultAroundStaysInsideTheRegionAndTheBudget) {
  // A 3-page region over indices 4..6: its group (0..15) reaches past both of its ends.
  for (uint64_t index = 0; index < 16; ++index) Leaf(kTreeA, index) |= VPTE_A;
  Space space(4);
  space.AddRegion(kStart, 3 * kPage, kRW, 4 * kPage, backing_, kHandle);
  ASSERT_TRUE(space.SetMap(kStart, 3 * kPage, kTreeA.root(), installer_).ok());
  ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(1), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({RunCall(At(0), 3, kR, kHandle, Frame(kTreeA, 4))}),
            installer_.calls);  // the page and both neighbours: one run
  EXPECT_EQ(3u, space.installed());

  // A budget of 4 with 3 used: one more page and no room for neighbours, no eviction.
  space.AddRegion(At(16), 8 * kPage, kRW, 0, backing_, kHandle);
  ASSERT_TRUE(space.SetMap(At(16), 8 * kPage, kTreeA.root(), installer_).ok());
  installer_.calls.clear();
  ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(16), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(16), kR, kHandle, Frame(kTreeA, 0))}),
            installer_.calls);
  EXPECT_EQ(4u, space.installed());
  EXPECT_EQ(0u, space.evictions());

  // Fault-around after an eviction fills up to the budget, never past it.
  installer_.calls.clear();
  ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(20), Access::kRead).outcome);
  EXPECT_EQ(1u, space.evictions());
  EXPECT_EQ(4u, space.installed());
  ASSERT_EQ(4u, installer_.calls.size());  // two drops, a run of 3 neighbours, the page
  EXPECT_EQ(RunCall(At(16), 3, kR, kHandle, Frame(kTreeA, 0)), installer_.calls[2]);
  EXPECT_EQ(InstallCall(At(20), kR, kHandle, Frame(kTreeA, 4)), installer_.calls[3]);
}

TEST_F(SpaceTest, FaultAroundWithinALargePage) {
  // A 2 MiB page (PS in the PD entry) at object offset 0: every neighbour in the group
  // shares the entry, whatever its 4 KiB neighbours' A bits would be.
  AddMappedMainRegion(space_);
  Entry(kTreeA.pd) = 0 | kTableBits | VPTE_PS;
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(10), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({RunCall(At(0), 16, kR, kHandle, 0)}), installer_.calls);
  EXPECT_EQ(16u, space_.installed());
  EXPECT_EQ(VPTE_A, Entry(kTreeA.pd) & (VPTE_A | VPTE_M));
}

TEST_F(SpaceTest, InstallOutOfHostMappingsFlushesAndRetries) {
  AddMappedMainRegion(space_);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(1), Access::kRead).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(9), Access::kRead).outcome);
  installer_.calls.clear();
  ClearAccessed(kTreeA, 32);  // no fault-around of page 9
  installer_.install_failures = {ErrnoError(ENOMEM, "mmap")};
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(12), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({InstallCall(At(12), kR, kHandle, Frame(kTreeA, 12)),
                               DropCall(kStart, kPages * kPage),
                               InstallCall(At(12), kR, kHandle, Frame(kTreeA, 12))}),
            installer_.calls);
  EXPECT_EQ(1u, space_.evictions());
  EXPECT_EQ(1u, space_.installed());
  EXPECT_EQ(-1, Installed(space_, At(1)));
  EXPECT_EQ(kR, Installed(space_, At(12)));

  // The same when the page goes in with neighbours and their run is refused: everything
  // is flushed and the page goes in alone (the neighbours fault later).
  installer_.calls.clear();
  for (uint64_t index = 8; index < 12; ++index) Leaf(kTreeA, index) |= VPTE_A;
  installer_.install_failures = {ErrnoError(ENOMEM, "mmap")};
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(10), Access::kRead).outcome);
  EXPECT_EQ(std::vector<Call>({RunCall(At(8), 4, kR, kHandle, Frame(kTreeA, 8)),
                               DropCall(kStart, kPages * kPage),
                               InstallCall(At(10), kR, kHandle, Frame(kTreeA, 10))}),
            installer_.calls);
  EXPECT_EQ(2u, space_.evictions());
  EXPECT_EQ(1u, space_.installed());
  EXPECT_EQ(-1, Installed(space_, At(9)));
  EXPECT_EQ(-1, Installed(space_, At(12)));
  EXPECT_EQ(kR, Installed(space_, At(10)));
}

// MADV_WILLNEED: only what a walk would install without changing an entry goes in, as runs
// of contiguous frames; entries are left as they are.
TEST_F(SpaceTest, PrefaultInstallsOnlyWhatAWalkWouldNotChange) {
  AddMappedMainRegion(space_);
  // Nothing accessed yet, not even the upper levels: nothing to install.
  EXPECT_EQ(0u, space_.Prefault(kStart, kPages * kPage, installer_));
  EXPECT_TRUE(installer_.calls.empty());
  // Upper levels accessed (a walk of page 0 did that); leaves: 1..3 accessed (one run), 4
  // accessed and modified (writable: a run of its own), 5 not accessed, 6 accessed with a
  // frame elsewhere, 7 accessed beyond the object, 8 accessed but installed already.
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(0), Access::kRead).outcome);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(8), Access::kRead).outcome);
  for (uint64_t index : {1, 2, 3}) Leaf(kTreeA, index) |= VPTE_A;
  Leaf(kTreeA, 4) |= VPTE_A | VPTE_M;
  Leaf(kTreeA, 6) = Frame(kTreeA, 31) | kTableBits | VPTE_A;
  Leaf(kTreeA, 7) = (kObjectSize + 8 * kPage) | kTableBits | VPTE_A;
  const uint64_t leaf1 = Leaf(kTreeA, 1), leaf5 = Leaf(kTreeA, 5);
  const uint64_t pd = Entry(kTreeA.pd);
  installer_.calls.clear();
  EXPECT_EQ(5u, space_.Prefault(At(1), 8 * kPage, installer_));  // pages 1..8
  EXPECT_EQ(std::vector<Call>({RunCall(At(1), 3, kR, kHandle, Frame(kTreeA, 1)),
                               InstallCall(At(4), kRW, kHandle, Frame(kTreeA, 4)),
                               InstallCall(At(6), kR, kHandle, Frame(kTreeA, 31))}),
            installer_.calls);
  EXPECT_EQ(kR, Installed(space_, At(2)));
  EXPECT_EQ(kRW, Installed(space_, At(4)));
  EXPECT_EQ(-1, Installed(space_, At(5)));
  EXPECT_EQ(-1, Installed(space_, At(7)));
  EXPECT_EQ(leaf1, Leaf(kTreeA, 1));
  EXPECT_EQ(leaf5, Leaf(kTreeA, 5));
  EXPECT_EQ(pd, Entry(kTreeA.pd));
  // Installed pages are not installed again; outside every region nothing happens.
  installer_.calls.clear();
  EXPECT_EQ(0u, space_.Prefault(At(1), 4 * kPage, installer_));
  EXPECT_EQ(0u, space_.Prefault(At(100), 4 * kPage, installer_));
  EXPECT_TRUE(installer_.calls.empty());
}

TEST_F(SpaceTest, PrefaultStopsAtTheBudgetAndNeverEvicts) {
  Space space(4);
  AddMappedMainRegion(space);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space, At(0), Access::kRead).outcome);
  for (uint64_t index = 1; index < kPages; ++index) Leaf(kTreeA, index) |= VPTE_A;
  installer_.calls.clear();
  EXPECT_EQ(3u, space.Prefault(kStart, kPages * kPage, installer_));
  EXPECT_EQ(std::vector<Call>({RunCall(At(1), 3, kR, kHandle, Frame(kTreeA, 1))}),
            installer_.calls);
  EXPECT_EQ(4u, space.installed());
  EXPECT_EQ(0u, space.evictions());
  EXPECT_EQ(kR, Installed(space, At(0)));
}

TEST_F(SpaceTest, InstallErrorsAreReturned) {
  AddMappedMainRegion(space_);
  // ENOMEM with nothing installed to flush: returned as it is.
  installer_.install_failures = {ErrnoError(ENOMEM, "mmap")};
  auto r = space_.Resolve(At(2), Access::kRead, installer_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ENOMEM, ErrnoOf(r.status()));
  EXPECT_EQ(0u, space_.installed());
  // Another error with translations installed: returned, no flush. (Page 2's entry, which
  // the failed attempt marked accessed, is cleared: page 10's fault-around leaves it out.)
  ClearAccessed(kTreeA, 32);
  ASSERT_EQ(Outcome::kInstalled, Resolve(space_, At(10), Access::kRead).outcome);
  installer_.calls.clear();
  installer_.install_failures = {ErrnoError(EBADF, "mmap")};
  r = space_.Resolve(At(4), Access::kRead, installer_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(EBADF, ErrnoOf(r.status()));
  EXPECT_EQ(std::vector<Call>({InstallCall(At(4), kR, kHandle, Frame(kTreeA, 4))}),
            installer_.calls);
  EXPECT_EQ(0u, space_.evictions());
  EXPECT_EQ(1u, space_.installed());
  EXPECT_EQ(-1, Installed(space_, At(2)));
  EXPECT_EQ(-1, Installed(space_, At(4)));
}

// Fills each data frame of tree A with a pattern of its own.
void FillFrames(unsigned char* mem) {
  for (uint64_t index = 0; index < 32; ++index) {
    for (uint64_t i = 0; i < kPage; ++i) {
      mem[kTreeA.frames + index * kPage + i] = static_cast<unsigned char>(index * 31 + i * 7);
    }
  }
}

TEST_F(SpaceTest, CopyReadsAndWritesThroughTheWalk) {
  AddMappedMainRegion(space_);
  FillFrames(mem_);
  Leaf(kTreeA, 1) = Frame(kTreeA, 31) | kTableBits;  // page 1 is frame 31: not contiguous
  std::vector<unsigned char> buf(2 * kPage);
  ASSERT_EQ(2 * kPage, space_.Copy(kStart + 0x800, buf.data(), buf.size(), false));
  EXPECT_EQ(0, memcmp(buf.data(), mem_ + Frame(kTreeA, 0) + 0x800, 0x800));
  EXPECT_EQ(0, memcmp(buf.data() + 0x800, mem_ + Frame(kTreeA, 31), kPage));
  EXPECT_EQ(0, memcmp(buf.data() + 0x1800, mem_ + Frame(kTreeA, 2), 0x800));
  for (uint64_t index : {0, 1, 2}) {
    EXPECT_EQ(VPTE_A, Leaf(kTreeA, index) & (VPTE_A | VPTE_M)) << index;
  }
  EXPECT_EQ(0u, Leaf(kTreeA, 3) & VPTE_A);

  std::vector<unsigned char> data(100);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(0xA0 ^ i);
  ASSERT_EQ(data.size(), space_.Copy(At(3) + 0x10, data.data(), data.size(), true));
  EXPECT_EQ(0, memcmp(mem_ + Frame(kTreeA, 3) + 0x10, data.data(), data.size()));
  EXPECT_EQ(VPTE_A | VPTE_M, Leaf(kTreeA, 3) & (VPTE_A | VPTE_M));
  // A write across a page boundary lands in both frames.
  ASSERT_EQ(data.size(), space_.Copy(At(5) - 50, data.data(), data.size(), true));
  EXPECT_EQ(0, memcmp(mem_ + Frame(kTreeA, 4) + kPage - 50, data.data(), 50));
  EXPECT_EQ(0, memcmp(mem_ + Frame(kTreeA, 5), data.data() + 50, 50));
  EXPECT_EQ(VPTE_A | VPTE_M, Leaf(kTreeA, 4) & (VPTE_A | VPTE_M));
  EXPECT_EQ(VPTE_A | VPTE_M, Leaf(kTreeA, 5) & (VPTE_A | VPTE_M));
  // Copies install nothing.
  EXPECT_TRUE(installer_.calls.empty());
  EXPECT_EQ(0u, space_.installed());
}

TEST_F(SpaceTest, CopyStopsShortWhereTheWalkFails) {
  AddMappedMainRegion(space_);
  FillFrames(mem_);
  std::vector<unsigned char> buf(4 * kPage);
  Leaf(kTreeA, 2) = 0;
  EXPECT_EQ(2 * kPage - 0x100, space_.Copy(kStart + 0x100, buf.data(), buf.size(), false));
  EXPECT_EQ(0u, space_.Copy(At(2) + 8, buf.data(), 16, false));

  // A write stops at a read-only entry, which keeps its contents.
  Leaf(kTreeA, 5) = Frame(kTreeA, 5) | VPTE_V | VPTE_U;
  std::vector<unsigned char> before(mem_ + Frame(kTreeA, 5), mem_ + Frame(kTreeA, 6));
  std::vector<unsigned char> data(2 * kPage, 0xEE);
  EXPECT_EQ(kPage - 8, space_.Copy(At(4) + 8, data.data(), data.size(), true));
  EXPECT_EQ(0, memcmp(mem_ + Frame(kTreeA, 5), before.data(), kPage));
  EXPECT_EQ(0xEE, mem_[Frame(kTreeA, 4) + kPage - 1]);
  // ... while a read through it passes.
  EXPECT_EQ(kPage, space_.Copy(At(5), buf.data(), kPage, false));

  // Copies end at the region's end, and start only inside a region.
  EXPECT_EQ(kPage - 0x100, space_.Copy(kEnd - kPage + 0x100, buf.data(), 2 * kPage, false));
  EXPECT_EQ(0u, space_.Copy(kEnd, buf.data(), kPage, false));
  EXPECT_EQ(0u, space_.Copy(kStart - 8, buf.data(), 16, false));
}

TEST_F(SpaceTest, CopyWithoutRootCopiesNothing) {
  AddMainRegion(space_);
  FillFrames(mem_);
  std::vector<unsigned char> buf(kPage, 0x55);
  EXPECT_EQ(0u, space_.Copy(kStart, buf.data(), buf.size(), false));
  EXPECT_EQ(0u, space_.Copy(kStart, buf.data(), buf.size(), true));
  EXPECT_NE(0x55, mem_[Frame(kTreeA, 0) + 1]);  // the pattern, not the buffer
  EXPECT_EQ(0u, Leaf(kTreeA, 0) & VPTE_A);
}

}  // namespace
}  // namespace vkrt::vpt
