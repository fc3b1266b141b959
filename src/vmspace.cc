// The machine-independent rules of SPEC §2-§4: argument checks and errno choices made
// before anything reaches a backend, and the mapping table they consult.
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "absl/strings/str_format.h"
#include "arch/x86_64/frame.h"
#include "common/errno_status.h"
#include "common/sysctl.h"
#include "registry.h"
#include "thread_state.h"

namespace vkrt {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kTop = VKRT_VM_MAX_USER_ADDRESS;

uint64_t MmapMinAddr() {
  static const uint64_t value =
      (ReadSysctl("/proc/sys/vm/mmap_min_addr", 65536) + kPage - 1) & ~(kPage - 1);
  return value;
}

// A [addr, addr+len) range check shared by munmap/mcontrol: EINVAL on wrap or beyond top.
absl::Status CheckRange(const char* call, uint64_t addr, uint64_t len) {
  if (addr + len < addr) {
    return ErrnoError(EINVAL, absl::StrFormat("%s(%#x, %#x): range wraps", call, addr, len));
  }
  if (addr + len > kTop) {
    return ErrnoError(EINVAL, absl::StrFormat("%s(%#x, %#x): range ends above %#x", call,
                                              addr, len, kTop));
  }
  return absl::OkStatus();
}

}  // namespace

Vmspace::Vmspace(void* id, std::unique_ptr<AddressSpace> space)
    : id_(id), space_(std::move(space)) {}

absl::StatusOr<uint64_t> Vmspace::Map(uint64_t addr, uint64_t len, int prot, int flags, int fd,
                                      off_t offset) {
  const auto what = [&] {
    return absl::StrFormat("vmspace_mmap(%p, %#x, %#x, prot %#x, flags %#x, fd %d, off %d)",
                           id_, addr, len, prot, flags, fd, static_cast<long long>(offset));
  };
  if (len == 0) return ErrnoError(EINVAL, what() + ": zero length");
  const int type = flags & MAP_SHARED_VALIDATE;
  if (type == 0) return ErrnoError(EINVAL, what() + ": neither MAP_SHARED nor MAP_PRIVATE");
  const bool anon = (flags & MAP_ANONYMOUS) != 0;
  if (anon && fd != -1) return ErrnoError(EINVAL, what() + ": MAP_ANONYMOUS with an fd");
  if (flags & MAP_VPAGETABLE) {
    if ((prot & (PROT_READ | PROT_WRITE)) != (PROT_READ | PROT_WRITE)) {
      return ErrnoError(EINVAL, what() + ": MAP_VPAGETABLE needs PROT_READ|PROT_WRITE");
    }
    if (flags & MAP_STACK) return ErrnoError(EINVAL, what() + ": MAP_VPAGETABLE with MAP_STACK");
    if (anon) {
      return ErrnoError(EINVAL, what() + ": MAP_VPAGETABLE needs a backing object (an fd), "
                                         "not MAP_ANONYMOUS");
    }
    if (type == MAP_PRIVATE) {
      return ErrnoError(EINVAL, what() + ": MAP_VPAGETABLE needs MAP_SHARED (its page "
                                         "tables and pages are the object's)");
    }
  }
  if (offset < 0 || (static_cast<uint64_t>(offset) & (kPage - 1)) != 0) {
    return ErrnoError(EINVAL, what() + ": offset is not a page multiple");
  }
  if (len > kTop) return ErrnoError(ENOMEM, what() + ": longer than the address space");
  const uint64_t rlen = (len + kPage - 1) & ~(kPage - 1);
  const bool fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) != 0;
  if (fixed) {
    if (addr & (kPage - 1)) return ErrnoError(EINVAL, what() + ": MAP_FIXED address not aligned");
    if (addr + rlen < addr || addr + rlen > kTop) {
      return ErrnoError(EINVAL, what() + ": range ends above the vmspace's top");
    }
    if (addr < MmapMinAddr()) {
      return ErrnoError(EPERM, what() + absl::StrFormat(": below vm.mmap_min_addr (%#x)",
                                                        MmapMinAddr()));
    }
  } else if (addr + rlen < addr || addr + rlen > kTop) {
    addr = 0;  // an unusable hint is ignored, as mmap(2) does
  }
  if (!anon) {
    if (fcntl(fd, F_GETFL) < 0) return ErrnoError(EBADF, what() + ": bad file descriptor");
  }
  if (flags & MAP_VPAGETABLE) {
    return MapVpagetable(addr & ~(kPage - 1), rlen, prot, flags, fd, offset, what());
  }
  MapRequest request;
  request.addr = addr & ~(kPage - 1);
  request.len = rlen;
  request.prot = prot;
  request.flags = flags;
  request.fd = anon ? -1 : fd;
  request.offset = offset;
  std::lock_guard<std::mutex> lock(admin_mu_);
  if ((flags & MAP_FIXED_NOREPLACE) && !(flags & MAP_FIXED) && !maps_.Pieces(addr, rlen).empty()) {
    return ErrnoError(EEXIST, what() + ": MAP_FIXED_NOREPLACE over an existing mapping");
  }
  auto mapped = space_->Map(request);
  if (!mapped.ok()) return mapped.status();
  if (*mapped + rlen > kTop) {
    (void)space_->Unmap(*mapped, rlen);
    return ErrnoError(ENOMEM, what() + ": no room below the vmspace's top");
  }
  ForgetVpagetable(*mapped, rlen);  // MAP_FIXED over VPAGETABLE regions replaced them
  maps_.Insert(*mapped, rlen, prot, flags);
  return *mapped;
}

