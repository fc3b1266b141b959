// vpagetable_bench.cc - Google Benchmark suite for MAP_VPAGETABLE costs (SPEC §4).
//
// Every benchmark runs a guest whose data pages live in one VPAGETABLE region over a memfd
// ("physical memory") with page tables the benchmark builds. Per-page figures are the time of
// one RUN that sweeps kBatch pages, divided by kBatch (the RUN's own round trip is spread
// over the batch); 5 repetitions, the medians are the quoted numbers.
//
//   BM_FirstTouchRead/<backend>   a load from a page never touched: the runtime's walk (A set
//                                 at every level) and the install of a read-only translation.
//   BM_FirstTouchWrite/<backend>  a store to a page never touched: walk with A|M and a writable
//                                 install (the ptrace backend first installs read-only, then the
//                                 store faults once more and upgrades it).
//   BM_RefaultAfterInval          a load from a page whose translation MADV_INVAL dropped
//                                 (entries already have A set: the walk only reads).
//   BM_InvalPage                  MADV_INVAL of one installed page (per page).
//   BM_Inval2MiB                  MADV_INVAL of a 2 MiB range with all 512 pages installed.
//   BM_InvalNothingInstalled      MADV_INVAL of a 2 MiB range with nothing installed.
//   BM_Sweep200k                  one RUN that loads from 200,000 distinct pages: more than
//                                 vm.max_map_count translations, so the runtime evicts.
//   BM_OwnFirstTouchRead          the same first touch in the vkernel's own space (a region of
//                                 the benchmark process): SIGSEGV, walk, mmap(MAP_FIXED).
//   BM_OwnRefaultAfterInval       ... and after MADV_INVAL (A already set).
//   BM_FloorSigsegvMmap           the in-process floor the issue quotes: SIGSEGV, a handler that
//                                 mmap(MAP_FIXED)s a memfd page over the faulting one, return.
//
// Pinned to CPU 0 like roundtrip_bench (VKRT_BENCH_CPU=<n>|none). Each benchmark checks its
// guest's result (the sum of the values it loaded) and stops with SkipWithError on a mismatch.

#include <benchmark/benchmark.h>

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kCodeAddr = 0x400000;
constexpr uint64_t kStackBase = 0x7000000;
constexpr uint64_t kVptAddr = 0x40000000;
constexpr uint64_t kVptLen = 0x40000000;  // 262144 pages
constexpr uint64_t kBatch = 512;          // pages per timed RUN
constexpr uint64_t kVpteUser = VPTE_V | VPTE_RW | VPTE_U;

// rax = sum of the first qword of rsi pages from rdi on; syscall.
//      0: 31 c0                  xor    %eax,%eax
//      2: 48 03 07               add    (%rdi),%rax
//      5: 48 81 c7 00 10 00 00   add    $0x1000,%rdi
//      c: 48 ff ce               dec    %rsi
//      f: 75 f1                  jne    2
//     11: 0f 05                  syscall
const unsigned char kSweepRead[] = {0x31, 0xc0, 0x48, 0x03, 0x07, 0x48, 0x81, 0xc7, 0x00, 0x10,
                                    0x00, 0x00, 0x48, 0xff, 0xce, 0x75, 0xf1, 0x0f, 0x05};
// Stores rdx into the first qword of rsi pages from rdi on; syscall.
//      0: 48 89 17               mov    %rdx,(%rdi)
//      3: 48 81 c7 00 10 00 00   add    $0x1000,%rdi
//      a: 48 ff ce               dec    %rsi
//      d: 75 f1                  jne    0
//      f: 0f 05                  syscall
const unsigned char kSweepWrite[] = {0x48, 0x89, 0x17, 0x48, 0x81, 0xc7, 0x00, 0x10, 0x00,
                                     0x00, 0x48, 0xff, 0xce, 0x75, 0xf1, 0x0f, 0x05};

