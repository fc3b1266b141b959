#include "vpagetable/walker.h"

#include <sys/mman.h>

#include "vkrt/vmspace.h"

namespace vkrt::vpt {

WalkResult Walk(EntryAccess& entries, uint64_t root, uint64_t index, Access access,
                int mapping_prot) {
  const bool write = access == Access::kWrite;
  const bool fetch = access == Access::kExecute;
  WalkResult result;
  const uint32_t access_bits = PGEX_U | (write ? PGEX_W : 0) | (fetch ? PGEX_I : 0);
  auto fail = [&](bool protection) {
    result.ok = false;
    result.err = access_bits | (protection ? PGEX_P : 0);
    return result;
  };
  uint64_t vpte = root;
  int shift = 36;
  bool all_writable = true;
  bool any_nx = false;
  bool upper_writable = true;  // as all_writable/any_nx, without the final entry
  bool upper_nx = false;
  uint64_t table = 0;
  for (;;) {
    if (!(vpte & VPTE_V)) return fail(false);
    if (write && !(vpte & VPTE_RW)) return fail(true);
    if (fetch && (vpte & VPTE_NX)) return fail(true);
    all_writable = all_writable && (vpte & VPTE_RW) != 0;
    any_nx = any_nx || (vpte & VPTE_NX) != 0;
    if ((vpte & VPTE_PS) || shift == 0) break;
    upper_writable = all_writable;
    upper_nx = any_nx;
    table = vpte & VPTE_FRAME;
    shift -= 9;
    const uint64_t offset = table + ((index >> shift) & 511) * sizeof(uint64_t);
    uint64_t entry;
    if (!entries.Load(offset, entry)) return fail(false);
    // Mark the entry used (and modified, for a write through a writable entry), atomically
    // against concurrent changes by the guest or the vkernel; only valid entries.
    while (entry & VPTE_V) {
      const uint64_t bits = VPTE_A | ((write && (entry & VPTE_RW)) ? VPTE_M : 0);
      if ((entry & bits) == bits) break;
      uint64_t expected = entry;
      if (entries.CompareExchange(offset, expected, entry | bits)) break;
      if (expected == entry) return fail(false);  // outside the object
      entry = expected;  // changed under us: redo with the new value
    }
    vpte = entry;  // the value before the update
  }
  const uint64_t in_page = shift == 0 ? 0 : index & ((uint64_t{1} << shift) - 1);
  result.ok = true;
  result.leaf_table = table;
  result.upper_writable = upper_writable;
  result.upper_nx = upper_nx;
  result.page_shift = shift;
  result.page_offset = (((vpte & VPTE_FRAME) >> 12) + in_page) << 12;
  result.prot = mapping_prot;
  const bool writable_now =
      all_writable && (vpte & (VPTE_RW | VPTE_M)) == (VPTE_RW | VPTE_M);
  // A write got here only through writable entries and has just set M.
  if (!write && !writable_now) result.prot &= ~PROT_WRITE;
  if (any_nx) result.prot &= ~PROT_EXEC;
  return result;
}

}  // namespace vkrt::vpt
