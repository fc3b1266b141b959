// The vkernel-side record of a guest address space's mappings: what SPEC §2 needs to
// answer "is every page of this range mapped?" (munmap's EINVAL) and "which parts are
// mapped?" (mcontrol skips holes). Pure data structure; the owner serialises access.
#ifndef VKRT_SRC_MAPPING_TABLE_H_
#define VKRT_SRC_MAPPING_TABLE_H_

#include <stddef.h>
#include <stdint.h>

#include <map>
#include <utility>
#include <vector>

namespace vkrt {

class MappingTable {
 public:
  struct Mapping {
    uint64_t start;
    uint64_t end;  // exclusive
    int prot;
    int flags;
  };

  // Records [start, start+len), replacing whatever overlapped it (MAP_FIXED semantics).
  void Insert(uint64_t start, uint64_t len, int prot, int flags);
  // Forgets [start, start+len), splitting mappings that straddle the edges.
  void Remove(uint64_t start, uint64_t len);
  // True if every byte of [start, start+len) is mapped (len > 0).
  bool FullyMapped(uint64_t start, uint64_t len) const;
  // The mapped parts of [start, start+len), in address order, clipped to the range.
  std::vector<Mapping> Pieces(uint64_t start, uint64_t len) const;
  size_t size() const { return by_start_.size(); }

 private:
  std::map<uint64_t, Mapping> by_start_;  // disjoint, keyed by start
};

}  // namespace vkrt

#endif  // VKRT_SRC_MAPPING_TABLE_H_
