// The MAP_VPAGETABLE walker (SPEC §4): translates a page of a VPAGETABLE mapping through the
// vkernel's own page tables, which live in the mapping's backing object. Pure: it reads and
// updates entries only through an EntryAccess, so it is tested without any backend, and
// every backend (the ptrace stub, the shadow page tables of kvm) installs what it returns.
#ifndef VKRT_SRC_VPAGETABLE_WALKER_H_
#define VKRT_SRC_VPAGETABLE_WALKER_H_

#include <stdint.h>

namespace vkrt::vpt {

// 64-bit entries at byte offsets of the backing object. Implementations must make
// CompareExchange atomic with respect to the guest and the vkernel (the entries are shared
// memory they may change at any time).
class EntryAccess {
 public:
  virtual ~EntryAccess() = default;
  // Loads the entry at `offset` (8-byte aligned). False if it lies outside the object.
  virtual bool Load(uint64_t offset, uint64_t& value) = 0;
  // If the entry at `offset` equals `expected`, stores `desired` and returns true; otherwise
  // puts the entry's current value in `expected` and returns false (std::atomic semantics).
  // False with `expected` unchanged only if the entry lies outside the object.
  virtual bool CompareExchange(uint64_t offset, uint64_t& expected, uint64_t desired) = 0;
};

enum class Access { kRead, kWrite, kExecute };

struct WalkResult {
  bool ok = false;
  // ok: byte offset in the backing object of the 4 KiB page that backs the address.
  uint64_t page_offset = 0;
  // ok: PROT_* bits to install: the mapping's, minus PROT_WRITE unless the final entry has
  // RW and M and every level allows writes, minus PROT_EXEC if any level has NX.
  int prot = 0;
  // ok: log2 of the translation's size in pages (0: 4 KiB, 9: 2 MiB, 18: 1 GiB, 27: 512 GiB;
  // 36 when the root itself has PS, which SPEC §4's loop and DragonFly accept).
  int page_shift = 0;
  // !ok: the PGEX_* error code for the guest's T_PAGEFLT: PGEX_U, plus PGEX_W / PGEX_I for
  // the access, plus PGEX_P when a valid entry refused it (RW or NX) rather than missing.
  uint32_t err = 0;
  // ok: where the final entry came from, for fault-around over its neighbours: the byte
  // offset of the table holding it (meaningful when page_shift == 0 and the walk went
  // through at least one table), and whether the entries above it all allow writes / any
  // of them has NX (the same for every entry of that table).
  uint64_t leaf_table = 0;
  bool upper_writable = false;
  bool upper_nx = false;
};

// Walks the tables from `root` (the MADV_SETMAP value) for page index `index`
// (((va - mapping start) + mapping offset) >> 12) and access `access`, setting A on every
// valid entry it reads and A|M on those an RW write goes through (retried CAS; the walk
// continues with the value read before the update). `mapping_prot` is the mapping's PROT_*.
WalkResult Walk(EntryAccess& entries, uint64_t root, uint64_t index, Access access,
                int mapping_prot);

}  // namespace vkrt::vpt

#endif  // VKRT_SRC_VPAGETABLE_WALKER_H_
