// minivk: one guest process and the first of its system calls — enough for a static program
// that writes and exits (busybox echo). The full set (files, fork/exec, pipes, signals,
// fibers) is issue 8's remaining work.
#ifndef VKRT_EXAMPLES_MINIVK_PROCESS_H_
#define VKRT_EXAMPLES_MINIVK_PROCESS_H_

#include <stdint.h>
#include <vkrt/vmspace.h>

#include <string>
#include <vector>

#include "elf.h"
#include "loader.h"
#include "pmap.h"

namespace minivk {

// Makes vmspace `id` run through `pt`: one MAP_VPAGETABLE region over `mem` covering the user
// range from 0x10000 (object offset = start, so the walk index is the virtual page number),
// its root set with MADV_SETMAP. False with `error` naming what failed.
bool GovernWithTables(void* id, const PhysMem& mem, const PageTable& pt, std::string& error);

class Process {
 public:
  explicit Process(PhysMem& mem) : mem_(mem), pt_(mem) {}
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process();

  // Creates the vmspace (backend `type`), loads `path` with `argv`/`envp`. False + error.
  bool Start(int type, const std::string& path, const std::vector<std::string>& argv,
             const std::vector<std::string>& envp, std::string& error);
  // Runs until the program exits; its exit status, or -1 with `error` (a fault, a host error).
  int Run(std::string& error);

  // --trace: one line per system call (number, arguments, result) on stderr.
  void set_trace(bool on) { trace_ = on; }
  // --stats: how many exits of each kind, and the time spent in RUN.
  struct Stats {
    uint64_t syscalls = 0, interrupts = 0, other = 0;
    double run_seconds = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  // One system call: its result (-errno on failure). Sets exited_ for exit/exit_group.
  int64_t Syscall(struct trapframe& tf);
  int64_t Brk(uint64_t want);
  int64_t Mmap(uint64_t addr, uint64_t len, int prot, int flags, int fd);
  int64_t Munmap(uint64_t addr, uint64_t len);
  int64_t Write(int fd, uint64_t buf, uint64_t len);
  int64_t Read(int fd, uint64_t buf, uint64_t len);
  int64_t Openat(int dirfd, uint64_t path, int flags, int mode);
  int64_t Close(int fd);
  int64_t Fstatat(int dirfd, uint64_t path, uint64_t statbuf, int flags);
  int64_t Getdents64(int fd, uint64_t buf, uint64_t len);
  int64_t Ioctl(int fd, uint64_t request, uint64_t arg);
  int64_t Dup(int fd, int to, bool exact);
  int64_t InstallFd(int host, int at);
  bool GuestString(uint64_t va, std::string& out);
  // The host descriptor behind guest descriptor `fd`, or -1.
  int HostFd(int fd) const {
    return fd >= 0 && static_cast<size_t>(fd) < fds_.size() ? fds_[fd] : -1;
  }
  bool MapFresh(uint64_t start, uint64_t end, int prot);

  PhysMem& mem_;
  PageTable pt_;
  char id_ = 0;  // its address is the vmspace id
  bool created_ = false;
  struct trapframe tf_ = {};
  struct vextframe vf_ = {};
  uint64_t brk_start_ = 0, brk_ = 0;
  uint64_t mmap_next_ = 0x7F0000000000;  // anonymous mmaps grow down from here
  bool exited_ = false;
  int status_ = 0;
  bool trace_ = false;
  std::vector<int> fds_ = {0, 1, 2};  // guest descriptor -> host descriptor (-1: free)
  Stats stats_;
};

}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_PROCESS_H_
