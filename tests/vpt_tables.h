// Test helper: "physical memory" for MAP_VPAGETABLE tests. A memfd, mapped shared into the
// test, holding four-level page tables the test builds (as a vkernel's pmap would) and the
// pages they point at. Frames are byte offsets into the memfd; frame 0 is the first top table.
// Shared by the conformance suite (guest vmspaces) and the own-space tests.
#ifndef VKRT_TESTS_VPT_TABLES_H_
#define VKRT_TESTS_VPT_TABLES_H_

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

namespace vkrt_test {

inline constexpr uint64_t kVpteUser = VPTE_V | VPTE_RW | VPTE_U;

class PhysMem {
 public:
  static constexpr uint64_t kFrame = 4096;

  explicit PhysMem(size_t size) : size_(size) {
    fd_ = memfd_create("vkrt-physmem", MFD_CLOEXEC);
    if (fd_ < 0 || ftruncate(fd_, static_cast<off_t>(size)) != 0) return;
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p != MAP_FAILED) words_ = static_cast<uint64_t*>(p);
  }
  ~PhysMem() {
    if (words_ != nullptr) munmap(words_, size_);
    if (fd_ >= 0) close(fd_);
  }
  PhysMem(const PhysMem&) = delete;
  PhysMem& operator=(const PhysMem&) = delete;

  bool ok() const { return words_ != nullptr; }
  int fd() const { return fd_; }
  uint64_t Load(uint64_t offset) const {
    return __atomic_load_n(&words_[offset / 8], __ATOMIC_ACQUIRE);
  }
  void Store(uint64_t offset, uint64_t v) {
    __atomic_store_n(&words_[offset / 8], v, __ATOMIC_RELEASE);
  }

  // The MADV_SETMAP value for the current top table.
  uint64_t root() const { return top_ | kVpteUser; }
  // Starts a new, empty set of tables (for SETMAP tests).
  void NewTop() { top_ = NewFrame(); }
  // A fresh zeroed frame. Aborts the test binary if the memfd is exhausted (a test bug).
  uint64_t NewFrame() {
    const uint64_t frame = next_ * kFrame;
    if (frame + kFrame > size_) abort();
    ++next_;
    return frame;
  }
  // Byte offset of the entry for walk index `index` at `level` (3 = top table, 0 = last),
  // creating the tables above it.
  uint64_t EntryOffset(uint64_t index, int level = 0) {
    uint64_t table = top_;
    for (int l = 3; l > level; --l) {
      const uint64_t slot = table + ((index >> (9 * l)) & 511) * 8;
      uint64_t e = Load(slot);
      if (!(e & VPTE_V)) {
        e = NewFrame() | kVpteUser;
        Store(slot, e);
      }
      table = e & VPTE_FRAME;
    }
    return table + ((index >> (9 * level)) & 511) * 8;
  }
  void Map(uint64_t index, uint64_t frame, uint64_t bits = kVpteUser) {
    Store(EntryOffset(index), frame | bits);
  }
  uint64_t Entry(uint64_t index, int level = 0) { return Load(EntryOffset(index, level)); }

 private:
  size_t size_;
  int fd_ = -1;
  uint64_t* words_ = nullptr;
  uint64_t top_ = 0;
  uint64_t next_ = 1;
};

}  // namespace vkrt_test

#endif  // VKRT_TESTS_VPT_TABLES_H_
