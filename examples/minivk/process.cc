#include "process.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <termios.h>
#include <time.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>

namespace minivk {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kRegionStart = 0x10000;
constexpr uint64_t kUserTop = 0x7FFFFFE00000;
constexpr uint64_t kStackTop = 0x7FFFFF000000;
constexpr size_t kStackPages = 64;

uint64_t PageUp(uint64_t v) { return (v + kPage - 1) & ~(kPage - 1); }

}  // namespace

bool GovernWithTables(void* id, const PhysMem& mem, const PageTable& pt, std::string& error) {
  const uint64_t len = kUserTop - kRegionStart;
  if (vmspace_mmap(id, reinterpret_cast<void*>(kRegionStart), len,
                   PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED | MAP_VPAGETABLE,
                   mem.fd(), static_cast<off_t>(kRegionStart)) == MAP_FAILED ||
      vmspace_mcontrol(id, reinterpret_cast<void*>(kRegionStart), len, MADV_SETMAP,
                       static_cast<off_t>(pt.root())) != 0) {
    error = std::string("setting up the guest's address space: ") + vkrt_last_error();
    return false;
  }
  return true;
}

Process::~Process() {
  if (created_) vmspace_destroy(&id_);
  for (size_t i = 3; i < fds_.size(); ++i) {
    if (fds_[i] >= 0) close(fds_[i]);
  }
}

bool Process::Start(int type, const std::string& path, const std::vector<std::string>& argv,
                    const std::vector<std::string>& envp, std::string& error) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    error = path + ": " + strerror(errno);
    return false;
  }
  struct stat st;
  std::vector<unsigned char> file;
  if (fstat(fd, &st) == 0) file.resize(static_cast<size_t>(st.st_size));
  const bool read_ok = !file.empty() && pread(fd, file.data(), file.size(), 0) ==
                                            static_cast<ssize_t>(file.size());
  close(fd);
  if (!read_ok) {
    error = path + ": could not read it";
    return false;
  }
  ElfImage image;
  if (!ParseElf(file.data(), file.size(), image, error)) {
    error = path + ": " + error;
    return false;
  }
  if (!pt_.Init()) {
    error = "out of guest memory";
    return false;
  }
  const uint64_t bias = image.pie ? 0x555555554000 : 0;
  LoadedProgram loaded;
  if (!LoadProgram(mem_, pt_, file.data(), file.size(), image, bias, argv, envp, kStackTop,
                   kStackPages, loaded, error)) {
    return false;
  }
  if (vmspace_create(&id_, type, nullptr) != 0) {
    error = std::string("vmspace_create: ") + vkrt_last_error();
    return false;
  }
  created_ = true;
  if (!GovernWithTables(&id_, mem_, pt_, error)) return false;
  tf_.tf_rip = static_cast<int64_t>(loaded.entry);
  tf_.tf_rsp = static_cast<int64_t>(loaded.rsp);
  tf_.tf_rflags = 0x202;
  brk_start_ = brk_ = loaded.brk;
  return true;
}

int Process::Run(std::string& error) {
  while (!exited_) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const int rc = vmspace_ctl(&id_, VMSPACE_CTL_RUN, &tf_, &vf_);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    stats_.run_seconds += (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (rc != 0) {
      error = std::string("vmspace_ctl: ") + vkrt_last_error();
      return -1;
    }
    switch (tf_.tf_trapno) {
      case T_FAST_SYSCALL: {
        ++stats_.syscalls;
        const int64_t nr = tf_.tf_rax;
        const int64_t result = Syscall(tf_);
        if (trace_) {
          fprintf(stderr, "minivk: syscall %ld(%#lx, %#lx, %#lx, %#lx, %#lx, %#lx) = %ld%s\n",
                  static_cast<long>(nr), static_cast<long>(tf_.tf_rdi),
                  static_cast<long>(tf_.tf_rsi), static_cast<long>(tf_.tf_rdx),
                  static_cast<long>(tf_.tf_r10), static_cast<long>(tf_.tf_r8),
                  static_cast<long>(tf_.tf_r9), static_cast<long>(result),
                  result == -ENOSYS ? " (not implemented)" : "");
        }
        tf_.tf_rax = result;
        break;
      }
      case 0:
        ++stats_.interrupts;
        break;  // interrupted: go on
      default: {
        ++stats_.other;
        char what[160];
        snprintf(what, sizeof(what), "guest trap %ld at %#lx (address %#lx, error %#lx)",
                 static_cast<long>(tf_.tf_trapno), static_cast<long>(tf_.tf_rip),
                 static_cast<long>(tf_.tf_addr), static_cast<long>(tf_.tf_err));
        error = what;
        return -1;
      }
    }
  }
  return status_;
}