int g_cpu = 0;

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// A vmspace with a code page, a stack and the VPAGETABLE region; `pages` pages mapped to
// frames 3 apart (no host merging), frame i holding i + 1.
class VptGuest {
 public:
  VptGuest(int type, uint64_t pages) : pages_(pages) {
    frames_ = pages < 4096 ? pages : 4093;
    const uint64_t tables = pages / 512 + 8;
    size_ = (1 + tables + frames_) * kPage;
    fd_ = memfd_create("vkrt-bench", MFD_CLOEXEC);
    if (fd_ < 0 || ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
      error_ = Errno("memfd");
      return;
    }
    mem_ = static_cast<uint64_t*>(
        mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    if (mem_ == MAP_FAILED) {
      mem_ = nullptr;
      error_ = Errno("mmap");
      return;
    }
    for (uint64_t f = 0; f < frames_; ++f) Store(Frame(f), f + 1);
    for (uint64_t i = 0; i < pages_; ++i) {
      Store(LeafOffset(i), Frame((i * 3) % frames_) | kVpteUser);
      expected_ += (i * 3) % frames_ + 1;
    }
    if (vmspace_create(this, type, nullptr) != 0) {
      error_ = Errno("vmspace_create");
      return;
    }
    live_ = true;
    const int anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    if (vmspace_mmap(this, reinterpret_cast<void*>(kCodeAddr), kPage,
                     PROT_READ | PROT_WRITE | PROT_EXEC, anon, -1, 0) == MAP_FAILED ||
        vmspace_mmap(this, reinterpret_cast<void*>(kStackBase), 16 * kPage,
                     PROT_READ | PROT_WRITE, anon, -1, 0) == MAP_FAILED ||
        vmspace_mmap(this, reinterpret_cast<void*>(kVptAddr), kVptLen,
                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE, fd_,
                     0) == MAP_FAILED) {
      error_ = Errno("vmspace_mmap");
      return;
    }
    if (vmspace_mcontrol(this, reinterpret_cast<void*>(kVptAddr), kVptLen, MADV_SETMAP,
                         static_cast<off_t>(0 | kVpteUser)) != 0) {
      error_ = Errno("MADV_SETMAP");
    }
  }
  ~VptGuest() {
    if (own_ != nullptr) munmap(own_, kVptLen);
    if (live_) vmspace_destroy(this);
    if (mem_ != nullptr) munmap(mem_, size_);
    if (fd_ >= 0) close(fd_);
  }
  const std::string& error() const { return error_; }

  bool LoadCode(const unsigned char* code, size_t len) {
    if (vmspace_pwrite(this, code, len, 0, static_cast<off_t>(kCodeAddr)) !=
        static_cast<ssize_t>(len)) {
      error_ = Errno("vmspace_pwrite");
      return false;
    }
    return true;
  }
  // One RUN of the loaded sweep over pages [first, first+count); false (with error()) unless
  // it ended at the syscall with the expected sum (loads only).
  bool Sweep(uint64_t first, uint64_t count, bool check_sum) {
    struct trapframe tf = {};
    struct vextframe vf = {};
    tf.tf_rip = static_cast<int64_t>(kCodeAddr);
    tf.tf_rsp = static_cast<int64_t>(kStackBase + 16 * kPage);
    tf.tf_rflags = 0x202;
    tf.tf_rdi = static_cast<int64_t>(kVptAddr + first * kPage);
    tf.tf_rsi = static_cast<int64_t>(count);
    tf.tf_rdx = 7;
    if (vmspace_ctl(this, VMSPACE_CTL_RUN, &tf, &vf) != 0) {
      error_ = Errno("vmspace_ctl(RUN)");
      return false;
    }
    if (tf.tf_trapno != T_FAST_SYSCALL) {
      error_ = "guest stopped with trapno " + std::to_string(tf.tf_trapno) + " at " +
               std::to_string(tf.tf_addr);
      return false;
    }
    if (check_sum) {
      uint64_t want = 0;
      for (uint64_t i = first; i < first + count; ++i) want += (i * 3) % frames_ + 1;
      if (static_cast<uint64_t>(tf.tf_rax) != want) {
        error_ = "guest read the wrong pages";
        return false;
      }
    }
    return true;
  }
  bool Inval(uint64_t first, uint64_t count) {
    if (vmspace_mcontrol(this, reinterpret_cast<void*>(kVptAddr + first * kPage), count * kPage,
                         MADV_INVAL, 0) != 0) {
      error_ = Errno("MADV_INVAL");
      return false;
    }
    return true;
  }
  // Clears A and M in the leaf entries of [first, first+count) (as if never touched).
  void ClearAccessed(uint64_t first, uint64_t count) {
    for (uint64_t i = first; i < first + count; ++i) {
      const uint64_t off = LeafOffset(i);
      Store(off, Load(off) & ~(VPTE_A | VPTE_M));
    }
  }
  uint64_t expected() const { return expected_; }

  // The same tables governing a region of this process (mmap(MAP_VPAGETABLE) + mcontrol).
  bool MapOwn() {
    void* p = mmap(nullptr, kVptLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_VPAGETABLE, fd_, 0);
    if (p == MAP_FAILED) {
      error_ = Errno("mmap(MAP_VPAGETABLE)");
      return false;
    }
    own_ = static_cast<unsigned char*>(p);
    if (mcontrol(own_, kVptLen, MADV_SETMAP, static_cast<off_t>(0 | kVpteUser)) != 0) {
      error_ = Errno("mcontrol(MADV_SETMAP)");
      return false;
    }
    return true;
  }
  bool OwnSweep(uint64_t first, uint64_t count) {
    uint64_t sum = 0, want = 0;
    for (uint64_t i = first; i < first + count; ++i) {
      sum += *reinterpret_cast<volatile uint64_t*>(own_ + i * kPage);
      want += (i * 3) % frames_ + 1;
    }
    if (sum != want) error_ = "own space: read the wrong pages";
    return sum == want;
  }
  bool OwnInval(uint64_t first, uint64_t count) {
    if (mcontrol(own_ + first * kPage, count * kPage, MADV_INVAL, 0) != 0) {
      error_ = Errno("mcontrol(MADV_INVAL)");
      return false;
    }
    return true;
  }

 private:
  uint64_t Frame(uint64_t f) const { return (size_ / kPage - frames_ + f) * kPage; }
  uint64_t Load(uint64_t off) const { return __atomic_load_n(&mem_[off / 8], __ATOMIC_ACQUIRE); }
  void Store(uint64_t off, uint64_t v) { __atomic_store_n(&mem_[off / 8], v, __ATOMIC_RELEASE); }
  // Tables: frame 0 top; the next frames are allocated on demand.
  uint64_t LeafOffset(uint64_t index) {
    uint64_t table = 0;
    for (int l = 3; l > 0; --l) {
      const uint64_t slot = table + ((index >> (9 * l)) & 511) * 8;
      uint64_t e = Load(slot);
      if (!(e & VPTE_V)) {
        e = (next_table_++) * kPage | kVpteUser;
        Store(slot, e);
      }
      table = e & VPTE_FRAME;
    }
    return table + (index & 511) * 8;
  }

  uint64_t pages_;
  uint64_t frames_;
  uint64_t size_ = 0;
  int fd_ = -1;
  uint64_t* mem_ = nullptr;
  uint64_t next_table_ = 1;
  uint64_t expected_ = 0;
  bool live_ = false;
  unsigned char* own_ = nullptr;
  std::string error_;
};

int TypeOf(const benchmark::State& state) { return static_cast<int>(state.range(0)); }

void PerPage(benchmark::State& state, uint64_t pages_per_iteration) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * pages_per_iteration));
  state.counters["per_page"] = benchmark::Counter(
      static_cast<double>(state.iterations() * pages_per_iteration),
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// First touch: each iteration sweeps kBatch pages whose leaf entries have A/M clear and whose
// translations were dropped (reset untimed).
void FirstTouch(benchmark::State& state, bool write) {
  VptGuest g(TypeOf(state), kBatch);
  if (!g.error().empty() || !g.LoadCode(write ? kSweepWrite : kSweepRead,
                                        write ? sizeof kSweepWrite : sizeof kSweepRead)) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    g.ClearAccessed(0, kBatch);
    bool ok = g.Inval(0, kBatch);
    state.ResumeTiming();
    ok = ok && g.Sweep(0, kBatch, !write);
    if (!ok) {
      state.SkipWithError(g.error().c_str());
      return;
    }
  }
  PerPage(state, kBatch);
}

