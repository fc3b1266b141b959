#include "vpagetable/space.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/errno_status.h"
#include "common/sysctl.h"
#include "vkrt/vmspace.h"

namespace vkrt::vpt {
namespace {

constexpr uint64_t kPage = 4096;

uint32_t AccessBits(Access access) {
  return PGEX_U | (access == Access::kWrite ? PGEX_W : 0) |
         (access == Access::kExecute ? PGEX_I : 0);
}

}  // namespace

// Why each rule holds (x86 fetches an instruction before it touches data; Linux reports
// SEGV_MAPERR where no host mapping exists and SEGV_ACCERR where one refused the access):
//   - not installed (SEGV_MAPERR, or SEGV_ACCERR over a reservation), the faulting address on rip's page: the instruction itself could not
//     be fetched (no data access happens before that), so it is a fetch;
//   - not installed, the address just past rip's page within an instruction's length: the
//     fetch of the instruction's tail or a data access; unknown;
//   - not installed, elsewhere: a data access, read or write;
//   - installed without write but with execute: reads and fetches pass, so it is a write;
//   - installed without execute, the address on rip's page: the fetch (it comes first);
//   - installed without write and without execute, elsewhere: a write, unless the straddle
//     case above makes it a possible fetch;
//   - installed with write but without execute: a fetch;
//   - anything else (everything allowed, protection keys, a record that disagrees with the
//     signal): unknown.
Inference InferAccess(uint64_t addr, uint64_t rip, int si_code, int installed_prot,
                      Access& access) {
  const uint64_t page = addr >> 12;
  const uint64_t rip_page = rip >> 12;
  const bool fetch_first = page == rip_page;
  const bool straddle = page == rip_page + 1 && addr >= rip && addr - rip < 16;
  if (installed_prot < 0) {
    // Not installed: Linux says SEGV_MAPERR where nothing is mapped and SEGV_ACCERR over a
    // reservation (an inaccessible mapping); the same either way.
    if ((si_code != SEGV_MAPERR && si_code != SEGV_ACCERR) || straddle) {
      return Inference::kUnknown;
    }
    if (fetch_first) {
      access = Access::kExecute;
      return Inference::kKnown;
    }
    access = Access::kRead;
    return Inference::kGuessRead;
  }
  if (si_code != SEGV_ACCERR) return Inference::kUnknown;
  const bool w = (installed_prot & PROT_WRITE) != 0;
  const bool x = (installed_prot & PROT_EXEC) != 0;
  if (fetch_first && !x) {
    access = Access::kExecute;
    return Inference::kKnown;
  }
  if (!w && x) {
    access = Access::kWrite;
    return Inference::kKnown;
  }
  if (!w && !x) {
    if (fetch_first || straddle) return Inference::kUnknown;
    access = Access::kWrite;
    return Inference::kKnown;
  }
  if (w && !x) {
    access = Access::kExecute;
    return Inference::kKnown;
  }
  return Inference::kUnknown;
}

Space::Space(size_t budget) : tlb_(budget) {}

size_t Space::StubBudget() {
  // A translation can cost two host mappings (it splits the reservation around it).
  static const size_t budget =
      std::clamp<size_t>(ReadSysctl("/proc/sys/vm/max_map_count", 65530) / 4, 64, 16384);
  return budget;
}

Space::Regions::iterator Space::Find(uint64_t addr) {
  auto it = regions_.upper_bound(addr);
  if (it == regions_.begin()) return regions_.end();
  --it;
  return addr < it->second.end ? it : regions_.end();
}

void Space::SplitAt(uint64_t at) {
  auto it = Find(at);
  if (it == regions_.end() || it->first == at) return;
  Region tail = it->second;
  tail.offset += at - it->first;
  it->second.end = at;
  regions_.emplace(at, std::move(tail));
}

void Space::AddRegion(uint64_t start, uint64_t len, int prot, uint64_t offset,
                      std::shared_ptr<Backing> backing, int handle) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = start + len;
  SplitAt(start);
  SplitAt(end);
  for (auto it = regions_.lower_bound(start); it != regions_.end() && it->first < end;) {
    it = regions_.erase(it);
  }
  tlb_.EraseRange(start, end);
  regions_.emplace(start, Region{end, prot, offset, 0, std::move(backing), handle});
}

