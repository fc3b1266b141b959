#include "pmap.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace minivk {
namespace {

constexpr uint64_t kPage = 4096;
// Intermediate entries allow everything; the leaf decides. Accessed from the start, as
// leaves are (PageTable::Leaf): a walk then changes nothing, which lets the runtime install
// translations ahead of access (MADV_WILLNEED) and around faults.
constexpr vpte_t kTableBits = VPTE_V | VPTE_RW | VPTE_U | VPTE_A;

int Index(uint64_t va, int level) { return static_cast<int>((va >> (12 + 9 * level)) & 511); }

}  // namespace

PhysMem::~PhysMem() {
  if (base_ != nullptr) munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
}

bool PhysMem::Init(size_t bytes, std::string& error) {
  size_ = (bytes + kPage - 1) & ~(kPage - 1);
  fd_ = static_cast<int>(syscall(SYS_memfd_create, "minivk-physmem", MFD_CLOEXEC));
  if (fd_ < 0) {
    error = std::string("memfd_create: ") + strerror(errno);
    return false;
  }
  if (ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
    error = std::string("ftruncate of the physical memory: ") + strerror(errno);
    return false;
  }
  void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    error = std::string("mmap of the physical memory: ") + strerror(errno);
    return false;
  }
  base_ = static_cast<unsigned char*>(p);
  frames_ = size_ / kPage;
  refs_.assign(frames_, 0);
  free_.reserve(frames_);
  fresh_ = 1;  // frame 0 is never handed out
  return true;
}

uint64_t PhysMem::Alloc() {
  uint64_t pa;
  if (!free_.empty()) {
    pa = free_.back();
    free_.pop_back();
    memset(base_ + pa, 0, kPage);
  } else if (fresh_ < frames_) {
    // Never handed out: the memfd's page is still zero (not even allocated by the host
    // yet), so zeroing it here would only make the host allocate it twice over.
    pa = fresh_++ * kPage;
  } else {
    return 0;
  }
  refs_[pa >> 12] = 1;
  return pa;
}

void PhysMem::Unref(uint64_t pa) {
  if (pa == 0 || refs_[pa >> 12] == 0) return;
  if (--refs_[pa >> 12] == 0) {
    // Kept (Alloc zeroes it): handing each page back to the host costs a system call, and
    // frames are reused most recently freed first.
    free_.push_back(pa);
  }
}

PageTable::~PageTable() {
  if (root_ != 0) FreeTables(root_, 3);
}

void PageTable::FreeTables(uint64_t table, int level) {
  if (level > 0) {
    const auto* entries = reinterpret_cast<const vpte_t*>(mem_.At(table));
    for (int i = 0; i < 512; ++i) {
      if (entries[i] & VPTE_V) FreeTables(entries[i] & VPTE_FRAME, level - 1);
    }
  }
  mem_.Unref(table);
}

bool PageTable::Init() {
  root_ = mem_.Alloc();
  return root_ != 0;
}

vpte_t PageTable::Leaf(uint64_t pa, int prot) {
  vpte_t e = (pa & VPTE_FRAME) | VPTE_V | VPTE_U | VPTE_A;
  if (prot & PROT_WRITE) e |= VPTE_RW | VPTE_M;
  if (!(prot & PROT_EXEC)) e |= VPTE_NX;
  return e;
}

vpte_t* PageTable::Slot(uint64_t va, bool create) {
  uint64_t table = root_;
  for (int level = 3; level > 0; --level) {
    auto* entries = reinterpret_cast<vpte_t*>(mem_.At(table));
    vpte_t& e = entries[Index(va, level)];
    if (!(e & VPTE_V)) {
      if (!create) return nullptr;
      const uint64_t fresh = mem_.Alloc();
      if (fresh == 0) return nullptr;
      e = fresh | kTableBits;
    }
    table = e & VPTE_FRAME;
  }
  return &reinterpret_cast<vpte_t*>(mem_.At(table))[Index(va, 0)];
}

bool PageTable::Map(uint64_t va, uint64_t pa, int prot) {
  vpte_t* slot = Slot(va, true);
  if (slot == nullptr) return false;
  *slot = Leaf(pa, prot);
  return true;
}

vpte_t PageTable::Lookup(uint64_t va) const {
  const vpte_t* slot = const_cast<PageTable*>(this)->Slot(va, false);  // creates nothing
  return slot != nullptr ? *slot : 0;
}

vpte_t PageTable::Unmap(uint64_t va) {
  vpte_t* slot = Slot(va, false);
  if (slot == nullptr) return 0;
  const vpte_t old = *slot;
  *slot = 0;
  return old;
}

void PageTable::Set(uint64_t va, vpte_t entry) {
  if (vpte_t* slot = Slot(va, entry != 0)) *slot = entry;
}

}  // namespace minivk