absl::StatusOr<uint64_t> Vmspace::MapVpagetable(uint64_t addr, uint64_t len, int prot,
                                                int flags, int fd, off_t offset,
                                                const std::string& what) {
  auto backing = vpt::Backing::ForFd(fd);
  if (!backing.ok()) {
    return ErrnoError(ErrnoOf(backing.status()),
                      what + ": " + std::string(backing.status().message()));
  }
  std::lock_guard<std::mutex> lock(admin_mu_);
  if ((flags & MAP_FIXED_NOREPLACE) && !(flags & MAP_FIXED) && !maps_.Pieces(addr, len).empty()) {
    return ErrnoError(EEXIST, what + ": MAP_FIXED_NOREPLACE over an existing mapping");
  }
  if (vpt_ == nullptr) {
    vpt_ = std::make_unique<vpt::Space>(space_->TranslationBudget());
    vpt_ptr_.store(vpt_.get(), std::memory_order_release);
    space_->set_vpt(vpt_.get());
  }
  // Reserve the range: nothing else may be placed there, and every access faults until a
  // translation is installed.
  MapRequest reserve;
  reserve.addr = addr;
  reserve.len = len;
  reserve.prot = PROT_NONE;
  reserve.flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
                  (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE));
  auto mapped = space_->Map(reserve);
  if (!mapped.ok()) return mapped.status();
  if (*mapped + len > kTop) {
    (void)space_->Unmap(*mapped, len);
    return ErrnoError(ENOMEM, what + ": no room below the vmspace's top");
  }
  ForgetVpagetable(*mapped, len);
  int handle = vpt_->HandleFor(backing->get());
  if (handle < 0) {
    auto attached = space_->AttachObject((*backing)->fd());
    if (!attached.ok()) {
      (void)space_->Unmap(*mapped, len);
      maps_.Remove(*mapped, len);
      return attached.status();
    }
    handle = *attached;
  }
  vpt_->AddRegion(*mapped, len, prot, static_cast<uint64_t>(offset), *std::move(backing),
                  handle);
  maps_.Insert(*mapped, len, prot, flags);
  return *mapped;
}

