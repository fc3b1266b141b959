// libFuzzer target: the public C interface (<vkrt/vmspace.h>) against a live backend.
//
// The input is a sequence of operations on a small pool of vmspace ids (plus pointer values
// that are never created), decoded byte by byte (a short input ends with zero bytes, so every
// input is valid). Each call must either succeed or fail with an errno docs/api.md documents
// for it; where the fuzzer's own model of the vmspace makes the answer certain (an unknown
// id, a RUN with a sane frame, a copy inside a writable anonymous mapping, a munmap over
// exactly what is mapped), the exact answer is checked. Any violation aborts, which libFuzzer
// reports as a crash. Everything an input created is destroyed before the next input, so the
// fuzzer's memory stays flat.
//
// Encoding (tests/fuzz/make_corpus.py writes seeds in it; keep the two in sync):
//   input := op*             op := opcode:u8 (mod kNumOps) arguments...
//   integers are little-endian; reads past the end give 0.
// The arguments of each op are read in the order the Op* functions below read them.
//
// The backend is the process default: VKRT_BACKEND in the environment, else the best one.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <initializer_list>
#include <iterator>
#include <map>
#include <vector>

#include <vkrt/vmspace.h>
#include "fuzz_input.h"

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kTop = VKRT_VM_MAX_USER_ADDRESS;
// Mappings are capped so that no input can make a backend allocate more than this per map
// (and pages are touched only by bounded copies and by guests that run for kRunTimeoutNs).
constexpr uint64_t kMaxMapLen = 64ULL << 20;
constexpr size_t kMaxCopy = 64 * 1024;  // the local buffer of pread/pwrite
constexpr int kMaxOps = 64;             // per input
constexpr int kMaxRuns = 12;            // per input
constexpr uint64_t kRunTimeoutNs = 5'000'000;  // a guest that never traps ends after 5 ms
constexpr uint64_t kMemfdSize = 4ULL << 20;
constexpr uint64_t kScratchBase = 0x10000000;  // where "nearby" addresses are drawn from
constexpr uint64_t kCodeBase = 0x400000;
constexpr uint64_t kVptBase = 0x20000000;
constexpr int kPoolSize = 4;

// The pool of ids the fuzzer creates; their addresses are the ids (never dereferenced).
char g_pool[kPoolSize];
// Whether vmspace_create was ever called: before that, every call on an id is EINVAL.
bool g_create_called = false;
// The operation being decoded (its number in the input and opcode), for failure messages.
int g_op_number = -1;
int g_opcode = -1;

[[noreturn]] void Fail(const char* what, long long a = 0, long long b = 0) {
  fprintf(stderr,
          "api_fuzz: op #%d (opcode %d): check failed: %s (%lld, %#llx) errno %d (%s); "
          "vkrt: %s\n",
          g_op_number, g_opcode, what, a, static_cast<unsigned long long>(b), errno,
          strerror(errno), vkrt_last_error());
  abort();
}