void BM_FirstTouchRead(benchmark::State& state) { FirstTouch(state, false); }
void BM_FirstTouchWrite(benchmark::State& state) { FirstTouch(state, true); }

void BM_RefaultAfterInval(benchmark::State& state) {
  VptGuest g(TypeOf(state), kBatch);
  if (!g.error().empty() || !g.LoadCode(kSweepRead, sizeof kSweepRead) ||
      !g.Sweep(0, kBatch, true)) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    bool ok = g.Inval(0, kBatch);
    state.ResumeTiming();
    ok = ok && g.Sweep(0, kBatch, true);
    if (!ok) {
      state.SkipWithError(g.error().c_str());
      return;
    }
  }
  PerPage(state, kBatch);
}

void BM_InvalPage(benchmark::State& state) {
  VptGuest g(TypeOf(state), kBatch);
  if (!g.error().empty() || !g.LoadCode(kSweepRead, sizeof kSweepRead)) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    bool ok = g.Sweep(0, kBatch, true);
    state.ResumeTiming();
    for (uint64_t i = 0; ok && i < kBatch; ++i) ok = g.Inval(i, 1);
    if (!ok) {
      state.SkipWithError(g.error().c_str());
      return;
    }
  }
  PerPage(state, kBatch);
}

void BM_Inval2MiB(benchmark::State& state) {
  VptGuest g(TypeOf(state), 512);
  if (!g.error().empty() || !g.LoadCode(kSweepRead, sizeof kSweepRead)) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    bool ok = g.Sweep(0, 512, true);
    state.ResumeTiming();
    ok = ok && g.Inval(0, 512);
    if (!ok) {
      state.SkipWithError(g.error().c_str());
      return;
    }
  }
}

