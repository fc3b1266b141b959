// minivk: a guest process's address space — its vmspace, its page tables (pmap.h) and the
// areas the program may use (segments, heap, stack, mmaps). Pages are allocated on first
// touch (T_PAGEFLT), shared copy-on-write after fork, and every change that takes rights away
// or changes a frame is followed by MADV_INVAL, as DragonFly's vkernel pmap does.
//
// Threading: an AddressSpace is used under the kernel's lock (kernel.h); the vmspace is RUN
// by whichever vkernel thread runs the owning process, without that lock.
#ifndef VKRT_EXAMPLES_MINIVK_VM_H_
#define VKRT_EXAMPLES_MINIVK_VM_H_

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <vkrt/vmspace.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "elf.h"
#include "loader.h"
#include "pmap.h"

namespace minivk {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kRegionStart = 0x10000;        // the VPAGETABLE region's start
constexpr uint64_t kUserTop = 0x7FFFFFE00000;     // the runtime's pages begin here
constexpr uint64_t kStackTop = 0x7FFFFF000000;    // the main stack ends here
constexpr uint64_t kStackSize = 8ull << 20;       // and may grow to this size
constexpr uint64_t kMmapTop = 0x7F0000000000;     // mmaps without a hint go below this

inline uint64_t PageDown(uint64_t v) { return v & ~(kPage - 1); }
inline uint64_t PageUp(uint64_t v) { return (v + kPage - 1) & ~(kPage - 1); }

// Makes vmspace `id` run through `pt`: one MAP_VPAGETABLE region over `mem` covering the user
// range from kRegionStart (object offset = start, so the walk index is the virtual page
// number), its root set with MADV_SETMAP. False with `error` naming what failed.
bool GovernWithTables(void* id, const PhysMem& mem, const PageTable& pt, std::string& error);

// Vmspaces of the runtime, created once and reused by later address spaces (creating one
// costs a stub process on the ptrace/seccomp backends). Owns the ids' storage. A reused
// vmspace keeps no translation of its last user: MADV_SETMAP, which points it at the new
// tables, drops them all. (Keeping a program's text mapped across processes would need the
// new address space to take over the old one's page-table root.)
class VmspacePool {
 public:
  explicit VmspacePool(int type) : type_(type) {}
  ~VmspacePool();
  // A vmspace governed by `pt`, fresh or reused. nullptr with `error` naming the failing call.
  void* Get(const PhysMem& mem, const PageTable& pt, std::string& error);
  void Put(void* id);

 private:
  int type_;
  std::vector<std::unique_ptr<char>> all_;
  std::vector<void*> free_;
};

// Where a position-independent program (static-pie, PIE) is put, and where a dynamically
// linked program's interpreter (the dynamic linker) goes: above the mmap area and below the
// stack, as Linux puts it near the top of the mmap area.
constexpr uint64_t kPieBias = 0x555555554000;
constexpr uint64_t kInterpBias = 0x7FFFF7000000;

// A program loaded once: its segments' pages, which every process running it maps
// copy-on-write (exec costs no copy and no file read; the program's text is shared), as a
// kernel's page cache would have it. A dynamically linked program holds its interpreter, a
// Program of its own, mapped beside it. Immutable once built; the frames are freed with it.
class Program {
 public:
  explicit Program(PhysMem& mem) : mem_(mem), pages_(mem) {}
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  ~Program();
  // `bias` is added to every address of an ET_DYN image (0 for ET_EXEC). `interpreter`:
  // PT_INTERP's program (built with kInterpBias), or nullptr for a static program.
  bool Build(const std::vector<unsigned char>& file, const ElfImage& image, uint64_t bias,
             std::shared_ptr<const Program> interpreter, std::string& error);
  const ElfImage& image() const { return image_; }
  uint64_t bias() const { return bias_; }
  const PageTable& pages() const { return pages_; }
  const Program* interpreter() const { return interpreter_.get(); }

