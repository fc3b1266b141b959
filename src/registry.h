// The per-process vmspace registry: DragonFly's vkernel_proc + vmspace_entry, with the
// same reference protocol (vm_vmspace.c):
//   - `refs` counts active users (a call in progress on the vmspace, a RUN included);
//     bit 31 (kDeleted) is set, atomically with checking that only the destroyer holds a
//     ref, when the entry is removed. A holder that sees kDeleted treats the entry as gone.
//   - `cache_refs` keeps the entry's memory alive: one for being in the tree, one for each
//     thread whose lookup cache (DragonFly's ve_cache) points at it. The last drop frees it.
// Lookups from a thread that used the same id last take no lock at all (the cache);
// other lookups take the registry token shared; create/destroy take it exclusive.
//
// Lock order: registry token -> Vmspace::admin_mu_ -> backend-internal locks.
#ifndef VKRT_SRC_REGISTRY_H_
#define VKRT_SRC_REGISTRY_H_

#include <stdint.h>
#include <sys/types.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "mapping_table.h"
#include "vpagetable/space.h"

namespace vkrt {

// One guest address space as the vkernel names it: the registry entry plus the
// machine-independent rules of SPEC §2/§4 (argument checks, the mapping table).
class Vmspace {
 public:
  Vmspace(void* id, std::unique_ptr<AddressSpace> space);

  void* id() const { return id_; }

  // SPEC §4 vmspace_mmap: validates, then maps. Returns the guest address.
  absl::StatusOr<uint64_t> Map(uint64_t addr, uint64_t len, int prot, int flags, int fd,
                               off_t offset);
  // SPEC §2 vmspace_munmap.
  absl::Status Unmap(uint64_t addr, uint64_t len);
  // SPEC §2 vmspace_mcontrol.
  absl::Status Control(uint64_t addr, uint64_t len, int behav, off_t value);
  // SPEC §4 vmspace_pread / vmspace_pwrite.
  absl::StatusOr<size_t> Read(void* buf, size_t len, int flags, uint64_t addr);
  absl::StatusOr<size_t> Write(const void* buf, size_t len, int flags, uint64_t addr);
  // SPEC §3 VMSPACE_CTL_RUN. `timeout_ns` < 0 means the thread's default.
  absl::StatusOr<GuestExit> Run(trapframe& tf, const vextframe& vf, void* xstate,
                                int64_t timeout_ns);

  AddressSpace& space() { return *space_; }

 private:
  // MAP_VPAGETABLE mmap: the region is reserved in the guest space (an inaccessible mapping)
  // and recorded in vpt_, which decides translations on faults.
  absl::StatusOr<uint64_t> MapVpagetable(uint64_t addr, uint64_t len, int prot, int flags,
                                         int fd, off_t offset, const std::string& what);
  // Forgets VPAGETABLE records in [addr, addr+len) after the range was unmapped or
  // replaced, releasing objects no region uses any more (admin_mu_ held).
  void ForgetVpagetable(uint64_t addr, uint64_t len);
  // Copies through both kinds of mapping (pread/pwrite).
  absl::StatusOr<size_t> Copy(uint64_t addr, void* buf, size_t len, bool write);

  friend class Registry;
  static constexpr uint32_t kDeleted = 0x80000000u;

  void* const id_;
  std::atomic<uint32_t> refs_{0};
  std::atomic<uint32_t> cache_refs_{1};  // on the tree
  // Created by the first MAP_VPAGETABLE mapping (under admin_mu_), then never replaced;
  // declared before space_ so that it outlives the AddressSpace that points at it.
  std::unique_ptr<vpt::Space> vpt_;
  std::atomic<vpt::Space*> vpt_ptr_{nullptr};  // vpt_.get(), readable without admin_mu_
  std::unique_ptr<AddressSpace> space_;  // reset when deleted (under the registry token)

  std::mutex admin_mu_;  // serialises Map/Unmap/Control; guards maps_ and creating vpt_
  MappingTable maps_;
};

class Registry {
 public:
  static Registry& Get();  // one per process, never destroyed

  // EEXIST if `id` is taken; EINVAL/EOPNOTSUPP for `type` (backend.h); host errors.
  absl::Status Create(void* id, int type, void* data);
  // ENOENT if unknown; EBUSY if another thread runs in it or holds it; EINVAL before any
  // vmspace_create in this process.
  absl::Status Destroy(void* id);

  // Finds `id` and takes an active ref (release with Drop). EINVAL before any
  // vmspace_create, ENOENT if unknown.
  absl::StatusOr<Vmspace*> Find(void* id);
  void Drop(Vmspace* vs) { vs->refs_.fetch_sub(1, std::memory_order_release); }

  // The calling thread is exiting: releases its guest contexts and its lookup cache.
  void ReleaseThread();

  // In the child of fork(): the parent's vmspaces are the parent's (their guest threads
  // are traced by the parent's threads); the child starts with none of them.
  void ForgetAfterFork();

 private:
  Registry() = default;
  void CacheDrop(Vmspace* vs);

  std::atomic<bool> active_{false};  // DragonFly's p_vkernel != NULL
  std::shared_mutex token_;
  absl::flat_hash_map<void*, Vmspace*> tree_;  // guarded by token_
};

// RAII active reference.
class VmspaceRef {
 public:
  explicit VmspaceRef(Vmspace* vs) : vs_(vs) {}
  ~VmspaceRef() { if (vs_ != nullptr) Registry::Get().Drop(vs_); }
  VmspaceRef(const VmspaceRef&) = delete;
  VmspaceRef& operator=(const VmspaceRef&) = delete;
  Vmspace* operator->() const { return vs_; }

 private:
  Vmspace* vs_;
};

}  // namespace vkrt

#endif  // VKRT_SRC_REGISTRY_H_