void BM_InvalNothingInstalled(benchmark::State& state) {
  VptGuest g(TypeOf(state), 512);
  if (!g.error().empty()) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  for (auto _ : state) {
    if (!g.Inval(0, 512)) {
      state.SkipWithError(g.error().c_str());
      return;
    }
  }
}

void BM_Sweep200k(benchmark::State& state) {
  constexpr uint64_t kPages = 200000;
  VptGuest g(TypeOf(state), kPages);
  if (!g.error().empty() || !g.LoadCode(kSweepRead, sizeof kSweepRead)) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    bool ok = g.Inval(0, kPages);
    state.ResumeTiming();
    ok = ok && g.Sweep(0, kPages, true);
    if (!ok) {
      state.SkipWithError(g.error().c_str());
      return;
    }
  }
  PerPage(state, kPages);
}

// ---- the vkernel's own space (in-process SIGSEGV resolution) ----

void OwnTouch(benchmark::State& state, bool clear_accessed) {
  VptGuest g(VKRT_TYPE_PTRACE, kBatch);
  if (!g.error().empty() || !g.MapOwn()) {
    state.SkipWithError(g.error().c_str());
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    if (clear_accessed) g.ClearAccessed(0, kBatch);
    bool ok = g.OwnInval(0, kBatch);
    state.ResumeTiming();
    ok = ok && g.OwnSweep(0, kBatch);
    if (!ok) {
      state.SkipWithError(g.error().c_str());
      return;
    }
  }
  PerPage(state, kBatch);
}
void BM_OwnFirstTouchRead(benchmark::State& state) { OwnTouch(state, true); }
void BM_OwnRefaultAfterInval(benchmark::State& state) { OwnTouch(state, false); }

// ---- the in-process floor ----

int g_floor_fd = -1;
uint64_t g_floor_base = 0;