std::vector<int> Space::RemoveRange(uint64_t start, uint64_t len) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = start + len;
  std::vector<int> released;
  SplitAt(start);
  SplitAt(end);
  for (auto it = regions_.lower_bound(start); it != regions_.end() && it->first < end;) {
    const int handle = it->second.handle;
    it = regions_.erase(it);
    bool used = false;
    for (const auto& [s, r] : regions_) used = used || r.handle == handle;
    if (!used && std::find(released.begin(), released.end(), handle) == released.end()) {
      released.push_back(handle);
    }
  }
  tlb_.EraseRange(start, end);
  return released;
}

int Space::HandleFor(const Backing* backing) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [s, r] : regions_) {
    if (r.backing.get() == backing) return r.handle;
  }
  return -1;
}

bool Space::HasRegions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !regions_.empty();
}

std::vector<std::pair<uint64_t, uint64_t>> Space::RegionPieces(uint64_t start,
                                                               uint64_t len) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  const uint64_t end = start + len;
  auto it = regions_.upper_bound(start);
  if (it != regions_.begin()) --it;
  for (; it != regions_.end() && it->first < end; ++it) {
    const uint64_t s = std::max(start, it->first);
    const uint64_t e = std::min(end, it->second.end);
    if (s < e) pieces.emplace_back(s, e);
  }
  return pieces;
}

absl::Status Space::DropRange(uint64_t start, uint64_t end, Installer& installer) {
  if (tlb_.EraseRange(start, end) == 0) return absl::OkStatus();
  return installer.Drop(start, end - start);
}

absl::Status Space::FlushAll(Installer& installer) {
  // Out of translations (vm.max_map_count): drop everything, as a full TLB would.
  for (const auto& [start, region] : regions_) {
    if (auto s = installer.Drop(start, region.end - start); !s.ok()) return s;
  }
  tlb_.Clear();
  ++evictions_;
  return absl::OkStatus();
}

