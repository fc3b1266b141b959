#include "registry.h"

#include <errno.h>
#include <pthread.h>

#include <new>

#include "absl/strings/str_format.h"
#include "common/errno_status.h"
#include "backend/host.h"
#include "thread_state.h"

namespace vkrt {
namespace {

// DragonFly's ve_cache: the entry this thread looked up last, holding a cache ref.
thread_local Vmspace* ve_cache = nullptr;

void AtForkChild() {
  Registry::Get().ForgetAfterFork();
  ThreadState::ForgetAfterFork();
}

}  // namespace

// Registered when the library loads, before any thread can use vkrt.
[[maybe_unused]] const bool kAtForkRegistered = pthread_atfork(nullptr, nullptr, AtForkChild) == 0;

Registry& Registry::Get() {
  static Registry* registry = new Registry();
  return *registry;
}

void Registry::ForgetAfterFork() {
  // The entries (and their sockets, which close when the child exits or execs: they are
  // close-on-exec) are left alone: destroying them here would kill the parent's guests.
  new (&token_) std::shared_mutex;
  new (&tree_) absl::flat_hash_map<void*, Vmspace*>;
  ve_cache = nullptr;
}

absl::Status Registry::Create(void* id, int type, void* data) {
  active_.store(true, std::memory_order_release);
  if (data != nullptr) {
    return ErrnoError(EINVAL, "vmspace_create: `data` must be NULL");
  }
  auto backend = BackendForType(type);
  if (!backend.ok()) return backend.status();
  {
    std::shared_lock<std::shared_mutex> lock(token_);
    if (tree_.contains(id)) {
      return ErrnoError(EEXIST, absl::StrFormat("vmspace_create(%p): id in use", id));
    }
  }
  EnsureFdHeadroom();
  auto space = (*backend)->CreateAddressSpace();
  if (!space.ok()) return space.status();
  auto* vs = new Vmspace(id, *std::move(space));
  std::unique_lock<std::shared_mutex> lock(token_);
  if (!tree_.emplace(id, vs).second) {
    lock.unlock();
    delete vs;
    return ErrnoError(EEXIST, absl::StrFormat("vmspace_create(%p): id in use", id));
  }
  return absl::OkStatus();
}

absl::StatusOr<Vmspace*> Registry::Find(void* id) {
  if (!active_.load(std::memory_order_acquire)) {
    return ErrnoError(EINVAL, "no vmspace was ever created in this process");
  }
  if (Vmspace* vs = ve_cache; vs != nullptr && vs->id_ == id) {
    uint32_t n = vs->refs_.fetch_add(1, std::memory_order_acquire);
    if ((n & Vmspace::kDeleted) == 0) return vs;
    ve_cache = nullptr;  // stale
    Drop(vs);
    CacheDrop(vs);
  }
  std::shared_lock<std::shared_mutex> lock(token_);
  auto it = tree_.find(id);
  if (it == tree_.end()) {
    return ErrnoError(ENOENT, absl::StrFormat("vmspace %p does not exist", id));
  }
  Vmspace* vs = it->second;
  if (vs->refs_.fetch_add(1, std::memory_order_acquire) & Vmspace::kDeleted) {
    Drop(vs);
    return ErrnoError(ENOENT, absl::StrFormat("vmspace %p does not exist", id));
  }
  // Cache it for this thread (DragonFly caches on RUN; every call benefits here). The
  // thread's state makes sure the cache ref is dropped when the thread exits.
  if (ve_cache != vs) {
    (void)ThreadState::Current();
    vs->cache_refs_.fetch_add(1, std::memory_order_relaxed);
    if (ve_cache != nullptr) CacheDrop(ve_cache);
    ve_cache = vs;
  }
  return vs;
}

absl::Status Registry::Destroy(void* id) {
  if (!active_.load(std::memory_order_acquire)) {
    return ErrnoError(EINVAL, "no vmspace was ever created in this process");
  }
  std::unique_ptr<AddressSpace> doomed;
  Vmspace* vs = nullptr;
  {
    std::unique_lock<std::shared_mutex> lock(token_);
    auto it = tree_.find(id);
    if (it == tree_.end()) {
      return ErrnoError(ENOENT, absl::StrFormat("vmspace_destroy(%p): no such vmspace", id));
    }
    vs = it->second;
    uint32_t expected = 0;
    if (!vs->refs_.compare_exchange_strong(expected, Vmspace::kDeleted,
                                           std::memory_order_acq_rel)) {
      return ErrnoError(EBUSY, absl::StrFormat(
          "vmspace_destroy(%p): %u thread(s) run in it or hold it", id, expected));
    }
    tree_.erase(it);
    doomed = std::move(vs->space_);
    // Release the address space under the token: ReleaseThread() (which takes the token
    // exclusively) must never see a half-destroyed space.
    doomed.reset();
  }
  CacheDrop(vs);  // the tree's ref
  return absl::OkStatus();
}

void Registry::CacheDrop(Vmspace* vs) {
  if (vs->cache_refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete vs;
}

void Registry::ReleaseThread() {
  {
    std::unique_lock<std::shared_mutex> lock(token_);
    for (auto& [id, vs] : tree_) {
      if (vs->space_ != nullptr) vs->space_->ReleaseCallerContext();
    }
  }
  if (ve_cache != nullptr) {
    CacheDrop(ve_cache);
    ve_cache = nullptr;
  }
}

}  // namespace vkrt
