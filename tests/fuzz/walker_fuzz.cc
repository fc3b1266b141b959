// libFuzzer target: the MAP_VPAGETABLE walker (src/vpagetable/walker.cc) on random tables.
//
// The input describes a backing object (1..16 pages of 64-bit entries, sparse), a root and a
// list of walks (page index, access kind, mapping protection, and how often a concurrent
// writer changes the entry under the walker's compare-and-swap). Every walk is checked
// against an independent reference walk of SPEC §4 over a snapshot of the entries, and:
//   - a result is either a 4 KiB-aligned translation computed from the final entry's frame
//     (a 4 KiB, 2 MiB, 1 GiB or 512 GiB page) or a well-formed fault (PGEX_U, W/I exactly as
//     the access, P only for a valid entry that refused it);
//   - write permission implies RW on every level and M on the final entry (or a write);
//   - the walk reads at most four entries whatever the tables hold (loops terminate);
//   - the only changes to the object are A (and M for a write through RW) on valid entries
//     of the path;
//   - walking the same address twice gives the same result.
//
// Encoding (tests/fuzz/make_corpus.py; integers little-endian, zeros past the end):
//   pages:u8 (1 + v % 16)  root:u64  nentries:u8
//   nentries x { page:u8 (% pages + 1, so one may lie beyond the object) slot:u16 (% 512)
//                value:u64 }
//   then walks until the end, at most 64: { index:u64 access:u8 (% 3) prot:u8 (& 7)
//                                           interfere:u8 }
// interfere: low 2 bits = how many CAS attempts a concurrent writer pre-empts; bit 2: the
// writer clears V instead of setting a software bit (the reference check is skipped then).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <map>

#include "vkrt/vmspace.h"
#include "fuzz_input.h"
#include "vpagetable/walker.h"

namespace {

using vkrt::vpt::Access;
using vkrt::vpt::EntryAccess;
using vkrt::vpt::Walk;
using vkrt::vpt::WalkResult;

[[noreturn]] void Fail(const char* what, unsigned long long a, unsigned long long b) {
  fprintf(stderr, "walker_fuzz: check failed: %s (%#llx, %#llx)\n", what, a, b);
  abort();
}

#define CHECK(cond, a, b)                                                         \
  do {                                                                           \
    if (!(cond)) Fail(#cond, static_cast<unsigned long long>(a),                  \
                      static_cast<unsigned long long>(b));                        \
  } while (0)

using vkrt_fuzz::Input;

// A sparse backing object that counts accesses and can simulate a concurrent writer.
class Memory : public EntryAccess {
 public:
  explicit Memory(uint64_t size) : size_(size) {}

  bool Load(uint64_t offset, uint64_t& value) override {
    ++loads_;
    CHECK(offset % 8 == 0, offset, 0);
    if (offset >= size_ || size_ - offset < 8) return false;
    value = Get(offset);
    return true;
  }

  bool CompareExchange(uint64_t offset, uint64_t& expected, uint64_t desired) override {
    ++cas_;
    CHECK(offset % 8 == 0, offset, 0);
    if (offset >= size_ || size_ - offset < 8) return false;
    if (interfere_ > 0) {
      --interfere_;
      // Another thread changes the entry first: a software bit, or it invalidates it.
      words_[offset] = clear_valid_ ? Get(offset) & ~VPTE_V : Get(offset) | VPTE_WIRED;
    }
    const uint64_t current = Get(offset);
    if (current != expected) {
      expected = current;
      return false;
    }
    words_[offset] = desired;
    return true;
  }

  uint64_t Get(uint64_t offset) const {
    auto it = words_.find(offset);
    return it == words_.end() ? 0 : it->second;
  }
  void Set(uint64_t offset, uint64_t value) { words_[offset] = value; }
  void Interfere(int times, bool clear_valid) {
    interfere_ = times;
    clear_valid_ = clear_valid;
  }
  void ResetCounts() { loads_ = cas_ = 0; }
  int loads() const { return loads_; }
  int cas() const { return cas_; }
  uint64_t size() const { return size_; }
  const std::map<uint64_t, uint64_t>& words() const { return words_; }