 private:
  PhysMem& mem_;
  PageTable pages_;
  ElfImage image_;
  uint64_t bias_ = 0;
  std::shared_ptr<const Program> interpreter_;
};

class AddressSpace {
 public:
  AddressSpace(PhysMem& mem, VmspacePool& pool) : mem_(mem), pool_(pool), pt_(mem) {}
  AddressSpace(const AddressSpace&) = delete;
  AddressSpace& operator=(const AddressSpace&) = delete;
  ~AddressSpace();  // frees every frame and table, returns the vmspace to the pool

  // Maps `program` (an empty space only) and builds its stack. False with `error`.
  bool Load(std::shared_ptr<const Program> program, const std::vector<std::string>& argv,
            const std::vector<std::string>& envp, LoadedProgram& out, std::string& error);
  // The same areas and pages as `parent`, every writable page shared copy-on-write (the
  // parent's entries lose RW and its translations are invalidated). False if out of memory.
  bool ForkFrom(AddressSpace& parent, std::string& error);

  void* id() const { return id_; }

  // What a T_PAGEFLT came to.
  enum class FaultResult {
    kResolved,     // demand page, stack, copy-on-write: the guest retries
    kNotAllowed,   // no area or not that access: the guest gets SIGSEGV
    kOutOfMemory,  // allowed, but no frame is left: the process is killed (Linux's OOM kill)
  };
  // A T_PAGEFLT at `va` with PGEX_* `err`.
  FaultResult Fault(uint64_t va, uint64_t err);

  // Copies between minivk and guest memory, faulting pages in as the guest would (a write
  // breaks copy-on-write). False if any byte is not accessible that way.
  bool CopyIn(uint64_t va, void* dst, size_t len);
  bool CopyOut(uint64_t va, const void* src, size_t len);
  // Host iovecs over guest [va, va + len), its pages made present (and writable for
  // `write`, breaking copy-on-write) as CopyIn/CopyOut would: how many bytes they cover,
  // stopping at the first page the guest may not access that way (0: none).
  size_t Iov(uint64_t va, size_t len, bool write, std::vector<struct iovec>& out);
  // A NUL-terminated string of at most `max` bytes.
  bool CopyInString(uint64_t va, std::string& out, size_t max = 4096);

  // The memory system calls; Linux results (-errno on failure).
  int64_t Brk(uint64_t want);
  int64_t Mmap(uint64_t addr, uint64_t len, int prot, int flags, int host_fd, uint64_t offset);
  int64_t Munmap(uint64_t addr, uint64_t len);
  int64_t Mprotect(uint64_t addr, uint64_t len, int prot);

 private:
  struct Area {
    uint64_t end;
    int prot;
  };
  // The area holding `va`, or areas_.end().
  std::map<uint64_t, Area>::iterator AreaOf(uint64_t va);
  // Removes [start, end) from the areas (splitting them) and its pages; no INVAL.
  void Remove(uint64_t start, uint64_t end);
  void AddArea(uint64_t start, uint64_t end, int prot);
  // Page `va` present with at least the rights of `write`; false if not allowed/no memory
  // (out_of_memory_ tells which).
  bool Ensure(uint64_t va, bool write, bool exec);
  // Demand paging: fresh zeroed frames for the missing pages of `va`'s 64 KiB block (if the
  // access is allowed and memory suffices; otherwise nothing).
  void FillBlock(uint64_t va, bool write, bool exec);
  // Linux's heuristic overcommit, measured against free frames: false if `pages` new pages
  // of private writable memory could not be backed now (mmap and brk then fail with ENOMEM).
  bool CanCommit(uint64_t pages) const;
  // Drops the runtime's translations of [start, end).
  void Inval(uint64_t start, uint64_t end);
  // A free range of `len` bytes below kMmapTop (0 if none).
  uint64_t FindFree(uint64_t len);

  PhysMem& mem_;
  VmspacePool& pool_;
  PageTable pt_;
  void* id_ = nullptr;
  std::shared_ptr<const Program> program_;  // what it runs
  std::map<uint64_t, Area> areas_;  // start -> area, disjoint
  uint64_t brk_start_ = 0, brk_ = 0;
  bool out_of_memory_ = false;  // the last Ensure failed for want of a frame
};

}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_VM_H_
