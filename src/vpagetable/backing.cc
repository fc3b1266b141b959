#include "vpagetable/backing.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/errno_status.h"

namespace vkrt::vpt {
namespace {

// Live views by object, so that mappings of one object share one view.
std::mutex cache_mu;
std::map<std::pair<dev_t, ino_t>, std::weak_ptr<Backing>>& Cache() {
  static auto* cache = new std::map<std::pair<dev_t, ino_t>, std::weak_ptr<Backing>>;
  return *cache;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Backing>> Backing::ForFd(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return SyscallError(absl::StrFormat("fstat(%d)", fd));
  if (!S_ISREG(st.st_mode)) {
    return ErrnoError(ENODEV, absl::StrFormat(
        "MAP_VPAGETABLE over fd %d: not a regular file, memfd or shm object", fd));
  }
  const int mode = fcntl(fd, F_GETFL);
  if (mode < 0) return SyscallError(absl::StrFormat("fcntl(%d, F_GETFL)", fd));
  if ((mode & O_ACCMODE) != O_RDWR) {
    return ErrnoError(EACCES, absl::StrFormat(
        "MAP_VPAGETABLE over fd %d: the fd is not open for reading and writing (the walk "
        "sets A/M bits in the page tables the object holds)", fd));
  }
  std::lock_guard<std::mutex> lock(cache_mu);
  auto& slot = Cache()[{st.st_dev, st.st_ino}];
  if (auto live = slot.lock()) return live;
  const int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) return SyscallError(absl::StrFormat("fcntl(%d, F_DUPFD_CLOEXEC)", fd));
  std::shared_ptr<Backing> backing(new Backing(dup, st.st_dev, st.st_ino));
  slot = backing;
  return backing;
}

Backing::~Backing() {
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = Cache().find({dev_, ino_});
    if (it != Cache().end() && it->second.expired()) Cache().erase(it);
  }
  // Raw system calls: libvkrt interposes munmap/mmap (own_space.h), and this may run with the
  // own space's lock held.
  for (int i = 0; i < nviews_; ++i) syscall(SYS_munmap, views_[i].base, views_[i].size);
  close(fd_);
}

unsigned char* Backing::Reach(uint64_t offset, uint64_t len) {
  if (offset + len < offset) return nullptr;
  const View* view = view_.load(std::memory_order_acquire);
  if (view != nullptr && offset + len <= view->size) return view->base + offset;
  std::lock_guard<std::mutex> lock(grow_mu_);
  view = view_.load(std::memory_order_relaxed);
  if (view != nullptr && offset + len <= view->size) return view->base + offset;
  struct stat st;
  if (fstat(fd_, &st) != 0) return nullptr;
  const uint64_t size = static_cast<uint64_t>(st.st_size) & ~uint64_t{4095};
  if (offset + len > size || nviews_ == kMaxViews) return nullptr;
  if (view != nullptr && size <= view->size) return nullptr;
  const long mapped = syscall(SYS_mmap, nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (mapped == -1) return nullptr;
  void* base = reinterpret_cast<void*>(mapped);
  View& fresh = views_[nviews_++];
  fresh.base = static_cast<unsigned char*>(base);
  fresh.size = size;
  // Older views stay mapped: a reader may still be using one.
  view_.store(&fresh, std::memory_order_release);
  return fresh.base + offset;
}

bool Backing::Load(uint64_t offset, uint64_t& value) {
  if (offset & 7) return false;
  unsigned char* p = Reach(offset, 8);
  if (p == nullptr) return false;
  value = std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(p))
              .load(std::memory_order_acquire);
  return true;
}

bool Backing::CompareExchange(uint64_t offset, uint64_t& expected, uint64_t desired) {
  if (offset & 7) return false;
  unsigned char* p = Reach(offset, 8);
  if (p == nullptr) return false;
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(p))
      .compare_exchange_strong(expected, desired, std::memory_order_acq_rel);
}

bool Backing::Copy(uint64_t offset, void* buf, size_t len, bool write) {
  unsigned char* p = Reach(offset, len);
  if (p == nullptr) return false;
  if (write) {
    memcpy(p, buf, len);
  } else {
    memcpy(buf, p, len);
  }
  return true;
}

}  // namespace vkrt::vpt
