#include "vpagetable/tlb.h"

#include <stdlib.h>

#include <new>

namespace vkrt::vpt {

Tlb::Tlb(size_t capacity) : capacity_(capacity) {
  size_t n = 16;
  while (n < capacity * 2) n <<= 1;  // load factor <= 1/2
  mask_ = n - 1;
  slots_.reset(static_cast<Slot*>(calloc(n, sizeof(Slot))));
  if (!slots_) throw std::bad_alloc();
}

void Tlb::Free::operator()(Slot* p) const { free(p); }

size_t Tlb::Home(uint64_t key) const {
  return static_cast<size_t>((key * 0x9E3779B97F4A7C15ULL) >> 20) & mask_;
}

int Tlb::Find(uint64_t va) const {
  const uint64_t key = (va >> 12) + 1;
  for (size_t i = Home(key);; i = (i + 1) & mask_) {
    if (slots_[i].key == key) return slots_[i].prot;
    if (slots_[i].key == 0) return -1;
  }
}

void Tlb::Put(uint64_t va, int prot) {
  const uint64_t key = (va >> 12) + 1;
  for (size_t i = Home(key);; i = (i + 1) & mask_) {
    if (slots_[i].key == key) {
      slots_[i].prot = prot;
      return;
    }
    if (slots_[i].key == 0) {
      slots_[i] = {key, prot};
      ++size_;
      return;
    }
  }
}

bool Tlb::Erase(uint64_t va) {
  const uint64_t key = (va >> 12) + 1;
  size_t i = Home(key);
  for (;; i = (i + 1) & mask_) {
    if (slots_[i].key == key) break;
    if (slots_[i].key == 0) return false;
  }
  // Backward-shift deletion: move later members of the probe run into the hole when their
  // home position does not lie (cyclically) between the hole and them.
  size_t hole = i;
  for (size_t j = (i + 1) & mask_; slots_[j].key != 0; j = (j + 1) & mask_) {
    const size_t home = Home(slots_[j].key);
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    slots_[hole] = slots_[j];
    hole = j;
  }
  slots_[hole] = {0, 0};
  --size_;
  return true;
}

size_t Tlb::EraseRange(uint64_t start, uint64_t end) {
  if (size_ == 0 || end <= start) return 0;
  start &= ~uint64_t{4095};
  end = (end + 4095) & ~uint64_t{4095};  // every page the range touches
  size_t erased = 0;
  const uint64_t pages = (end - start) >> 12;
  if (pages <= mask_ + 1) {
    for (uint64_t va = start; va < end; va += 4096) erased += Erase(va) ? 1 : 0;
    return erased;
  }
  // A range larger than the table: scan the table instead (restarting after each erase,
  // since deletion moves entries).
  const uint64_t first = (start >> 12) + 1;
  const uint64_t last = (end >> 12) + 1;
  for (size_t i = 0; i <= mask_;) {
    const uint64_t key = slots_[i].key;
    if (key != 0 && key >= first && key < last) {
      Erase((key - 1) << 12);
      ++erased;
      continue;  // slot i now holds a moved entry (or is empty)
    }
    ++i;
  }
  return erased;
}

void Tlb::Clear() {
  if (size_ == 0) return;
  for (size_t i = 0; i <= mask_; ++i) {
    if (slots_[i].key != 0) slots_[i] = {0, 0};
  }
  size_ = 0;
}

}  // namespace vkrt::vpt
