// roundtrip_bench.cc - Google Benchmark suite for vkrt's round-trip costs.
//
// What is measured (wall-clock time, microseconds; 5 repetitions, medians are the quoted numbers):
//
//   BM_FloorPtraceSysemu        the raw ptrace floor, no vkrt code at all: one PTRACE_SYSEMU +
//                               waitpid + PTRACE_GETREGS + PTRACE_SETREGS per guest `syscall`.
//                               This is what the ptrace backend can at best approach.
//   BM_FloorSigsysSpinHandoff   the raw seccomp floor, no vkrt code at all (bench/sigsys_probe.h):
//                               a forked guest's `syscall` hits a SECCOMP_RET_TRAP filter, its
//                               SIGSYS handler copies gregs to a shared page and spins until this
//                               thread answers (rax = rdi + 1), then rt_sigreturns. The guest runs
//                               on another CPU (label guest_cpu=N): the seccomp backend's target.
//   BM_VkrtSyscallRoundTrip     one vmspace_ctl(VMSPACE_CTL_RUN) that returns T_FAST_SYSCALL.
//                               Arg type = the backend (1 VKRT_TYPE_PTRACE, 2 VKRT_TYPE_SECCOMP).
//   BM_VkrtFaultRoundTrip       one vmspace_ctl(VMSPACE_CTL_RUN) that returns T_PAGEFLT for a load
//                               from an unmapped guest address (the fault is re-taken each RUN).
//                               Arg type = the backend (1 ptrace, 2 seccomp).
//   BM_VkrtCreateDestroy        vmspace_create + vmspace_destroy of a fresh, empty vmspace.
//                               Arg type = the backend (1 ptrace, 2 seccomp).
//   BM_VkrtCreateMapRunDestroy  create, map one code page, pwrite the guest code, one RUN up to the
//                               first syscall, destroy: the cost of a short-lived guest.
//                               Arg type = the backend (1 ptrace, 2 seccomp).
//   BM_PairedSyscallRatio       alternating batches of the ptrace floor and the vkrt syscall round
//                               trip (ptrace backend only, no arg); counters floor_us, vkrt_us,
//                               ratio (medians over batches, see the section below).
//   BM_PairedSeccompRatio       the same for seccomp (seccomp backend only, no arg): alternating
//                               batches of the SIGSYS spin-handoff probe and the vkrt syscall round
//                               trip; counters floor_us, vkrt_us, ratio = vkrt/floor (medians over
//                               batches). Target: ratio <= 1.35 and vkrt_us <= 3. The probe's
//                               guest shares its CPU with the vkrt context, so it is parked on a
//                               futex (untimed) while the vkrt batch runs.
//
// A vkrt benchmark whose backend is not available here (vkrt_backend_available) stops with
// SkipWithError and the reason.
//
// CPU placement dominates these numbers on this 2-vCPU machine (see /work/shared/probes/README.md:
// the bare SYSEMU round trip is ~9.5 us with tracer and tracee on one CPU, 30-70 us across CPUs),
// so main() pins the benchmark thread to CPU 0 before anything else runs. The ptrace backend gives
// its guest the creating thread's affinity, and the ptrace floor's child pins itself to the same
// CPU, so those benchmarks are "same CPU" measurements. The exceptions spin on both sides, so their
// guest runs on another CPU: BM_FloorSigsysSpinHandoff (and the probe in BM_PairedSeccompRatio)
// pins its guest to the first other CPU this process was allowed to use (skipped if there is none;
// with VKRT_BENCH_CPU=none the guest is left unpinned too), and the seccomp backend itself pins
// each guest context thread to a CPU other than the one its vkernel thread runs on at creation.
// VKRT_BENCH_CPU=<n> pins to CPU n instead; VKRT_BENCH_CPU=none leaves the affinity alone (to look
// at the unpinned/cross-CPU cost).
//
// Build: linked against libvkrt and Debian's libbenchmark (which has no benchmark_main, hence the
// main() at the bottom). Compiling with -DVKRT_FLOOR_ONLY leaves out every vkrt benchmark and the
// vkrt header, so the floor can be built and run without the library:
//   g++ -std=c++20 -O2 -DVKRT_FLOOR_ONLY bench/roundtrip_bench.cc -lbenchmark -lpthread
//
// Every benchmark checks what it measures (trap code, rip, fault address, the emulated result the
// floor's child feeds back) on every iteration and stops with SkipWithError on a mismatch.