absl::Status Space::SetMap(uint64_t start, uint64_t len, uint64_t root, Installer& installer) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = start + len;
  SplitAt(start);
  SplitAt(end);
  for (auto it = regions_.lower_bound(start); it != regions_.end() && it->first < end; ++it) {
    it->second.root = root;
    if (auto s = DropRange(it->first, it->second.end, installer); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Space::Invalidate(uint64_t start, uint64_t len, Installer& installer) {
  std::lock_guard<std::mutex> lock(mu_);
  return DropRange(start, start + len, installer);
}

bool Space::Lookup(uint64_t addr, int& installed_prot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (Find(addr) == regions_.end()) return false;
  installed_prot = tlb_.Find(addr & ~(kPage - 1));
  return true;
}

absl::StatusOr<Resolution> Space::Resolve(uint64_t addr, Access access, Installer& installer,
                                          bool speculative) {
  std::lock_guard<std::mutex> lock(mu_);
  Resolution result;
  auto it = Find(addr);
  if (it == regions_.end()) return result;  // kNotVpt
  const Region& r = it->second;
  const uint64_t page = addr & ~(kPage - 1);
  auto fail = [&](uint32_t err) {
    result.outcome = speculative ? Resolution::Outcome::kUnsure : Resolution::Outcome::kFault;
    result.err = err;
    return result;
  };
  // The mapping's own protection comes first (DragonFly checks the map entry before the
  // walk): a fetch from a mapping without PROT_EXEC is refused whatever the tables say.
  if (access == Access::kExecute && !(r.prot & PROT_EXEC)) {
    return fail(AccessBits(access) | PGEX_P);
  }
  if (r.root == 0) return fail(AccessBits(access));  // no MADV_SETMAP yet
  const uint64_t index = ((page - it->first) + r.offset) >> 12;
  WalkResult walk = Walk(*r.backing, r.root, index, access, r.prot);
  if (!walk.ok) return fail(walk.err);
  if (!r.backing->Contains(walk.page_offset, kPage)) {
    return fail(AccessBits(access));  // a frame beyond the object's end: nothing there
  }
  int prot = walk.prot;
  if (speculative) prot &= ~PROT_WRITE;  // a write must fault again and set M
  if (tlb_.Find(page) < 0 && tlb_.full()) {
    if (auto s = FlushAll(installer); !s.ok()) return s;
  }
  // The page and its neighbours, as runs of contiguous frames with one protection: the
  // run holding the page must go in; the others may fail (they fault later).
  Candidate candidates[kFaultAround];
  const int n = FaultAround(it, page, index, walk, prot, candidates);
  auto install_page_alone = [&]() -> absl::Status {
    // Out of host mappings (other mappings used up vm.max_map_count): flush, retry alone.
    if (auto f = FlushAll(installer); !f.ok()) return f;
    if (auto again = installer.Install(page, kPage, prot, r.handle, walk.page_offset);
        !again.ok()) {
      return again;
    }
    tlb_.Put(page, prot);
    return absl::OkStatus();
  };
  bool page_failed = false;
  for (int i = 0; i < n;) {
    int k = i + 1;
    while (k < n && candidates[k].va == candidates[k - 1].va + kPage &&
           candidates[k].offset == candidates[k - 1].offset + kPage &&
           candidates[k].prot == candidates[i].prot) {
      ++k;
    }
    const bool has_page = candidates[i].va <= page && page < candidates[i].va + (k - i) * kPage;
    auto s = installer.Install(candidates[i].va, (k - i) * kPage, candidates[i].prot, r.handle,
                               candidates[i].offset);
    if (s.ok()) {
      for (int m = i; m < k; ++m) tlb_.Put(candidates[m].va, candidates[m].prot);
      if (k - i > 1 || !has_page) ++fault_around_;  // a run with neighbours in it
    } else if (has_page) {
      if (ErrnoOf(s) != ENOMEM || tlb_.size() == 0) return s;
      page_failed = true;
    }
    i = k;
  }
  if (page_failed) {
    if (auto s = install_page_alone(); !s.ok()) return s;
  }
  if (auto s = installer.Flush(); !s.ok()) {
    // A batching installer reports failures here. Neighbours that failed fault again later
    // (their records are replaced then); the page itself must be in place.
    if (ErrnoOf(s) != ENOMEM) return s;
    if (auto a = install_page_alone(); !a.ok()) return a;
    if (auto again = installer.Flush(); !again.ok()) return again;
  }
  result.outcome = Resolution::Outcome::kInstalled;
  return result;
}

// The neighbours of a just-resolved page in its aligned group of kFaultAround pages that
// may go in with it because that cannot change what the vkernel observes: within a large
// page, every neighbour shares the entry the walk just marked; in a table of 4 KiB entries,
// only neighbours whose entry is valid with A already set, writable only when RW and M are
// set too (a walk would set nothing new). The page itself is among them, in address order.
int Space::FaultAround(Regions::iterator it, uint64_t page, uint64_t index,
                       const WalkResult& walk, int prot, Candidate* out) {
  const Region& r = it->second;
  int n = 0;
  int room = static_cast<int>(tlb_.capacity() - std::min(tlb_.capacity(), tlb_.size())) - 1;
  const uint64_t first = index & ~(kFaultAround - 1);
  for (uint64_t j = first; j < first + kFaultAround; ++j) {
    const int64_t delta = static_cast<int64_t>(j - index) * static_cast<int64_t>(kPage);
    const uint64_t va = page + static_cast<uint64_t>(delta);
    if (j == index) {
      out[n++] = {page, walk.page_offset, prot};
      continue;
    }
    if (va < it->first || va >= r.end || tlb_.Find(va) >= 0) continue;
    if (room <= 0) continue;
    Candidate c{va, 0, prot};
    if (walk.page_shift > 0) {
      c.offset = walk.page_offset + static_cast<uint64_t>(delta);  // the same large page
    } else {
      if (walk.leaf_table == 0) continue;
      uint64_t e;
      if (!r.backing->Load(walk.leaf_table + (j & 511) * sizeof(uint64_t), e)) continue;
      if ((e & (VPTE_V | VPTE_A)) != (VPTE_V | VPTE_A)) continue;
      c.prot = r.prot;
      if (!walk.upper_writable || (e & (VPTE_RW | VPTE_M)) != (VPTE_RW | VPTE_M)) {
        c.prot &= ~PROT_WRITE;
      }
      if (walk.upper_nx || (e & VPTE_NX)) c.prot &= ~PROT_EXEC;
      c.offset = e & VPTE_FRAME;
    }
    if (!r.backing->Contains(c.offset, kPage)) continue;
    out[n++] = c;
    --room;
  }
  return n;
}

namespace {

// The entries as a walk would see them, with every update refused: a walk through it
// succeeds only where it would set nothing (refused updates read as "outside the object").
class ReadOnlyEntries : public EntryAccess {
 public:
  explicit ReadOnlyEntries(EntryAccess& entries) : entries_(entries) {}
  bool Load(uint64_t offset, uint64_t& value) override { return entries_.Load(offset, value); }
  bool CompareExchange(uint64_t, uint64_t&, uint64_t) override { return false; }

 private:
  EntryAccess& entries_;
};

}  // namespace

size_t Space::Prefault(uint64_t start, uint64_t len, Installer& installer) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = start + len;
  size_t queued = 0;
  auto it = regions_.upper_bound(start);
  if (it != regions_.begin()) --it;
  for (; it != regions_.end() && it->first < end; ++it) {
    const Region& r = it->second;
    if (r.root == 0) continue;
    ReadOnlyEntries entries(*r.backing);
    Candidate run{0, 0, 0};
    uint64_t run_pages = 0;
    auto flush_run = [&] {
      if (run_pages == 0) return;
      if (installer.InstallHint(run.va, run_pages * kPage, run.prot, r.handle, run.offset).ok()) {
        for (uint64_t i = 0; i < run_pages; ++i) tlb_.Put(run.va + i * kPage, run.prot);
        queued += run_pages;
      }
      run_pages = 0;
    };
    for (uint64_t page = std::max(start, it->first) & ~(kPage - 1);
         page < std::min(end, r.end); page += kPage) {
      if (tlb_.Find(page) >= 0) {
        flush_run();
        continue;
      }
      if (tlb_.size() + run_pages >= tlb_.capacity()) break;
      const uint64_t index = ((page - it->first) + r.offset) >> 12;
      const WalkResult walk = Walk(entries, r.root, index, Access::kRead, r.prot);
      if (!walk.ok || !r.backing->Contains(walk.page_offset, kPage)) {
        flush_run();
        continue;
      }
      if (run_pages > 0 && run.va + run_pages * kPage == page &&
          run.offset + run_pages * kPage == walk.page_offset && run.prot == walk.prot) {
        ++run_pages;
        continue;
      }
      flush_run();
      run = {page, walk.page_offset, walk.prot};
      run_pages = 1;
    }
    flush_run();
  }
  if (queued > 0) (void)installer.Flush();  // a hint: failures fault (and install) later
  return queued;
}

size_t Space::Copy(uint64_t addr, void* buf, size_t len, bool write) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = Find(addr);
  if (it == regions_.end()) return 0;
  const Region& r = it->second;
  if (r.root == 0) return 0;
  const Access access = write ? Access::kWrite : Access::kRead;
  size_t done = 0;
  auto* bytes = static_cast<unsigned char*>(buf);
  while (done < len && addr + done < r.end) {
    const uint64_t cur = addr + done;
    const uint64_t page = cur & ~(kPage - 1);
    const uint64_t index = ((page - it->first) + r.offset) >> 12;
    WalkResult walk = Walk(*r.backing, r.root, index, access, r.prot);
    if (!walk.ok) break;
    const size_t chunk = std::min<uint64_t>(len - done, page + kPage - cur);
    if (!r.backing->Copy(walk.page_offset + (cur - page), bytes + done, chunk, write)) break;
    done += chunk;
  }
  return done;
}

size_t Space::installed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tlb_.size();
}

uint64_t Space::fault_around_runs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fault_around_;
}

uint64_t Space::evictions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return evictions_;
}

}  // namespace vkrt::vpt
