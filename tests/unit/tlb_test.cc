// vpt::Tlb, the fixed-capacity record of installed VPAGETABLE translations: Put/Find/Erase,
// EraseRange on both of its paths (page by page, and a table scan for ranges larger than the
// table), Clear, size/full, and a randomized differential test against std::map with keys
// chosen so that probe runs collide and wrap around the end of the table (the cases where
// backward-shift deletion can go wrong).
#include "vpagetable/tlb.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include <iterator>
#include <map>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace vkrt::vpt {
namespace {

constexpr uint64_t kPage = 4096;

uint64_t Va(uint64_t page) { return page * kPage; }

// The slot count and home slot of a page, mirrored from tlb.cc. Used only to *choose* keys
// that collide; the tests check behaviour through the public interface, so they stay valid
// (if less pointed) should the hash change.
size_t SlotCount(size_t capacity) {
  size_t n = 16;
  while (n < capacity * 2) n <<= 1;
  return n;
}
size_t HomeSlot(uint64_t page, size_t slots) {
  const uint64_t key = page + 1;
  return static_cast<size_t>((key * 0x9E3779B97F4A7C15ULL) >> 20) & (slots - 1);
}

// The first `count` pages from `first` on whose home slot is one of `homes`.
std::vector<uint64_t> PagesWithHomes(const std::vector<size_t>& homes, size_t slots,
                                     size_t count, uint64_t first = 0) {
  std::vector<uint64_t> pages;
  for (uint64_t page = first; pages.size() < count; ++page) {
    for (size_t h : homes) {
      if (HomeSlot(page, slots) == h) {
        pages.push_back(page);
        break;
      }
    }
  }
  return pages;
}

TEST(Tlb, EmptyTable) {
  Tlb tlb(8);
  EXPECT_EQ(0u, tlb.size());
  EXPECT_EQ(8u, tlb.capacity());
  EXPECT_FALSE(tlb.full());
  EXPECT_EQ(-1, tlb.Find(0));
  EXPECT_EQ(-1, tlb.Find(Va(12345)));
  EXPECT_FALSE(tlb.Erase(Va(1)));
  EXPECT_EQ(0u, tlb.EraseRange(0, Va(1000)));
}

TEST(Tlb, PutFindErase) {
  Tlb tlb(8);
  tlb.Put(Va(1), PROT_READ);
  tlb.Put(Va(2), PROT_READ | PROT_WRITE);
  tlb.Put(Va(0x7FFFFFFFF), PROT_READ | PROT_EXEC);  // a high user address
  EXPECT_EQ(3u, tlb.size());
  EXPECT_EQ(PROT_READ, tlb.Find(Va(1)));
  EXPECT_EQ(PROT_READ | PROT_WRITE, tlb.Find(Va(2)));
  EXPECT_EQ(PROT_READ | PROT_EXEC, tlb.Find(Va(0x7FFFFFFFF)));
  EXPECT_EQ(-1, tlb.Find(Va(3)));

  EXPECT_TRUE(tlb.Erase(Va(2)));
  EXPECT_EQ(2u, tlb.size());
  EXPECT_EQ(-1, tlb.Find(Va(2)));
  EXPECT_FALSE(tlb.Erase(Va(2)));  // already gone
  EXPECT_EQ(2u, tlb.size());
  EXPECT_EQ(PROT_READ, tlb.Find(Va(1)));
  EXPECT_EQ(PROT_READ | PROT_EXEC, tlb.Find(Va(0x7FFFFFFFF)));
}

TEST(Tlb, PageZeroAndProtNoneAreRecords) {
  // Page 0 must not be confused with an empty slot, nor PROT_NONE with "not installed".
  Tlb tlb(4);
  tlb.Put(0, PROT_NONE);
  EXPECT_EQ(1u, tlb.size());
  EXPECT_EQ(PROT_NONE, tlb.Find(0));
  EXPECT_EQ(-1, tlb.Find(Va(1)));
  EXPECT_TRUE(tlb.Erase(0));
  EXPECT_EQ(-1, tlb.Find(0));
  EXPECT_EQ(0u, tlb.size());
}

TEST(Tlb, PutReplacesRecord) {
  Tlb tlb(4);
  tlb.Put(Va(7), PROT_READ);
  tlb.Put(Va(7), PROT_READ | PROT_WRITE);
  EXPECT_EQ(1u, tlb.size());
  EXPECT_EQ(PROT_READ | PROT_WRITE, tlb.Find(Va(7)));
  tlb.Put(Va(7), PROT_READ);  // and back (a speculative re-install)
  EXPECT_EQ(1u, tlb.size());
  EXPECT_EQ(PROT_READ, tlb.Find(Va(7)));
}

TEST(Tlb, SizeAndFull) {
  Tlb tlb(3);
  tlb.Put(Va(10), PROT_READ);
  tlb.Put(Va(20), PROT_READ);
  EXPECT_FALSE(tlb.full());
  tlb.Put(Va(30), PROT_READ);
  EXPECT_EQ(3u, tlb.size());
  EXPECT_TRUE(tlb.full());
  // Replacing a present record is allowed when full and does not grow the table.
  tlb.Put(Va(20), PROT_READ | PROT_WRITE);
  EXPECT_EQ(3u, tlb.size());
  EXPECT_EQ(PROT_READ | PROT_WRITE, tlb.Find(Va(20)));
  EXPECT_TRUE(tlb.Erase(Va(10)));
  EXPECT_FALSE(tlb.full());
  tlb.Put(Va(40), PROT_READ);
  EXPECT_TRUE(tlb.full());
  EXPECT_EQ(-1, tlb.Find(Va(10)));
  EXPECT_EQ(PROT_READ, tlb.Find(Va(40)));
}

// Puts `pages` (in order) into a Tlb of `capacity`, erases one of them, and checks that every
// other one is still found; for each choice of the erased page.
void EraseEachInTurn(size_t capacity, const std::vector<uint64_t>& pages) {
  for (size_t victim = 0; victim < pages.size(); ++victim) {
    Tlb tlb(capacity);
    for (size_t i = 0; i < pages.size(); ++i) tlb.Put(Va(pages[i]), static_cast<int>(i));
    ASSERT_TRUE(tlb.Erase(Va(pages[victim]))) << "victim " << victim;
    EXPECT_EQ(pages.size() - 1, tlb.size());
    for (size_t i = 0; i < pages.size(); ++i) {
      EXPECT_EQ(i == victim ? -1 : static_cast<int>(i), tlb.Find(Va(pages[i])))
          << "victim " << victim << ", page " << pages[i];
    }
    // And a re-insert after the deletion lands in a findable place.
    tlb.Put(Va(pages[victim]), 99);
    EXPECT_EQ(99, tlb.Find(Va(pages[victim])));
    EXPECT_EQ(pages.size(), tlb.size());
  }
}

TEST(Tlb, EraseOfWrappedProbeRunKeepsEveryOtherMemberFindable) {
  const size_t capacity = 16;
  const size_t slots = SlotCount(capacity);
  const std::vector<uint64_t> last = PagesWithHomes({slots - 1}, slots, 3);
  const std::vector<uint64_t> first = PagesWithHomes({0}, slots, 2);
  const std::vector<uint64_t> second = PagesWithHomes({1}, slots, 2);
  // Members displaced across the table's end (homes at the last slot, then the first two):
  // they must move back into the hole.
  std::vector<uint64_t> displaced = last;
  displaced.insert(displaced.end(), first.begin(), first.end());
  displaced.insert(displaced.end(), second.begin(), second.end());
  EraseEachInTurn(capacity, displaced);
  // One member at the last slot, then members at their own home past the end: erasing the
  // first leaves a hole at the last slot that they must *not* move into.
  std::vector<uint64_t> at_home = {last[0]};
  at_home.insert(at_home.end(), first.begin(), first.end());
  at_home.push_back(second[0]);
  EraseEachInTurn(capacity, at_home);
}

TEST(Tlb, EraseRangeSmallRangeGoesPageByPage) {
  Tlb tlb(16);
  for (uint64_t p = 100; p < 110; ++p) tlb.Put(Va(p), PROT_READ);
  // [103, 107): four pages, well under the table's slot count.
  EXPECT_EQ(4u, tlb.EraseRange(Va(103), Va(107)));
  EXPECT_EQ(6u, tlb.size());
  for (uint64_t p = 100; p < 110; ++p) {
    EXPECT_EQ(p >= 103 && p < 107 ? -1 : PROT_READ, tlb.Find(Va(p))) << p;
  }
  // Pages of the range that were never installed are not counted.
  EXPECT_EQ(2u, tlb.EraseRange(Va(95), Va(102)));
  EXPECT_EQ(4u, tlb.size());
  EXPECT_EQ(PROT_READ, tlb.Find(Va(102)));
  // Empty and inverted ranges erase nothing.
  EXPECT_EQ(0u, tlb.EraseRange(Va(108), Va(108)));
  EXPECT_EQ(0u, tlb.EraseRange(Va(110), Va(100)));
  EXPECT_EQ(4u, tlb.size());
  // A single page.
  EXPECT_EQ(1u, tlb.EraseRange(Va(109), Va(110)));
  EXPECT_EQ(-1, tlb.Find(Va(109)));
  EXPECT_EQ(PROT_READ, tlb.Find(Va(108)));
}

TEST(Tlb, EraseRangeLargerThanTableScans) {
  Tlb tlb(8);  // 16 slots: a range of more than 16 pages takes the scan path
  const std::vector<uint64_t> inside = {1000, 1001, 1500, 1999};
  const std::vector<uint64_t> outside = {999, 2000, 2001, 5};
  for (uint64_t p : inside) tlb.Put(Va(p), PROT_READ);
  for (uint64_t p : outside) tlb.Put(Va(p), PROT_WRITE);
  ASSERT_TRUE(tlb.full());
  EXPECT_EQ(inside.size(), tlb.EraseRange(Va(1000), Va(2000)));
  EXPECT_EQ(outside.size(), tlb.size());
  for (uint64_t p : inside) EXPECT_EQ(-1, tlb.Find(Va(p))) << p;
  for (uint64_t p : outside) EXPECT_EQ(PROT_WRITE, tlb.Find(Va(p))) << p;
  // The whole address space.
  EXPECT_EQ(outside.size(), tlb.EraseRange(0, Va(uint64_t{1} << 36)));
  EXPECT_EQ(0u, tlb.size());
  for (uint64_t p : outside) EXPECT_EQ(-1, tlb.Find(Va(p))) << p;
}

TEST(Tlb, EraseRangeScanHandlesEntriesMovedByDeletion) {
  // A full cluster around the table's end, members inserted alternately from two page
  // ranges far apart: erasing the low range with one range larger than the table (the scan
  // path) shifts entries of both kinds into the slots the scan is looking at.
  const size_t capacity = 16;
  const size_t slots = SlotCount(capacity);
  const std::vector<uint64_t> doomed =
      PagesWithHomes({slots - 2, slots - 1, 0}, slots, capacity / 2, 0);
  const std::vector<uint64_t> kept =
      PagesWithHomes({slots - 2, slots - 1, 0}, slots, capacity / 2, 1 << 20);
  ASSERT_LT(doomed.back(), uint64_t{1} << 20);
  ASSERT_GT(doomed.back() - doomed.front() + 1, slots);  // the scan path
  Tlb tlb(capacity);
  for (size_t i = 0; i < capacity / 2; ++i) {
    tlb.Put(Va(doomed[i]), PROT_READ);
    tlb.Put(Va(kept[i]), PROT_WRITE);
  }
  ASSERT_TRUE(tlb.full());
  EXPECT_EQ(doomed.size(), tlb.EraseRange(Va(doomed.front()), Va(doomed.back() + 1)));
  EXPECT_EQ(kept.size(), tlb.size());
  for (uint64_t p : doomed) EXPECT_EQ(-1, tlb.Find(Va(p))) << p;
  for (uint64_t p : kept) EXPECT_EQ(PROT_WRITE, tlb.Find(Va(p))) << p;
  // The same with the kept pages inserted first (they sit at the home slots).
  Tlb again(capacity);
  for (uint64_t p : kept) again.Put(Va(p), PROT_WRITE);
  for (uint64_t p : doomed) again.Put(Va(p), PROT_READ);
  EXPECT_EQ(doomed.size(), again.EraseRange(0, Va(1 << 20)));
  for (uint64_t p : doomed) EXPECT_EQ(-1, again.Find(Va(p))) << p;
  for (uint64_t p : kept) EXPECT_EQ(PROT_WRITE, again.Find(Va(p))) << p;
}

TEST(Tlb, Clear) {
  Tlb tlb(8);
  for (uint64_t p = 0; p < 8; ++p) tlb.Put(Va(p * 17), PROT_READ);
  ASSERT_TRUE(tlb.full());
  tlb.Clear();
  EXPECT_EQ(0u, tlb.size());
  EXPECT_FALSE(tlb.full());
  for (uint64_t p = 0; p < 8; ++p) EXPECT_EQ(-1, tlb.Find(Va(p * 17)));
  tlb.Put(Va(3), PROT_WRITE);  // usable again
  EXPECT_EQ(PROT_WRITE, tlb.Find(Va(3)));
  EXPECT_EQ(1u, tlb.size());
}

// ---- randomized differential test against std::map ----

// Runs `ops` random operations on a Tlb of `capacity` and on a std::map, over the pages in
// `pool`, checking every answer and (after each change) every page of the pool.
void Differential(size_t capacity, const std::vector<uint64_t>& pool, uint64_t universe,
                  int ops, uint64_t seed) {
  Tlb tlb(capacity);
  std::map<uint64_t, int> model;  // page -> prot
  std::mt19937_64 rng(seed);
  auto pick = [&] { return pool[rng() % pool.size()]; };
  size_t small_ranges = 0, large_ranges = 0;
  const uint64_t slots = SlotCount(capacity);
  for (int op = 0; op < ops; ++op) {
    const unsigned kind = rng() % 100;
    bool changed = true;
    if (kind < 45) {  // Put
      const uint64_t p = pick();
      const int prot = static_cast<int>(rng() % 8);
      if (tlb.full() && model.count(p) == 0) {
        // Precondition of Put: make room as Space does (a full flush), now and then, or
        // erase some present page.
        if (rng() % 8 == 0) {
          tlb.Clear();
          model.clear();
        } else {
          const uint64_t victim = std::next(model.begin(), rng() % model.size())->first;
          ASSERT_TRUE(tlb.Erase(Va(victim))) << "op " << op;
          model.erase(victim);
        }
      }
      tlb.Put(Va(p), prot);
      model[p] = prot;
    } else if (kind < 75) {  // Erase
      const uint64_t p = pick();
      ASSERT_EQ(model.erase(p) == 1, tlb.Erase(Va(p))) << "op " << op << ", page " << p;
    } else if (kind < 85) {  // EraseRange
      uint64_t lo, hi;
      if (rng() % 2) {  // small: at most the slot count, page by page
        lo = rng() % universe;
        hi = lo + 1 + rng() % slots;
        ++small_ranges;
      } else {  // large: more than the slot count, a table scan
        lo = rng() % universe;
        hi = lo + slots + 1 + rng() % universe;
        ++large_ranges;
      }
      size_t expected = 0;
      for (auto it = model.lower_bound(lo); it != model.end() && it->first < hi;) {
        it = model.erase(it);
        ++expected;
      }
      ASSERT_EQ(expected, tlb.EraseRange(Va(lo), Va(hi)))
          << "op " << op << ", pages [" << lo << ", " << hi << ")";
    } else {  // Find
      changed = false;
      const uint64_t p = pick();
      auto it = model.find(p);
      ASSERT_EQ(it == model.end() ? -1 : it->second, tlb.Find(Va(p)))
          << "op " << op << ", page " << p;
    }
    ASSERT_EQ(model.size(), tlb.size()) << "op " << op;
    ASSERT_EQ(model.size() >= capacity, tlb.full()) << "op " << op;
    if (changed) {
      for (uint64_t p : pool) {
        auto it = model.find(p);
        ASSERT_EQ(it == model.end() ? -1 : it->second, tlb.Find(Va(p)))
            << "after op " << op << ", page " << p;
      }
    }
  }
  // Both EraseRange paths were exercised.
  EXPECT_GT(small_ranges, static_cast<size_t>(ops / 40));
  EXPECT_GT(large_ranges, static_cast<size_t>(ops / 40));
}

TEST(Tlb, DifferentialAgainstMapWithClusteredWrappingKeys) {
  const size_t capacity = 32;
  const size_t slots = SlotCount(capacity);  // 64
  const uint64_t universe = 1024;            // pages 0..1023
  // Most keys have their home in the last four or the first four slots, so their probe runs
  // are long and wrap around the table's end; a few others land anywhere.
  std::vector<uint64_t> pool;
  for (uint64_t p = 0; p < universe; ++p) {
    const size_t h = HomeSlot(p, slots);
    if (h >= slots - 4 || h < 4 || p % 37 == 0) pool.push_back(p);
  }
  ASSERT_GT(pool.size(), 2 * capacity);
  Differential(capacity, pool, universe, 100000, 0x5eed);
}

TEST(Tlb, DifferentialAgainstMapWithUniformKeys) {
  const size_t capacity = 200;
  const uint64_t universe = 4096;
  std::vector<uint64_t> pool;
  for (uint64_t p = 0; p < universe; p += 7) pool.push_back(p);
  Differential(capacity, pool, universe, 20000, 42);
}

}  // namespace
}  // namespace vkrt::vpt