#define CHECK(cond, ...)                        \
  do {                                          \
    if (!(cond)) Fail(#cond, ##__VA_ARGS__);    \
  } while (0)

bool ErrnoIn(int e, std::initializer_list<int> allowed) {
  return std::find(allowed.begin(), allowed.end(), e) != allowed.end();
}

// What XRSTOR (standard format, every enabled component requested) makes of `area`, from the
// SDM (vol. 1, 13.8) rather than from vkrt's own check: EINVAL where it raises #GP
// (XSTATE_BV beyond XCR0; header bytes 8-23, XCOMP_BV among them, not zero; MXCSR bits
// outside MXCSR_MASK); -1 where only header bytes 24-63 are set, which XRSTOR ignores and vkrt
// may refuse; 0 where it loads.
int XrstorVerdict(const unsigned char* area) {
  uint32_t xcr0_lo = 0, xcr0_hi = 0;
  asm volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const uint64_t xcr0 = (uint64_t{xcr0_hi} << 32) | xcr0_lo;
  alignas(16) static unsigned char fx[512];
  __builtin_ia32_fxsave64(fx);
  uint32_t mxcsr_mask = 0, mxcsr = 0;
  memcpy(&mxcsr_mask, fx + 28, 4);
  if (mxcsr_mask == 0) mxcsr_mask = 0xFFBF;  // the SDM's default where FXSAVE stores 0
  memcpy(&mxcsr, area + 24, 4);
  uint64_t xstate_bv = 0;
  memcpy(&xstate_bv, area + 512, 8);
  if ((xstate_bv & ~xcr0) != 0 || (mxcsr & ~mxcsr_mask) != 0) return EINVAL;
  for (int i = 8; i < 24; ++i) {
    if (area[512 + i] != 0) return EINVAL;
  }
  for (int i = 24; i < 64; ++i) {
    if (area[512 + i] != 0) return -1;
  }
  return 0;
}

using vkrt_fuzz::Input;

struct Region {
  uint64_t end;
  int prot;
  int flags;
  bool anon;
};

// What the fuzzer knows about one pool id.
struct Space {
  bool created = false;
  // Page-aligned regions the fuzzer mapped (start -> region). `exact` is false once a call
  // may have changed mappings without telling (a failed MAP_FIXED may leave a hole).
  std::map<uint64_t, Region> regions;
  bool exact = true;
  bool have_frame = false;  // `frame` holds the state of the last successful RUN
  trapframe frame{};
  vextframe vframe{};

  void Erase(uint64_t start, uint64_t end) {
    auto it = regions.lower_bound(start);
    if (it != regions.begin()) {
      auto prev = std::prev(it);
      if (prev->second.end > start) it = prev;
    }
    while (it != regions.end() && it->first < end) {
      const uint64_t s = it->first;
      const Region r = it->second;
      it = regions.erase(it);
      if (s < start) regions.emplace(s, Region{start, r.prot, r.flags, r.anon});
      if (r.end > end) regions.emplace(end, Region{r.end, r.prot, r.flags, r.anon});
    }
  }
  void Insert(uint64_t start, uint64_t end, const Region& r) {
    Erase(start, end);
    regions.emplace(start, Region{end, r.prot, r.flags, r.anon});
  }
  // The region that contains all of [start, end), or nullptr.
  const Region* Containing(uint64_t start, uint64_t end) const {
    auto it = regions.upper_bound(start);
    if (it == regions.begin()) return nullptr;
    --it;
    if (it->first <= start && end <= it->second.end) return &it->second;
    return nullptr;
  }
  bool FullyMapped(uint64_t start, uint64_t end) const {
    uint64_t at = start;
    auto it = regions.upper_bound(start);
    if (it != regions.begin()) --it;
    for (; it != regions.end() && at < end; ++it) {
      if (it->second.end <= at) continue;
      if (it->first > at) return false;
      at = it->second.end;
    }
    return at >= end;
  }
  // The start of the `n`th region (mod their number), or kScratchBase if there is none.
  uint64_t NthStart(unsigned n) const {
    if (regions.empty()) return kScratchBase;
    auto it = regions.begin();
    std::advance(it, n % regions.size());
    return it->first;
  }
};

// Per-input state: the spaces and the file descriptors the input may map.
class Session {
 public:
  explicit Session(Input& in) : in_(in) {
    memfd_ = memfd_create("api_fuzz", MFD_CLOEXEC);
    CHECK(memfd_ >= 0);
    CHECK(ftruncate(memfd_, kMemfdSize) == 0);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd_);
    memfd_ro_ = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(memfd_ro_ >= 0);
    CHECK(pipe2(pipe_, O_CLOEXEC) == 0);
    devzero_ = open("/dev/zero", O_RDWR | O_CLOEXEC);
    CHECK(devzero_ >= 0);
    // High, so that the library's own descriptors (which take the lowest free number)
    // never reuse it.
    closed_fd_ = fcntl(memfd_, F_DUPFD_CLOEXEC, 900);
    CHECK(closed_fd_ >= 0 && close(closed_fd_) == 0);
  }

  ~Session() {
    // Destroy everything this input created: nothing runs, so destroy cannot be EBUSY.
    for (int i = 0; i < kPoolSize; ++i) {
      if (spaces_[i].created) CHECK(vmspace_destroy(&g_pool[i]) == 0, i);
    }
    for (int fd : {memfd_, memfd_ro_, pipe_[0], pipe_[1], devzero_}) close(fd);
  }

  void Run() {
    for (int ops = 0; ops < kMaxOps && !in_.Empty(); ++ops) {
      g_op_number = ops;
      g_opcode = in_.U8() % 11;
      switch (g_opcode) {
        case 0: OpCreate(); break;
        case 1: OpDestroy(); break;
        case 2: OpMmap(); break;
        case 3: OpMunmap(); break;
        case 4: OpMcontrol(); break;
        case 5: OpPwrite(); break;
        case 6: OpPread(); break;
        case 7: OpRun(false); break;
        case 8: OpRun(true); break;
        case 9: OpCode(); break;
        case 10: OpVpagetable(); break;
      }
    }
  }

 private:
  // ---- argument decoders ----

  // An id: mostly one of the pool, sometimes a pointer value that is never created.
  void* Id(int* pool_index) {
    const uint8_t v = in_.U8();
    *pool_index = -1;
    if (v < 0xC0) {
      *pool_index = v % kPoolSize;
      return &g_pool[*pool_index];
    }
    if (v < 0xF0) return reinterpret_cast<void*>(0xF00D000000000000ULL | in_.U32());
    if (v < 0xF8) {  // just past the pool: near, but never created
      return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(g_pool) + kPoolSize + (v & 7));
    }
    return nullptr;
  }

  Space* SpaceOf(int pool_index) {
    return pool_index >= 0 && spaces_[pool_index].created ? &spaces_[pool_index] : nullptr;
  }

  int UnknownIdErrno() const { return g_create_called ? ENOENT : EINVAL; }

  uint64_t Addr(int pool_index) {
    switch (in_.U8() % 10) {
      case 0: return 0;
      case 1: return kScratchBase + (in_.U16() & 0xfff) * kPage;
      case 2: {
        const Space* s = pool_index >= 0 ? &spaces_[pool_index] : nullptr;
        const uint64_t base = s != nullptr ? s->NthStart(in_.U8()) : kScratchBase;
        return base + in_.U16();
      }
      case 3: return kTop - (in_.U8() + 1ULL) * kPage;
      case 4: return kTop + in_.U16() * kPage;  // the stub's range
      case 5: return 0x0000800000000000ULL + in_.U32() * kPage;  // non-canonical
      case 6: return in_.U64();
      case 7: return kScratchBase + in_.U32();  // unaligned
      case 8: return in_.U8() * kPage;          // around vm.mmap_min_addr
      default: return 0xffffffffff600000ULL + in_.U8();  // the vsyscall page
    }
  }

  // A length for munmap/mcontrol/copies: anything, including wrapping values.
  uint64_t Len() {
    switch (in_.U8() % 8) {
      case 0: return 0;
      case 1: return (in_.U8() + 1ULL) * kPage;
      case 2: return in_.U16();
      case 3: return (in_.U16() + 1ULL) * kPage;
      case 4: return in_.U64();
      case 5: return ~0ULL - in_.U8();
      case 6: return kTop + 1 + in_.U8();
      default: return kMaxMapLen;
    }
  }

  // A length for mmap: lengths that could succeed are capped at kMaxMapLen; the ones above
  // the address space (which must fail) are kept.
  uint64_t MapLen() {
    uint64_t len = Len();
    if (len > kMaxMapLen && len <= kTop) len = kMaxMapLen;
    return len;
  }

  int Prot() {
    const uint8_t v = in_.U8();
    if (v & 0x80) return static_cast<int>(in_.U32());
    return v & (PROT_READ | PROT_WRITE | PROT_EXEC);
  }

  int Flags() {
    static constexpr int kBits[] = {
        MAP_SHARED,     MAP_PRIVATE,  MAP_FIXED,   MAP_ANONYMOUS,       MAP_VPAGETABLE,
        MAP_NORESERVE,  MAP_STACK,    MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_32BIT,
        MAP_SHARED_VALIDATE, MAP_DENYWRITE, MAP_POPULATE, MAP_LOCKED,   MAP_HUGETLB,
        MAP_SYNC,
    };
    const uint16_t v = in_.U16();
    if (v == 0xffff) return static_cast<int>(in_.U32());
    int flags = 0;
    for (int i = 0; i < 16; ++i) {
      if (v & (1 << i)) flags |= kBits[i];
    }
    return flags;
  }

  int Fd() {
    switch (in_.U8() % 8) {
      case 0: return -1;
      case 1: case 2: return memfd_;
      case 3: return memfd_ro_;
      case 4: return pipe_[0];
      case 5: return devzero_;
      case 6: return closed_fd_;
      default: return 1000 + in_.U8();  // never open
    }
  }

  off_t Offset() {
    switch (in_.U8() % 4) {
      case 0: return 0;
      case 1: return static_cast<off_t>(in_.U8() * kPage);
      case 2: return static_cast<off_t>(in_.U64());
      default: return in_.U16();
    }
  }

  // ---- operations ----

  void OpCreate() {
    // Only pool ids are created: the other values must stay unknown ids.
    const int index = in_.U8() % kPoolSize;
    void* id = &g_pool[index];
    const uint8_t t = in_.U8();
    int type = VKRT_TYPE_DEFAULT;
    if (t >= 0xF0) type = static_cast<int>(in_.U32());  // mostly unknown
    else if (t >= 0xE0) type = t & 3;
    void* data = in_.U8() == 0xFF ? reinterpret_cast<void*>(0x1234) : nullptr;
    g_create_called = true;
    const int r = vmspace_create(id, type, data);
    if (r == 0) {
      CHECK(!spaces_[index].created && data == nullptr && type >= 0 && type <= 3, index);
      spaces_[index] = Space();
      spaces_[index].created = true;
      return;
    }
    CHECK(r == -1, r);
    CHECK(ErrnoIn(errno, {EEXIST, EINVAL, EOPNOTSUPP}), r);
    if (spaces_[index].created && data == nullptr && type >= 0 && type <= 3) {
      CHECK(errno == EEXIST || errno == EOPNOTSUPP, index);
    }
    if (data != nullptr || type < 0 || type > 3) CHECK(errno == EINVAL, type);
    // The default backend was available when the fuzzer started (LLVMFuzzerInitialize).
    if (type == VKRT_TYPE_DEFAULT && data == nullptr) CHECK(errno == EEXIST, index);
  }

  void OpDestroy() {
    int index;
    void* id = Id(&index);
    const int r = vmspace_destroy(id);
    if (Space* s = SpaceOf(index)) {
      CHECK(r == 0, index);
      *s = Space();
      return;
    }
    CHECK(r == -1 && errno == UnknownIdErrno(), r);
  }

  void OpMmap() {
    int index;
    void* id = Id(&index);
    const uint64_t addr = Addr(index);
    uint64_t len = MapLen();
    const int prot = Prot();
    int flags = Flags();
    const int fd = Fd();
    const off_t offset = Offset();
    // Populating or locking a large mapping would only cost memory and time.
    if (len > (1 << 20)) flags &= ~(MAP_POPULATE | MAP_LOCKED | MAP_HUGETLB);
    void* r = vmspace_mmap(id, reinterpret_cast<void*>(addr), len, prot, flags, fd, offset);
    Space* s = SpaceOf(index);
    if (s == nullptr) {
      CHECK(r == MAP_FAILED && errno == UnknownIdErrno());
      return;
    }
    const uint64_t rlen = (len + kPage - 1) & ~(kPage - 1);
    const bool fixed = (flags & MAP_FIXED) != 0;
    if (r == MAP_FAILED) {
      // Flags outside the everyday set may meet any of mmap(2)'s errors (SPEC §2).
      constexpr int kEveryday = MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS |
                                MAP_VPAGETABLE | MAP_NORESERVE | MAP_STACK |
                                MAP_FIXED_NOREPLACE | MAP_DENYWRITE | MAP_32BIT;
      const bool exotic = (flags & ~kEveryday) != 0 || (prot & ~7) != 0;
      if (exotic) {
        CHECK(ErrnoIn(errno, {EINVAL, EBADF, EACCES, ENOMEM, EPERM, ENODEV, EEXIST,
                              EOPNOTSUPP, EAGAIN, ENFILE, EOVERFLOW, ETXTBSY}), flags, prot);
      } else {
        // MAP_SHARED_VALIDATE (both type bits) refuses flags outside mmap(2)'s legacy set
        // (MAP_FIXED_NOREPLACE among them) with EOPNOTSUPP, as the host does.
        const bool validate = (flags & MAP_SHARED_VALIDATE) == MAP_SHARED_VALIDATE;
        CHECK(ErrnoIn(errno, {EINVAL, EBADF, EACCES, ENOMEM, EPERM, ENODEV, EEXIST}) ||
                  (validate && errno == EOPNOTSUPP),
              flags, prot);
        if (errno == EEXIST) CHECK(flags & MAP_FIXED_NOREPLACE, flags);
        if (errno == ENODEV) CHECK(fd != memfd_ && fd != memfd_ro_, fd, flags);
      }
      if (len == 0) CHECK(errno == EINVAL, flags);
      // A failed MAP_FIXED may have removed what was there (as mmap(2) may).
      if (fixed && addr < kTop) {
        s->Erase(addr & ~(kPage - 1), std::min(kTop, addr + std::min(rlen, kTop)));
        s->exact = false;
      }
      return;
    }
    const uint64_t got = reinterpret_cast<uint64_t>(r);
    CHECK(len != 0 && len <= kTop, static_cast<long long>(len));
    CHECK((got & (kPage - 1)) == 0 && got + rlen <= kTop && got + rlen > got,
          static_cast<long long>(got));
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) CHECK(got == addr, addr, got);
    CHECK(!((flags & MAP_ANONYMOUS) && fd != -1), fd);
    if (flags & MAP_VPAGETABLE) {
      CHECK((prot & (PROT_READ | PROT_WRITE)) == (PROT_READ | PROT_WRITE), prot);
      CHECK(!(flags & (MAP_STACK | MAP_ANONYMOUS)) && fd == memfd_, flags);
    }
    s->Insert(got, got + rlen, Region{0, prot, flags, (flags & MAP_ANONYMOUS) != 0});
  }

  void OpMunmap() {
    int index;
    void* id = Id(&index);
    const uint64_t addr = Addr(index);
    const uint64_t len = Len();
    const int r = vmspace_munmap(id, reinterpret_cast<void*>(addr), len);
    Space* s = SpaceOf(index);
    if (s == nullptr) {
      CHECK(r == -1 && errno == UnknownIdErrno(), r);
      return;
    }
    const uint64_t rlen = (len + kPage - 1) & ~(kPage - 1);
    const bool valid = len == 0 || ((addr & (kPage - 1)) == 0 && rlen >= len &&
                                    addr + rlen >= addr && addr + rlen <= kTop);
    if (r == 0) {
      CHECK(valid, addr, len);
      if (len != 0) {
        if (s->exact) CHECK(s->FullyMapped(addr, addr + rlen), addr, len);
        s->Erase(addr, addr + rlen);
      }
      return;
    }
    CHECK(r == -1 && errno == EINVAL, r);
    // Over exactly what the fuzzer mapped, munmap cannot fail.
    if (valid && len != 0 && s->exact) CHECK(!s->FullyMapped(addr, addr + rlen), addr, len);
  }

  void OpMcontrol() {
    int index;
    void* id = Id(&index);
    const uint64_t addr = Addr(index);
    const uint64_t len = Len();
    const uint8_t b = in_.U8();
    int behav = b % 12;
    if (b >= 0xF0) behav = static_cast<int>(in_.U32());  // mostly out of range
    off_t value;
    if (behav == MADV_SETMAP) {
      // A root: the frame of one of the memfd's pages plus random low bits.
      value = static_cast<off_t>(((in_.U8() % 64) * kPage) | (in_.U16() & 0xfff));
    } else {
      value = static_cast<off_t>(in_.U64());
    }
    const int r = vmspace_mcontrol(id, reinterpret_cast<void*>(addr), len, behav, value);
    Space* s = SpaceOf(index);
    if (s == nullptr) {
      CHECK(r == -1 && errno == UnknownIdErrno(), r);
      return;
    }
    const bool range_ok = addr + len >= addr && addr + len <= kTop;
    if (r == 0) {
      CHECK(behav >= 0 && behav <= 11 && range_ok, behav, addr);
      // MADV_DONTNEED and MADV_FREE may discard anonymous contents: nothing to update in
      // the model (it does not track contents across operations).
      return;
    }
    CHECK(r == -1 && errno == EINVAL, r);
    if (behav >= 0 && behav <= 11 && behav != MADV_SETMAP && range_ok) {
      Fail("mcontrol failed on a valid range with a valid behav", behav, addr);
    }
  }

  void OpPwrite() {
    int index;
    void* id = Id(&index);
    const uint64_t addr = Addr(index);
    const size_t n = in_.U16() % (kMaxCopy + 1);
    const int flags = in_.U8() == 0xFF ? static_cast<int>(in_.U8()) | 1 : 0;
    std::vector<uint8_t> buf(n);
    in_.Bytes(buf.data(), std::min<size_t>(n, 256));
    for (size_t i = 256; i < n; ++i) buf[i] = static_cast<uint8_t>(buf[i % 256] + i / 256);
    const ssize_t r = vmspace_pwrite(id, buf.data(), n, flags, static_cast<off_t>(addr));
    Space* s = SpaceOf(index);
    if (s == nullptr) {
      CHECK(r == -1 && errno == UnknownIdErrno(), r);
      return;
    }
    if (flags != 0) {
      CHECK(r == -1 && errno == EINVAL, r);
      return;
    }
    if (n == 0) {
      CHECK(r == 0, r);
      return;
    }
    const Region* region = addr + n > addr ? s->Containing(addr & ~(kPage - 1), addr + n)
                                           : nullptr;
    const bool plain_rw = region != nullptr && !(region->flags & MAP_VPAGETABLE) &&
                          (region->prot & (PROT_READ | PROT_WRITE)) == (PROT_READ | PROT_WRITE);
    if (r < 0) {
      CHECK(r == -1 && errno == EFAULT, r);
      CHECK(!(plain_rw && region->anon), addr, n);
      return;
    }
    CHECK(static_cast<size_t>(r) <= n && r > 0, r, n);
    // A writable anonymous mapping takes the whole copy.
    if (plain_rw && region->anon) CHECK(static_cast<size_t>(r) == n, r, n);
    // What was written reads back (nothing ran in between).
    if (plain_rw) {
      std::vector<uint8_t> back(static_cast<size_t>(r));
      const ssize_t b = vmspace_pread(id, back.data(), back.size(), 0, static_cast<off_t>(addr));
      CHECK(b == r, b, r);
      CHECK(memcmp(back.data(), buf.data(), back.size()) == 0, addr, r);
    }
  }

  void OpPread() {
    int index;
    void* id = Id(&index);
    const uint64_t addr = Addr(index);
    const size_t n = in_.U16() % (kMaxCopy + 1);
    const int flags = in_.U8() == 0xFF ? static_cast<int>(in_.U8()) | 1 : 0;
    std::vector<uint8_t> buf(n + 16, 0xA5);
    const ssize_t r = vmspace_pread(id, buf.data(), n, flags, static_cast<off_t>(addr));
    // Never a byte past nbyte.
    for (size_t i = n; i < n + 16; ++i) CHECK(buf[i] == 0xA5, i);
    Space* s = SpaceOf(index);
    if (s == nullptr) {
      CHECK(r == -1 && errno == UnknownIdErrno(), r);
      return;
    }
    if (flags != 0) {
      CHECK(r == -1 && errno == EINVAL, r);
      return;
    }
    if (n == 0) {
      CHECK(r == 0, r);
      return;
    }
    const Region* region = addr + n > addr ? s->Containing(addr & ~(kPage - 1), addr + n)
                                           : nullptr;
    const bool readable_anon = region != nullptr && region->anon &&
                               !(region->flags & MAP_VPAGETABLE) && (region->prot & PROT_READ);
    if (r < 0) {
      CHECK(r == -1 && errno == EFAULT, r);
      CHECK(!readable_anon, addr, n);
      return;
    }
    CHECK(r > 0 && static_cast<size_t>(r) <= n, r, n);
    if (readable_anon) CHECK(static_cast<size_t>(r) == n, r, n);
  }

  // A register value: zero, small, an address the input mapped, or anything.
  uint64_t Reg(int index) {
    switch (in_.U8() % 4) {
      case 0: return 0;
      case 1: return in_.U8();
      case 2: return spaces_[index >= 0 ? index : 0].NthStart(in_.U8()) + in_.U16();
      default: return in_.U64();
    }
  }

  // RUN with a frame from the input (`resume`: the state the last RUN returned, with a few
  // registers changed, as a vkernel's syscall loop does).
  void OpRun(bool resume) {
    int index;
    void* id = Id(&index);
    Space* s = SpaceOf(index);
    trapframe tf{};
    vextframe vf{};
    if (resume && s != nullptr && s->have_frame) {
      tf = s->frame;
      vf = s->vframe;
      tf.tf_rax = static_cast<int64_t>(Reg(index));
    } else {
      int64_t regs[sizeof(tf) / sizeof(int64_t)];  // trapframe is packed: fill a copy
      for (auto& reg : regs) reg = static_cast<int64_t>(Reg(index));
      memcpy(&tf, regs, sizeof(tf));
      tf.tf_rip = static_cast<int64_t>(Addr(index));
      if (in_.U8() & 1) tf.tf_rflags = 0x202;
      if (in_.U8() == 0xFF) {
        vf.vx_tls.info[0].base = reinterpret_cast<void*>(Reg(index));
        vf.vx_tls.info[1].base = reinterpret_cast<void*>(Reg(index));
      }
    }
    const uint8_t mode = in_.U8();
    RunAndCheck(id, index, tf, vf, mode);
  }

  void RunAndCheck(void* id, int index, trapframe& tf, vextframe& vf, uint8_t mode) {
    if (++runs_ > kMaxRuns) return;
    int cmd = VMSPACE_CTL_RUN;
    if (mode >= 0xF8) cmd = static_cast<int>(mode & 7);  // mostly not RUN
    trapframe* tfp = mode == 0xF0 ? nullptr : &tf;
    vextframe* vfp = mode == 0xF1 ? nullptr : &vf;
    const trapframe before = tf;
    // The guest's FPU state comes back into this thread (SPEC §3): keep the fuzzer's own
    // (a guest may unmask floating-point exceptions in MXCSR).
    alignas(64) static uint8_t fxarea[512];
    __builtin_ia32_fxsave64(fxarea);
    int r;
    // For vkrt_vmspace_run_fpu, what its FPU area makes of the call (docs/api.md): 0 = runs;
    // EFAULT = a NULL area; EINVAL = an area XRSTOR refuses; -1 = may be refused (EINVAL) or
    // run: reserved header bytes the SDM lets XRSTOR ignore, which vkrt may refuse anyway.
    int area_verdict = 0;
    if (mode >= 0xE0 && mode < 0xE8) {
      r = vkrt_vmspace_run(id, tfp, vfp, kRunTimeoutNs / 2);
    } else if (mode >= 0xE8 && mode < 0xF0) {
      // The guest's FPU state from memory: a new thread's, with fuzzed bytes over the legacy
      // area and the XSAVE header (the checks RUN makes, and what backends accept).
      static unsigned char* area = static_cast<unsigned char*>(
          aligned_alloc(64, (vkrt_fpu_area_size() + 63) & ~size_t{63}));
      vkrt_fpu_area_init(area);
      const int patches = in_.U8() & 7;
      for (int i = 0; i < patches; ++i) {
        const size_t at = in_.U8() * 3 % 576;
        area[at] = in_.U8();
      }
      area_verdict = mode == 0xEF ? EFAULT : XrstorVerdict(area);
      r = vkrt_vmspace_run_fpu(id, tfp, vfp, kRunTimeoutNs / 2, mode == 0xEF ? nullptr : area);
    } else {
      r = vmspace_ctl(id, cmd, tfp, vfp);
    }
    const int saved_errno = errno;
    __builtin_ia32_fxrstor64(fxarea);
    errno = saved_errno;
    if (getenv("API_FUZZ_TRACE") != nullptr) {  // for debugging a crash: the RUN, in and out
      fprintf(stderr,
              "api_fuzz: op #%d RUN r=%d errno=%d in: rip %#llx rsp %#llx rflags %#llx rax "
              "%#llx rcx %#llx r11 %#llx; out: trapno %lld err %#llx addr %#llx rip %#llx "
              "rax %#llx rcx %#llx r11 %#llx\n",
              g_op_number, r, r < 0 ? errno : 0, (unsigned long long)before.tf_rip,
              (unsigned long long)before.tf_rsp, (unsigned long long)before.tf_rflags,
              (unsigned long long)before.tf_rax, (unsigned long long)before.tf_rcx,
              (unsigned long long)before.tf_r11, (long long)tf.tf_trapno,
              (unsigned long long)tf.tf_err, (unsigned long long)tf.tf_addr,
              (unsigned long long)tf.tf_rip, (unsigned long long)tf.tf_rax,
              (unsigned long long)tf.tf_rcx, (unsigned long long)tf.tf_r11);
    }
    Space* s = SpaceOf(index);
    if (s == nullptr) {
      CHECK(r == -1 && errno == UnknownIdErrno(), r);
      return;
    }
    const auto canonical = [](uint64_t va) {
      const uint64_t top = va >> 47;
      return top == 0 || top == 0x1FFFF;
    };
    const uint64_t fs = reinterpret_cast<uint64_t>(vf.vx_tls.info[0].base);
    const uint64_t gs = reinterpret_cast<uint64_t>(vf.vx_tls.info[1].base);
    if (cmd != VMSPACE_CTL_RUN) {
      CHECK(r == -1 && errno == EOPNOTSUPP, r);
      return;
    }
    // The FPU area is looked at once the id is known and before the frames.
    if (area_verdict > 0) {
      CHECK(r == -1 && errno == area_verdict, r, area_verdict);
      CHECK(memcmp(&before, &tf, sizeof(tf)) == 0);  // *tf untouched
      return;
    }
    if (area_verdict < 0 && r == -1 && errno == EINVAL) return;
    if (tfp == nullptr || vfp == nullptr) {
      CHECK(r == -1 && errno == EFAULT, r);
      return;
    }
    if (!canonical(static_cast<uint64_t>(before.tf_rip)) || fs >= 0x00007FFFFFFFF000ULL ||
        gs >= 0x00007FFFFFFFF000ULL) {
      CHECK(r == -1 && errno == EINVAL, r);
      CHECK(memcmp(&before, &tf, sizeof(tf)) == 0);  // *tf untouched
      return;
    }
    // A sane frame always runs (the guest cannot break its vmspace: security.md).
    CHECK(r == 0, r, tf.tf_rip);
    CHECK(tf.tf_cs == 0x33 && tf.tf_ss == 0x2b, tf.tf_cs, tf.tf_ss);
    // No CPU holds a non-canonical rip, and RUN refuses one: the state RUN returns must be
    // one the vkernel can run again.
    CHECK(canonical(static_cast<uint64_t>(tf.tf_rip)), tf.tf_trapno, tf.tf_rip);
    constexpr uint64_t kRflagsAllowed = 0x1 | 0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 |
                                        0x400 | 0x800 | 0x4000 | 0x10000 | 0x40000 | 0x200000;
    CHECK((static_cast<uint64_t>(tf.tf_rflags) & ~kRflagsAllowed) == 0 && (tf.tf_rflags & 2),
          tf.tf_rflags, tf.tf_rflags);
    const int64_t trapno = tf.tf_trapno;
    CHECK(ErrnoIn(static_cast<int>(trapno),
                  {0, T_PRIVINFLT, T_BPTFLT, T_ARITHTRAP, T_ASTFLT, T_PROTFLT, T_TRCTRAP,
                   T_PAGEFLT, T_ALIGNFLT, T_DIVIDE, T_OFLOW, T_BOUND, T_DNA, T_FPOPFLT,
                   T_SEGNPFLT, T_STKFLT, T_XMMFLT, T_SYSCALL80, T_FAST_SYSCALL}) &&
              trapno == static_cast<int>(trapno),
          trapno, tf.tf_rip);
    if (trapno == T_PAGEFLT) {
      CHECK((tf.tf_err & PGEX_U) && (tf.tf_err & ~0x1fLL) == 0, tf.tf_err, tf.tf_addr);
      // A fault at the instruction's own address is its fetch: I, never W (SPEC §3: the W
      // and I bits must be right on every backend).
      if (tf.tf_addr == tf.tf_rip) {
        CHECK((tf.tf_err & (PGEX_I | PGEX_W)) == PGEX_I, tf.tf_err, tf.tf_addr);
      }
    } else if (trapno == T_FAST_SYSCALL || trapno == T_SYSCALL80) {
      CHECK(tf.tf_err == 2, tf.tf_err);
      CHECK(tf.tf_rcx == tf.tf_r10, tf.tf_rcx, tf.tf_r10);
    } else if (trapno == 0) {
      CHECK(tf.tf_err == 0 && tf.tf_addr == 0, tf.tf_err, tf.tf_addr);
    }
    s->have_frame = true;
    s->frame = tf;
    s->vframe = vf;
  }

  // Guest code from the input in a fresh RWX mapping at kCodeBase, then RUN from its start
  // with the stack at the mapping's end.
  void OpCode() {
    int index;
    void* id = Id(&index);
    uint8_t code[64];
    const size_t n = in_.U8() % sizeof(code) + 1;
    in_.Bytes(code, n);
    const uint64_t rax = in_.U64(), rdi = in_.U64();
    const uint8_t mode = in_.U8();
    Space* s = SpaceOf(index);
    if (s == nullptr) return;
    constexpr uint64_t kLen = 64 * 1024;
    void* m = vmspace_mmap(id, reinterpret_cast<void*>(kCodeBase), kLen,
                           PROT_READ | PROT_WRITE | PROT_EXEC,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(m == reinterpret_cast<void*>(kCodeBase));
    s->Insert(kCodeBase, kCodeBase + kLen,
              Region{0, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, true});
    CHECK(vmspace_pwrite(id, code, n, 0, kCodeBase) == static_cast<ssize_t>(n), n);
    trapframe tf{};
    vextframe vf{};
    tf.tf_rip = kCodeBase;
    tf.tf_rsp = kCodeBase + kLen - 64;
    tf.tf_rflags = 0x202;
    tf.tf_rax = static_cast<int64_t>(rax);
    tf.tf_rdi = static_cast<int64_t>(rdi);
    tf.tf_rsi = kCodeBase + kLen / 2;
    RunAndCheck(id, index, tf, vf, mode & 0xDF);  // always VMSPACE_CTL_RUN with both frames
  }

  // A MAP_VPAGETABLE region over the memfd with page tables from the input, and its root.
  void OpVpagetable() {
    int index;
    void* id = Id(&index);
    const uint64_t root_page = in_.U8() % 16;
    const int entries = in_.U8() % 24;
    for (int i = 0; i < entries; ++i) {
      const uint64_t page = in_.U8() % 16;
      const uint64_t slot = in_.U16() % 512;
      const uint64_t frame = (in_.U16() % 1100) * kPage;  // a few beyond the memfd's end
      uint64_t bits = in_.U16() & 0xfff;
      if (in_.U8() & 1) bits |= VPTE_NX;
      const uint64_t entry = frame | bits;
      CHECK(pwrite(memfd_, &entry, sizeof(entry),
                   static_cast<off_t>(page * kPage + slot * 8)) == sizeof(entry));
    }
    const uint64_t len = (in_.U8() + 1ULL) * kPage * 4;
    const off_t offset = static_cast<off_t>((in_.U8() % 4) * kPage);
    const uint64_t root = root_page * kPage | (in_.U16() & 0xfff) | VPTE_V | VPTE_RW | VPTE_U;
    Space* s = SpaceOf(index);
    void* m = vmspace_mmap(id, reinterpret_cast<void*>(kVptBase), len,
                           PROT_READ | PROT_WRITE | PROT_EXEC,
                           MAP_SHARED | MAP_VPAGETABLE | MAP_FIXED, memfd_, offset);
    if (s == nullptr) {
      CHECK(m == MAP_FAILED && errno == UnknownIdErrno());
      return;
    }
    CHECK(m == reinterpret_cast<void*>(kVptBase), len);
    s->Insert(kVptBase, kVptBase + len,
              Region{0, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_VPAGETABLE, false});
    CHECK(vmspace_mcontrol(id, reinterpret_cast<void*>(kVptBase), len, MADV_SETMAP,
                           static_cast<off_t>(root)) == 0, root);
  }

  Input& in_;
  Space spaces_[kPoolSize];
  int runs_ = 0;
  int memfd_ = -1;
  int memfd_ro_ = -1;
  int pipe_[2] = {-1, -1};
  int devzero_ = -1;
  int closed_fd_ = -1;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  const char* name = vkrt_backend_name();
  if (name == nullptr) {
    // 77: "skipped" for meson's replay tests on a machine without that backend (kvm).
    fprintf(stderr, "api_fuzz: the backend VKRT_BACKEND names is unavailable: %s\n",
            strerror(errno));
    exit(77);
  }
  fprintf(stderr, "api_fuzz: backend %s\n", name);
  // A guest that never traps (a loop) ends after this; the fuzzer's thread is the only one.
  CHECK(vkrt_set_run_timeout(kRunTimeoutNs) == 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  Session session(in);
  session.Run();
  return 0;
}
