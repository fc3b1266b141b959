// minivk: an example virtual kernel on the public vkrt API (issue 8, in progress). Today it
// runs one static Linux program (busybox-static is the reference) as a single guest process
// with the first system calls (see process.h); the rest of issue 8 follows.
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

#include <string>
#include <vector>

#include "process.h"

extern char** environ;

namespace {

void Usage(FILE* out) {
  fprintf(out,
          "usage: minivk [options] PROGRAM [ARGUMENT...]\n"
          "Runs a static x86-64 Linux program (e.g. /bin/busybox echo hi) as the guest of a\n"
          "small virtual kernel built on vkrt. Its exit status is minivk's.\n"
          "\n"
          "  --backend=NAME  ptrace, seccomp or kvm (default: vkrt's default)\n"
          "  --mem=MIB       guest physical memory in MiB (default 512)\n"
          "  --trace         one line per guest system call on stderr\n"
          "  --stats         exit counts and time in RUN, on stderr at the end\n"
          "  --help          this text\n"
          "\n"
          "In progress: one process; brk, mmap, write, exit and a few more calls; others\n"
          "answer ENOSYS (see --trace).\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend;
  long mem_mib = 512;
  bool trace = false, stats = false;
  static const struct option options[] = {
      {"backend", required_argument, nullptr, 'b'}, {"mem", required_argument, nullptr, 'm'},
      {"trace", no_argument, nullptr, 't'},         {"stats", no_argument, nullptr, 's'},
      {"help", no_argument, nullptr, 'h'},          {nullptr, 0, nullptr, 0},
  };
  int opt;
  while ((opt = getopt_long(argc, argv, "+", options, nullptr)) != -1) {
    switch (opt) {
      case 'b': backend = optarg; break;
      case 'm': {
        char* end = nullptr;
        mem_mib = strtol(optarg, &end, 10);
        if (end == optarg || *end != '\0' || mem_mib < 16 || mem_mib > 65536) {
          fprintf(stderr, "minivk: --mem=%s: a number of MiB from 16 to 65536\n", optarg);
          return 2;
        }
        break;
      }
      case 't': trace = true; break;
      case 's': stats = true; break;
      case 'h': Usage(stdout); return 0;
      default: Usage(stderr); return 2;
    }
  }
  if (optind >= argc) {
    Usage(stderr);
    return 2;
  }
  int type = VKRT_TYPE_DEFAULT;
  if (!backend.empty()) {
    const char* why = nullptr;
    if (vkrt_backend_available(backend.c_str(), &why) != 0) {
      fprintf(stderr, "minivk: --backend=%s: %s\n", backend.c_str(), why ? why : "unknown");
      return 2;
    }
    type = backend == "ptrace" ? VKRT_TYPE_PTRACE
           : backend == "seccomp" ? VKRT_TYPE_SECCOMP
                                  : VKRT_TYPE_KVM;
  }
  std::vector<std::string> guest_argv(argv + optind, argv + argc);
  std::vector<std::string> guest_envp;
  for (char** e = environ; *e != nullptr; ++e) guest_envp.emplace_back(*e);

  std::string error;
  minivk::PhysMem mem;
  if (!mem.Init(static_cast<size_t>(mem_mib) << 20, error)) {
    fprintf(stderr, "minivk: %s\n", error.c_str());
    return 1;
  }
  minivk::Process process(mem);
  process.set_trace(trace);
  if (!process.Start(type, guest_argv[0], guest_argv, guest_envp, error)) {
    fprintf(stderr, "minivk: %s\n", error.c_str());
    return 127;
  }
  const int status = process.Run(error);
  if (stats) {
    const auto& s = process.stats();
    fprintf(stderr, "minivk: %lu system calls, %lu interrupts, %lu other exits; %.3f s in RUN\n",
            static_cast<unsigned long>(s.syscalls), static_cast<unsigned long>(s.interrupts),
            static_cast<unsigned long>(s.other), s.run_seconds);
  }
  if (status < 0) {
    fprintf(stderr, "minivk: %s\n", error.c_str());
    return 1;
  }
  return status;
}
