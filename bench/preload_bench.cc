// preload_bench.cc - what the preload shim costs a program that never uses it: getpid with and
// without LD_PRELOAD=libvkrt_preload.so (whose seccomp filter then sees every system call).
//
//   BM_Getpid            raw syscall(SYS_getpid) in this process (no shim), in batches of
//                        10,000 (manual time)
//   BM_GetpidUnderShim   the same loop in a child started with the shim preloaded: each
//                        iteration asks it for a batch of 10,000 calls and takes the time the
//                        child measured (manual time)
//
// Both report ns per call (counter ns_per_call). Run: build/bench/preload_bench.
#include <benchmark/benchmark.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <string>

namespace {

constexpr long kBatch = 10000;

double NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
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
    const double t0 = NowNs();
    for (long i = 0; i < kBatch; ++i) syscall(SYS_getpid);
    const double ns = NowNs() - t0;
    state.SetIterationTime(ns / 1e9);
    total_ns += ns;
    ++batches;
  }
  state.counters["ns_per_call"] = total_ns / (batches * kBatch);
}

void BM_GetpidUnderShim(benchmark::State& state) {
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) {
    state.SkipWithError("pipe failed");
    return;
  }
  const pid_t child = fork();
  if (child == 0) {
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
  FILE* out = fdopen(to_child[1], "w");
  FILE* in = fdopen(from_child[0], "r");
  double total_ns = 0;
  long batches = 0;
  for (auto _ : state) {
    char line[64];
    if (fputs("go\n", out) == EOF || fflush(out) != 0 || fgets(line, sizeof(line), in) == nullptr) {
      state.SkipWithError("the shim child did not answer");
      break;
    }
    const double ns = atof(line);
    state.SetIterationTime(ns / 1e9);
    total_ns += ns;
    ++batches;
  }
  fclose(out);
  fclose(in);
  waitpid(child, nullptr, 0);
  if (batches > 0) state.counters["ns_per_call"] = total_ns / (batches * kBatch);
}

}  // namespace

BENCHMARK(BM_Getpid)->UseManualTime()->Iterations(200)->Repetitions(5)
    ->ReportAggregatesOnly(true);
BENCHMARK(BM_GetpidUnderShim)->UseManualTime()->Iterations(200)->Repetitions(5)
    ->ReportAggregatesOnly(true);

int main(int argc, char** argv) {
  if (getenv("VKRT_PRELOAD_BENCH_CHILD") != nullptr) return ChildLoop();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