 private:
  uint64_t size_;
  std::map<uint64_t, uint64_t> words_;
  int interfere_ = 0;
  bool clear_valid_ = false;
  int loads_ = 0;
  int cas_ = 0;
};

struct Ref {
  bool ok = false;
  uint64_t page_offset = 0;
  int prot = 0;
  int page_shift = 0;
  uint32_t err = 0;
  // The entries the walk went through (offsets in the object), for the A/M check.
  uint64_t path[4] = {};
  int path_len = 0;
};

// SPEC §4's walk, written level by level from the text, over a read-only snapshot.
Ref ReferenceWalk(const Memory& m, uint64_t root, uint64_t index, Access access, int prot) {
  const bool w = access == Access::kWrite;
  const bool x = access == Access::kExecute;
  const uint32_t base_err = PGEX_U | (w ? PGEX_W : 0) | (x ? PGEX_I : 0);
  Ref ref;
  uint64_t entry = root;
  bool writable = true;
  bool nx = false;
  for (int level = 0;; ++level) {  // level 0: the root; level 4: a 4 KiB entry
    if (!(entry & VPTE_V)) {
      ref.err = base_err;
      return ref;
    }
    if ((w && !(entry & VPTE_RW)) || (x && (entry & VPTE_NX))) {
      ref.err = base_err | PGEX_P;
      return ref;
    }
    writable = writable && (entry & VPTE_RW);
    nx = nx || (entry & VPTE_NX);
    const int shift = 36 - 9 * level;
    if ((entry & VPTE_PS) || level == 4) {
      ref.ok = true;
      ref.page_shift = shift;
      const uint64_t in_page = index & ((uint64_t{1} << shift) - 1);
      ref.page_offset = (((entry & VPTE_FRAME) >> 12) + in_page) << 12;
      ref.prot = prot;
      if (!w && !(writable && (entry & VPTE_M))) ref.prot &= ~PROT_WRITE;
      if (nx) ref.prot &= ~PROT_EXEC;
      return ref;
    }
    const uint64_t offset = (entry & VPTE_FRAME) + ((index >> (shift - 9)) & 511) * 8;
    if (offset >= m.size() || m.size() - offset < 8) {
      ref.err = base_err;  // the table lies beyond the object: like a missing entry
      return ref;
    }
    ref.path[ref.path_len++] = offset;
    entry = m.Get(offset);
  }
}

void CheckWellFormed(const WalkResult& r, Access access, int prot) {
  const uint32_t base_err = PGEX_U | (access == Access::kWrite ? PGEX_W : 0) |
                            (access == Access::kExecute ? PGEX_I : 0);
  if (r.ok) {
    CHECK(r.page_offset % 4096 == 0, r.page_offset, 0);
    // 36: the root itself has PS, which SPEC §4's loop (and DragonFly's
    // vm_fault_vpagetable) accept: one page of 2^36 pages.
    CHECK(r.page_shift == 0 || r.page_shift == 9 || r.page_shift == 18 || r.page_shift == 27 ||
              r.page_shift == 36,
          r.page_shift, 0);
    CHECK((r.prot & ~prot) == 0, r.prot, prot);  // never more than the mapping allows
    if (access == Access::kWrite) CHECK(r.prot & PROT_WRITE || !(prot & PROT_WRITE), r.prot, prot);
    // Frames are bits 12..51 and the offset inside a large page is below 2^48 bytes.
    CHECK(r.page_offset < (uint64_t{1} << 52) + (uint64_t{1} << 48), r.page_offset, 0);
  } else {
    CHECK(r.err == base_err || r.err == (base_err | PGEX_P), r.err, base_err);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const uint64_t pages = 1 + in.U8() % 16;
  Memory mem(pages * 4096);
  const uint64_t root = in.U64();
  const int nentries = in.U8();
  for (int i = 0; i < nentries; ++i) {
    const uint64_t page = in.U8() % (pages + 1);
    const uint64_t slot = in.U16() % 512;
    const uint64_t value = in.U64();
    if (page < pages) mem.Set(page * 4096 + slot * 8, value);
  }
  for (int walks = 0; walks < 64 && !in.Empty(); ++walks) {
    const uint64_t index = in.U64();
    const Access access = static_cast<Access>(in.U8() % 3);
    const int prot = in.U8() & (PROT_READ | PROT_WRITE | PROT_EXEC);
    const uint8_t interfere = in.U8();
    const int times = interfere & 3;
    const bool clear_valid = (interfere & 4) != 0;

    const Memory before = mem;
    const Ref ref = ReferenceWalk(before, root, index, access, prot);
    mem.Interfere(times, clear_valid);
    mem.ResetCounts();
    const WalkResult r = Walk(mem, root, index, access, prot);
    CheckWellFormed(r, access, prot);
    // At most one entry per level, and each CAS retry is caused by one interference.
    CHECK(mem.loads() <= 4, mem.loads(), 0);
    CHECK(mem.cas() <= 4 * 2 + times, mem.cas(), times);

    if (!clear_valid || times == 0) {
      // Software bits set concurrently change nothing the walk decides.
      CHECK(r.ok == ref.ok, r.ok, index);
      if (r.ok) {
        CHECK(r.page_offset == ref.page_offset, r.page_offset, ref.page_offset);
        CHECK(r.page_shift == ref.page_shift, r.page_shift, ref.page_shift);
        CHECK(r.prot == ref.prot, r.prot, ref.prot);
      } else {
        CHECK(r.err == ref.err, r.err, ref.err);
      }
      // The object changed only in A/M (plus the simulated writer's bit) on the path.
      for (const auto& [offset, value] : mem.words()) {
        const uint64_t old = before.Get(offset);
        if (value == old) continue;
        bool on_path = false;
        for (int i = 0; i < ref.path_len; ++i) on_path = on_path || ref.path[i] == offset;
        CHECK(on_path, offset, value);
        const uint64_t changed = value ^ old;
        CHECK((changed & ~(VPTE_A | VPTE_M | VPTE_WIRED)) == 0, offset, changed);
        CHECK(old & VPTE_V, offset, old);  // only valid entries are marked
        if (changed & VPTE_M) {
          CHECK(access == Access::kWrite && (old & VPTE_RW), offset, old);
        }
      }
      // A successful walk marked every entry it used.
      if (r.ok) {
        for (int i = 0; i < ref.path_len; ++i) {
          const uint64_t e = mem.Get(ref.path[i]);
          CHECK(e & VPTE_A, ref.path[i], e);
          if (access == Access::kWrite) CHECK(e & VPTE_M, ref.path[i], e);
        }
      }
    }
    // Deterministic: the same walk again (its own A/M updates are now in place) gives the
    // same answer; only a read may now see the M a previous write set, so compare the same
    // access kind.
    if (!clear_valid || times == 0) {
      const WalkResult again = Walk(mem, root, index, access, prot);
      CHECK(again.ok == r.ok, again.ok, r.ok);
      CHECK(again.page_offset == r.page_offset && again.page_shift == r.page_shift,
            again.page_offset, r.page_offset);
      CHECK(again.prot == r.prot && again.err == r.err, again.prot, r.prot);
    }
  }
  return 0;
}
