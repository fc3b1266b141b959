// The MAP_VPAGETABLE state of one address space (a vmspace, or the vkernel's own space):
// its VPAGETABLE regions with their page-table roots, and the translations installed from
// them (the TLB). Machine- and backend-independent: it decides, through the walker, what to
// install; an Installer (the backend, or in-process mmap for the own space) carries it out.
//
// Locking: `mu_` serialises everything here, and is held across a fault's walk *and*
// install. That is what makes MADV_INVAL a TLB shootdown: Invalidate() waits for a walk in
// flight to install, then removes it, so after it returns no thread can use a translation
// made from entries the vkernel changed before calling it. mu_ is per address space, never
// global; the walk and install under it allocate nothing.
// Lock order: Vmspace::admin_mu_ -> Space::mu_ -> backend-internal locks.
#ifndef VKRT_SRC_VPAGETABLE_SPACE_H_
#define VKRT_SRC_VPAGETABLE_SPACE_H_

#include <stddef.h>
#include <stdint.h>

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "vpagetable/backing.h"
#include "vpagetable/tlb.h"
#include "vpagetable/walker.h"

namespace vkrt::vpt {

// Carries out translation changes in the host for one Space. Called with Space::mu_ held.
class Installer {
 public:
  virtual ~Installer() = default;
  // Maps `len` bytes of the object `handle` (from AttachObject) at byte `offset` to address
  // `addr` with PROT_* `prot`, shared, replacing what is there.
  virtual absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                               uint64_t offset) = 0;
  // The same, for a translation nobody asked for yet (MADV_WILLNEED): if the host refuses
  // it later, nothing is reported (the page simply faults).
  virtual absl::Status InstallHint(uint64_t addr, uint64_t len, int prot, int handle,
                                   uint64_t offset) {
    return Install(addr, len, prot, handle, offset);
  }
  // Removes whatever translations lie in [addr, addr+len): afterwards every access there
  // faults again.
  virtual absl::Status Drop(uint64_t addr, uint64_t len) = 0;
  // Carries out Installs an installer queued (a backend may batch them into one host round
  // trip); Resolve calls it before it returns. Outcome: OK, or the first failure.
  virtual absl::Status Flush() { return absl::OkStatus(); }
};

// How a fault in a Space ended.
struct Resolution {
  enum class Outcome {
    kNotVpt,     // the address is not in a VPAGETABLE region: not ours
    kInstalled,  // a translation is in place; the guest retries the access
    kFault,      // the walk failed: a T_PAGEFLT for the vkernel with `err`
    kUnsure,     // a speculative read's walk failed: resolve again with the true access
  };
  Outcome outcome = Outcome::kNotVpt;
  uint32_t err = 0;  // kFault: PGEX_* (walker.h)
};

// What a fault's signal tells about its access when the hardware error code is not at hand
// (the ptrace backend sees a SIGSEGV before any handler runs): `installed_prot` is the
// page's Tlb record (-1: not installed), `si_code` the signal's (SEGV_MAPERR / SEGV_ACCERR),
// `rip` the faulting instruction.
enum class Inference {
  kKnown,      // `access` follows for certain
  kGuessRead,  // a data access to a page not installed: read or write. Resolve it as a
               // speculative read (never installs writable, so a write faults again and
               // is then known); if that walk fails, only the error code can tell.
  kUnknown,    // only the hardware error code can tell
};
Inference InferAccess(uint64_t addr, uint64_t rip, int si_code, int installed_prot,
                      Access& access);

class Space {
 public:
  // `budget`: how many translations may be installed at once (see Tlb).
  explicit Space(size_t budget);

  // The default budget for a host process that holds nothing but the guest (a stub):
  // a quarter of vm.max_map_count (a translation may cost two host mappings), at most 16384.
  static size_t StubBudget();

  // ---- regions (callers serialise these with the vmspace's admin lock) ----
  // Records [start, start+len) as a VPAGETABLE region over `backing` at byte `offset`, with
  // the object `handle` of the backend, replacing region records it overlaps (MAP_FIXED).
  // Its root is 0 (every access faults) until SetMap. Translations in the range must have
  // been dropped by the caller (the backend's unmap/replace does it).
  void AddRegion(uint64_t start, uint64_t len, int prot, uint64_t offset,
                 std::shared_ptr<Backing> backing, int handle);
  // Forgets region records and translations in [start, start+len) (the caller unmapped the
  // range). Returns the handles no region uses any more (for the backend to release).
  std::vector<int> RemoveRange(uint64_t start, uint64_t len);
  // The handle already attached for `backing`, or -1.
  int HandleFor(const Backing* backing) const;
  bool HasRegions() const;
  // The regions' [start, end) ranges intersected with [start, start+len).
  std::vector<std::pair<uint64_t, uint64_t>> RegionPieces(uint64_t start, uint64_t len) const;

