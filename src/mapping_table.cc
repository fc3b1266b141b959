#include "mapping_table.h"

namespace vkrt {

void MappingTable::Remove(uint64_t start, uint64_t len) {
  const uint64_t end = start + len;
  auto it = by_start_.lower_bound(start);
  if (it != by_start_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > start) it = prev;
  }
  while (it != by_start_.end() && it->second.start < end) {
    Mapping m = it->second;
    it = by_start_.erase(it);
    if (m.start < start) by_start_[m.start] = Mapping{m.start, start, m.prot, m.flags};
    if (m.end > end) by_start_[end] = Mapping{end, m.end, m.prot, m.flags};
  }
}

void MappingTable::Insert(uint64_t start, uint64_t len, int prot, int flags) {
  Remove(start, len);
  by_start_[start] = Mapping{start, start + len, prot, flags};
}

bool MappingTable::FullyMapped(uint64_t start, uint64_t len) const {
  uint64_t covered = start;
  const uint64_t end = start + len;
  for (const Mapping& m : Pieces(start, len)) {
    if (m.start != covered) return false;
    covered = m.end;
  }
  return covered == end;
}

std::vector<MappingTable::Mapping> MappingTable::Pieces(uint64_t start, uint64_t len) const {
  std::vector<Mapping> out;
  const uint64_t end = start + len;
  auto it = by_start_.lower_bound(start);
  if (it != by_start_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > start) it = prev;
  }
  for (; it != by_start_.end() && it->second.start < end; ++it) {
    Mapping m = it->second;
    if (m.start < start) m.start = start;
    if (m.end > end) m.end = end;
    out.push_back(m);
  }
  return out;
}

}  // namespace vkrt