#include <benchmark/benchmark.h>

#include <sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <string>
#include <vector>

#include "kvm_probe.h"
#include "sigsys_probe.h"

#ifndef VKRT_FLOOR_ONLY
#include <vkrt/vmspace.h>
#endif

namespace {

// The CPU everything is pinned to; -1 = not pinned (VKRT_BENCH_CPU=none).
int g_cpu = 0;
// The CPUs the process was allowed before main() pinned it (for the SIGSYS floor's guest).
cpu_set_t g_allowed_cpus;

bool PinToCpu(int cpu) {
  if (cpu < 0) return true;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

std::string Errno(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

void SetRoundTripCounter(benchmark::State& state) {
  // kIsRate divides by the benchmark's time, which is the real time here (UseRealTime).
  state.counters["roundtrips"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// ---- 1. The raw ptrace floor ------------------------------------------------------------------

// The traced child: stops itself, then issues getpid forever with a raw `syscall`, feeding each
// result back as the next rdi:
//     xor  %edi,%edi
//  1: mov  $39,%eax        # SYS_getpid
//     syscall              # PTRACE_SYSEMU stop; the tracer sets rax = rdi + 1
//     mov  %rax,%rdi
//     jmp  1b
// so the tracer sees rdi = 0, 1, 2, ... exactly when each SETREGS took effect.
[[noreturn]] void FloorChild() {
  PinToCpu(g_cpu);
  if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) _exit(120);
  raise(SIGSTOP);
  __asm__ volatile(
      "xor %%edi, %%edi\n"
      "1:\n"
      "mov $39, %%eax\n"
      "syscall\n"
      "mov %%rax, %%rdi\n"
      "jmp 1b\n"
      :
      :
      : "rax", "rdi", "rcx", "r11", "memory");
  __builtin_unreachable();
}

// Waits for the next stop of `pid`; true if it is a stop with signal `sig`.
bool WaitStop(pid_t pid, int sig) {
  int st = 0;
  pid_t r;
  do {
    r = waitpid(pid, &st, __WALL);
  } while (r < 0 && errno == EINTR);
  return r == pid && WIFSTOPPED(st) && WSTOPSIG(st) == sig;
}

void KillChild(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {
  }
}

// The floor's tracee: a forked child under PTRACE_SYSEMU, stopped at its first syscall.
class FloorTracee {
 public:
  // "" or an error; on error nothing is left running.
  std::string Start() {
    pid_ = fork();
    if (pid_ < 0) return Errno("fork");
    if (pid_ == 0) FloorChild();
    std::string err;
    if (!WaitStop(pid_, SIGSTOP)) {
      err = "child did not stop with SIGSTOP";
    } else if (ptrace(PTRACE_SETOPTIONS, pid_, nullptr,
                      reinterpret_cast<void*>(PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD)) != 0) {
      err = Errno("PTRACE_SETOPTIONS");
    } else if (ptrace(PTRACE_SYSEMU, pid_, nullptr, nullptr) != 0) {
      err = Errno("PTRACE_SYSEMU");
    } else if (!WaitStop(pid_, kSyscallStop)) {
      err = "no syscall stop after the first PTRACE_SYSEMU";
    } else if (ptrace(PTRACE_GETREGS, pid_, nullptr, &regs_) != 0) {
      err = Errno("PTRACE_GETREGS");
    } else if (regs_.orig_rax != SYS_getpid || regs_.rdi != 0) {
      err = "unexpected first syscall";
    } else {
      regs_.rax = regs_.rdi + 1;
      if (ptrace(PTRACE_SETREGS, pid_, nullptr, &regs_) != 0) err = Errno("PTRACE_SETREGS");
    }
    if (!err.empty()) Stop();
    return err;
  }

  // One round trip: resume, the next syscall stop, read the registers, emulate, write them.
  std::string RoundTrip() {
    if (ptrace(PTRACE_SYSEMU, pid_, nullptr, nullptr) != 0) return Errno("PTRACE_SYSEMU");
    if (!WaitStop(pid_, kSyscallStop)) return "expected a syscall stop";
    if (ptrace(PTRACE_GETREGS, pid_, nullptr, &regs_) != 0) return Errno("PTRACE_GETREGS");
    if (regs_.orig_rax != SYS_getpid || regs_.rdi != expect_) {
      return "wrong syscall or the emulated result did not reach the child";
    }
    regs_.rax = regs_.rdi + 1;
    if (ptrace(PTRACE_SETREGS, pid_, nullptr, &regs_) != 0) return Errno("PTRACE_SETREGS");
    ++expect_;
    return "";
  }

  void Stop() {
    if (pid_ > 0) KillChild(pid_);
    pid_ = -1;
  }

 private:
  static constexpr int kSyscallStop = SIGTRAP | 0x80;  // with PTRACE_O_TRACESYSGOOD
  pid_t pid_ = -1;
  struct user_regs_struct regs_ = {};
  unsigned long long expect_ = 1;  // the rdi of the next stop
};

void BM_FloorPtraceSysemu(benchmark::State& state) {
  FloorTracee floor;
  std::string err = floor.Start();
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  for (auto _ : state) {
    err = floor.RoundTrip();
    if (!err.empty()) {
      state.SkipWithError(err.c_str());
      break;
    }
  }
  floor.Stop();
  if (err.empty()) SetRoundTripCounter(state);
}

// ---- 1b. The raw seccomp SIGSYS + spin handoff floor ------------------------------------------

// The guest's CPU: the first allowed CPU other than g_cpu; -1 (guest left unpinned) if g_cpu is
// -1; -2 if there is no other CPU (two spinning sides on one CPU would measure the scheduler).
int SigsysGuestCpu() {
  if (g_cpu < 0) return -1;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (cpu != g_cpu && CPU_ISSET(cpu, &g_allowed_cpus)) return cpu;
  }
  return -2;
}

void BM_FloorSigsysSpinHandoff(benchmark::State& state) {
  const int guest_cpu = SigsysGuestCpu();
  if (guest_cpu == -2) {
    state.SkipWithError("the spin handoff needs a second CPU besides the benchmark thread's");
    return;
  }
  state.SetLabel(guest_cpu >= 0 ? "guest_cpu=" + std::to_string(guest_cpu)
                                : std::string("guest_cpu=unpinned"));
  sigsys_probe::Probe probe;
  std::string err = probe.Start(guest_cpu);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  for (auto _ : state) {
    err = probe.RoundTrip();
    if (!err.empty()) {
      state.SkipWithError(err.c_str());
      break;
    }
  }
  probe.Stop();
  if (err.empty()) SetRoundTripCounter(state);
}

#ifndef VKRT_FLOOR_ONLY

// ---- vkrt benchmarks --------------------------------------------------------------------------

constexpr uint64_t kCodeAddr = 0x400000;
constexpr uint64_t kStackAddr = 0x7000000;
constexpr uint64_t kUnmappedAddr = 0x10000000;  // nothing is ever mapped there
constexpr size_t kPage = 4096;

// `as` + `objdump -d`:
//    0:  b8 27 00 00 00    mov    $0x27,%eax
//    5:  0f 05             syscall
//    7:  eb f7             jmp    0
constexpr unsigned char kSyscallLoop[] = {0xb8, 0x27, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7};
constexpr uint64_t kSyscallNextRip = kCodeAddr + 7;  // tf_rip after the syscall traps

// `as` + `objdump -d`:
//    0:  48 8b 03          mov    (%rbx),%rax
//    3:  eb fb             jmp    0
constexpr unsigned char kFaultLoop[] = {0x48, 0x8b, 0x03, 0xeb, 0xfb};

// vmspace ids are opaque keys compared by pointer value; one per benchmark.
char g_ids[7];

// The backend name for a VKRT_TYPE_* (the names vkrt_backend_available() takes).
const char* BackendName(int64_t type) {
  switch (type) {
    case VKRT_TYPE_PTRACE:
      return "ptrace";
    case VKRT_TYPE_SECCOMP:
      return "seccomp";
    case VKRT_TYPE_KVM:
      return "kvm";
    default:
      return "unknown";
  }
}

// "" if backend `type` can run here; else why not (for SkipWithError). Also labels the run.
std::string CheckBackend(benchmark::State& state, int64_t type) {
  const char* name = BackendName(type);
  state.SetLabel(name);
  const char* why = nullptr;
  if (vkrt_backend_available(name, &why) != 0) {
    return std::string("backend ") + name + " unavailable: " +
           (why != nullptr ? why : std::strerror(errno));
  }
  return "";
}

// create (backend `type`, a VKRT_TYPE_*) + map the code page RWX at kCodeAddr (+ a stack page
// at kStackAddr if `stack`) + pwrite the code; fills *tf / *vf with a fresh user context starting
// at kCodeAddr. Returns "" or an error message. On error the vmspace is destroyed again.
std::string MakeGuest(void* id, int type, const unsigned char* code, size_t len, bool stack,
                      struct trapframe* tf, struct vextframe* vf) {
  if (vmspace_create(id, type, nullptr) != 0) return Errno("vmspace_create");
  std::string err;
  const int anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
  void* want = reinterpret_cast<void*>(kCodeAddr);
  void* want_stack = reinterpret_cast<void*>(kStackAddr);
  if (vmspace_mmap(id, want, kPage, PROT_READ | PROT_WRITE | PROT_EXEC, anon, -1, 0) != want) {
    err = Errno("vmspace_mmap(code)");
  } else if (stack && vmspace_mmap(id, want_stack, kPage, PROT_READ | PROT_WRITE, anon, -1, 0) !=
                          want_stack) {
    err = Errno("vmspace_mmap(stack)");
  } else if (vmspace_pwrite(id, code, len, 0, static_cast<off_t>(kCodeAddr)) !=
             static_cast<ssize_t>(len)) {
    err = Errno("vmspace_pwrite");
  }
  if (!err.empty()) {
    vmspace_destroy(id);
    return err;
  }
  std::memset(tf, 0, sizeof *tf);
  std::memset(vf, 0, sizeof *vf);
  tf->tf_rip = static_cast<int64_t>(kCodeAddr);
  tf->tf_rsp = static_cast<int64_t>(kStackAddr + kPage - 64);
  tf->tf_rflags = 0x202;
  tf->tf_cs = 0x33;
  tf->tf_ss = 0x2b;
  return "";
}

int Run(void* id, struct trapframe* tf, struct vextframe* vf) {
  return vmspace_ctl(id, VMSPACE_CTL_RUN, tf, vf);
}

// "" if *tf is the guest's syscall (getpid, from the syscall at kCodeAddr + 5).
std::string CheckSyscallTrap(int rc, const struct trapframe& tf) {
  if (rc != 0) return Errno("vmspace_ctl(RUN)");
  if (tf.tf_trapno != T_FAST_SYSCALL)
    return "expected T_FAST_SYSCALL, got trapno " + std::to_string(tf.tf_trapno);
  if (tf.tf_rip != static_cast<int64_t>(kSyscallNextRip) || tf.tf_rax != 39)
    return "T_FAST_SYSCALL with wrong tf_rip/tf_rax";
  return "";
}

// "" if *tf is the guest's load from kUnmappedAddr at kCodeAddr.
std::string CheckFaultTrap(int rc, const struct trapframe& tf) {
  if (rc != 0) return Errno("vmspace_ctl(RUN)");
  if (tf.tf_trapno != T_PAGEFLT)
    return "expected T_PAGEFLT, got trapno " + std::to_string(tf.tf_trapno);
  if (tf.tf_rip != static_cast<int64_t>(kCodeAddr) ||
      tf.tf_addr != static_cast<int64_t>(kUnmappedAddr))
    return "T_PAGEFLT with wrong tf_rip/tf_addr";
  if ((tf.tf_err & (PGEX_U | PGEX_W | PGEX_I | PGEX_P)) != PGEX_U)
    return "T_PAGEFLT with wrong tf_err " + std::to_string(tf.tf_err);
  return "";
}

// ---- 2. syscall round trip ----

void BM_VkrtSyscallRoundTrip(benchmark::State& state) {
  void* id = &g_ids[0];
  const int type = static_cast<int>(state.range(0));
  struct trapframe tf;
  struct vextframe vf;
  std::string err = CheckBackend(state, type);
  if (err.empty()) err = MakeGuest(id, type, kSyscallLoop, sizeof kSyscallLoop, true, &tf, &vf);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  // First RUN (untimed): from the entry point up to the first syscall.
  err = CheckSyscallTrap(Run(id, &tf, &vf), tf);
  if (err.empty()) {
    for (auto _ : state) {
      tf.tf_rax = tf.tf_rdi + 1;  // "emulate" the call, as the floor does
      err = CheckSyscallTrap(Run(id, &tf, &vf), tf);
      if (!err.empty()) break;
    }
  }
  if (!err.empty()) state.SkipWithError(err.c_str());
  if (vmspace_destroy(id) != 0 && err.empty()) state.SkipWithError(Errno("vmspace_destroy").c_str());
  if (err.empty()) SetRoundTripCounter(state);
}

// ---- the ratio to the floor, measured in alternating batches ----
//
// This machine's speed drifts by tens of percent within a minute, so the floor and vkrt
// measured one after the other can disagree by more than their difference. Here every
// iteration times a batch of floor round trips and then a batch of vkrt round trips; the
// counters are the medians over batches of each per-round-trip time and of their ratio.

double NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void BM_PairedSyscallRatio(benchmark::State& state) {
  constexpr int kBatch = 200;
  void* id = &g_ids[3];
  struct trapframe tf;
  struct vextframe vf;
  FloorTracee floor;
  std::string err = floor.Start();
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  err = MakeGuest(id, VKRT_TYPE_PTRACE, kSyscallLoop, sizeof kSyscallLoop, true, &tf, &vf);
  if (!err.empty()) {
    floor.Stop();
    state.SkipWithError(err.c_str());
    return;
  }
  err = CheckSyscallTrap(Run(id, &tf, &vf), tf);
  std::vector<double> floor_ns, vkrt_ns, ratio;
  for (auto _ : state) {
    if (!err.empty()) break;
    const double t0 = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) err = floor.RoundTrip();
    const double t1 = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) {
      tf.tf_rax = tf.tf_rdi + 1;
      err = CheckSyscallTrap(Run(id, &tf, &vf), tf);
    }
    const double t2 = NowNs();
    floor_ns.push_back((t1 - t0) / kBatch);
    vkrt_ns.push_back((t2 - t1) / kBatch);
    ratio.push_back((t2 - t1) / (t1 - t0));
  }
  floor.Stop();
  if (vmspace_destroy(id) != 0 && err.empty()) err = Errno("vmspace_destroy");
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  state.counters["floor_us"] = Median(floor_ns) / 1000;
  state.counters["vkrt_us"] = Median(vkrt_ns) / 1000;
  state.counters["ratio"] = Median(ratio);
}

// The same for the seccomp backend: batches of the SIGSYS spin-handoff probe (its guest on the
// first allowed CPU other than g_cpu, as in BM_FloorSigsysSpinHandoff) alternating with batches
// of the vkrt seccomp syscall round trip (whose context thread the backend pins away from this
// thread's CPU). Counters: floor_us (probe), vkrt_us, ratio = vkrt/floor, medians over batches.
// Unlike the ptrace floor's stopped tracee, the probe's guest spins for its next answer between
// batches, on the CPU the vkrt context uses: it is parked (Probe::Park, untimed) for each vkrt
// batch and unparked before each probe batch (without that, vkrt_us came out 13-50 us, not ~6).
void BM_PairedSeccompRatio(benchmark::State& state) {
  constexpr int kBatch = 200;
  void* id = &g_ids[4];
  struct trapframe tf;
  struct vextframe vf;
  std::string err = CheckBackend(state, VKRT_TYPE_SECCOMP);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  const int guest_cpu = SigsysGuestCpu();
  if (guest_cpu == -2) {
    state.SkipWithError("the spin handoff needs a second CPU besides the benchmark thread's");
    return;
  }
  state.SetLabel(guest_cpu >= 0 ? "seccomp probe_guest_cpu=" + std::to_string(guest_cpu)
                                : std::string("seccomp probe_guest_cpu=unpinned"));
  sigsys_probe::Probe probe;
  err = probe.Start(guest_cpu);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  // The probe's guest spins for its next answer between batches; parked, it leaves the CPU it
  // shares with the vkrt context to the context.
  err = probe.Park();
  if (err.empty()) {
    err = MakeGuest(id, VKRT_TYPE_SECCOMP, kSyscallLoop, sizeof kSyscallLoop, true, &tf, &vf);
  }
  if (!err.empty()) {
    probe.Stop();
    state.SkipWithError(err.c_str());
    return;
  }
  err = CheckSyscallTrap(Run(id, &tf, &vf), tf);
  std::vector<double> floor_ns, vkrt_ns, ratio;
  for (auto _ : state) {
    if (err.empty()) err = probe.Unpark();  // untimed
    if (!err.empty()) break;
    const double t0 = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) err = probe.RoundTrip();
    const double t1 = NowNs();
    if (err.empty()) err = probe.Park();  // untimed
    const double t1p = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) {
      tf.tf_rax = tf.tf_rdi + 1;
      err = CheckSyscallTrap(Run(id, &tf, &vf), tf);
    }
    const double t2 = NowNs();
    floor_ns.push_back((t1 - t0) / kBatch);
    vkrt_ns.push_back((t2 - t1p) / kBatch);
    ratio.push_back((t2 - t1p) / (t1 - t0));
  }
  probe.Stop();
  if (vmspace_destroy(id) != 0 && err.empty()) err = Errno("vmspace_destroy");
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  state.counters["floor_us"] = Median(floor_ns) / 1000;
  state.counters["vkrt_us"] = Median(vkrt_ns) / 1000;
  state.counters["ratio"] = Median(ratio);
}