void Vmspace::ForgetVpagetable(uint64_t addr, uint64_t len) {
  if (vpt_ == nullptr) return;
  for (int handle : vpt_->RemoveRange(addr, len)) (void)space_->DetachObject(handle);
}

absl::Status Vmspace::Unmap(uint64_t addr, uint64_t len) {
  if (len == 0) return absl::OkStatus();
  if (addr & (kPage - 1)) {
    return ErrnoError(EINVAL, absl::StrFormat("vmspace_munmap(%#x): address not aligned", addr));
  }
  if (auto s = CheckRange("vmspace_munmap", addr, len); !s.ok()) return s;
  const uint64_t rlen = (len + kPage - 1) & ~(kPage - 1);
  if (auto s = CheckRange("vmspace_munmap", addr, rlen); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(admin_mu_);
  if (!maps_.FullyMapped(addr, rlen)) {
    return ErrnoError(EINVAL, absl::StrFormat(
        "vmspace_munmap(%#x, %#x): part of the range is not mapped", addr, len));
  }
  if (auto s = space_->Unmap(addr, rlen); !s.ok()) return s;
  ForgetVpagetable(addr, rlen);
  maps_.Remove(addr, rlen);
  return absl::OkStatus();
}

absl::Status Vmspace::Control(uint64_t addr, uint64_t len, int behav, off_t value) {
  (void)value;
  if (behav < 0 || behav > MADV_SETMAP) {
    return ErrnoError(EINVAL, absl::StrFormat("vmspace_mcontrol: behav %d is not 0..11", behav));
  }
  if (auto s = CheckRange("vmspace_mcontrol", addr, len); !s.ok()) return s;
  const uint64_t start = addr & ~(kPage - 1);
  const uint64_t end = (addr + len + kPage - 1) & ~(kPage - 1);
  if (end > kTop) {
    return ErrnoError(EINVAL, absl::StrFormat("vmspace_mcontrol(%#x, %#x): beyond the top", addr, len));
  }
  std::lock_guard<std::mutex> lock(admin_mu_);
  const auto pieces = maps_.Pieces(start, end - start);
  if (behav == MADV_SETMAP || behav == MADV_INVAL) {
    // DragonFly walks the map entries in the range (holes skipped): SETMAP sets the root of
    // each VPAGETABLE entry and fails with EINVAL for any other entry; both drop the
    // translations (pmap_remove) of the VPAGETABLE entries.
    bool plain = false;
    for (const auto& piece : pieces) plain = plain || !(piece.flags & MAP_VPAGETABLE);
    if (vpt_ != nullptr) {
      SpaceInstaller installer(*space_);
      auto s = behav == MADV_SETMAP
                   ? vpt_->SetMap(start, end - start, static_cast<uint64_t>(value), installer)
                   : vpt_->Invalidate(start, end - start, installer);
      if (!s.ok()) return s;
    }
    if (behav == MADV_SETMAP && plain) {
      return ErrnoError(EINVAL, absl::StrFormat(
          "vmspace_mcontrol(%#x, %#x, MADV_SETMAP): part of the range is not a "
          "MAP_VPAGETABLE mapping", addr, len));
    }
    return absl::OkStatus();
  }
  for (const auto& piece : pieces) {
    if (behav == MADV_WILLNEED && vpt_ != nullptr && (piece.flags & MAP_VPAGETABLE)) {
      // Through the vkernel's tables: what they already allow goes in now (vpt::Space::
      // Prefault), not the object's pages at the same offsets.
      SpaceInstaller installer(*space_);
      (void)vpt_->Prefault(piece.start, piece.end - piece.start, installer);
      continue;
    }
    if (auto s = space_->Advise(piece.start, piece.end - piece.start, behav); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> Vmspace::Read(void* buf, size_t len, int flags, uint64_t addr) {
  if (flags != 0) return ErrnoError(EINVAL, absl::StrFormat("vmspace_pread: flags %#x", flags));
  if (len == 0) return 0;
  if (addr >= kTop) {
    return ErrnoError(EFAULT, absl::StrFormat("vmspace_pread(%#x): above the vmspace's top", addr));
  }
  if (len > kTop - addr) len = kTop - addr;
  return Copy(addr, buf, len, false);
}

absl::StatusOr<size_t> Vmspace::Write(const void* buf, size_t len, int flags, uint64_t addr) {
  if (flags != 0) return ErrnoError(EINVAL, absl::StrFormat("vmspace_pwrite: flags %#x", flags));
  if (len == 0) return 0;
  if (addr >= kTop) {
    return ErrnoError(EFAULT, absl::StrFormat("vmspace_pwrite(%#x): above the vmspace's top", addr));
  }
  if (len > kTop - addr) len = kTop - addr;
  return Copy(addr, const_cast<void*>(buf), len, true);
}

absl::StatusOr<size_t> Vmspace::Copy(uint64_t addr, void* buf, size_t len, bool write) {
  vpt::Space* vpt = vpt_ptr_.load(std::memory_order_acquire);
  if (vpt == nullptr) return write ? space_->Write(addr, buf, len) : space_->Read(addr, buf, len);
  // Piece by piece: VPAGETABLE regions through walks, everything else through the backend.
  auto* bytes = static_cast<unsigned char*>(buf);
  size_t done = 0;
  while (done < len) {
    const uint64_t cur = addr + done;
    const auto regions = vpt->RegionPieces(cur, len - done);
    size_t want;
    size_t got;
    if (!regions.empty() && regions[0].first == cur) {
      want = regions[0].second - cur;
      got = vpt->Copy(cur, bytes + done, want, write);
    } else {
      want = regions.empty() ? len - done : regions[0].first - cur;
      auto copied = write ? space_->Write(cur, bytes + done, want)
                          : space_->Read(cur, bytes + done, want);
      if (!copied.ok()) {
        if (done == 0) return copied.status();
        break;
      }
      got = *copied;
    }
    done += got;
    if (got < want) break;
  }
  if (done == 0) {
    return ErrnoError(EFAULT, absl::StrFormat(
        "%s(%#x, %zu): the first page is not accessible (for a MAP_VPAGETABLE region: the "
        "walk failed)", write ? "vmspace_pwrite" : "vmspace_pread", addr, len));
  }
  return done;
}

absl::StatusOr<GuestExit> Vmspace::Run(trapframe& tf, const vextframe& vf, void* xstate,
                                       int64_t timeout_ns) {
  trapframe frame = tf;
  const uint64_t fs = reinterpret_cast<uint64_t>(vf.vx_tls.info[0].base);
  const uint64_t gs = reinterpret_cast<uint64_t>(vf.vx_tls.info[1].base);
  if (auto s = x86_64::SanitizeFrame(frame, fs, gs); !s.ok()) return s;
  RunLimits limits;
  limits.timeout_ns = timeout_ns < 0 ? ThreadState::Current().default_timeout_ns()
                                     : static_cast<uint64_t>(timeout_ns);
  GuestState state{&frame, fs, gs, xstate};
  auto exit = space_->Run(state, limits);
  if (!exit.ok()) return exit.status();
  frame.tf_trapno = exit->trapno;
  frame.tf_err = static_cast<int64_t>(exit->err);
  frame.tf_addr = static_cast<int64_t>(exit->addr);
  frame.tf_xflags = 0;
  frame.tf_flags = 0;
  if (exit->kind == GuestExit::Kind::kSyscall) {
    // DragonFly stores r10 there (the 4th argument): `syscall` itself overwrote rcx. Not for
    // `int $0x80`, which leaves rcx alone and whose i386 ABI passes argument 2 in ecx: the
    // vkernel must see the guest's rcx (tests/hostile_test.cc, Int80Syscalls...).
    frame.tf_rcx = frame.tf_r10;
  }
  tf = frame;
  return exit;
}

}  // namespace vkrt