bool Process::MapFresh(uint64_t start, uint64_t end, int prot) {
  for (uint64_t va = start; va < end; va += kPage) {
    if (pt_.Lookup(va) & VPTE_V) continue;
    const uint64_t frame = mem_.Alloc();
    if (frame == 0 || !pt_.Map(va, frame, prot)) return false;
  }
  return true;
}

int64_t Process::Brk(uint64_t want) {
  if (want < brk_start_) return static_cast<int64_t>(brk_);
  if (want > brk_ && !MapFresh(PageUp(brk_), PageUp(want), PROT_READ | PROT_WRITE)) {
    return static_cast<int64_t>(brk_);
  }
  brk_ = want;
  return static_cast<int64_t>(brk_);
}

int64_t Process::Mmap(uint64_t addr, uint64_t len, int prot, int flags, int fd) {
  if (!(flags & MAP_ANONYMOUS) || fd != -1) return -ENODEV;  // files: issue 8's next steps
  len = PageUp(len);
  if (len == 0) return -EINVAL;
  uint64_t at = addr;
  if (!(flags & MAP_FIXED)) {
    mmap_next_ -= len;
    at = mmap_next_;
  }
  if (!MapFresh(at, at + len, prot == PROT_NONE ? PROT_READ : prot)) return -ENOMEM;
  return static_cast<int64_t>(at);
}

int64_t Process::Munmap(uint64_t addr, uint64_t len) {
  for (uint64_t va = addr; va < addr + PageUp(len); va += kPage) {
    const vpte_t old = pt_.Unmap(va);
    if (old & VPTE_V) mem_.Unref(old & VPTE_FRAME);
  }
  // The runtime's cached translations of the range go too.
  vmspace_mcontrol(&id_, reinterpret_cast<void*>(addr), PageUp(len), MADV_INVAL, 0);
  return 0;
}

int64_t Process::Write(int fd, uint64_t buf, uint64_t len) {
  const int host = HostFd(fd);
  if (host < 0) return -EBADF;
  std::vector<char> bytes(std::min<uint64_t>(len, 1 << 20));
  if (!ReadGuest(mem_, pt_, buf, bytes.data(), bytes.size())) return -EFAULT;
  const ssize_t n = write(host, bytes.data(), bytes.size());
  return n < 0 ? -errno : n;
}

int64_t Process::Read(int fd, uint64_t buf, uint64_t len) {
  const int host = HostFd(fd);
  if (host < 0) return -EBADF;
  std::vector<char> bytes(std::min<uint64_t>(len, 1 << 20));
  const ssize_t n = read(host, bytes.data(), bytes.size());
  if (n < 0) return -errno;
  if (!WriteGuest(mem_, pt_, buf, bytes.data(), static_cast<size_t>(n))) return -EFAULT;
  return n;
}

bool Process::GuestString(uint64_t va, std::string& out) {
  out.clear();
  for (;;) {
    char c;
    if (!ReadGuest(mem_, pt_, va++, &c, 1)) return false;
    if (c == '\0') return true;
    if (out.size() >= 4096) return false;
    out.push_back(c);
  }
}

// Gives host descriptor `host` a guest number: the lowest free one (at < 0), or `at`.
int64_t Process::InstallFd(int host, int at) {
  if (at >= 0) {
    if (static_cast<size_t>(at) >= fds_.size()) fds_.resize(static_cast<size_t>(at) + 1, -1);
    if (fds_[at] > 2) close(fds_[at]);
    fds_[at] = host;
    return at;
  }
  for (size_t i = 0; i < fds_.size(); ++i) {
    if (fds_[i] < 0) {
      fds_[i] = host;
      return static_cast<int64_t>(i);
    }
  }
  fds_.push_back(host);
  return static_cast<int64_t>(fds_.size() - 1);
}