// The same for the kvm backend against the raw KVM exit probe (bench/kvm_probe.h): batches
// of the probe's guest `syscall` exits alternating with batches of vkrt kvm syscall round
// trips, then the same for page faults. Counters: sys_floor_us, sys_vkrt_us, sys_ratio,
// pf_floor_us, pf_vkrt_us, pf_ratio (vkrt/floor, medians over batches). Target: ratios <= 1.2.
void BM_PairedKvmRatio(benchmark::State& state) {
  constexpr int kBatch = 50;
  void* sys_id = &g_ids[5];
  void* pf_id = &g_ids[6];
  struct trapframe sys_tf, pf_tf;
  struct vextframe sys_vf, pf_vf;
  std::string err = CheckBackend(state, VKRT_TYPE_KVM);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  kvm_probe::Vm sys_probe, pf_probe;
  err = sys_probe.Start(true);
  if (err.empty()) err = pf_probe.Start(false);
  if (err.empty()) {
    err = MakeGuest(sys_id, VKRT_TYPE_KVM, kSyscallLoop, sizeof kSyscallLoop, true, &sys_tf,
                    &sys_vf);
  }
  if (err.empty()) {
    err = MakeGuest(pf_id, VKRT_TYPE_KVM, kFaultLoop, sizeof kFaultLoop, true, &pf_tf, &pf_vf);
  }
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  pf_tf.tf_rbx = static_cast<int64_t>(kUnmappedAddr);
  err = CheckSyscallTrap(Run(sys_id, &sys_tf, &sys_vf), sys_tf);
  if (err.empty()) err = CheckFaultTrap(Run(pf_id, &pf_tf, &pf_vf), pf_tf);
  std::vector<double> sys_floor, sys_vkrt, sys_ratio, pf_floor, pf_vkrt, pf_ratio;
  for (auto _ : state) {
    if (!err.empty()) break;
    const double t0 = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) err = sys_probe.SyscallExit();
    const double t1 = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) {
      sys_tf.tf_rax = sys_tf.tf_rdi + 1;
      err = CheckSyscallTrap(Run(sys_id, &sys_tf, &sys_vf), sys_tf);
    }
    const double t2 = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) err = pf_probe.FaultExit();
    const double t3 = NowNs();
    for (int i = 0; i < kBatch && err.empty(); ++i) {
      err = CheckFaultTrap(Run(pf_id, &pf_tf, &pf_vf), pf_tf);
    }
    const double t4 = NowNs();
    sys_floor.push_back((t1 - t0) / kBatch);
    sys_vkrt.push_back((t2 - t1) / kBatch);
    sys_ratio.push_back((t2 - t1) / (t1 - t0));
    pf_floor.push_back((t3 - t2) / kBatch);
    pf_vkrt.push_back((t4 - t3) / kBatch);
    pf_ratio.push_back((t4 - t3) / (t3 - t2));
  }
  if (vmspace_destroy(sys_id) != 0 && err.empty()) err = Errno("vmspace_destroy");
  if (vmspace_destroy(pf_id) != 0 && err.empty()) err = Errno("vmspace_destroy");
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  state.SetLabel(sys_probe.LstarCpl() == 3 ? "kvm: syscall entry at CPL3 (kvm_pvm)"
                                            : "kvm: syscall entry at CPL0 (VMX/SVM)");
  state.counters["sys_floor_us"] = Median(sys_floor) / 1000;
  state.counters["sys_vkrt_us"] = Median(sys_vkrt) / 1000;
  state.counters["sys_ratio"] = Median(sys_ratio);
  state.counters["pf_floor_us"] = Median(pf_floor) / 1000;
  state.counters["pf_vkrt_us"] = Median(pf_vkrt) / 1000;
  state.counters["pf_ratio"] = Median(pf_ratio);
}

