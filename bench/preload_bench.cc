// preload_bench.cc - what the preload shim costs a program that never uses it: getpid with and
// without LD_PRELOAD=libvkrt_preload.so (whose seccomp filter then sees every system call).
//
//   BM_Getpid            raw syscall(SYS_getpid) in this process (no shim), in batches of
//                        10,000 (manual time)
//   BM_GetpidUnderShim   the same loop in a child started with the shim preloaded: each
//                        iteration asks it for a batch of 10,000 calls and takes the time the
//                        child measured (manual time)
//
//   BM_PairedGetpid      alternating batches of both: counters native_ns, shim_ns, extra_ns
//
// ns per call: counter ns_per_call (extra_ns for the paired one). Run: build/bench/preload_bench.
#include <benchmark/benchmark.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

namespace {

constexpr long kBatch = 10000;

double NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double NativeBatch() {
  const double t0 = NowNs();
  for (long i = 0; i < kBatch; ++i) syscall(SYS_getpid);
  return NowNs() - t0;
}

// In the child: one line in ("go"), one batch, its time in ns out; until EOF.
int ChildLoop() {
  char line[16];
  while (fgets(line, sizeof(line), stdin) != nullptr) {
    const double t0 = NowNs();
    for (long i = 0; i < kBatch; ++i) syscall(SYS_getpid);
    printf("%.0f\n", NowNs() - t0);
    fflush(stdout);
  }
  return 0;
}

void BM_Getpid(benchmark::State& state) {
  double total_ns = 0;
  long batches = 0;
  for (auto _ : state) {
    const double ns = NativeBatch();
    state.SetIterationTime(ns / 1e9);
    total_ns += ns;
    ++batches;
  }
  state.counters["ns_per_call"] = total_ns / (batches * kBatch);
}

// A child process with the shim preloaded that runs batches of getpid on request.
class ShimChild {
 public:
  std::string Start() {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) return "pipe failed";
    pid_ = fork();
    if (pid_ < 0) return "fork failed";
    if (pid_ == 0) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
      setenv("LD_PRELOAD", VKRT_PRELOAD_LIB, 1);
      setenv("VKRT_PRELOAD_BENCH_CHILD", "1", 1);
      execl("/proc/self/exe", "preload_bench", nullptr);
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    out_ = fdopen(to_child[1], "w");
    in_ = fdopen(from_child[0], "r");
    return "";
  }
  // One batch in the child: its duration in ns, or a negative number if it did not answer.
  double Batch() {
    char line[64];
    if (fputs("go\n", out_) == EOF || fflush(out_) != 0 || fgets(line, sizeof(line), in_) == nullptr) {
      return -1;
    }
    return atof(line);
  }
  ~ShimChild() {
    if (out_ != nullptr) fclose(out_);
    if (in_ != nullptr) fclose(in_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  FILE* in_ = nullptr;
};

void BM_GetpidUnderShim(benchmark::State& state) {
  ShimChild child;
  if (std::string err = child.Start(); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  double total_ns = 0;
  long batches = 0;
  for (auto _ : state) {
    const double ns = child.Batch();
    if (ns < 0) {
      state.SkipWithError("the shim child did not answer");
      break;
    }
    state.SetIterationTime(ns / 1e9);
    total_ns += ns;
    ++batches;
  }
  if (batches > 0) state.counters["ns_per_call"] = total_ns / (batches * kBatch);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Alternating batches without and with the shim (this machine drifts too much for separate
// runs to compare): counters native_ns, shim_ns (per call) and extra_ns, medians over batches.
void BM_PairedGetpid(benchmark::State& state) {
  ShimChild child;
  if (std::string err = child.Start(); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  std::vector<double> native, shim, extra;
  for (auto _ : state) {
    const double a = NativeBatch() / kBatch;
    const double b = child.Batch() / kBatch;
    if (b < 0) {
      state.SkipWithError("the shim child did not answer");
      return;
    }
    native.push_back(a);
    shim.push_back(b);
    extra.push_back(b - a);
  }
  state.counters["native_ns"] = Median(native);
  state.counters["shim_ns"] = Median(shim);
  state.counters["extra_ns"] = Median(extra);
}

}  // namespace

BENCHMARK(BM_Getpid)->UseManualTime()->Iterations(200)->Repetitions(5)
    ->ReportAggregatesOnly(true);
BENCHMARK(BM_GetpidUnderShim)->UseManualTime()->Iterations(200)->Repetitions(5)
    ->ReportAggregatesOnly(true);
BENCHMARK(BM_PairedGetpid)->Iterations(400)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  if (getenv("VKRT_PRELOAD_BENCH_CHILD") != nullptr) return ChildLoop();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
