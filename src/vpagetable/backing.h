// The vkernel's own view of a MAP_VPAGETABLE backing object (a memfd, shm object or regular
// file): where the walker reads and updates page-table entries and where vmspace_pread /
// vmspace_pwrite copy through translations. One view per object (st_dev, st_ino), shared by
// every mapping of it in every vmspace of the process, so a vkernel whose guests all live in
// one "physical memory" memfd maps that memfd once.
//
// Thread safety: every method may be called from any thread and from a signal handler that
// blocks all signals (the own-space fault handler): nothing allocates, and the only lock,
// `grow_mu_`, is taken for the few system calls that map a bigger view when the object grew.
// The object must not shrink below what its page tables and pages use while it is mapped
// (reading a truncated page raises SIGBUS in the vkernel, as it would for any mmap).
#ifndef VKRT_SRC_VPAGETABLE_BACKING_H_
#define VKRT_SRC_VPAGETABLE_BACKING_H_

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "vpagetable/walker.h"

namespace vkrt::vpt {

class Backing : public EntryAccess {
 public:
  // The view of the object `fd` refers to (which must be open for reading and writing: the
  // walker sets A/M bits in the tables it holds). EACCES for a read-only fd, ENODEV for an
  // object that cannot be mapped shared (a pipe, a socket).
  static absl::StatusOr<std::shared_ptr<Backing>> ForFd(int fd);
  ~Backing() override;

  Backing(const Backing&) = delete;
  Backing& operator=(const Backing&) = delete;

  // EntryAccess: 8-byte entries at byte offsets; false outside the object.
  bool Load(uint64_t offset, uint64_t& value) override;
  bool CompareExchange(uint64_t offset, uint64_t& expected, uint64_t desired) override;

  // Copies `len` bytes at byte offset `offset` of the object to (write = false) or from
  // (write = true) `buf`. False (nothing copied) if the range leaves the object.
  bool Copy(uint64_t offset, void* buf, size_t len, bool write);

  // True if [offset, offset+len) lies inside the object as it is now.
  bool Contains(uint64_t offset, uint64_t len) { return Reach(offset, len) != nullptr; }

  // The duplicate of the caller's fd this view keeps (close-on-exec); backends hand it on.
  int fd() const { return fd_; }

 private:
  struct View {
    unsigned char* base;
    uint64_t size;
  };
  Backing(int fd, dev_t dev, ino_t ino) : fd_(fd), dev_(dev), ino_(ino) {}
  // The address of [offset, offset+len) in a view covering it, growing the view when the
  // object has grown; nullptr if the range is outside the object.
  unsigned char* Reach(uint64_t offset, uint64_t len);

  const int fd_;
  const dev_t dev_;
  const ino_t ino_;
  std::atomic<const View*> view_{nullptr};
  static constexpr int kMaxViews = 48;  // each growth maps the whole object again
  std::mutex grow_mu_;                  // serialises growth; guards views_/nviews_
  View views_[kMaxViews] = {};          // every view made; unmapped at destruction
  int nviews_ = 0;
};

}  // namespace vkrt::vpt

#endif  // VKRT_SRC_VPAGETABLE_BACKING_H_