int64_t Process::Openat(int dirfd, uint64_t path, int flags, int mode) {
  std::string name;
  if (!GuestString(path, name)) return -EFAULT;
  const int host_dir = dirfd == AT_FDCWD ? AT_FDCWD : HostFd(dirfd);
  if (host_dir == -1 && dirfd != AT_FDCWD) return -EBADF;
  const int host = openat(host_dir, name.c_str(), flags | O_CLOEXEC, mode);
  if (host < 0) return -errno;
  return InstallFd(host, -1);
}

int64_t Process::Dup(int fd, int to, bool exact) {
  const int host = HostFd(fd);
  if (host < 0) return -EBADF;
  if (exact && to == fd) return to;
  const int copy = fcntl(host, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return -errno;
  return InstallFd(copy, exact ? to : -1);
}

int64_t Process::Getdents64(int fd, uint64_t buf, uint64_t len) {
  const int host = HostFd(fd);
  if (host < 0) return -EBADF;
  std::vector<char> bytes(std::min<uint64_t>(len, 1 << 16));
  const long n = syscall(SYS_getdents64, host, bytes.data(), bytes.size());
  if (n < 0) return -errno;
  return WriteGuest(mem_, pt_, buf, bytes.data(), static_cast<size_t>(n)) ? n : -EFAULT;
}

int64_t Process::Ioctl(int fd, uint64_t request, uint64_t arg) {
  const int host = HostFd(fd);
  if (host < 0) return -EBADF;
  // Terminal queries only, passed to the host descriptor.
  if (request == TCGETS) {
    struct termios t;
    if (ioctl(host, TCGETS, &t) != 0) return -errno;
    return WriteGuest(mem_, pt_, arg, &t, sizeof(t)) ? 0 : -EFAULT;
  }
  if (request == TIOCGWINSZ) {
    struct winsize w;
    if (ioctl(host, TIOCGWINSZ, &w) != 0) return -errno;
    return WriteGuest(mem_, pt_, arg, &w, sizeof(w)) ? 0 : -EFAULT;
  }
  return -ENOTTY;
}

int64_t Process::Close(int fd) {
  const int host = HostFd(fd);
  if (host < 0) return -EBADF;
  fds_[fd] = -1;
  if (fd > 2) close(host);  // minivk's own standard descriptors stay open
  return 0;
}

int64_t Process::Fstatat(int dirfd, uint64_t path, uint64_t statbuf, int flags) {
  std::string name;
  if (path != 0 && !GuestString(path, name)) return -EFAULT;
  const int host_dir = dirfd == AT_FDCWD ? AT_FDCWD : HostFd(dirfd);
  if (host_dir == -1 && dirfd != AT_FDCWD) return -EBADF;
  struct stat st;
  if (fstatat(host_dir, name.c_str(), &st, flags) != 0) return -errno;
  return WriteGuest(mem_, pt_, statbuf, &st, sizeof(st)) ? 0 : -EFAULT;
}

int64_t Process::Syscall(struct trapframe& tf) {
  const uint64_t a0 = static_cast<uint64_t>(tf.tf_rdi), a1 = static_cast<uint64_t>(tf.tf_rsi),
                 a2 = static_cast<uint64_t>(tf.tf_rdx), a3 = static_cast<uint64_t>(tf.tf_r10),
                 a4 = static_cast<uint64_t>(tf.tf_r8);
  switch (tf.tf_rax) {
    case SYS_write:
      return Write(static_cast<int>(a0), a1, a2);
    case SYS_writev: {
      int64_t total = 0;
      for (uint64_t i = 0; i < a2; ++i) {
        uint64_t iov[2];
        if (!ReadGuest(mem_, pt_, a1 + 16 * i, iov, sizeof(iov))) return -EFAULT;
        const int64_t n = Write(static_cast<int>(a0), iov[0], iov[1]);
        if (n < 0) return total > 0 ? total : n;
        total += n;
      }
      return total;
    }
    case SYS_read:
      return Read(static_cast<int>(a0), a1, a2);
    case SYS_open:
      return Openat(AT_FDCWD, a0, static_cast<int>(a1), static_cast<int>(a2));
    case SYS_openat:
      return Openat(static_cast<int>(a0), a1, static_cast<int>(a2), static_cast<int>(a3));
    case SYS_close:
      return Close(static_cast<int>(a0));
    case SYS_fstat:
      return Fstatat(static_cast<int>(a0), 0, a1, AT_EMPTY_PATH);
    case SYS_stat:
      return Fstatat(AT_FDCWD, a0, a1, 0);
    case SYS_lstat:
      return Fstatat(AT_FDCWD, a0, a1, AT_SYMLINK_NOFOLLOW);
    case SYS_newfstatat:
      return Fstatat(static_cast<int>(a0), a1, a2, static_cast<int>(a3));
    case SYS_lseek: {
      const int host = HostFd(static_cast<int>(a0));
      if (host < 0) return -EBADF;
      const off_t r = lseek(host, static_cast<off_t>(a1), static_cast<int>(a2));
      return r < 0 ? -errno : r;
    }
    case SYS_getdents64:
      return Getdents64(static_cast<int>(a0), a1, a2);
    case SYS_ioctl:
      return Ioctl(static_cast<int>(a0), a1, a2);
    case SYS_dup:
      return Dup(static_cast<int>(a0), -1, false);
    case SYS_dup2:
    case SYS_dup3:
      return Dup(static_cast<int>(a0), static_cast<int>(a1), true);
    case SYS_fcntl: {
      const int host = HostFd(static_cast<int>(a0));
      if (host < 0) return -EBADF;
      if (a1 == F_DUPFD || a1 == F_DUPFD_CLOEXEC) return Dup(static_cast<int>(a0), -1, false);
      if (a1 == F_GETFD || a1 == F_SETFD) return 0;  // close-on-exec: no exec yet
      if (a1 == F_GETFL) {
        const int r = fcntl(host, F_GETFL);
        return r < 0 ? -errno : r;
      }
      return -EINVAL;
    }
    case SYS_uname: {
      struct utsname u;
      if (uname(&u) != 0) return -errno;
      strncpy(u.nodename, "minivk", sizeof(u.nodename));
      return WriteGuest(mem_, pt_, a0, &u, sizeof(u)) ? 0 : -EFAULT;
    }
    case SYS_clock_gettime: {
      struct timespec ts;
      if (clock_gettime(static_cast<clockid_t>(a0), &ts) != 0) return -errno;
      return WriteGuest(mem_, pt_, a1, &ts, sizeof(ts)) ? 0 : -EFAULT;
    }
    case SYS_time: {
      const int64_t now = time(nullptr);
      return a0 == 0 || WriteGuest(mem_, pt_, a0, &now, sizeof(now)) ? now : -EFAULT;
    }
    case SYS_gettimeofday: {
      struct timeval tv;
      gettimeofday(&tv, nullptr);
      return a0 == 0 || WriteGuest(mem_, pt_, a0, &tv, sizeof(tv)) ? 0 : -EFAULT;
    }
    case SYS_brk:
      return Brk(a0);
    case SYS_mmap:
      return Mmap(a0, a1, static_cast<int>(a2), static_cast<int>(a3), static_cast<int>(a4));
    case SYS_munmap:
      return Munmap(a0, a1);
    case SYS_mprotect:
      return 0;  // protections of the program's own pages: kept as loaded for now
    case SYS_arch_prctl:
      if (a0 == 0x1002) {  // ARCH_SET_FS
        vf_.vx_tls.info[0].base = reinterpret_cast<void*>(a1);
        return 0;
      }
      return -EINVAL;
    case SYS_set_tid_address:
    case SYS_getpid:
    case SYS_gettid:
      return 1;
    case SYS_getppid:
      return 0;
    case SYS_getuid:
    case SYS_geteuid:
    case SYS_getgid:
    case SYS_getegid:
      return 0;
    case SYS_set_robust_list:
      return 0;
    case SYS_getrandom: {
      std::vector<unsigned char> bytes(std::min<uint64_t>(a1, 256));
      if (getrandom(bytes.data(), bytes.size(), 0) < 0) return -errno;
      return WriteGuest(mem_, pt_, a0, bytes.data(), bytes.size())
                 ? static_cast<int64_t>(bytes.size())
                 : -EFAULT;
    }
    case SYS_exit:
    case SYS_exit_group:
      exited_ = true;
      status_ = static_cast<int>(a0 & 0xFF);
      return 0;
    default:
      return -ENOSYS;
  }
}

}  // namespace minivk
