// The VPAGETABLE walker against a reference model written separately from it (a recursive
// walk over explicit levels on a map of entries), table-driven and randomized.
#include "vpagetable/walker.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <map>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "vkrt/vmspace.h"

namespace vkrt::vpt {
namespace {

// A backing object of `pages` pages holding 64-bit entries, with a CAS that can be told to
// fail a number of times (as if the guest changed the entry) to exercise the retry.
class Memory : public EntryAccess {
 public:
  explicit Memory(uint64_t pages) : size_(pages * 4096) {}
  bool Load(uint64_t offset, uint64_t& value) override {
    if (offset + 8 > size_) return false;
    value = Get(offset);
    return true;
  }
  bool CompareExchange(uint64_t offset, uint64_t& expected, uint64_t desired) override {
    if (offset + 8 > size_) return false;
    if (interfere_ > 0) {  // somebody sets a harmless software bit first
      --interfere_;
      words_[offset] = Get(offset) | (1ULL << 9);
    }
    const uint64_t current = Get(offset);
    if (current != expected) {
      expected = current;
      return false;
    }
    words_[offset] = desired;
    return true;
  }
  uint64_t Get(uint64_t offset) const {
    auto it = words_.find(offset);
    return it == words_.end() ? 0 : it->second;
  }
  void Set(uint64_t offset, uint64_t value) { words_[offset] = value; }
  void Interfere(int times) { interfere_ = times; }
  const std::map<uint64_t, uint64_t>& words() const { return words_; }

