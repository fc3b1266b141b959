// The runtime's own x86-64 page tables for a kvm VM (4 levels, 4 KiB leaves): guest virtual
// to guest physical, built from the vmspace's mappings and, for MAP_VPAGETABLE, from the
// software walker's results (SPEC §4, §5 "kvm"). Pure: the tables live in a pool of pages the
// caller provides (a host pointer and the pool's guest-physical base), so the decisions are
// testable without a kernel.
//
// Entries are written with single 64-bit atomic stores: vCPUs (and KVM's shadow MMU) may
// walk the tables while they change. The caller serialises changes (KvmAddressSpace's
// tables_mu_). Tables are never freed before the whole pool is: a page that once was a table
// stays that table, so KVM never sees a guest-physical page change role.
#ifndef VKRT_SRC_BACKEND_KVM_PAGE_TABLES_H_
#define VKRT_SRC_BACKEND_KVM_PAGE_TABLES_H_

#include <stddef.h>
#include <stdint.h>

#include "absl/status/statusor.h"

namespace vkrt {

class PageTables {
 public:
  static constexpr uint64_t kPresent = 0x1;
  static constexpr uint64_t kWritable = 0x2;
  static constexpr uint64_t kUser = 0x4;
  static constexpr uint64_t kAccessed = 0x20;
  static constexpr uint64_t kDirty = 0x40;
  static constexpr uint64_t kNoExecute = 1ULL << 63;
  static constexpr uint64_t kFrameMask = 0x000FFFFFFFFFF000ULL;

  // `pool`: `pages` zeroed 4 KiB pages, 4 KiB aligned, at guest-physical `pool_gpa`. Page 0
  // becomes the top-level table.
  PageTables(void* pool, uint64_t pool_gpa, size_t pages);

  uint64_t root_gpa() const { return pool_gpa_; }
  size_t pages_used() const { return used_; }

  // The leaf entry for the page holding `va`, or 0 if there is none.
  uint64_t Get(uint64_t va) const;

  // Sets the leaf entry of the page holding `va` to `entry` (0 removes it), creating missing
  // tables. Outcomes: the entry it replaced; or ENOMEM when the pool has no page left for a
  // missing table (nothing changed). Clearing never allocates.
  absl::StatusOr<uint64_t> Set(uint64_t va, uint64_t entry);

  // Removes the leaf entries of [begin, end) (page aligned), skipping missing tables whole.
  // Returns how many present entries it removed.
  size_t Clear(uint64_t begin, uint64_t end);

  // A leaf entry mapping guest-physical page `gpa` with PROT_* `prot`: present unless
  // PROT_NONE, writable with PROT_WRITE, executable only with PROT_EXEC; A (and D when
  // writable) preset so that nobody writes them back into the tables.
  static uint64_t Leaf(uint64_t gpa, int prot, bool user);

  // Whether replacing entry `old` with `now` can leave a stale translation in a TLB or in
  // KVM's shadow tables: false only when `old` was not present, or `now` maps the same frame
  // with at least its rights (a fault on the old, narrower translation re-reads the tables).
  static bool NeedsFlush(uint64_t old, uint64_t now);

 private:
  uint64_t* Table(uint64_t entry) const;  // the table an intermediate entry points to
  uint64_t* Walk(uint64_t va, bool create);

  unsigned char* const pool_;
  const uint64_t pool_gpa_;
  const size_t pages_;
  size_t used_ = 1;
};

}  // namespace vkrt

#endif  // VKRT_SRC_BACKEND_KVM_PAGE_TABLES_H_
