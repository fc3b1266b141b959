// The record of installed VPAGETABLE translations of one address space: which guest pages
// are mapped in the host and with which protection. It is the TLB of SPEC §4: the fault path
// consults it (is this page installed, and how?), INVAL/SETMAP/munmap drop from it, and its
// fixed capacity bounds how many translations a host process holds (vm.max_map_count).
//
// A fixed-size open-addressing table (linear probing, backward-shift deletion): the fault
// path never allocates. Not thread-safe; the owner (vpt::Space) serialises access.
#ifndef VKRT_SRC_VPAGETABLE_TLB_H_
#define VKRT_SRC_VPAGETABLE_TLB_H_

#include <stddef.h>
#include <stdint.h>

#include <memory>

namespace vkrt::vpt {

class Tlb {
 public:
  // Holds up to `capacity` pages.
  explicit Tlb(size_t capacity);

  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  bool full() const { return size_ >= capacity_; }

  // The PROT_* bits page `va` (page aligned) is installed with, or -1 if it is not.
  int Find(uint64_t va) const;
  // Records page `va` as installed with `prot` (replacing an older record). Precondition:
  // !full() or `va` already present.
  void Put(uint64_t va, int prot);
  // Forgets page `va`; true if it was there.
  bool Erase(uint64_t va);
  // Forgets every page [start, end) touches; returns how many there were.
  size_t EraseRange(uint64_t start, uint64_t end);
  // Forgets everything.
  void Clear();

 private:
  struct Slot {
    uint64_t key;  // page number + 1; 0 = empty
    int prot;
  };
  size_t Home(uint64_t key) const;

  struct Free {
    void operator()(Slot* p) const;
  };

  size_t capacity_;
  size_t mask_;
  size_t size_ = 0;
  // Zeroed by calloc: a large table comes as fresh zero pages, touched only as used.
  std::unique_ptr<Slot[], Free> slots_;
};

}  // namespace vkrt::vpt

#endif  // VKRT_SRC_VPAGETABLE_TLB_H_