// The raw KVM floors on their own (bench/kvm_probe.h): one guest `syscall` exit, one guest
// page-fault exit, per iteration.
void BM_FloorKvmSyscallExit(benchmark::State& state) {
  kvm_probe::Vm vm;
  std::string err = vm.Start(true);
  if (err.empty()) err = vm.SyscallExit();  // the first entry (untimed)
  for (auto _ : state) {
    if (!err.empty()) break;
    err = vm.SyscallExit();
  }
  if (!err.empty()) state.SkipWithError(err.c_str());
  else SetRoundTripCounter(state);
}

void BM_FloorKvmFaultExit(benchmark::State& state) {
  kvm_probe::Vm vm;
  std::string err = vm.Start(false);
  if (err.empty()) err = vm.FaultExit();
  for (auto _ : state) {
    if (!err.empty()) break;
    err = vm.FaultExit();
  }
  if (!err.empty()) state.SkipWithError(err.c_str());
  else SetRoundTripCounter(state);
}

// ---- 3. page fault round trip ----

void BM_VkrtFaultRoundTrip(benchmark::State& state) {
  void* id = &g_ids[1];
  const int type = static_cast<int>(state.range(0));
  struct trapframe tf;
  struct vextframe vf;
  std::string err = CheckBackend(state, type);
  if (err.empty()) err = MakeGuest(id, type, kFaultLoop, sizeof kFaultLoop, true, &tf, &vf);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  tf.tf_rbx = static_cast<int64_t>(kUnmappedAddr);
  // First RUN (untimed): up to the first fault. Every later RUN restarts at the faulting
  // instruction (tf_rip comes back pointing at it) and takes the same fault again.
  err = CheckFaultTrap(Run(id, &tf, &vf), tf);
  if (err.empty()) {
    for (auto _ : state) {
      err = CheckFaultTrap(Run(id, &tf, &vf), tf);
      if (!err.empty()) break;
    }
  }
  if (!err.empty()) state.SkipWithError(err.c_str());
  if (vmspace_destroy(id) != 0 && err.empty()) state.SkipWithError(Errno("vmspace_destroy").c_str());
  if (err.empty()) SetRoundTripCounter(state);
}

