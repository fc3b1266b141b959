// The kvm backend's page tables, on a pool in ordinary memory (no kernel needed).
#include "backend/kvm/page_tables.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <memory>

#include "common/errno_status.h"
#include "gtest/gtest.h"

namespace vkrt {
namespace {

constexpr uint64_t kPoolGpa = 0x40000000;
constexpr uint64_t kPage = 4096;

struct Pool {
  explicit Pool(size_t pages) : pages(pages) {
    mem = static_cast<unsigned char*>(aligned_alloc(kPage, pages * kPage));
    memset(mem, 0, pages * kPage);
  }
  ~Pool() { free(mem); }
  // The entry at index `i` of the table at guest-physical `gpa`.
  uint64_t Entry(uint64_t gpa, int i) const {
    return reinterpret_cast<const uint64_t*>(mem + (gpa - kPoolGpa))[i];
  }
  size_t pages;
  unsigned char* mem;
};

// Walks the tables the way the CPU does: the leaf entry for `va`, or 0.
uint64_t HardwareWalk(const Pool& pool, uint64_t root, uint64_t va) {
  uint64_t table = root;
  for (int level = 3; level >= 0; --level) {
    const uint64_t entry = pool.Entry(table, static_cast<int>((va >> (12 + 9 * level)) & 511));
    if (level == 0) return entry;
    if (!(entry & PageTables::kPresent)) return 0;
    EXPECT_EQ(PageTables::kPresent | PageTables::kWritable | PageTables::kUser |
                  PageTables::kAccessed,
              entry & 0xFFF)
        << "intermediate entries allow everything; the leaf decides";
    table = entry & PageTables::kFrameMask;
  }
  return 0;
}

TEST(KvmPageTables, SetBuildsTablesTheCpuCanWalk) {
  Pool pool(16);
  PageTables tables(pool.mem, kPoolGpa, pool.pages);
  const uint64_t va = 0x7FFF12345000;
  const uint64_t entry = PageTables::Leaf(0x123456000, PROT_READ | PROT_WRITE, true);
  auto old = tables.Set(va, entry);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(0u, *old);
  EXPECT_EQ(4u, tables.pages_used());  // root + three new tables
  EXPECT_EQ(entry, tables.Get(va));
  EXPECT_EQ(entry, HardwareWalk(pool, tables.root_gpa(), va));
  EXPECT_EQ(0u, tables.Get(va + kPage));
  // A neighbour in the same leaf table needs no new table.
  ASSERT_TRUE(tables.Set(va + kPage, entry).ok());
  EXPECT_EQ(4u, tables.pages_used());
}

TEST(KvmPageTables, LeafBitsFollowTheProtection) {
  const uint64_t gpa = 0xABCDE000;
  const uint64_t ro = PageTables::Leaf(gpa, PROT_READ, true);
  EXPECT_EQ(gpa, ro & PageTables::kFrameMask);
  EXPECT_TRUE(ro & PageTables::kPresent);
  EXPECT_TRUE(ro & PageTables::kUser);
  EXPECT_FALSE(ro & PageTables::kWritable);
  EXPECT_TRUE(ro & PageTables::kNoExecute);
  const uint64_t rwx = PageTables::Leaf(gpa, PROT_READ | PROT_WRITE | PROT_EXEC, false);
  EXPECT_TRUE(rwx & PageTables::kWritable);
  EXPECT_TRUE(rwx & PageTables::kDirty) << "preset, so nobody writes it back";
  EXPECT_TRUE(rwx & PageTables::kAccessed);
  EXPECT_FALSE(rwx & PageTables::kNoExecute);
  EXPECT_FALSE(rwx & PageTables::kUser);
  EXPECT_EQ(0u, PageTables::Leaf(gpa, PROT_NONE, true));
}

TEST(KvmPageTables, ClearRemovesPresentEntriesAndSkipsMissingTables) {
  Pool pool(64);
  PageTables tables(pool.mem, kPoolGpa, pool.pages);
  const uint64_t base = 0x40000000;
  for (uint64_t i = 0; i < 1024; ++i) {  // two leaf tables' worth
    ASSERT_TRUE(tables.Set(base + i * kPage, PageTables::Leaf(i * kPage, PROT_READ, true)).ok());
  }
  ASSERT_TRUE(tables.Set(0x7FFF00000000, PageTables::Leaf(0, PROT_READ, true)).ok());
  // Everything from 0 to the top of the lower half: most of it has no tables at all.
  EXPECT_EQ(1025u, tables.Clear(0, 0x800000000000));
  EXPECT_EQ(0u, tables.Get(base));
  EXPECT_EQ(0u, tables.Get(base + 1023 * kPage));
  EXPECT_EQ(0u, tables.Get(0x7FFF00000000));
  // Clearing again finds nothing; clearing never allocates.
  const size_t used = tables.pages_used();
  EXPECT_EQ(0u, tables.Clear(0, 0x800000000000));
  EXPECT_EQ(used, tables.pages_used());
}

TEST(KvmPageTables, ClearStopsExactlyAtTheRangeEnds) {
  Pool pool(16);
  PageTables tables(pool.mem, kPoolGpa, pool.pages);
  for (uint64_t i = 0; i < 8; ++i) {
    ASSERT_TRUE(tables.Set(0x10000 + i * kPage, PageTables::Leaf(i * kPage, PROT_READ, true)).ok());
  }
  EXPECT_EQ(3u, tables.Clear(0x12000, 0x15000));
  EXPECT_NE(0u, tables.Get(0x11000));
  EXPECT_EQ(0u, tables.Get(0x12000));
  EXPECT_EQ(0u, tables.Get(0x14000));
  EXPECT_NE(0u, tables.Get(0x15000));
}

TEST(KvmPageTables, AnExhaustedPoolIsEnomemAndChangesNothing) {
  Pool pool(4);  // root + one table per level: one path only
  PageTables tables(pool.mem, kPoolGpa, pool.pages);
  ASSERT_TRUE(tables.Set(0x1000, PageTables::Leaf(0, PROT_READ, true)).ok());
  auto far = tables.Set(0x7F0000000000, PageTables::Leaf(0, PROT_READ, true));
  ASSERT_FALSE(far.ok());
  EXPECT_EQ(ENOMEM, ErrnoOf(far.status()));
  EXPECT_EQ(0u, tables.Get(0x7F0000000000));
  // Removing where no table exists needs none.
  auto cleared = tables.Set(0x7F0000000000, 0);
  ASSERT_TRUE(cleared.ok());
  EXPECT_EQ(0u, *cleared);
}

TEST(KvmPageTables, OnlyAddingOrWideningNeedsNoFlush) {
  const uint64_t a = 0x1000, b = 0x2000;
  const uint64_t ro = PageTables::Leaf(a, PROT_READ, true);
  const uint64_t rw = PageTables::Leaf(a, PROT_READ | PROT_WRITE, true);
  const uint64_t rx = PageTables::Leaf(a, PROT_READ | PROT_EXEC, true);
  EXPECT_FALSE(PageTables::NeedsFlush(0, ro)) << "nothing was there";
  EXPECT_FALSE(PageTables::NeedsFlush(ro, rw)) << "a write fault re-reads the tables";
  EXPECT_FALSE(PageTables::NeedsFlush(ro, rx)) << "a fetch fault re-reads the tables";
  EXPECT_FALSE(PageTables::NeedsFlush(rw, rw));
  EXPECT_TRUE(PageTables::NeedsFlush(ro, 0)) << "removed";
  EXPECT_TRUE(PageTables::NeedsFlush(rw, ro)) << "write taken away";
  EXPECT_TRUE(PageTables::NeedsFlush(rx, ro)) << "execute taken away";
  EXPECT_TRUE(PageTables::NeedsFlush(ro, PageTables::Leaf(b, PROT_READ, true))) << "other frame";
  EXPECT_TRUE(PageTables::NeedsFlush(ro, PageTables::Leaf(a, PROT_READ, false))) << "user bit";
}

}  // namespace
}  // namespace vkrt