 private:
  uint64_t size_;
  std::map<uint64_t, uint64_t> words_;
  int interfere_ = 0;
};

// ---- the reference model ----
struct RefResult {
  bool ok;
  uint64_t page_offset;
  int prot;
  int page_shift;
  uint32_t err;
};

constexpr uint64_t kFrame = 0x000FFFFFFFFFF000ULL;

// Level 4 is the root (not in memory); level 0 is a 4 KiB page table entry.
RefResult RefWalk(Memory& m, uint64_t root, uint64_t index, Access access, int mapping_prot) {
  const bool w = access == Access::kWrite, x = access == Access::kExecute;
  const uint32_t bits = 4u | (w ? 2u : 0u) | (x ? 16u : 0u);
  uint64_t chain[5];
  int levels = 0;
  chain[levels++] = root;
  for (int level = 4;; --level) {
    const uint64_t e = chain[levels - 1];
    if ((e & 1) == 0) return {false, 0, 0, 0, bits};
    if (w && (e & 2) == 0) return {false, 0, 0, 0, bits | 1u};
    if (x && (e & 0x800)) return {false, 0, 0, 0, bits | 1u};
    if (level == 0 || (e & 0x80)) {
      const int shift = 9 * level;
      const uint64_t page = ((e & kFrame) >> 12) + (index & ((1ULL << shift) - 1));
      bool every_rw = true, some_nx = false;
      for (int i = 0; i < levels; ++i) {
        every_rw = every_rw && (chain[i] & 2);
        some_nx = some_nx || (chain[i] & 0x800);
      }
      int prot = mapping_prot;
      if (!w && !(every_rw && (e & 0x40))) prot &= ~PROT_WRITE;
      if (some_nx) prot &= ~PROT_EXEC;
      return {true, page << 12, prot, shift, 0};
    }
    const uint64_t slot = (e & kFrame) + ((index >> (9 * (level - 1))) & 511) * 8;
    uint64_t next;
    if (!m.Load(slot, next)) return {false, 0, 0, 0, bits};
    if (next & 1) {
      uint64_t updated = next | 0x20 | ((w && (next & 2)) ? 0x40 : 0);
      m.Set(slot, updated);
    }
    chain[levels++] = next;
  }
}

// ---- table-driven cases ----

constexpr uint64_t kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000, kPt = 0x4000;
constexpr uint64_t kRoot = kPml4 | VPTE_V | VPTE_RW;
constexpr int kRwx = PROT_READ | PROT_WRITE | PROT_EXEC;

// Tables for index 0x12345 (va 0x12345000): pml4[0] -> pdpt[0] -> pd[0x91] -> pt[0x145].
Memory FourLevels(uint64_t leaf_bits) {
  Memory m(64);
  m.Set(kPml4 + 0 * 8, kPdpt | VPTE_V | VPTE_RW);
  m.Set(kPdpt + 0 * 8, kPd | VPTE_V | VPTE_RW);
  m.Set(kPd + 0x91 * 8, kPt | VPTE_V | VPTE_RW);
  m.Set(kPt + 0x145 * 8, 0x9000 | leaf_bits);
  return m;
}
constexpr uint64_t kIndex = 0x12345;

TEST(Walker, FourLevelReadSetsAccessedButNotModifiedAndInstallsReadOnly) {
  Memory m = FourLevels(VPTE_V | VPTE_RW);
  WalkResult r = Walk(m, kRoot, kIndex, Access::kRead, kRwx);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(0x9000u, r.page_offset);
  EXPECT_EQ(0, r.page_shift);
  EXPECT_EQ(PROT_READ | PROT_EXEC, r.prot);  // RW but not M yet: the first write faults again
  EXPECT_EQ(VPTE_A, m.Get(kPt + 0x145 * 8) & (VPTE_A | VPTE_M));
  EXPECT_EQ(VPTE_A, m.Get(kPdpt) & (VPTE_A | VPTE_M));
}

TEST(Walker, WriteSetsModifiedAndInstallsWritable) {
  Memory m = FourLevels(VPTE_V | VPTE_RW);
  WalkResult r = Walk(m, kRoot, kIndex, Access::kWrite, kRwx);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(kRwx, r.prot);
  EXPECT_EQ(VPTE_A | VPTE_M, m.Get(kPt + 0x145 * 8) & (VPTE_A | VPTE_M));
  // Now a read installs writable: the entry has RW and M.
  EXPECT_EQ(kRwx, Walk(m, kRoot, kIndex, Access::kRead, kRwx).prot);
}

TEST(Walker, InvalidEntriesFailAsNotPresentAndStayUntouched) {
  Memory m = FourLevels(VPTE_RW);  // leaf not valid
  WalkResult r = Walk(m, kRoot, kIndex, Access::kWrite, kRwx);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(uint32_t{PGEX_U | PGEX_W}, r.err);
  EXPECT_EQ(VPTE_RW | 0x9000, m.Get(kPt + 0x145 * 8));  // no A on an invalid entry
  EXPECT_FALSE(Walk(m, 0, kIndex, Access::kRead, kRwx).ok);  // no root yet
}

TEST(Walker, WriteThroughReadOnlyEntryIsAProtectionFault) {
  Memory m = FourLevels(VPTE_V);
  WalkResult r = Walk(m, kRoot, kIndex, Access::kWrite, kRwx);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(uint32_t{PGEX_U | PGEX_W | PGEX_P}, r.err);
  // A read-only upper level refuses writes even below a writable leaf, and never installs
  // a writable translation.
  Memory up = FourLevels(VPTE_V | VPTE_RW | VPTE_M);
  up.Set(kPd + 0x91 * 8, kPt | VPTE_V);
  EXPECT_FALSE(Walk(up, kRoot, kIndex, Access::kWrite, kRwx).ok);
  WalkResult read = Walk(up, kRoot, kIndex, Access::kRead, kRwx);
  ASSERT_TRUE(read.ok);
  EXPECT_EQ(0, read.prot & PROT_WRITE);
}

TEST(Walker, NoExecuteAtAnyLevel) {
  Memory m = FourLevels(VPTE_V | VPTE_RW);
  m.Set(kPdpt, kPd | VPTE_V | VPTE_RW | VPTE_NX);
  WalkResult fetch = Walk(m, kRoot, kIndex, Access::kExecute, kRwx);
  EXPECT_FALSE(fetch.ok);
  EXPECT_EQ(uint32_t{PGEX_U | PGEX_I | PGEX_P}, fetch.err);
  WalkResult read = Walk(m, kRoot, kIndex, Access::kRead, kRwx);
  ASSERT_TRUE(read.ok);
  EXPECT_EQ(0, read.prot & PROT_EXEC);
}

TEST(Walker, LargePagesAtEachLevel) {
  // 2 MiB: PS in the PD entry. Frame 0x400000 + (index & 511) pages.
  Memory m2 = FourLevels(VPTE_V);
  m2.Set(kPd + 0x91 * 8, 0x400000 | VPTE_V | VPTE_RW | VPTE_PS);
  WalkResult r2 = Walk(m2, kRoot, kIndex, Access::kRead, PROT_READ);
  ASSERT_TRUE(r2.ok);
  EXPECT_EQ(9, r2.page_shift);
  EXPECT_EQ(0x400000u + (kIndex & 511) * 4096, r2.page_offset);
  // 1 GiB: PS in the PDPT entry.
  Memory m1 = FourLevels(VPTE_V);
  m1.Set(kPdpt, 0x40000000 | VPTE_V | VPTE_PS);
  WalkResult r1 = Walk(m1, kRoot, kIndex, Access::kRead, PROT_READ);
  ASSERT_TRUE(r1.ok);
  EXPECT_EQ(18, r1.page_shift);
  EXPECT_EQ(0x40000000u + (kIndex & ((1u << 18) - 1)) * 4096, r1.page_offset);
  // 512 GiB: PS in the PML4 entry.
  Memory m0 = FourLevels(VPTE_V);
  m0.Set(kPml4, 0x8000000000ULL | VPTE_V | VPTE_PS);
  WalkResult r0 = Walk(m0, kRoot, kIndex, Access::kRead, PROT_READ);
  ASSERT_TRUE(r0.ok);
  EXPECT_EQ(27, r0.page_shift);
  EXPECT_EQ(0x8000000000ULL + kIndex * 4096, r0.page_offset);
}

TEST(Walker, TablesOutsideTheObjectFail) {
  Memory m(4);  // 16 KiB: the PD at 0x3000 fits, a PT at 0x9000 does not
  m.Set(kPml4, kPdpt | VPTE_V | VPTE_RW);
  m.Set(kPdpt, kPd | VPTE_V | VPTE_RW);
  m.Set(kPd + 0x91 * 8, 0x9000 | VPTE_V | VPTE_RW);
  WalkResult r = Walk(m, kRoot, kIndex, Access::kRead, PROT_READ);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(uint32_t{PGEX_U}, r.err);
}

TEST(Walker, ConcurrentChangesAreRetriedAndKept) {
  Memory m = FourLevels(VPTE_V | VPTE_RW);
  m.Interfere(3);  // three CAS attempts lose to a concurrent update of bit 9
  WalkResult r = Walk(m, kRoot, kIndex, Access::kWrite, kRwx);
  ASSERT_TRUE(r.ok);
  const uint64_t leaf = m.Get(kPt + 0x145 * 8);
  EXPECT_EQ(VPTE_A | VPTE_M, leaf & (VPTE_A | VPTE_M));
}

// ---- randomized differential test ----

uint64_t Seed() {
  const char* env = getenv("VKRT_WALKER_SEED");
  return env != nullptr ? strtoull(env, nullptr, 0) : 20261122;
}

TEST(Walker, AgreesWithTheReferenceModelOnRandomTables) {
  const uint64_t seed = Seed();
  const int rounds = getenv("VKRT_WALKER_ROUNDS") ? atoi(getenv("VKRT_WALKER_ROUNDS")) : 300;
  std::mt19937_64 rng(seed);
  constexpr uint64_t kPages = 16;
  const uint64_t flag_bits[] = {VPTE_V, VPTE_RW, VPTE_NX, VPTE_PS, VPTE_A, VPTE_M};
  for (int round = 0; round < rounds; ++round) {
    Memory a(kPages), b(kPages);
    // Entries point at random pages (some beyond the object), with random flags; valid ones
    // are likely so that walks get deep.
    for (uint64_t page = 0; page < kPages; ++page) {
      for (int k = 0; k < 24; ++k) {
        const uint64_t slot = page * 4096 + (rng() % 512) * 8;
        uint64_t e = (rng() % (kPages + 2)) << 12;
        for (uint64_t bit : flag_bits) {
          const bool set = bit == VPTE_V ? rng() % 8 != 0 : bit == VPTE_PS ? rng() % 6 == 0
                                                                           : rng() % 2 == 0;
          if (set) e |= bit;
        }
        a.Set(slot, e);
        b.Set(slot, e);
      }
    }
    const uint64_t root = ((rng() % kPages) << 12) | VPTE_V | (rng() % 4 ? VPTE_RW : 0);
    for (int n = 0; n < 64; ++n) {
      // Indices whose table slots the random entries are likely to hit.
      uint64_t index = 0;
      for (int level = 0; level < 4; ++level) index |= (rng() % 512) << (9 * level);
      if (rng() % 2) index = rng() & ((1ULL << 36) - 1);
      const Access access = static_cast<Access>(rng() % 3);
      const int prot = rng() % 2 ? kRwx : PROT_READ | PROT_WRITE;
      const WalkResult got = Walk(a, root, index, access, prot);
      const RefResult want = RefWalk(b, root, index, access, prot);
      const std::string where = "seed " + std::to_string(seed) + " round " +
                                std::to_string(round) + " access " + std::to_string(n);
      ASSERT_EQ(want.ok, got.ok) << where;
      if (want.ok) {
        ASSERT_EQ(want.page_offset, got.page_offset) << where;
        ASSERT_EQ(want.prot, got.prot) << where;
        ASSERT_EQ(want.page_shift, got.page_shift) << where;
      } else {
        ASSERT_EQ(want.err, got.err) << where;
      }
      ASSERT_EQ(b.words(), a.words()) << where << ": A/M bits differ";
    }
  }
}

}  // namespace
}  // namespace vkrt::vpt