// ---- 4. lifetime ----

void BM_VkrtCreateDestroy(benchmark::State& state) {
  void* id = &g_ids[2];
  const int type = static_cast<int>(state.range(0));
  std::string err = CheckBackend(state, type);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  for (auto _ : state) {
    if (vmspace_create(id, type, nullptr) != 0) {
      err = Errno("vmspace_create");
    } else if (vmspace_destroy(id) != 0) {
      err = Errno("vmspace_destroy");
    }
    if (!err.empty()) {
      state.SkipWithError(err.c_str());
      break;
    }
  }
}

void BM_VkrtCreateMapRunDestroy(benchmark::State& state) {
  void* id = &g_ids[3];
  const int type = static_cast<int>(state.range(0));
  struct trapframe tf;
  struct vextframe vf;
  std::string err = CheckBackend(state, type);
  if (!err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  for (auto _ : state) {
    err = MakeGuest(id, type, kSyscallLoop, sizeof kSyscallLoop, false, &tf, &vf);
    if (err.empty()) {
      err = CheckSyscallTrap(Run(id, &tf, &vf), tf);
      if (vmspace_destroy(id) != 0 && err.empty()) err = Errno("vmspace_destroy");
    }
    if (!err.empty()) {
      state.SkipWithError(err.c_str());
      break;
    }
  }
}

// The backend is the one argument ("type": 1 = VKRT_TYPE_PTRACE, 2 = VKRT_TYPE_SECCOMP).
void Backends(benchmark::internal::Benchmark* b) {
  b->ArgName("type")->Arg(VKRT_TYPE_PTRACE)->Arg(VKRT_TYPE_SECCOMP)->Arg(VKRT_TYPE_KVM);
}

#endif  // VKRT_FLOOR_ONLY

// Common settings. Fixed iteration counts keep the whole suite well under a minute here even if
// a round trip turns out to cost the cross-CPU 70 us (5 repetitions each).
void Configure(benchmark::internal::Benchmark* b, benchmark::IterationCount iters) {
  b->UseRealTime()
      ->Unit(benchmark::kMicrosecond)
      ->Iterations(iters)
      ->Repetitions(5)
      ->ReportAggregatesOnly(true);
}

}  // namespace

