// minivk: guest "physical memory" and a guest process's page tables, kept the way DragonFly's
// vkernel pmap keeps them: frames of one memfd, 4-level MAP_VPAGETABLE tables (vpte_t) inside
// it, walk index = virtual page number (the region starts where its object offset does).
// Uses only the public header's vpte_t/VPTE_* definitions.
#ifndef VKRT_EXAMPLES_MINIVK_PMAP_H_
#define VKRT_EXAMPLES_MINIVK_PMAP_H_

#include <stddef.h>
#include <stdint.h>
#include <vkrt/vmspace.h>

#include <string>
#include <vector>

namespace minivk {

// A memfd of page frames, mapped into minivk, with a frame allocator and reference counts
// (for copy-on-write). Frame 0 is never handed out: offset 0 means "none".
class PhysMem {
 public:
  PhysMem() = default;
  PhysMem(const PhysMem&) = delete;
  PhysMem& operator=(const PhysMem&) = delete;
  ~PhysMem();

  // `bytes` rounded up to pages. False with `error` naming the failing call.
  bool Init(size_t bytes, std::string& error);

  // A zeroed frame with one reference (its byte offset), or 0 when memory is exhausted.
  uint64_t Alloc();
  void Ref(uint64_t pa) { ++refs_[pa >> 12]; }
  // Drops a reference; the frame is free again at zero.
  void Unref(uint64_t pa);
  uint16_t refs(uint64_t pa) const { return refs_[pa >> 12]; }

  unsigned char* At(uint64_t pa) const { return base_ + pa; }
  int fd() const { return fd_; }
  size_t size() const { return size_; }
  size_t free_frames() const { return free_.size() + (frames_ - fresh_); }

 private:
  int fd_ = -1;
  unsigned char* base_ = nullptr;
  size_t size_ = 0;
  size_t frames_ = 0;
  std::vector<uint16_t> refs_;
  std::vector<uint64_t> free_;  // frames freed since: reused first (most recent first)
  uint64_t fresh_ = 0;          // frames [fresh_, frames_) were never handed out
};

// One address space's 4-level tables in PhysMem.
class PageTable {
 public:
  explicit PageTable(PhysMem& mem) : mem_(mem) {}
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;
  ~PageTable();  // frees the tables (not the pages they map)

  // Allocates the top-level table; false if memory is exhausted.
  bool Init();
  // The MADV_SETMAP value: the top table's frame, valid, writable, user.
  vpte_t root() const { return root_ | VPTE_V | VPTE_RW | VPTE_U; }

  // Maps page `va` to frame `pa` with PROT_* `prot` (replacing what was there; the caller
  // drops the old frame and INVALs). False if a table could not be allocated.
  bool Map(uint64_t va, uint64_t pa, int prot);
  // The leaf entry of page `va`, or 0.
  vpte_t Lookup(uint64_t va) const;
  // Removes the leaf entry of page `va`; returns it (0 if there was none).
  vpte_t Unmap(uint64_t va);
  // Replaces the leaf entry of page `va` (which must exist) with `entry`.
  void Set(uint64_t va, vpte_t entry);

  // Calls fn(va, entry) for every valid leaf entry, in address order.
  template <typename Fn>
  void ForEach(Fn fn) const {
    Visit(root_, 3, 0, fn);
  }

  // A leaf entry for frame `pa` with PROT_* `prot`. minivk keeps no accessed or dirty
  // information (it never ages or writes back pages), so every entry starts with A set, and
  // a writable one with M too: the runtime's walk then has nothing to record, so it may
  // install a read fault's translation writable and install valid neighbours with it
  // (fault-around) instead of taking one fault per page.
  static vpte_t Leaf(uint64_t pa, int prot);
  // `e` made read-only (shared copy-on-write): RW and M cleared, A kept (see Leaf).
  static vpte_t ReadOnly(vpte_t e) { return (e & ~(VPTE_RW | VPTE_M)) | VPTE_A; }

 private:
  vpte_t* Slot(uint64_t va, bool create);
  void FreeTables(uint64_t table, int level);
  template <typename Fn>
  void Visit(uint64_t table, int level, uint64_t base, Fn& fn) const {
    const auto* entries = reinterpret_cast<const vpte_t*>(mem_.At(table));
    for (int i = 0; i < 512; ++i) {
      const vpte_t e = entries[i];
      if (!(e & VPTE_V)) continue;
      const uint64_t va = base | (uint64_t(i) << (12 + 9 * level));
      if (level == 0) {
        fn(va, e);
      } else {
        Visit(e & VPTE_FRAME, level - 1, va, fn);
      }
    }
  }

  PhysMem& mem_;
  uint64_t root_ = 0;
};

}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_PMAP_H_