void FloorHandler(int, siginfo_t* si, void*) {
  const uint64_t page = reinterpret_cast<uint64_t>(si->si_addr) & ~(kPage - 1);
  mmap(reinterpret_cast<void*>(page), kPage, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
       g_floor_fd, static_cast<off_t>(((page - g_floor_base) / kPage % 64) * kPage * 3));
}

void BM_FloorSigsegvMmap(benchmark::State& state) {
  g_floor_fd = memfd_create("vkrt-floor", MFD_CLOEXEC);
  if (g_floor_fd < 0 || ftruncate(g_floor_fd, 256 * kPage) != 0) {
    state.SkipWithError(Errno("memfd").c_str());
    return;
  }
  void* base = mmap(nullptr, kBatch * kPage, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  g_floor_base = reinterpret_cast<uint64_t>(base);
  struct sigaction sa = {}, old = {};
  sa.sa_sigaction = FloorHandler;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, &old);
  for (auto _ : state) {
    state.PauseTiming();
    mmap(base, kBatch * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
         -1, 0);
    state.ResumeTiming();
    uint64_t sum = 0;
    for (uint64_t i = 0; i < kBatch; ++i) {
      sum += *reinterpret_cast<volatile uint64_t*>(g_floor_base + i * kPage);
    }
    benchmark::DoNotOptimize(sum);
  }
  sigaction(SIGSEGV, &old, nullptr);
  munmap(base, kBatch * kPage);
  close(g_floor_fd);
  PerPage(state, kBatch);
}

void Configure(benchmark::internal::Benchmark* b, benchmark::IterationCount iters) {
  b->UseRealTime()
      ->Unit(benchmark::kMicrosecond)
      ->Iterations(iters)
      ->Repetitions(5)
      ->ReportAggregatesOnly(true);
}

void Backends(benchmark::internal::Benchmark* b) {
  b->ArgName("type");
  for (int type : {VKRT_TYPE_PTRACE, VKRT_TYPE_SECCOMP, VKRT_TYPE_KVM}) {
    const char* names[] = {"", "ptrace", "seccomp", "kvm"};
    if (vkrt_backend_available(names[type], nullptr) == 0) b->Arg(type);
  }
}

}  // namespace

BENCHMARK(BM_FloorSigsegvMmap)->Apply([](auto* b) { Configure(b, 40); });
BENCHMARK(BM_OwnFirstTouchRead)->Apply([](auto* b) { Configure(b, 40); });
BENCHMARK(BM_OwnRefaultAfterInval)->Apply([](auto* b) { Configure(b, 40); });
BENCHMARK(BM_FirstTouchRead)->Apply(Backends)->Apply([](auto* b) { Configure(b, 20); });
BENCHMARK(BM_FirstTouchWrite)->Apply(Backends)->Apply([](auto* b) { Configure(b, 20); });
BENCHMARK(BM_RefaultAfterInval)->Apply(Backends)->Apply([](auto* b) { Configure(b, 20); });
BENCHMARK(BM_InvalPage)->Apply(Backends)->Apply([](auto* b) { Configure(b, 20); });
BENCHMARK(BM_Inval2MiB)->Apply(Backends)->Apply([](auto* b) { Configure(b, 40); });
BENCHMARK(BM_InvalNothingInstalled)->Apply(Backends)->Apply([](auto* b) { Configure(b, 2000); });
BENCHMARK(BM_Sweep200k)->Apply(Backends)->Apply([](auto* b) { Configure(b, 1); });

int main(int argc, char** argv) {
  const char* cpu = std::getenv("VKRT_BENCH_CPU");
  if (cpu != nullptr && std::strcmp(cpu, "none") == 0) {
    g_cpu = -1;
  } else if (cpu != nullptr && *cpu != '\0') {
    g_cpu = std::atoi(cpu);
  }
  if (g_cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(g_cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
      std::fprintf(stderr, "vpagetable_bench: sched_setaffinity(CPU %d): %s; running unpinned\n",
                   g_cpu, std::strerror(errno));
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