BENCHMARK(BM_FloorPtraceSysemu)->Apply([](auto* b) { Configure(b, 20000); });
BENCHMARK(BM_FloorSigsysSpinHandoff)->Apply([](auto* b) { Configure(b, 20000); });
#ifndef VKRT_FLOOR_ONLY
BENCHMARK(BM_VkrtSyscallRoundTrip)->Apply(Backends)->Apply([](auto* b) { Configure(b, 20000); });
BENCHMARK(BM_VkrtFaultRoundTrip)->Apply(Backends)->Apply([](auto* b) { Configure(b, 10000); });
BENCHMARK(BM_VkrtCreateDestroy)->Apply(Backends)->Apply([](auto* b) { Configure(b, 100); });
BENCHMARK(BM_VkrtCreateMapRunDestroy)
    ->Apply(Backends)
    ->Apply([](auto* b) { Configure(b, 100); });
BENCHMARK(BM_PairedSyscallRatio)->Iterations(60)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_PairedSeccompRatio)->Iterations(60)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FloorKvmSyscallExit)->Apply([](auto* b) { Configure(b, 20000); });
BENCHMARK(BM_FloorKvmFaultExit)->Apply([](auto* b) { Configure(b, 10000); });
BENCHMARK(BM_PairedKvmRatio)->Iterations(40)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif

int main(int argc, char** argv) {
  // Pin first, before the benchmark library (or vkrt) does anything.
  CPU_ZERO(&g_allowed_cpus);
  if (sched_getaffinity(0, sizeof g_allowed_cpus, &g_allowed_cpus) != 0) {
    std::fprintf(stderr, "roundtrip_bench: sched_getaffinity: %s\n", std::strerror(errno));
  }
  const char* cpu = std::getenv("VKRT_BENCH_CPU");
  if (cpu != nullptr && std::strcmp(cpu, "none") == 0) {
    g_cpu = -1;
  } else if (cpu != nullptr && *cpu != '\0') {
    g_cpu = std::atoi(cpu);
  }
  if (!PinToCpu(g_cpu)) {
    std::fprintf(stderr, "roundtrip_bench: sched_setaffinity(CPU %d): %s; running unpinned\n",
                 g_cpu, std::strerror(errno));
    g_cpu = -1;
  }

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
