#include "vm.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

namespace minivk {
namespace {

// Whether an area with PROT_* `prot` allows the access.
bool Allows(int prot, bool write, bool exec) {
  return prot != PROT_NONE && (!write || (prot & PROT_WRITE)) && (!exec || (prot & PROT_EXEC));
}

}  // namespace

bool GovernWithTables(void* id, const PhysMem& mem, const PageTable& pt, std::string& error) {
  const uint64_t len = kUserTop - kRegionStart;
  if (vmspace_mmap(id, reinterpret_cast<void*>(kRegionStart), len,
                   PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE,
                   mem.fd(), static_cast<off_t>(kRegionStart)) == MAP_FAILED ||
      vmspace_mcontrol(id, reinterpret_cast<void*>(kRegionStart), len, MADV_SETMAP,
                       static_cast<off_t>(pt.root())) != 0) {
    error = std::string("setting up the guest's address space: ") + vkrt_last_error();
    return false;
  }
  return true;
}

VmspacePool::~VmspacePool() {
  for (auto& id : all_) vmspace_destroy(id.get());
}

void* VmspacePool::Get(const PhysMem& mem, const PageTable& pt, std::string& error) {
  if (!free_.empty()) {
    void* id = free_.back();
    free_.pop_back();
    // SETMAP drops every translation of the range (as DragonFly's does): nothing of the
    // last user's address space is left.
    if (vmspace_mcontrol(id, reinterpret_cast<void*>(kRegionStart), kUserTop - kRegionStart,
                         MADV_SETMAP, static_cast<off_t>(pt.root())) != 0) {
      error = std::string("reusing a vmspace: ") + vkrt_last_error();
      free_.push_back(id);
      return nullptr;
    }
    return id;
  }
  auto id = std::make_unique<char>();
  if (vmspace_create(id.get(), type_, nullptr) != 0) {
    error = std::string("vmspace_create: ") + vkrt_last_error();
    return nullptr;
  }
  if (!GovernWithTables(id.get(), mem, pt, error)) {
    vmspace_destroy(id.get());
    return nullptr;
  }
  all_.push_back(std::move(id));
  return all_.back().get();
}

void VmspacePool::Put(void* id) { free_.push_back(id); }

AddressSpace::~AddressSpace() {
  pt_.ForEach([&](uint64_t, vpte_t e) { mem_.Unref(e & VPTE_FRAME); });
  if (id_ != nullptr) pool_.Put(id_);
}

void AddressSpace::AddArea(uint64_t start, uint64_t end, int prot) {
  if (start < end) areas_[start] = Area{end, prot};
}

std::map<uint64_t, AddressSpace::Area>::iterator AddressSpace::AreaOf(uint64_t va) {
  auto it = areas_.upper_bound(va);
  if (it == areas_.begin()) return areas_.end();
  --it;
  return va < it->second.end ? it : areas_.end();
}

Program::~Program() {
  pages_.ForEach([&](uint64_t, vpte_t e) { mem_.Unref(e & VPTE_FRAME); });
}

bool Program::Build(const std::vector<unsigned char>& file, const ElfImage& image,
                    uint64_t bias, std::shared_ptr<const Program> interpreter,
                    std::string& error) {
  image_ = image;
  bias_ = image.pie ? bias : 0;
  interpreter_ = std::move(interpreter);
  if (interpreter_ != nullptr) {
    // The two must not share a page: each is mapped from its own frames.
    const uint64_t lo = PageDown(interpreter_->bias() + interpreter_->image().segments.front().vaddr);
    const uint64_t hi = PageUp(interpreter_->bias() + interpreter_->image().brk_start);
    for (const LoadSegment& seg : image.segments) {
      if (PageDown(bias_ + seg.vaddr) < hi && PageUp(bias_ + seg.vaddr + seg.memsz) > lo) {
        error = "the program overlaps the place of its interpreter";
        return false;
      }
    }
  }
  if (!pages_.Init()) {
    error = "out of guest memory";
    return false;
  }
  return LoadSegments(mem_, pages_, file.data(), file.size(), image, bias_, error);
}

bool AddressSpace::Load(std::shared_ptr<const Program> shared,
                        const std::vector<std::string>& argv,
                        const std::vector<std::string>& envp, LoadedProgram& out,
                        std::string& error) {
  if (!pt_.Init()) {
    error = "out of guest memory";
    return false;
  }
  program_ = std::move(shared);
  const Program& program = *program_;
  const Program* const interp = program.interpreter();
  bool ok = true;
  for (const Program* p : {&program, interp}) {
    if (p == nullptr) continue;
    p->pages().ForEach([&](uint64_t va, vpte_t e) {
      if (!ok) return;
      if (e & VPTE_RW) {
        // Writable (data, bss): a program almost always writes these pages soon, so each
        // process gets its copy now rather than through a copy-on-write fault per page.
        const uint64_t copy = mem_.Alloc();
        const int prot = PROT_READ | PROT_WRITE | ((e & VPTE_NX) ? 0 : PROT_EXEC);
        if (copy == 0 || !pt_.Map(va, copy, prot)) {
          if (copy != 0) mem_.Unref(copy);
          ok = false;
          return;
        }
        memcpy(mem_.At(copy), mem_.At(e & VPTE_FRAME), kPage);
        return;
      }
      // Read-only: shared with the program (and every process running it).
      if (!pt_.Map(va, e & VPTE_FRAME, PROT_READ)) {
        ok = false;
        return;
      }
      pt_.Set(va, PageTable::ReadOnly(e));
      mem_.Ref(e & VPTE_FRAME);
    });
  }
  const ElfImage& image = program.image();
  const uint64_t bias = program.bias();
  const Interpreter with = interp != nullptr ? Interpreter{&interp->image(), interp->bias()}
                                             : Interpreter{};
  if (!ok || !BuildStack(mem_, pt_, image, bias, with, argv, envp, kStackTop, 64, out, error)) {
    if (ok) return false;
    error = "out of guest memory";
    return false;
  }
  // Areas: each segment; a page two segments share gets both their rights (as its entry).
  for (const Program* p : {&program, interp}) {
    if (p == nullptr) continue;
    for (const LoadSegment& seg : p->image().segments) {
      uint64_t start = PageDown(p->bias() + seg.vaddr);
      const uint64_t end = PageUp(p->bias() + seg.vaddr + seg.memsz);
      if (!areas_.empty()) {
        auto last = std::prev(areas_.end());
        if (start < last->second.end) {
          const uint64_t shared = last->second.end - kPage;
          const int prot = last->second.prot | seg.prot;
          if (last->first == shared) {
            last->second.prot = prot;
          } else {
            last->second.end = shared;
            AddArea(shared, shared + kPage, prot);
          }
          start = shared + kPage;
        }
      }
      AddArea(start, end, seg.prot);
    }
  }
  AddArea(kStackTop - kStackSize, kStackTop, PROT_READ | PROT_WRITE);
  brk_start_ = brk_ = PageUp(out.brk);
  id_ = pool_.Get(mem_, pt_, error);
  if (id_ == nullptr) return false;
  // The program's pages (shared with every process running it) and the stack just built
  // are present: have the runtime install their translations before the first RUN, in a
  // few long runs of contiguous frames, rather than one fault per 64 KiB as they are
  // touched. A hint: whatever it leaves out faults as usual.
  for (const Program* p : {&program, interp}) {
    if (p == nullptr) continue;
    for (const LoadSegment& seg : p->image().segments) {
      const uint64_t start = PageDown(p->bias() + seg.vaddr);
      const uint64_t end = PageUp(p->bias() + seg.vaddr + seg.memsz);
      vmspace_mcontrol(id_, reinterpret_cast<void*>(start), end - start, MADV_WILLNEED, 0);
    }
  }
  const uint64_t stack = PageDown(out.rsp);
  vmspace_mcontrol(id_, reinterpret_cast<void*>(stack), kStackTop - stack, MADV_WILLNEED, 0);
  return true;
}

bool AddressSpace::ForkFrom(AddressSpace& parent, std::string& error) {
  if (!pt_.Init()) {
    error = "out of guest memory";
    return false;
  }
  areas_ = parent.areas_;
  brk_start_ = parent.brk_start_;
  brk_ = parent.brk_;
  bool ok = true;
  uint64_t lost_from = 0, lost_to = 0;  // the parent's pages that just lost RW, as ranges
  parent.pt_.ForEach([&](uint64_t va, vpte_t e) {
    if (!ok) return;
    const vpte_t shared = PageTable::ReadOnly(e);
    if (e & VPTE_RW) {
      parent.pt_.Set(va, shared);
      if (va != lost_to) {
        parent.Inval(lost_from, lost_to);
        lost_from = va;
      }
      lost_to = va + kPage;
    }
    if (!pt_.Map(va, e & VPTE_FRAME, PROT_READ)) {
      ok = false;
      return;
    }
    pt_.Set(va, shared);
    mem_.Ref(e & VPTE_FRAME);
  });
  // The parent's writable translations are now copy-on-write (read-only ones stay).
  parent.Inval(lost_from, lost_to);
  if (!ok) {
    error = "out of guest memory";
    return false;
  }
  program_ = parent.program_;
  id_ = pool_.Get(mem_, pt_, error);
  return id_ != nullptr;
}

void AddressSpace::Inval(uint64_t start, uint64_t end) {
  if (id_ != nullptr && start < end) {
    vmspace_mcontrol(id_, reinterpret_cast<void*>(start), end - start, MADV_INVAL, 0);
  }
}

bool AddressSpace::Ensure(uint64_t va, bool write, bool exec) {
  out_of_memory_ = false;
  auto area = AreaOf(va);
  if (area == areas_.end()) return false;
  const int prot = area->second.prot;
  if (!Allows(prot, write, exec)) return false;
  va = PageDown(va);
  const vpte_t e = pt_.Lookup(va);
  if (!(e & VPTE_V)) {
    const uint64_t frame = mem_.Alloc();
    if (frame != 0 && pt_.Map(va, frame, prot)) return true;
    if (frame != 0) mem_.Unref(frame);  // a table could not be allocated
    out_of_memory_ = true;
    return false;
  }
  if (write && !(e & VPTE_RW)) {
    const uint64_t pa = e & VPTE_FRAME;
    if (mem_.refs(pa) == 1) {
      pt_.Set(va, e | VPTE_RW | VPTE_M);  // the last sharer keeps the frame
    } else {
      const uint64_t copy = mem_.Alloc();
      if (copy == 0) {
        out_of_memory_ = true;
        return false;
      }
      memcpy(mem_.At(copy), mem_.At(pa), kPage);
      pt_.Set(va, PageTable::Leaf(copy, prot));
      mem_.Unref(pa);
    }
    Inval(va, va + kPage);
  }
  return true;
}

AddressSpace::FaultResult AddressSpace::Fault(uint64_t va, uint64_t err) {
  const bool write = err & PGEX_W, exec = err & PGEX_I;
  const vpte_t before = pt_.Lookup(PageDown(va));
  if (!(before & VPTE_V)) FillBlock(va, write, exec);
  if (!Ensure(va, write, exec)) {
    return out_of_memory_ ? FaultResult::kOutOfMemory : FaultResult::kNotAllowed;
  }
  if (before == pt_.Lookup(PageDown(va))) {
    // The tables already allowed this access: a translation the runtime holds is older
    // than them. Drop it so the retry walks again.
    Inval(PageDown(va), PageDown(va) + kPage);
  }
  return FaultResult::kResolved;
}

void AddressSpace::FillBlock(uint64_t va, bool write, bool exec) {
  // Demand paging fills the whole 64 KiB block of the area around a missing page, so a
  // program walking through new memory exits to the vkernel once per block, not once per
  // page. The frames go in ascending order with the addresses: where they are contiguous
  // (fresh memory, or a block another process just freed), the runtime installs the block
  // as one host mapping. Nothing is filled where the access is not allowed, nor when
  // memory is short (Ensure then maps the faulting page alone, or reports it).
  auto area = AreaOf(va);
  if (area == areas_.end() || !Allows(area->second.prot, write, exec)) return;
  const uint64_t from = std::max(area->first, va & ~uint64_t{0xFFFF});
  const uint64_t to = std::min(area->second.end, (va | 0xFFFF) + 1);
  uint64_t pages[16], frames[16];
  int n = 0;
  for (uint64_t page = from; page < to; page += kPage) {
    if (!(pt_.Lookup(page) & VPTE_V)) pages[n++] = page;
  }
  int got = 0;
  while (got < n && (frames[got] = mem_.Alloc()) != 0) ++got;
  if (got < n) {
    for (int k = 0; k < got; ++k) mem_.Unref(frames[k]);
    return;
  }
  std::sort(frames, frames + n);
  for (int i = 0; i < n; ++i) {
    if (!pt_.Map(pages[i], frames[i], area->second.prot)) {  // no frame for a table
      for (int k = i; k < n; ++k) mem_.Unref(frames[k]);
      return;
    }
  }
}

bool AddressSpace::CanCommit(uint64_t pages) const {
  // Frames are handed out only when touched, so like Linux's default (heuristic) overcommit
  // this refuses only what obviously cannot be backed: more pages than are free now, less a
  // reserve for page tables and the stacks and heaps of the processes already running. A
  // guest that allocates and touches chunk by chunk so gets ENOMEM from mmap or brk instead
  // of being killed when it touches memory that is not there; MAP_NORESERVE skips the check.
  const uint64_t frames = mem_.size() / kPage;
  const uint64_t reserve = std::max<uint64_t>(64, frames / 32);
  const uint64_t free = mem_.free_frames();
  const uint64_t tables = pages / 512 + 4;  // one leaf table per 2 MiB, and the levels above
  return free > reserve && pages + tables <= free - reserve;
}

bool AddressSpace::CopyIn(uint64_t va, void* dst, size_t len) {
  auto* to = static_cast<unsigned char*>(dst);
  while (len > 0) {
    if (!Ensure(va, false, false)) return false;
    const size_t n = std::min<size_t>(len, kPage - (va & (kPage - 1)));
    memcpy(to, mem_.At(pt_.Lookup(PageDown(va)) & VPTE_FRAME) + (va & (kPage - 1)), n);
    va += n;
    to += n;
    len -= n;
  }
  return true;
}

bool AddressSpace::CopyOut(uint64_t va, const void* src, size_t len) {
  const auto* from = static_cast<const unsigned char*>(src);
  while (len > 0) {
    if (!Ensure(va, true, false)) return false;
    const size_t n = std::min<size_t>(len, kPage - (va & (kPage - 1)));
    memcpy(mem_.At(pt_.Lookup(PageDown(va)) & VPTE_FRAME) + (va & (kPage - 1)), from, n);
    va += n;
    from += n;
    len -= n;
  }
  return true;
}

size_t AddressSpace::Iov(uint64_t va, size_t len, bool write, std::vector<struct iovec>& out) {
  out.clear();
  size_t covered = 0;
  while (covered < len) {
    if (!Ensure(va, write, false)) break;
    const size_t n = std::min<size_t>(len - covered, kPage - (va & (kPage - 1)));
    unsigned char* host = mem_.At(pt_.Lookup(PageDown(va)) & VPTE_FRAME) + (va & (kPage - 1));
    if (!out.empty() && static_cast<unsigned char*>(out.back().iov_base) + out.back().iov_len ==
                            host) {
      out.back().iov_len += n;  // frames next to each other: one vector
    } else {
      out.push_back({host, n});
    }
    va += n;
    covered += n;
  }
  return covered;
}

bool AddressSpace::CopyInString(uint64_t va, std::string& out, size_t max) {
  out.clear();
  while (out.size() < max) {
    if (!Ensure(va, false, false)) return false;
    const unsigned char* page = mem_.At(pt_.Lookup(PageDown(va)) & VPTE_FRAME);
    for (uint64_t off = va & (kPage - 1); off < kPage; ++off, ++va) {
      if (page[off] == 0) return true;
      out.push_back(static_cast<char>(page[off]));
      if (out.size() >= max) return false;
    }
  }
  return false;
}

void AddressSpace::Remove(uint64_t start, uint64_t end) {
  // Split the areas at both ends, then erase everything inside.
  for (uint64_t cut : {start, end}) {
    auto it = AreaOf(cut);
    if (it != areas_.end() && it->first < cut) {
      areas_[cut] = Area{it->second.end, it->second.prot};
      it->second.end = cut;
    }
  }
  areas_.erase(areas_.lower_bound(start), areas_.lower_bound(end));
  for (uint64_t va = start; va < end; va += kPage) {
    const vpte_t old = pt_.Unmap(va);
    if (old & VPTE_V) mem_.Unref(old & VPTE_FRAME);
  }
}

uint64_t AddressSpace::FindFree(uint64_t len) {
  uint64_t top = kMmapTop;
  for (auto it = areas_.lower_bound(kMmapTop); it != areas_.begin();) {
    --it;
    if (it->second.end <= top && top - it->second.end >= len) return top - len;
    top = std::min(top, it->first);
  }
  return top >= brk_ + (64ull << 20) + len ? top - len : 0;
}

int64_t AddressSpace::Brk(uint64_t want) {
  const uint64_t old_end = PageUp(brk_), new_end = PageUp(want);
  if (want < brk_start_) return static_cast<int64_t>(brk_);
  if (new_end > old_end) {
    auto next = areas_.lower_bound(old_end);
    if (next != areas_.end() && next->first < new_end) return static_cast<int64_t>(brk_);
    // Linux's brk refuses growth it could not commit: the old break (libc says ENOMEM).
    if (!CanCommit((new_end - old_end) / kPage)) return static_cast<int64_t>(brk_);
    auto heap = AreaOf(old_end - 1);
    if (old_end > brk_start_ && heap != areas_.end() && heap->second.end == old_end &&
        heap->first >= brk_start_) {
      heap->second.end = new_end;
    } else {
      AddArea(old_end, new_end, PROT_READ | PROT_WRITE);
    }
  } else if (new_end < old_end) {
    Remove(new_end, old_end);
    Inval(new_end, old_end);
  }
  brk_ = want;
  return static_cast<int64_t>(brk_);
}

int64_t AddressSpace::Mmap(uint64_t addr, uint64_t len, int prot, int flags, int host_fd,
                           uint64_t offset) {
  if (len == 0 || (offset & (kPage - 1)) != 0) return -EINVAL;
  len = PageUp(len);
  if (len == 0 || len > kUserTop) return -ENOMEM;
  const bool anonymous = flags & MAP_ANONYMOUS;
  if (!anonymous && (flags & MAP_SHARED) && (prot & PROT_WRITE)) {
    return -ENODEV;  // no shared file pages in minivk: private (copied) mappings only
  }
  // Private writable memory must be backed once touched, and a file mapping is copied in
  // now: refuse what cannot be (CanCommit), unless the caller said MAP_NORESERVE.
  if (!(flags & MAP_NORESERVE) && ((prot & PROT_WRITE) || !anonymous) &&
      !CanCommit(len / kPage)) {
    return -ENOMEM;
  }
  uint64_t at;
  if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
    if ((addr & (kPage - 1)) != 0) return -EINVAL;
    if (addr < kRegionStart || addr + len > kUserTop || addr + len < addr) return -ENOMEM;
    at = addr;
    if (flags & MAP_FIXED_NOREPLACE) {
      auto next = areas_.lower_bound(at);
      if (AreaOf(at) != areas_.end() || (next != areas_.end() && next->first < at + len)) {
        return -EEXIST;
      }
    }
    Remove(at, at + len);
    Inval(at, at + len);
  } else {
    at = FindFree(len);
    if (at == 0) return -ENOMEM;
  }
  AddArea(at, at + len, prot);
  if (!anonymous) {
    // A private file mapping: the file's bytes copied into fresh pages now.
    std::vector<unsigned char> page(kPage);
    for (uint64_t off = 0; off < len; off += kPage) {
      const ssize_t n = pread(host_fd, page.data(), kPage, static_cast<off_t>(offset + off));
      if (n < 0) {
        Remove(at, at + len);
        return -errno;
      }
      if (n == 0) break;
      const vpte_t e = (Ensure(at + off, false, false), pt_.Lookup(at + off));
      if (!(e & VPTE_V)) {
        Remove(at, at + len);
        return -ENOMEM;
      }
      memcpy(mem_.At(e & VPTE_FRAME), page.data(), static_cast<size_t>(n));
    }
  }
  return static_cast<int64_t>(at);
}

