#include "backend/kvm/page_tables.h"

#include <errno.h>
#include <sys/mman.h>

#include "absl/strings/str_format.h"
#include "common/errno_status.h"

namespace vkrt {
namespace {

constexpr uint64_t kPage = 4096;
// Intermediate entries allow everything; the leaf decides (x86 takes the intersection).
constexpr uint64_t kTableBits = PageTables::kPresent | PageTables::kWritable |
                                PageTables::kUser | PageTables::kAccessed;

uint64_t Load(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
void Store(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

int Index(uint64_t va, int level) {  // level 3 = top
  return static_cast<int>((va >> (12 + 9 * level)) & 511);
}

}  // namespace

PageTables::PageTables(void* pool, uint64_t pool_gpa, size_t pages)
    : pool_(static_cast<unsigned char*>(pool)), pool_gpa_(pool_gpa), pages_(pages) {}

uint64_t* PageTables::Table(uint64_t entry) const {
  const uint64_t gpa = entry & kFrameMask;
  return reinterpret_cast<uint64_t*>(pool_ + (gpa - pool_gpa_));
}

uint64_t* PageTables::Walk(uint64_t va, bool create) {
  uint64_t* table = reinterpret_cast<uint64_t*>(pool_);
  for (int level = 3; level > 0; --level) {
    uint64_t* slot = &table[Index(va, level)];
    uint64_t entry = Load(slot);
    if (!(entry & kPresent)) {
      if (!create || used_ == pages_) return nullptr;
      const uint64_t gpa = pool_gpa_ + used_ * kPage;
      ++used_;  // the page is zero: the pool is fresh and tables are never freed
      entry = gpa | kTableBits;
      Store(slot, entry);
    }
    table = Table(entry);
  }
  return &table[Index(va, 0)];
}

uint64_t PageTables::Get(uint64_t va) const {
  const uint64_t* table = reinterpret_cast<const uint64_t*>(pool_);
  for (int level = 3; level > 0; --level) {
    const uint64_t entry = Load(&table[Index(va, level)]);
    if (!(entry & kPresent)) return 0;
    table = Table(entry);
  }
  return Load(&table[Index(va, 0)]);
}

absl::StatusOr<uint64_t> PageTables::Set(uint64_t va, uint64_t entry) {
  uint64_t* slot = Walk(va, entry != 0);
  if (slot == nullptr) {
    if (entry == 0) return 0;
    return ErrnoError(ENOMEM, absl::StrFormat(
        "kvm page tables: no table page left for %#x (%zu pages in the pool)", va, pages_));
  }
  const uint64_t old = Load(slot);
  Store(slot, entry);
  return old;
}

size_t PageTables::Clear(uint64_t begin, uint64_t end) {
  size_t cleared = 0;
  uint64_t va = begin;
  while (va < end) {
    // Find the deepest existing table for va; skip the span a missing entry covers.
    const uint64_t* table = reinterpret_cast<const uint64_t*>(pool_);
    int level = 3;
    bool missing = false;
    for (; level > 0; --level) {
      const uint64_t entry = Load(&table[Index(va, level)]);
      if (!(entry & kPresent)) {
        missing = true;
        break;
      }
      table = Table(entry);
    }
    if (missing) {
      const uint64_t span = 1ULL << (12 + 9 * level);
      const uint64_t next = (va & ~(span - 1)) + span;
      if (next <= va) break;  // wrapped at the top
      va = next;
      continue;
    }
    uint64_t* leaf = const_cast<uint64_t*>(table);
    const uint64_t table_end = (va & ~((1ULL << 21) - 1)) + (1ULL << 21);
    const uint64_t stop = table_end < end ? table_end : end;
    for (; va < stop; va += kPage) {
      uint64_t* slot = &leaf[Index(va, 0)];
      if (Load(slot) & kPresent) ++cleared;
      if (Load(slot) != 0) Store(slot, 0);
    }
  }
  return cleared;
}

uint64_t PageTables::Leaf(uint64_t gpa, int prot, bool user) {
  if (prot == PROT_NONE) return 0;
  uint64_t entry = (gpa & kFrameMask) | kPresent | kAccessed;
  if (user) entry |= kUser;
  if (prot & PROT_WRITE) entry |= kWritable | kDirty;
  if (!(prot & PROT_EXEC)) entry |= kNoExecute;
  return entry;
}

bool PageTables::NeedsFlush(uint64_t old, uint64_t now) {
  if (!(old & kPresent)) return false;
  if (!(now & kPresent)) return true;
  if ((old & kFrameMask) != (now & kFrameMask)) return true;
  if ((old & kUser) != (now & kUser)) return true;
  if ((old & kWritable) && !(now & kWritable)) return true;
  if (!(old & kNoExecute) && (now & kNoExecute)) return true;
  return false;
}

}  // namespace vkrt
