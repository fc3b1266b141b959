// minivk: an example virtual kernel on the public vkrt API. It runs x86-64 Linux programs
// (busybox-static is the reference; dynamically linked ones start in their ELF interpreter)
// as guest processes: each has its own vmspace
// governed by minivk's page tables (vm.h), and minivk's kernel (kernel.h) implements the
// system calls, processes, pipes and signals they use.
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

#include <string>
#include <vector>

#include "kernel.h"

extern char** environ;

namespace {

void Usage(FILE* out) {
  fprintf(out,
          "usage: minivk [options] PROGRAM [ARGUMENT...]\n"
          "Runs an x86-64 Linux program, static or dynamically linked (e.g. /bin/busybox sh\n"
          "-c 'echo hi | wc -c', or /bin/ls), as the first process of a small virtual kernel\n"
          "built on vkrt. Guest processes fork, exec, pipe and signal inside minivk; files\n"
          "are the host's. minivk's exit status is the first process's (128 + N if signal N\n"
          "ended it).\n"
          "\n"
          "  --backend=NAME  ptrace, seccomp or kvm (default: vkrt's default)\n"
          "  --cpus=N        N vkernel threads run guest processes at once (default 1)\n"
          "  --no-pin        let the host move vkernel threads between CPUs (default: each\n"
          "                  stays on one CPU while minivk may use more CPUs than N)\n"
          "  --root=DIR      the guest's / is host directory DIR (default /; not a security\n"
          "                  boundary: symbolic links can lead out of it)\n"
          "  --read-only     the guest may not create, change or remove files (EROFS, as\n"
          "                  on a read-only mount; devices and FIFOs stay writable)\n"
          "  --mem=MIB       guest physical memory in MiB (default 1024)\n"
          "  --trace         one line per guest system call, fault and signal on stderr\n"
          "  --stats         counts of each exit kind and time in RUN, on stderr at the end\n"
          "  --help          this text\n"
          "\n"
          "System calls minivk does not implement answer ENOSYS (--trace marks them).\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend;
  long mem_mib = 1024;
  minivk::Options options;
  static const struct option long_options[] = {
      {"backend", required_argument, nullptr, 'b'}, {"mem", required_argument, nullptr, 'm'},
      {"trace", no_argument, nullptr, 't'},         {"stats", no_argument, nullptr, 's'},
      {"cpus", required_argument, nullptr, 'c'},    {"root", required_argument, nullptr, 'r'},
      {"read-only", no_argument, nullptr, 'o'},     {"help", no_argument, nullptr, 'h'},
      {"no-pin", no_argument, nullptr, 'p'},
      {nullptr, 0, nullptr, 0},
  };
  auto number = [](const char* name, const char* text, long low, long high, long& out) {
    char* end = nullptr;
    out = strtol(text, &end, 10);
    if (end == text || *end != '\0' || out < low || out > high) {
      fprintf(stderr, "minivk: --%s=%s: a number from %ld to %ld\n", name, text, low, high);
      return false;
    }
    return true;
  };
  int opt;
  while ((opt = getopt_long(argc, argv, "+", long_options, nullptr)) != -1) {
    switch (opt) {
      case 'b': backend = optarg; break;
      case 'm':
        if (!number("mem", optarg, 16, 65536, mem_mib)) return 2;
        break;
      case 'c': {
        long cpus;
        if (!number("cpus", optarg, 1, 64, cpus)) return 2;
        options.cpus = static_cast<int>(cpus);
        break;
      }
      case 'r': {
        struct stat st;
        if (stat(optarg, &st) != 0 || !S_ISDIR(st.st_mode)) {
          fprintf(stderr, "minivk: --root=%s: not a directory\n", optarg);
          return 2;
        }
        options.root = optarg;
        break;
      }
      case 'o': options.read_only = true; break;
      case 'p': options.pin = false; break;
      case 't': options.trace = true; break;
      case 's': options.stats = true; break;
      case 'h': Usage(stdout); return 0;
      default: Usage(stderr); return 2;
    }
  }
  if (optind >= argc) {
    Usage(stderr);
    return 2;
  }
  if (!backend.empty()) {
    const char* why = nullptr;
    if (vkrt_backend_available(backend.c_str(), &why) != 0) {
      fprintf(stderr, "minivk: --backend=%s: %s\n", backend.c_str(), why ? why : "unknown");
      return 2;
    }
    options.backend_type = backend == "ptrace"    ? VKRT_TYPE_PTRACE
                           : backend == "seccomp" ? VKRT_TYPE_SECCOMP
                                                  : VKRT_TYPE_KVM;
  }
  std::vector<std::string> guest_argv(argv + optind, argv + argc);
  std::vector<std::string> guest_envp;
  for (char** e = environ; *e != nullptr; ++e) guest_envp.emplace_back(*e);

  // A guest writing to a closed pipe gets SIGPIPE from minivk, not minivk itself; the guest
  // applies its own umask.
  signal(SIGPIPE, SIG_IGN);
  umask(0);

  std::string error;
  minivk::PhysMem mem;
  if (!mem.Init(static_cast<size_t>(mem_mib) << 20, error)) {
    fprintf(stderr, "minivk: %s\n", error.c_str());
    return 1;
  }
  int status;
  {
    minivk::Kernel kernel(mem, options);
    if (!kernel.Start(guest_argv[0], guest_argv, guest_envp, error)) {
      fprintf(stderr, "minivk: %s\n", error.c_str());
      return 127;
    }
    status = kernel.Run(error);
    if (options.stats) {
      const auto& s = kernel.stats();
      fprintf(stderr,
              "minivk: %lu system calls, %lu faults, %lu interrupts, %lu signals, %lu forks, "
              "%lu execs, %lu switches; %.3f s in RUN, %.3f s in the kernel\n",
              static_cast<unsigned long>(s.syscalls), static_cast<unsigned long>(s.faults),
              static_cast<unsigned long>(s.interrupts), static_cast<unsigned long>(s.signals),
              static_cast<unsigned long>(s.forks), static_cast<unsigned long>(s.execs),
              static_cast<unsigned long>(s.context_switches), s.run_seconds, s.kernel_seconds);
    }
  }
  if (status < 0) {
    fprintf(stderr, "minivk: %s\n", error.c_str());
    return 1;
  }
  return status;
}