int64_t AddressSpace::Munmap(uint64_t addr, uint64_t len) {
  if ((addr & (kPage - 1)) != 0 || len == 0) return -EINVAL;
  const uint64_t end = addr + PageUp(len);
  if (end < addr || end > kUserTop) return -EINVAL;
  Remove(addr, end);
  Inval(addr, end);
  return 0;
}

int64_t AddressSpace::Mprotect(uint64_t addr, uint64_t len, int prot) {
  if ((addr & (kPage - 1)) != 0) return -EINVAL;
  const uint64_t end = addr + PageUp(len);
  if (end < addr || end > kUserTop) return -ENOMEM;
  // Every page of the range must belong to an area (Linux: ENOMEM otherwise).
  for (uint64_t va = addr; va < end;) {
    auto it = AreaOf(va);
    if (it == areas_.end()) return -ENOMEM;
    va = it->second.end;
  }
  for (uint64_t cut : {addr, end}) {
    auto it = AreaOf(cut);
    if (it != areas_.end() && it->first < cut) {
      areas_[cut] = Area{it->second.end, it->second.prot};
      it->second.end = cut;
    }
  }
  for (auto it = areas_.lower_bound(addr); it != areas_.end() && it->first < end; ++it) {
    it->second.prot = prot;
  }
  for (uint64_t va = addr; va < end; va += kPage) {
    const vpte_t e = pt_.Lookup(va);
    if (!(e & VPTE_V)) continue;
    if (prot == PROT_NONE) {
      // vpte_t cannot say "present, no access": the page goes (its contents with it).
      pt_.Unmap(va);
      mem_.Unref(e & VPTE_FRAME);
      continue;
    }
    // A page still shared copy-on-write stays read-only until written.
    const bool shared = mem_.refs(e & VPTE_FRAME) > 1;
    pt_.Set(va, PageTable::Leaf(e & VPTE_FRAME, shared ? prot & ~PROT_WRITE : prot));
  }
  Inval(addr, end);
  return 0;
}

}  // namespace minivk