  // ---- mcontrol ----
  // MADV_SETMAP: sets the root of the region parts of [start, start+len) to `root` (splitting
  // records at the edges, as DragonFly clips map entries) and drops their translations.
  absl::Status SetMap(uint64_t start, uint64_t len, uint64_t root, Installer& installer);
  // MADV_INVAL: drops the translations in [start, start+len). Waits for walks in flight.
  absl::Status Invalidate(uint64_t start, uint64_t len, Installer& installer);

  // ---- faults ----
  // Resolves an access to `addr`: walks (setting A/M) and installs the page, or reports the
  // walk's failure. `speculative` (with kRead, see Inference::kGuessRead): install the page
  // without write permission and answer kUnsure instead of kFault. (Fault-around neighbours
  // get what their own entries allow either way: a walk of them would set nothing.) A host error from the installer
  // is returned as a Status.
  absl::StatusOr<Resolution> Resolve(uint64_t addr, Access access, Installer& installer,
                                     bool speculative = false);
  // MADV_WILLNEED: installs, ahead of any access, the translations in [start, start+len)
  // that a walk would install without changing an entry (every level valid with A set; the
  // page writable only where its entry has RW and M and every level above allows writes),
  // as runs of contiguous frames; pages already installed are left alone. A hint: stops
  // quietly where the budget is used up (never evicts) and ignores install failures.
  // Returns the pages queued for installation.
  size_t Prefault(uint64_t start, uint64_t len, Installer& installer);

  // The Tlb record of the page holding `addr` (-1 if none) and whether `addr` lies in a
  // region; cheap (takes mu_, no walk).
  bool Lookup(uint64_t addr, int& installed_prot);

  // ---- vmspace_pread / vmspace_pwrite ----
  // Copies through walks (R for reading, W for writing, with their A/M updates) starting at
  // `addr`, which lies in a region, up to the region's end. Returns the bytes copied; stops
  // early where a walk fails.
  size_t Copy(uint64_t addr, void* buf, size_t len, bool write);

  // Statistics for tests and benchmarks.
  size_t installed() const;
  uint64_t evictions() const;
  uint64_t fault_around_runs() const;

 private:
  struct Region {
    uint64_t end;
    int prot;
    uint64_t offset;  // byte offset in the object at the region's start
    uint64_t root;    // MADV_SETMAP value; 0 = unset
    std::shared_ptr<Backing> backing;
    int handle;
  };
  using Regions = std::map<uint64_t, Region>;  // by start; disjoint

  // The region holding `addr` (mu_ held), or end().
  Regions::iterator Find(uint64_t addr);
  // Splits the record holding `at` so that a record starts at `at` (mu_ held).
  void SplitAt(uint64_t at);
  // Drops every translation of every region (mu_ held).
  absl::Status FlushAll(Installer& installer);
  // Drops every translation in [start, end) (mu_ held).
  absl::Status DropRange(uint64_t start, uint64_t end, Installer& installer);
  // One translation to install: guest page, object offset, protection.
  struct Candidate {
    uint64_t va;
    uint64_t offset;
    int prot;
  };
  // Fills `out` (room for kFaultAround) with `page` (walk index `index`, to be installed
  // with `prot` from `walk`) and those neighbours in its aligned group that may be installed
  // with it invisibly to the vkernel, in address order; returns how many (mu_ held). See
  // space.cc.
  int FaultAround(Regions::iterator it, uint64_t page, uint64_t index, const WalkResult& walk,
                  int prot, Candidate* out);

  static constexpr uint64_t kFaultAround = 16;  // pages, aligned group (64 KiB, as Linux's)

  mutable std::mutex mu_;
  Regions regions_;
  Tlb tlb_;
  uint64_t evictions_ = 0;
  uint64_t fault_around_ = 0;  // neighbour runs installed
};

}  // namespace vkrt::vpt

#endif  // VKRT_SRC_VPAGETABLE_SPACE_H_
