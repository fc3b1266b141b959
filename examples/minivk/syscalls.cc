// minivk's system calls: the Linux x86-64 calls busybox applets and `busybox sh` need. Files
// pass through to host descriptors (paths resolved under --root, refused with EROFS under
// --read-only); memory goes to AddressSpace; processes and signals to kernel.cc. Anything
// else answers ENOSYS (--trace says so).
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>

#include "internal.h"
#include "kernel.h"

namespace minivk {
namespace {

constexpr size_t kMaxIo = 1 << 20;  // bytes per read/write call (Linux caps at ~2 GiB)
constexpr size_t kMaxArgs = 4096;

bool IsAbsolute(const std::string& s) { return !s.empty() && s[0] == '/'; }

// What --read-only answers to writing `rel` (under `dir`), as a read-only mount does (Linux's
// sb_permission): a file, directory or symbolic link is refused (-EROFS), as is a name that
// `create` would make; a FIFO, socket or device stays writable (0); a name that is not there
// gets the lookup's error.
int64_t ReadOnlyWriteCheck(int dir, const char* rel, int at_flags, bool create) {
  struct stat st;
  if (fstatat(dir, rel, &st, at_flags) != 0) {
    return create && errno == ENOENT ? -EROFS : -errno;
  }
  const bool kept = S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode);
  return kept ? -EROFS : 0;
}

// CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID, or a CPU clock of a process or thread
// by pid (negative: Linux's ~pid << 3 | kind, as clock_getcpuclockid makes).
bool IsCpuClock(clockid_t clock) {
  return clock == CLOCK_PROCESS_CPUTIME_ID || clock == CLOCK_THREAD_CPUTIME_ID || clock < 0;
}

// The error a lookup of the directory that holds `rel` (under `dir`) gives, 0 if it is
// there: Linux answers it before a read-only mount's EROFS.
int64_t ParentLookup(int dir, std::string rel) {
  while (rel.size() > 1 && rel.back() == '/') rel.pop_back();
  const size_t slash = rel.find_last_of('/');
  if (slash == std::string::npos) return 0;
  const std::string parent = slash == 0 ? "/" : rel.substr(0, slash);
  struct stat st;
  if (fstatat(dir, parent.c_str(), &st, 0) != 0) return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

// What --read-only answers to making the name `rel` (mkdir, mknod, symlink, link's new
// name), as a read-only mount does: EEXIST if it is there (so `mkdir -p` of a directory that
// exists succeeds), the lookup's error if its directory is not, else EROFS.
int64_t ReadOnlyCreateCheck(int dir, const std::string& rel) {
  struct stat st;
  if (fstatat(dir, rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return -EEXIST;
  const int64_t parent = ParentLookup(dir, rel);
  return parent != 0 ? parent : -EROFS;
}

// What --read-only answers to changing the file `rel` names (chmod, chown, utimes): the
// lookup's error if there is none, else EROFS.
int64_t ReadOnlyChangeCheck(int dir, const std::string& rel, int at_flags) {
  struct stat st;
  if (fstatat(dir, rel.c_str(), &st, at_flags) != 0) return -errno;
  return -EROFS;
}

}  // namespace

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::shared_ptr<Program> Kernel::GetProgram(int cwd, const std::string& path, int& err,
                                            std::string& error, std::string* interpreter,
                                            bool as_interpreter) {
  std::string rel;
  const int dir = HostDir(cwd, path, rel);
  auto fail = [&](int e, const std::string& why) -> std::shared_ptr<Program> {
    error = path + ": " + why;
    err = e;
    return nullptr;
  };
  const int fd = openat(dir, rel.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !(st.st_mode & 0111)) {
    close(fd);
    return fail(EACCES, "not an executable file");
  }
  const ProgramKey key{st.st_dev, st.st_ino, st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec,
                       st.st_size, as_interpreter};
  if (auto it = programs_.find(key); it != programs_.end()) {
    close(fd);
    return it->second;
  }
  std::vector<unsigned char> file(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < file.size()) {
    const ssize_t n = pread(fd, file.data() + got, file.size() - got, static_cast<off_t>(got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  close(fd);
  if (got != file.size() || file.empty()) return fail(ENOEXEC, "could not read it");
  ElfImage image;
  if (!ParseElf(file.data(), file.size(), image, error)) {
    if (interpreter != nullptr && file.size() > 2 && file[0] == '#' && file[1] == '!') {
      const auto eol = std::find(file.begin(), file.end(), '\n');
      interpreter->assign(file.begin() + 2, eol);
    }
    return fail(ENOEXEC, error);
  }
  std::shared_ptr<Program> interp;
  if (as_interpreter) image.interpreter.clear();  // as Linux: an interpreter's own is ignored
  if (!image.interpreter.empty()) {
    // A missing interpreter is ENOENT, as on Linux.
    std::string why;
    interp = GetProgram(cwd, image.interpreter, err, why, nullptr, true);
    if (!interp) {
      error = path + ": its interpreter " + why;
      return nullptr;
    }
  }
  auto program = std::make_shared<Program>(mem_);
  if (!program->Build(file, image, as_interpreter ? kInterpBias : kPieBias, std::move(interp),
                      error)) {
    return fail(ENOMEM, error);
  }
  if (programs_.size() >= 16) programs_.clear();  // a small cache: start over when full
  programs_[key] = program;
  return program;
}

std::shared_ptr<File> Kernel::FileOf(Process& p, int64_t fd) {
  if (fd < 0 || static_cast<size_t>(fd) >= p.fds.size()) return nullptr;
  return p.fds[static_cast<size_t>(fd)].file;
}

int64_t Kernel::Install(Process& p, std::shared_ptr<File> file, bool cloexec, int64_t at) {
  // at >= 0: exactly there (replacing); at < 0: the lowest free number >= -at - 1.
  size_t slot;
  if (at >= 0) {
    if (at >= 65536) return -EBADF;
    slot = static_cast<size_t>(at);
    if (slot >= p.fds.size()) p.fds.resize(slot + 1);
  } else {
    slot = static_cast<size_t>(-at - 1);
    while (slot < p.fds.size() && p.fds[slot].file) ++slot;
    if (slot >= 65536) return -EMFILE;
    if (slot >= p.fds.size()) p.fds.resize(slot + 1);
  }
  p.fds[slot] = FdEntry{std::move(file), cloexec};
  return static_cast<int64_t>(slot);
}

bool Kernel::Resolve(Process& p, int64_t dirfd, uint64_t path, int& host_dir, std::string& rel,
                     int64_t* err, bool empty_ok) {
  std::string s;
  if (!p.as->CopyInString(path, s, 4096)) {
    *err = -EFAULT;
    return false;
  }
  if (s.empty() && !empty_ok) {
    *err = -ENOENT;
    return false;
  }
  if (s == "/proc/self/exe") s = p.exe;
  if (IsAbsolute(s)) {
    host_dir = HostDir(p.cwd, s, rel);
    return true;
  }
  rel = s;
  if (dirfd == AT_FDCWD) {
    host_dir = p.cwd;
    return true;
  }
  auto f = FileOf(p, dirfd);
  if (!f) {
    *err = -EBADF;
    return false;
  }
  host_dir = f->host;
  return true;
}

int64_t Kernel::ReadFd(Process& p, int64_t fd, uint64_t buf, uint64_t len, int64_t offset) {
  auto f = FileOf(p, fd);
  if (!f) return -EBADF;
  len = std::min<uint64_t>(len, kMaxIo);
  if (len == 0) return 0;
  std::vector<struct iovec>& iov = p.iov;  // reused: no allocation per call
  for (;;) {
    if (f->may_block && !f->host_nonblock) {
      struct pollfd pf = {f->host, POLLIN, 0};
      if (poll(&pf, 1, 0) == 0) {
        if (f->guest_nonblock) return -EAGAIN;
        if (SignalPending(p)) return kRestart;
        BlockOn(p, f->host, POLLIN);
        continue;
      }
    }
    if (p.as->Iov(buf, len, true, iov) == 0) return -EFAULT;
    const ssize_t n = offset >= 0 ? preadv(f->host, iov.data(), static_cast<int>(iov.size()), offset)
                                  : readv(f->host, iov.data(), static_cast<int>(iov.size()));
    if (n >= 0) return n;
    if (errno != EAGAIN || f->guest_nonblock) return -errno;
    if (SignalPending(p)) return kRestart;
    BlockOn(p, f->host, POLLIN);
  }
}

int64_t Kernel::WriteFd(Process& p, int64_t fd, uint64_t buf, uint64_t len, int64_t offset) {
  auto f = FileOf(p, fd);
  if (!f) return -EBADF;
  len = std::min<uint64_t>(len, kMaxIo);
  if (len == 0) return 0;
  std::vector<struct iovec>& iov = p.iov;  // reused: no allocation per call
  uint64_t done = 0;
  while (done < len) {
    if (f->may_block && !f->host_nonblock) {
      struct pollfd pf = {f->host, POLLOUT, 0};
      if (poll(&pf, 1, 0) == 0) {
        if (done > 0) return static_cast<int64_t>(done);
        if (f->guest_nonblock) return -EAGAIN;
        if (SignalPending(p)) return kRestart;
        BlockOn(p, f->host, POLLOUT);
        continue;
      }
    }
    if (p.as->Iov(buf + done, len - done, false, iov) == 0) {
      return done > 0 ? static_cast<int64_t>(done) : -EFAULT;
    }
    const ssize_t n =
        offset >= 0
            ? pwritev(f->host, iov.data(), static_cast<int>(iov.size()),
                      offset + static_cast<int64_t>(done))
            : writev(f->host, iov.data(), static_cast<int>(iov.size()));
    if (n > 0) {
      done += static_cast<uint64_t>(n);
      if (!f->host_nonblock) return static_cast<int64_t>(done);  // the host wrote what it could
      continue;
    }
    if (n < 0 && errno == EPIPE) {
      SendSignal(p, SIGPIPE, SenderInfo(kSiUser, p.pid));  // as Linux: from the writer itself
      return done > 0 ? static_cast<int64_t>(done) : -EPIPE;
    }
    if (n < 0 && errno != EAGAIN) return done > 0 ? static_cast<int64_t>(done) : -errno;
    // A full pipe: a blocking writer waits for room and writes the rest.
    if (f->guest_nonblock) return done > 0 ? static_cast<int64_t>(done) : -EAGAIN;
    if (SignalPending(p)) return done > 0 ? static_cast<int64_t>(done) : kRestart;
    BlockOn(p, f->host, POLLOUT);
  }
  return static_cast<int64_t>(done);
}

int64_t Kernel::Openat(Process& p, int64_t dirfd, uint64_t path, int flags, int mode) {
  int dir;
  std::string rel;
  int64_t err;
  if (!Resolve(p, dirfd, path, dir, rel, &err)) return err;
  // O_PATH opens nothing for reading or writing (the host ignores the other flags).
  const bool writes = (flags & O_PATH) == 0 &&
                      ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)));
  if (writes && options_.read_only) {
    // Refused as a read-only mount refuses, in Linux's order and without asking the host:
    // a name that exists under O_CREAT|O_EXCL is EEXIST, a symbolic link under O_NOFOLLOW
    // ELOOP, a directory EISDIR; then ReadOnlyWriteCheck.
    struct stat st;
    if (fstatat(dir, rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) return -EEXIST;
      if ((flags & O_NOFOLLOW) && S_ISLNK(st.st_mode)) return -ELOOP;
    }
    if (fstatat(dir, rel.c_str(), &st, 0) == 0 && S_ISDIR(st.st_mode)) return -EISDIR;
    const int64_t refused = ReadOnlyWriteCheck(dir, rel.c_str(), 0, flags & O_CREAT);
    if (refused != 0) return refused;
  }
  const mode_t create_mode = static_cast<mode_t>(mode) & ~p.umask & 07777;
  struct stat st;
  if ((flags & O_PATH) == 0 &&
      fstatat(dir, rel.c_str(), &st, (flags & O_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW : 0) == 0 &&
      S_ISFIFO(st.st_mode)) {
    return OpenFifo(p, dir, rel, flags, create_mode);
  }
  const int host = openat(dir, rel.c_str(), (flags | O_CLOEXEC) & ~O_NONBLOCK, create_mode);
  if (host < 0) return -errno;
  auto file = std::make_shared<File>();
  file->host = host;
  file->guest_nonblock = flags & O_NONBLOCK;
  file->may_block = fstat(host, &st) != 0 || MayBlock(st);
  if (file->may_block && S_ISFIFO(st.st_mode)) {
    // It became a FIFO after the look above: minivk's reads and writes must not block.
    file->host_nonblock = fcntl(host, F_SETFL, fcntl(host, F_GETFL) | O_NONBLOCK) == 0;
  }
  return Install(p, std::move(file), flags & O_CLOEXEC, -1);
}

int64_t Kernel::OpenFifo(Process& p, int dir, const std::string& rel, int flags,
                         mode_t create_mode) {
  // Linux's open of a FIFO waits for the other end (a reader for the first writer, a writer
  // for the first reader). Here the wait is the fiber's: the host descriptor is always
  // non-blocking, so that neither the open nor a read or write ever holds the vkernel thread
  // (the other end is usually another guest process, which needs that thread to run).
  const int access = flags & O_ACCMODE;
  const bool guest_nonblock = flags & O_NONBLOCK;
  int watch = -1;  // inotify of the FIFO's opens, while a writer waits for a reader
  auto done = [&](int64_t result) {
    if (watch >= 0) close(watch);
    return result;
  };
  int host;
  for (;;) {
    host = openat(dir, rel.c_str(), flags | O_CLOEXEC | O_NONBLOCK, create_mode);
    if (host >= 0) break;
    // ENXIO: a non-blocking writer found no reader. A blocking one waits for an open of the
    // FIFO (a reader's, from minivk's guests or from the host), trying again at least every
    // 20 ms (a host reader that blocks in open shows no event until it returns).
    if (errno != ENXIO || access != O_WRONLY || guest_nonblock) return done(-errno);
    if (watch < 0) {
      watch = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
      if (watch < 0) return done(-errno);
      char path[64];
      snprintf(path, sizeof(path), "/proc/self/fd/%d/", dir);
      if (inotify_add_watch(watch, (path + rel).c_str(), IN_OPEN) < 0) return done(-errno);
      continue;  // a reader that came before the watch shows no event: try again first
    }
    if (SignalPending(p)) return done(kRestart);
    p.waits.assign(1, pollfd{watch, POLLIN, 0});
    p.wait_deadline = MonotonicNs() + 20'000'000;
    Block(p);
    char events[4096];
    while (read(watch, events, sizeof(events)) > 0) {
    }
  }
  auto file = std::make_shared<File>();
  file->host = host;
  file->may_block = true;
  file->host_nonblock = true;
  file->guest_nonblock = guest_nonblock;
  // A blocking reader waits for a writer. The host says only when one wrote or came and went
  // (POLLIN, POLLHUP), so such an open returns then rather than at the writer's open: a
  // difference only to a reader that opens and then does something other than read.
  while (access == O_RDONLY && !guest_nonblock) {
    struct pollfd pf = {host, POLLIN, 0};
    if (poll(&pf, 1, 0) > 0) break;
    if (SignalPending(p)) return done(kRestart);  // `file` closes the descriptor
    BlockOn(p, host, POLLIN);
  }
  return done(Install(p, std::move(file), flags & O_CLOEXEC, -1));
}

int64_t Kernel::Pipe(Process& p, uint64_t fds, int flags) {
  if (flags & ~(O_CLOEXEC | O_NONBLOCK | O_DIRECT)) return -EINVAL;
  int host[2];
  if (pipe2(host, O_CLOEXEC | O_NONBLOCK) != 0) return -errno;
  int32_t guest[2];
  for (int i = 0; i < 2; ++i) {
    auto file = std::make_shared<File>();
    file->host = host[i];
    file->may_block = true;
    file->host_nonblock = true;
    file->guest_nonblock = flags & O_NONBLOCK;
    guest[i] = static_cast<int32_t>(Install(p, std::move(file), flags & O_CLOEXEC, -1));
  }
  if (!p.as->CopyOut(fds, guest, sizeof(guest))) {
    p.fds[static_cast<size_t>(guest[0])] = FdEntry{};
    p.fds[static_cast<size_t>(guest[1])] = FdEntry{};
    return -EFAULT;
  }
  return 0;
}

std::string Kernel::GuestCwd(const Process& p) const {
  char link[64], host[4096];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", p.cwd);
  const ssize_t n = readlink(link, host, sizeof(host) - 1);
  if (n <= 0) return "/";
  std::string path(host, static_cast<size_t>(n));
  return GuestPathOf(path) ? path : "/";  // outside the root: the guest sees its root
}

int Kernel::HostDir(int cwd, const std::string& path, std::string& rel) const {
  if (!IsAbsolute(path)) {
    rel = path;
    return cwd;
  }
  const size_t first = path.find_first_not_of('/');
  rel = first == std::string::npos ? "." : path.substr(first);
  return root_fd_;
}

bool Kernel::GuestPathOf(std::string& host_path) const {
  if (root_path_ == "/") return true;
  if (host_path.compare(0, root_path_.size(), root_path_) != 0 ||
      (host_path.size() != root_path_.size() && host_path[root_path_.size()] != '/')) {
    return false;
  }
  host_path = host_path.substr(root_path_.size());
  if (host_path.empty()) host_path = "/";
  return true;
}

std::string Kernel::AbsolutePath(const Process& p, const std::string& path) const {
  // As Linux's /proc/self/exe: the file's own path, symbolic links resolved (the host's
  // name for it, seen from the guests' root); failing that, the path made absolute.
  std::string rel;
  const int fd = openat(HostDir(p.cwd, path, rel), rel.c_str(), O_PATH | O_CLOEXEC);
  if (fd >= 0) {
    char link[64], host[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    const ssize_t n = readlink(link, host, sizeof(host) - 1);
    close(fd);
    std::string real(host, n > 0 ? static_cast<size_t>(n) : 0);
    if (n > 0 && GuestPathOf(real)) return real;
  }
  if (IsAbsolute(path)) return path;
  const std::string cwd = GuestCwd(p);
  return (cwd == "/" ? "" : cwd) + "/" + path;
}

int64_t Kernel::Getcwd(Process& p, uint64_t buf, uint64_t size) {
  const std::string path = GuestCwd(p);
  if (path.size() + 1 > size) return -ERANGE;
  return p.as->CopyOut(buf, path.c_str(), path.size() + 1)
             ? static_cast<int64_t>(path.size() + 1)
             : -EFAULT;
}

int64_t Kernel::Ioctl(Process& p, int64_t fd, uint64_t request, uint64_t arg) {
  auto f = FileOf(p, fd);
  if (!f) return -EBADF;
  switch (request) {
    case TCGETS: {
      struct termios t;
      if (ioctl(f->host, TCGETS, &t) != 0) return -errno;
      return p.as->CopyOut(arg, &t, sizeof(t)) ? 0 : -EFAULT;
    }
    case TCSETS:
    case TCSETSW:
    case TCSETSF: {
      struct termios t;
      if (!p.as->CopyIn(arg, &t, sizeof(t))) return -EFAULT;
      return ioctl(f->host, request, &t) != 0 ? -errno : 0;
    }
    case TIOCGWINSZ: {
      struct winsize w;
      if (ioctl(f->host, TIOCGWINSZ, &w) != 0) return -errno;
      return p.as->CopyOut(arg, &w, sizeof(w)) ? 0 : -EFAULT;
    }
    case TIOCGPGRP: {
      if (!isatty(f->host)) return -ENOTTY;
      const int32_t pgid = p.pgid;
      return p.as->CopyOut(arg, &pgid, sizeof(pgid)) ? 0 : -EFAULT;
    }
    case TIOCSPGRP:
      return isatty(f->host) ? 0 : -ENOTTY;
    case FIONREAD: {
      int n = 0;
      if (ioctl(f->host, FIONREAD, &n) != 0) return -errno;
      return p.as->CopyOut(arg, &n, sizeof(n)) ? 0 : -EFAULT;
    }
    case FIONBIO: {
      int on = 0;
      if (!p.as->CopyIn(arg, &on, sizeof(on))) return -EFAULT;
      f->guest_nonblock = on != 0;
      return 0;
    }
    case FIOCLEX:
    case FIONCLEX:
      p.fds[static_cast<size_t>(fd)].cloexec = request == FIOCLEX;
      return 0;
    default:
      return -ENOTTY;
  }
}

int64_t Kernel::Fcntl(Process& p, int64_t fd, int cmd, uint64_t arg) {
  auto f = FileOf(p, fd);
  if (!f) return -EBADF;
  FdEntry& entry = p.fds[static_cast<size_t>(fd)];
  switch (cmd) {
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
      if (arg >= 65536) return -EINVAL;
      return Install(p, f, cmd == F_DUPFD_CLOEXEC, -static_cast<int64_t>(arg) - 1);
    case F_GETFD:
      return entry.cloexec ? FD_CLOEXEC : 0;
    case F_SETFD:
      entry.cloexec = arg & FD_CLOEXEC;
      return 0;
    case F_GETFL: {
      const int flags = fcntl(f->host, F_GETFL);
      if (flags < 0) return -errno;
      return (flags & ~O_NONBLOCK) | (f->guest_nonblock ? O_NONBLOCK : 0);
    }
    case F_SETFL: {
      f->guest_nonblock = arg & O_NONBLOCK;
      const int keep = f->host_nonblock ? O_NONBLOCK : 0;
      return fcntl(f->host, F_SETFL, static_cast<int>((arg & O_APPEND) | keep)) != 0 ? -errno : 0;
    }
    case F_GETLK:
    case F_SETLK:
    case F_SETLKW:
    case F_OFD_GETLK:
    case F_OFD_SETLK:
    case F_OFD_SETLKW:
      return 0;  // one guest world: record locks always succeed
    default:
      return -EINVAL;
  }
}

int64_t Kernel::Poll(Process& p, uint64_t fds, uint64_t nfds, int64_t timeout_ms) {
  if (nfds > 4096) return -EINVAL;
  std::vector<struct pollfd> guest(nfds), host(nfds);
  if (nfds > 0 && !p.as->CopyIn(fds, guest.data(), nfds * sizeof(struct pollfd))) return -EFAULT;
  const int64_t deadline = timeout_ms < 0 ? -1 : MonotonicNs() + timeout_ms * 1000000;
  for (;;) {
    int ready = 0;
    for (size_t i = 0; i < nfds; ++i) {
      auto f = guest[i].fd < 0 ? nullptr : FileOf(p, guest[i].fd);
      host[i] = {f ? f->host : -1, guest[i].events, 0};
      guest[i].revents = 0;
      if (guest[i].fd >= 0 && !f) guest[i].revents = POLLNVAL;
    }
    if (nfds > 0 && poll(host.data(), nfds, 0) < 0) return -errno;
    for (size_t i = 0; i < nfds; ++i) {
      if (host[i].fd >= 0) guest[i].revents = host[i].revents;
      if (guest[i].revents != 0) ++ready;
    }
    if (ready > 0 || timeout_ms == 0 || (deadline >= 0 && MonotonicNs() >= deadline)) {
      if (nfds > 0 && !p.as->CopyOut(fds, guest.data(), nfds * sizeof(struct pollfd))) {
        return -EFAULT;
      }
      return ready;
    }
    if (SignalPending(p)) return -EINTR;
    p.waits.clear();
    for (const auto& h : host) {
      if (h.fd >= 0) p.waits.push_back(h);
    }
    p.wait_deadline = deadline;
    Block(p);
  }
}

int64_t Kernel::TimerCall(Process& p, uint64_t nr, const uint64_t* a) {
  const int64_t now = MonotonicNs();
  auto left = [&](const GuestTimer& t) { return t.deadline < 0 ? 0 : std::max<int64_t>(1, t.deadline - now); };
  struct Tv { int64_t sec, usec; };
  struct Ts { int64_t sec, nsec; };
  switch (nr) {
    case SYS_alarm: {
      // The seconds left of the old alarm, rounded as Linux rounds them (to nearest, at least 1).
      const int64_t old = left(p.itimer_real);
      const int64_t old_sec = old == 0 ? 0 : std::max<int64_t>(1, (old + 500000000) / 1000000000);
      const uint32_t secs = static_cast<uint32_t>(a[0]);
      ArmTimer(p.itimer_real, secs == 0 ? -1 : now + int64_t{secs} * 1000000000, 0);
      return old_sec;
    }
    case SYS_setitimer:
    case SYS_getitimer: {
      const int which = static_cast<int>(a[0]);
      if (which != ITIMER_REAL && which != ITIMER_VIRTUAL && which != ITIMER_PROF) {
        return -EINVAL;
      }
      // ITIMER_REAL counts CLOCK_MONOTONIC; the CPU-time timers the process's own CPU time.
      GuestTimer& t = which == ITIMER_REAL      ? p.itimer_real
                      : which == ITIMER_VIRTUAL ? p.itimer_virtual
                                                : p.itimer_prof;
      const int64_t used = which == ITIMER_REAL      ? now
                           : which == ITIMER_VIRTUAL ? p.utime_ns
                                                     : p.utime_ns + p.stime_ns;
      const uint64_t new_at = nr == SYS_setitimer ? a[1] : 0;
      const uint64_t old_at = nr == SYS_setitimer ? a[2] : a[1];
      Tv set[2] = {};  // it_interval, it_value
      if (new_at != 0) {
        if (!p.as->CopyIn(new_at, set, sizeof(set))) return -EFAULT;
        for (const Tv& tv : set) {
          if (tv.sec < 0 || tv.usec < 0 || tv.usec >= 1000000) return -EINVAL;
        }
      }
      if (old_at != 0) {
        const int64_t l = t.deadline < 0 ? 0 : std::max<int64_t>(1, t.deadline - used);
        const int64_t i = t.interval;
        // Rounded up to microseconds, as Linux does (a running timer never reads 0).
        const Tv old[2] = {{i / 1000000000, (i % 1000000000 + 999) / 1000},
                           {l / 1000000000, (l % 1000000000 + 999) / 1000}};
        if (!p.as->CopyOut(old_at, old, sizeof(old))) return -EFAULT;
      }
      if (nr == SYS_setitimer) {
        const int64_t value = set[1].sec * 1000000000 + set[1].usec * 1000;
        const int64_t interval = set[0].sec * 1000000000 + set[0].usec * 1000;
        if (which == ITIMER_REAL) {
          ArmTimer(t, value == 0 ? -1 : now + value, interval);
        } else {  // looked at around each RUN (RunGuest)
          t.deadline = value == 0 ? -1 : used + value;
          t.interval = value == 0 ? 0 : interval;
        }
      }
      return 0;
    }
    case SYS_timer_create: {
      const int clock = static_cast<int>(a[0]);
      if (clock != CLOCK_REALTIME && clock != CLOCK_MONOTONIC && clock != CLOCK_BOOTTIME) {
        return -EINVAL;  // CPU-time and alarm clocks: not in minivk
      }
      int signo = SIGALRM;
      bool has_value = false;
      uint64_t value = 0;
      if (a[1] != 0) {
        struct { uint64_t value; int32_t signo, notify, tid; } ev;  // struct sigevent's head
        if (!p.as->CopyIn(a[1], &ev, sizeof(ev))) return -EFAULT;
        has_value = true;
        value = ev.value;
        if (ev.notify == SIGEV_NONE) {
          signo = 0;
        } else if (ev.notify == SIGEV_SIGNAL || ev.notify == SIGEV_THREAD_ID) {
          if (ev.signo < 1 || ev.signo > 64) return -EINVAL;
          signo = ev.signo;
        } else {
          return -EINVAL;
        }
      }
      size_t id = 0;
      while (id < p.timers.size() && p.timers[id].used) ++id;
      if (id >= 1024) return -EAGAIN;
      const int32_t out = static_cast<int32_t>(id);
      if (!p.as->CopyOut(a[2], &out, sizeof(out))) return -EFAULT;
      if (id == p.timers.size()) p.timers.emplace_back();
      p.timers[id] = GuestTimer{true, signo, clock, -1, 0};
      p.timers[id].value = has_value ? value : id;  // without a sigevent, si_value is the id
      return 0;
    }
    default: {  // timer_settime, timer_gettime, timer_getoverrun, timer_delete
      const int64_t id = static_cast<int32_t>(a[0]);
      if (id < 0 || static_cast<size_t>(id) >= p.timers.size() || !p.timers[id].used) {
        return -EINVAL;
      }
      GuestTimer& t = p.timers[static_cast<size_t>(id)];
      if (nr == SYS_timer_delete) {
        t = GuestTimer{};
        return 0;
      }
      if (nr == SYS_timer_getoverrun) return t.last_overrun;
      const uint64_t old_at = nr == SYS_timer_settime ? a[3] : a[1];
      Ts set[2] = {};
      if (nr == SYS_timer_settime) {
        if (!p.as->CopyIn(a[2], set, sizeof(set))) return -EFAULT;
        for (const Ts& ts : set) {
          if (ts.sec < 0 || ts.nsec < 0 || ts.nsec >= 1000000000) return -EINVAL;
        }
      }
      if (old_at != 0) {
        const int64_t l = left(t);
        const Ts old[2] = {{t.interval / 1000000000, t.interval % 1000000000},
                           {l / 1000000000, l % 1000000000}};
        if (!p.as->CopyOut(old_at, old, sizeof(old))) return -EFAULT;
      }
      if (nr == SYS_timer_settime) {
        int64_t value = set[1].sec * 1000000000 + set[1].nsec;
        if (value != 0 && (a[1] & TIMER_ABSTIME)) {
          // An absolute time on the timer's clock, as a monotonic deadline (a later change
          // of the realtime clock does not move it).
          struct timespec c;
          clock_gettime(t.clock, &c);
          value = std::max<int64_t>(1, value - (c.tv_sec * 1000000000 + c.tv_nsec));
        }
        t.overrun = t.last_overrun = 0;
        ArmTimer(t, value == 0 ? -1 : now + value, set[0].sec * 1000000000 + set[0].nsec);
      }
      return 0;
    }
  }
}

int64_t Kernel::Sleep(Process& p, int64_t deadline_ns) {
  for (;;) {
    if (MonotonicNs() >= deadline_ns) return 0;
    if (SignalPending(p)) return -EINTR;
    p.waits.clear();
    p.wait_deadline = deadline_ns;
    Block(p);
  }
}

int64_t Kernel::Execve(Process& p, uint64_t path, uint64_t argv_va, uint64_t envp_va) {
  std::string name;
  if (!p.as->CopyInString(path, name, 4096)) return -EFAULT;
  if (name.empty()) return -ENOENT;
  auto read_vector = [&](uint64_t va, std::vector<std::string>& out) {
    for (size_t i = 0; va != 0; ++i) {
      if (i >= kMaxArgs) return -E2BIG;
      uint64_t ptr;
      if (!p.as->CopyIn(va + 8 * i, &ptr, sizeof(ptr))) return -EFAULT;
      if (ptr == 0) break;
      std::string s;
      if (!p.as->CopyInString(ptr, s, 128 * 1024)) return -EFAULT;
      out.push_back(std::move(s));
    }
    return 0;
  };
  std::vector<std::string> argv, envp;
  if (int e = read_vector(argv_va, argv); e != 0) return e;
  if (int e = read_vector(envp_va, envp); e != 0) return e;
  if (name == "/proc/self/exe") name = p.exe;
  std::string error, interpreter;
  int err = 0;
  std::string exe = name;
  std::shared_ptr<Program> program = GetProgram(p.cwd, exe, err, error, &interpreter);
  if (!program) {
    if (options_.trace) Trace(p, "execve: %s", error.c_str());
    // "#!interpreter [argument]": run the interpreter with the script's path.
    if (err != ENOEXEC || interpreter.empty()) return -err;
    std::string line = interpreter;
    const size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos) return -ENOEXEC;
    line = line.substr(start);
    const size_t space = line.find_first_of(" \t");
    std::vector<std::string> head = {line.substr(0, space)};
    if (space != std::string::npos) {
      const size_t arg = line.find_first_not_of(" \t", space);
      if (arg != std::string::npos) {
        const size_t end = line.find_last_not_of(" \t\r");
        head.push_back(line.substr(arg, end - arg + 1));
      }
    }
    head.push_back(name);
    if (!argv.empty()) argv.erase(argv.begin());
    argv.insert(argv.begin(), head.begin(), head.end());
    exe = head[0];
    program = GetProgram(p.cwd, exe, err, error, nullptr);
    if (!program) return -err;
  }
  auto as = std::make_shared<AddressSpace>(mem_, pool_);
  LoadedProgram loaded;
  if (!as->Load(program, argv, envp, loaded, error)) {
    if (options_.trace) Trace(p, "execve %s: %s", exe.c_str(), error.c_str());
    return -ENOMEM;
  }
  ++stats_.execs;
  ReleaseVfork(p);
  p.as = std::move(as);
  for (FdEntry& e : p.fds) {
    if (e.cloexec) e = FdEntry{};
  }
  for (SigAction& a : p.actions) {
    if (a.handler > 1) a = SigAction{};
  }
  p.fpu_saved.clear();
  p.altstack = {};  // the alternate stack was the old program's
  p.timers.clear();  // timer_create's timers end with the program; alarm's stays
  memcpy(p.fpu.get(), fpu_initial_.data(), fpu_size_);
  p.tf = {};
  p.tf.tf_rip = static_cast<int64_t>(loaded.entry);
  p.tf.tf_rsp = static_cast<int64_t>(loaded.rsp);
  p.tf.tf_rflags = 0x202;
  p.vf = {};
  p.clear_child_tid = 0;
  // Absolute: /proc/self/exe must still name it after a chdir.
  exe = AbsolutePath(p, exe);
  p.exe = exe;
  p.comm = BaseName(exe);
  return kKeepRax;
}

int64_t Kernel::CpuClockNs(const Process& p, clockid_t clock) const {
  const Process* of = &p;
  int kind = 2;  // CPUCLOCK_SCHED: user + system
  if (clock < 0) {
    kind = clock & 3;  // CPUCLOCK_PROF, CPUCLOCK_VIRT, CPUCLOCK_SCHED
    if (kind == 3) return -EINVAL;
    const pid_t pid = static_cast<pid_t>(~(clock >> 3));
    if (pid != 0) {
      auto it = procs_.find(pid);
      if (it == procs_.end() || it->second->state == Process::State::kZombie) return -EINVAL;
      of = it->second.get();
    }
  }
  // The kernel work under way now counts as well (that of the caller, which is running it).
  const int64_t in_kernel = of == &p ? MonotonicNs() - p.kernel_since : 0;
  return kind == 1 ? of->utime_ns : of->utime_ns + of->stime_ns + in_kernel;
}

int64_t Kernel::PathCall(Process& p, uint64_t nr, const uint64_t* a) {
  // The *at() form of every path call: (dirfd, path) first, the rest after.
  int64_t dirfd = AT_FDCWD;
  const uint64_t* args = a;
  uint64_t shifted[6];
  switch (nr) {
    case SYS_mkdir: case SYS_rmdir: case SYS_unlink: case SYS_chmod: case SYS_chown:
    case SYS_lchown: case SYS_readlink: case SYS_access: case SYS_truncate: case SYS_chdir:
    case SYS_statfs: case SYS_mknod: case SYS_utimes:
      shifted[0] = static_cast<uint64_t>(AT_FDCWD);
      std::copy(a, a + 5, shifted + 1);
      args = shifted;
      break;
    default:
      break;
  }
  dirfd = static_cast<int32_t>(args[0]);
  int dir;
  std::string rel;
  int64_t err;
  const bool empty_ok = nr == SYS_fchownat && (args[4] & AT_EMPTY_PATH);
  if (!Resolve(p, dirfd, args[1], dir, rel, &err, empty_ok)) return err;
  const char* path = rel.c_str();
  auto ret = [](int r) -> int64_t { return r < 0 ? -errno : r; };
  const bool modifies = !(nr == SYS_readlink || nr == SYS_readlinkat || nr == SYS_access ||
                          nr == SYS_faccessat || nr == SYS_faccessat2 || nr == SYS_chdir ||
                          nr == SYS_statfs);
  if (modifies && options_.read_only) {
    // A read-only mount's answers, in Linux's order (what is looked up before the mount is).
    switch (nr) {
      case SYS_mkdir: case SYS_mkdirat: case SYS_mknod: case SYS_mknodat:
        return ReadOnlyCreateCheck(dir, rel);
      case SYS_chmod: case SYS_fchmodat: case SYS_chown: case SYS_utimes:
        return ReadOnlyChangeCheck(dir, rel, 0);
      case SYS_lchown:
        return ReadOnlyChangeCheck(dir, rel, AT_SYMLINK_NOFOLLOW);
      case SYS_fchownat:
        return ReadOnlyChangeCheck(
            dir, rel, static_cast<int>(args[4]) & (AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH));
      case SYS_utimensat:
        return ReadOnlyChangeCheck(dir, rel, static_cast<int>(args[3]) & AT_SYMLINK_NOFOLLOW);
      case SYS_truncate: {
        struct stat st;
        if (fstatat(dir, path, &st, 0) != 0) return -errno;
        if (S_ISDIR(st.st_mode)) return -EISDIR;
        return S_ISREG(st.st_mode) ? -EROFS : -EINVAL;
      }
      default: {  // unlink, unlinkat, rmdir: the mount is asked once the directory is found
        const int64_t parent = ParentLookup(dir, rel);
        return parent != 0 ? parent : -EROFS;
      }
    }
  }
  switch (nr) {
    case SYS_mkdir:
    case SYS_mkdirat:
      return ret(mkdirat(dir, path, static_cast<mode_t>(args[2]) & ~p.umask & 07777));
    case SYS_rmdir:
      return ret(unlinkat(dir, path, AT_REMOVEDIR));
    case SYS_unlink:
      return ret(unlinkat(dir, path, 0));
    case SYS_unlinkat:
      return ret(unlinkat(dir, path, static_cast<int>(args[2]) & AT_REMOVEDIR));
    case SYS_chmod:
    case SYS_fchmodat:
      return ret(fchmodat(dir, path, static_cast<mode_t>(args[2]), 0));
    case SYS_chown:
    case SYS_lchown:
    case SYS_fchownat: {
      const int flags = nr == SYS_lchown ? AT_SYMLINK_NOFOLLOW
                        : nr == SYS_fchownat ? static_cast<int>(args[4])
                                             : 0;
      return ret(fchownat(dir, path, static_cast<uid_t>(args[2]), static_cast<gid_t>(args[3]),
                          flags));
    }
    case SYS_readlink:
    case SYS_readlinkat: {
      if (args[3] == 0 || static_cast<int64_t>(args[3]) < 0) return -EINVAL;
      std::string target;
      std::string guest;
      p.as->CopyInString(args[1], guest, 4096);
      if (guest == "/proc/self/exe") {
        target = p.exe;
      } else {
        std::vector<char> buf(std::min<uint64_t>(args[3], 4096));
        const ssize_t n = readlinkat(dir, path, buf.data(), buf.size());
        if (n < 0) return -errno;
        target.assign(buf.data(), static_cast<size_t>(n));
      }
      const size_t n = std::min<size_t>(target.size(), args[3]);
      return p.as->CopyOut(args[2], target.data(), n) ? static_cast<int64_t>(n) : -EFAULT;
    }
    case SYS_access:
    case SYS_faccessat:
    case SYS_faccessat2: {
      const int mode = static_cast<int>(args[2]);
      const int flags = nr == SYS_faccessat2 ? static_cast<int>(args[3]) : 0;
      if ((mode & W_OK) && options_.read_only) {
        const int64_t refused =
            ReadOnlyWriteCheck(dir, path, flags & AT_SYMLINK_NOFOLLOW, /*create=*/false);
        if (refused != 0) return refused;
      }
      return ret(faccessat(dir, path, mode, flags));
    }
    case SYS_truncate:
      return [&]() -> int64_t {
        const int fd = openat(dir, path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) return -errno;
        const int r = ftruncate(fd, static_cast<off_t>(args[2]));
        const int e = errno;
        close(fd);
        return r < 0 ? -e : 0;
      }();
    case SYS_chdir: {
      const int fd = openat(dir, path, O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) return -errno;
      close(p.cwd);
      p.cwd = fd;
      return 0;
    }
    case SYS_statfs: {
      struct statfs st;
      const int fd = openat(dir, path, O_PATH | O_CLOEXEC);
      if (fd < 0) return -errno;
      const int r = fstatfs(fd, &st);
      close(fd);
      if (r < 0) return -errno;
      return p.as->CopyOut(args[2], &st, sizeof(st)) ? 0 : -EFAULT;
    }
    case SYS_utimes:
    case SYS_utimensat: {
      struct timespec ts[2];
      const struct timespec* times = nullptr;
      if (args[2] != 0) {
        if (nr == SYS_utimes) {
          struct timeval tv[2];
          if (!p.as->CopyIn(args[2], tv, sizeof(tv))) return -EFAULT;
          for (int i = 0; i < 2; ++i) ts[i] = {tv[i].tv_sec, tv[i].tv_usec * 1000};
        } else if (!p.as->CopyIn(args[2], ts, sizeof(ts))) {
          return -EFAULT;
        }
        times = ts;
      }
      const int flags = nr == SYS_utimensat ? static_cast<int>(args[3]) : 0;
      return ret(utimensat(dir, path, times, flags));
    }
    case SYS_mknod:
    case SYS_mknodat:
      return ret(mknodat(dir, path, static_cast<mode_t>(args[2]) & ~p.umask,
                         static_cast<dev_t>(args[3])));
    default:
      return -ENOSYS;
  }
}

int64_t Kernel::Syscall(Process& p) {
  struct trapframe& tf = p.tf;
  const uint64_t nr = static_cast<uint64_t>(tf.tf_rax);
  const uint64_t a[6] = {static_cast<uint64_t>(tf.tf_rdi), static_cast<uint64_t>(tf.tf_rsi),
                         static_cast<uint64_t>(tf.tf_rdx), static_cast<uint64_t>(tf.tf_r10),
                         static_cast<uint64_t>(tf.tf_r8),  static_cast<uint64_t>(tf.tf_r9)};
  const int64_t result = Dispatch(p, nr, a);
  if (options_.trace) {
    Trace(p, "syscall %lu(%#lx, %#lx, %#lx, %#lx, %#lx, %#lx) = %s%ld%s",
          static_cast<unsigned long>(nr), static_cast<unsigned long>(a[0]),
          static_cast<unsigned long>(a[1]), static_cast<unsigned long>(a[2]),
          static_cast<unsigned long>(a[3]), static_cast<unsigned long>(a[4]),
          static_cast<unsigned long>(a[5]),
          result == kKeepRax ? "(registers) " : result == kRestart ? "(interrupted) " : "",
          static_cast<long>(result == kKeepRax ? p.tf.tf_rax : result),
          result == -ENOSYS ? " (not implemented)" : "");
  }
  return result;
}

int64_t Kernel::Dispatch(Process& p, uint64_t nr, const uint64_t* a) {
  auto fd_of = [&](uint64_t v) { return static_cast<int64_t>(static_cast<int32_t>(v)); };
  auto ret = [](int64_t r) -> int64_t { return r < 0 ? -errno : r; };
  switch (nr) {
    case SYS_read:
      return ReadFd(p, fd_of(a[0]), a[1], a[2], -1);
    case SYS_write:
      return WriteFd(p, fd_of(a[0]), a[1], a[2], -1);
    case SYS_pread64:
      return static_cast<int64_t>(a[3]) < 0 ? -EINVAL
                                            : ReadFd(p, fd_of(a[0]), a[1], a[2],
                                                     static_cast<int64_t>(a[3]));
    case SYS_pwrite64:
      return static_cast<int64_t>(a[3]) < 0 ? -EINVAL
                                            : WriteFd(p, fd_of(a[0]), a[1], a[2],
                                                      static_cast<int64_t>(a[3]));
    case SYS_readv:
    case SYS_writev: {
      if (a[2] > 1024) return -EINVAL;
      int64_t total = 0;
      for (uint64_t i = 0; i < a[2]; ++i) {
        uint64_t iov[2];
        if (!p.as->CopyIn(a[1] + 16 * i, iov, sizeof(iov))) return total > 0 ? total : -EFAULT;
        if (iov[1] == 0) continue;
        const int64_t n = nr == SYS_readv ? ReadFd(p, fd_of(a[0]), iov[0], iov[1], -1)
                                          : WriteFd(p, fd_of(a[0]), iov[0], iov[1], -1);
        if (n < 0) return total > 0 ? total : n;
        total += n;
        if (static_cast<uint64_t>(n) < iov[1]) break;
      }
      return total;
    }
    case SYS_open:
      return Openat(p, AT_FDCWD, a[0], static_cast<int>(a[1]), static_cast<int>(a[2]));
    case SYS_creat:
      return Openat(p, AT_FDCWD, a[0], O_CREAT | O_WRONLY | O_TRUNC, static_cast<int>(a[1]));
    case SYS_openat:
      return Openat(p, fd_of(a[0]), a[1], static_cast<int>(a[2]), static_cast<int>(a[3]));
    case SYS_close: {
      if (!FileOf(p, fd_of(a[0]))) return -EBADF;
      p.fds[a[0]] = FdEntry{};
      return 0;
    }
    case SYS_close_range: {
      // Every guest descriptor in [first, last] closed, or (CLOSE_RANGE_CLOEXEC) marked
      // close-on-exec. (minivk's descriptor table is never shared: UNSHARE has nothing to do.)
      constexpr uint64_t kCloexec = 1u << 2, kUnshare = 1u << 1;  // linux/close_range.h
      const uint32_t first = static_cast<uint32_t>(a[0]), last = static_cast<uint32_t>(a[1]);
      if ((a[2] & ~(kCloexec | kUnshare)) != 0 || first > last) return -EINVAL;
      for (uint64_t fd = first; fd <= last && fd < p.fds.size(); ++fd) {
        if (!p.fds[fd].file) continue;
        if (a[2] & kCloexec) {
          p.fds[fd].cloexec = true;
        } else {
          p.fds[fd] = FdEntry{};
        }
      }
      return 0;
    }
    case SYS_fadvise64: {
      auto f = FileOf(p, fd_of(a[0]));
      if (!f) return -EBADF;
      return -posix_fadvise(f->host, static_cast<off_t>(a[1]), static_cast<off_t>(a[2]),
                            static_cast<int>(a[3]));
    }
    case SYS_getpeername:
    case SYS_getsockname:
      return FileOf(p, fd_of(a[0])) ? -ENOTSOCK : -EBADF;  // minivk has no sockets
    case SYS_statx: {
      const int flags = static_cast<int>(a[2]);
      int dir;
      std::string rel;
      int64_t err;
      if (!Resolve(p, fd_of(a[0]), a[1], dir, rel, &err, flags & AT_EMPTY_PATH)) return err;
      struct statx stx;
      if (statx(dir, rel.c_str(), flags, static_cast<unsigned>(a[3]), &stx) != 0) return -errno;
      return p.as->CopyOut(a[4], &stx, sizeof(stx)) ? 0 : -EFAULT;
    }
    case SYS_getxattr:
    case SYS_lgetxattr:
    case SYS_listxattr:
    case SYS_llistxattr:
    case SYS_fgetxattr:
    case SYS_flistxattr: {
      // Read only. A path goes through the directory it resolves under
      // (/proc/self/fd/N/rel: only the directory passes the magic link, so lgetxattr still
      // sees a final symbolic link); a descriptor is the guest's host descriptor.
      const bool by_fd = nr == SYS_fgetxattr || nr == SYS_flistxattr;
      const bool list = nr == SYS_listxattr || nr == SYS_llistxattr || nr == SYS_flistxattr;
      const bool nofollow = nr == SYS_lgetxattr || nr == SYS_llistxattr;
      std::string host;
      std::shared_ptr<File> f;
      if (by_fd) {
        f = FileOf(p, fd_of(a[0]));
        if (!f) return -EBADF;
      } else {
        int dir;
        std::string rel;
        int64_t err;
        if (!Resolve(p, AT_FDCWD, a[0], dir, rel, &err)) return err;
        host = "/proc/self/fd/" + std::to_string(dir) + "/" + rel;
      }
      std::string name;
      if (!list && !p.as->CopyInString(a[1], name, 256)) return -EFAULT;
      const uint64_t out = list ? a[1] : a[2];
      const uint64_t len = std::min<uint64_t>(list ? a[2] : a[3], 65536);
      std::vector<char> buf(len);
      ssize_t n;
      if (list) {
        n = by_fd      ? flistxattr(f->host, buf.data(), len)
            : nofollow ? llistxattr(host.c_str(), buf.data(), len)
                       : listxattr(host.c_str(), buf.data(), len);
      } else {
        n = by_fd      ? fgetxattr(f->host, name.c_str(), buf.data(), len)
            : nofollow ? lgetxattr(host.c_str(), name.c_str(), buf.data(), len)
                       : getxattr(host.c_str(), name.c_str(), buf.data(), len);
      }
      if (n < 0) return -errno;
      if (len > 0 && !p.as->CopyOut(out, buf.data(), static_cast<size_t>(n))) return -EFAULT;
      return n;
    }
    case SYS_fstat: {
      auto f = FileOf(p, fd_of(a[0]));
      if (!f) return -EBADF;
      struct stat st;
      if (fstat(f->host, &st) != 0) return -errno;
      return p.as->CopyOut(a[1], &st, sizeof(st)) ? 0 : -EFAULT;
    }
    case SYS_stat:
    case SYS_lstat:
    case SYS_newfstatat: {
      const bool at = nr == SYS_newfstatat;
      const int flags = at ? static_cast<int>(a[3]) : nr == SYS_lstat ? AT_SYMLINK_NOFOLLOW : 0;
      int dir;
      std::string rel;
      int64_t err;
      if (!Resolve(p, at ? fd_of(a[0]) : AT_FDCWD, at ? a[1] : a[0], dir, rel, &err,
                   flags & AT_EMPTY_PATH)) {
        return err;
      }
      struct stat st;
      if (fstatat(dir, rel.c_str(), &st, flags) != 0) return -errno;
      return p.as->CopyOut(at ? a[2] : a[1], &st, sizeof(st)) ? 0 : -EFAULT;
    }
    case SYS_lseek: {
      auto f = FileOf(p, fd_of(a[0]));
      if (!f) return -EBADF;
      return ret(lseek(f->host, static_cast<off_t>(a[1]), static_cast<int>(a[2])));
    }
    case SYS_getdents64: {
      auto f = FileOf(p, fd_of(a[0]));
      if (!f) return -EBADF;
      std::vector<char> bytes(std::min<uint64_t>(a[2], 1 << 16));
      const long n = syscall(SYS_getdents64, f->host, bytes.data(), bytes.size());
      if (n < 0) return -errno;
      return p.as->CopyOut(a[1], bytes.data(), static_cast<size_t>(n)) ? n : -EFAULT;
    }
    case SYS_ioctl:
      return Ioctl(p, fd_of(a[0]), a[1], a[2]);
    case SYS_fcntl:
      return Fcntl(p, fd_of(a[0]), static_cast<int>(a[1]), a[2]);
    case SYS_flock:
      return FileOf(p, fd_of(a[0])) ? 0 : -EBADF;
    case SYS_fsync:
    case SYS_fdatasync:
    case SYS_ftruncate:
    case SYS_fchmod:
    case SYS_fchown:
    case SYS_fstatfs: {
      auto f = FileOf(p, fd_of(a[0]));
      if (!f) return -EBADF;
      if (nr == SYS_fsync || nr == SYS_fdatasync) return ret(fsync(f->host));
      if (nr == SYS_fstatfs) {
        struct statfs st;
        if (fstatfs(f->host, &st) != 0) return -errno;
        return p.as->CopyOut(a[1], &st, sizeof(st)) ? 0 : -EFAULT;
      }
      if (options_.read_only) return -EROFS;
      if (nr == SYS_ftruncate) return ret(ftruncate(f->host, static_cast<off_t>(a[1])));
      if (nr == SYS_fchmod) return ret(fchmod(f->host, static_cast<mode_t>(a[1])));
      return ret(fchown(f->host, static_cast<uid_t>(a[1]), static_cast<gid_t>(a[2])));
    }
    case SYS_dup: {
      auto f = FileOf(p, fd_of(a[0]));
      return f ? Install(p, f, false, -1) : -EBADF;
    }
    case SYS_dup2:
    case SYS_dup3: {
      auto f = FileOf(p, fd_of(a[0]));
      if (!f) return -EBADF;
      if (nr == SYS_dup3 && (a[0] == a[1] || (a[2] & ~O_CLOEXEC))) return -EINVAL;
      if (fd_of(a[1]) < 0) return -EBADF;
      if (a[0] == a[1]) return fd_of(a[1]);
      return Install(p, f, nr == SYS_dup3 && (a[2] & O_CLOEXEC), fd_of(a[1]));
    }
    case SYS_pipe:
      return Pipe(p, a[0], 0);
    case SYS_pipe2:
      return Pipe(p, a[0], static_cast<int>(a[1]));
    case SYS_poll:
      return Poll(p, a[0], a[1], static_cast<int32_t>(a[2]));
    case SYS_ppoll: {
      int64_t ms = -1;
      if (a[2] != 0) {
        struct timespec ts;
        if (!p.as->CopyIn(a[2], &ts, sizeof(ts))) return -EFAULT;
        ms = ts.tv_sec * 1000 + (ts.tv_nsec + 999999) / 1000000;
      }
      return Poll(p, a[0], a[1], ms);
    }
    case SYS_sendfile:
      return -EINVAL;  // callers fall back to read and write
    case SYS_getcwd:
      return Getcwd(p, a[0], a[1]);
    case SYS_fchdir: {
      auto f = FileOf(p, fd_of(a[0]));
      if (!f) return -EBADF;
      const int fd = openat(f->host, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) return -errno;
      close(p.cwd);
      p.cwd = fd;
      return 0;
    }
    case SYS_rename:
    case SYS_renameat:
    case SYS_renameat2:
    case SYS_link:
    case SYS_linkat: {
      const bool two_dirs = nr != SYS_rename && nr != SYS_link;
      int from_dir, to_dir;
      std::string from, to;
      int64_t err;
      if (!Resolve(p, two_dirs ? fd_of(a[0]) : AT_FDCWD, two_dirs ? a[1] : a[0], from_dir, from,
                   &err) ||
          !Resolve(p, two_dirs ? fd_of(a[2]) : AT_FDCWD, two_dirs ? a[3] : a[1], to_dir, to,
                   &err)) {
        return err;
      }
      if (options_.read_only) {
        if (nr == SYS_link || nr == SYS_linkat) {
          struct stat st;
          const int follow = nr == SYS_linkat ? static_cast<int>(a[4]) & AT_SYMLINK_FOLLOW : 0;
          if (fstatat(from_dir, from.c_str(), &st, follow ? 0 : AT_SYMLINK_NOFOLLOW) != 0) {
            return -errno;
          }
          return ReadOnlyCreateCheck(to_dir, to);
        }
        const int64_t parent = ParentLookup(from_dir, from);
        if (parent != 0) return parent;
        const int64_t to_parent = ParentLookup(to_dir, to);
        return to_parent != 0 ? to_parent : -EROFS;
      }
      if (nr == SYS_link || nr == SYS_linkat) {
        return ret(linkat(from_dir, from.c_str(), to_dir, to.c_str(),
                          nr == SYS_linkat ? static_cast<int>(a[4]) : 0));
      }
      return ret(syscall(SYS_renameat2, from_dir, from.c_str(), to_dir, to.c_str(),
                         nr == SYS_renameat2 ? static_cast<unsigned>(a[4]) : 0u));
    }
    case SYS_symlink:
    case SYS_symlinkat: {
      std::string target;
      if (!p.as->CopyInString(a[0], target, 4096)) return -EFAULT;
      int dir;
      std::string rel;
      int64_t err;
      if (!Resolve(p, nr == SYS_symlinkat ? fd_of(a[1]) : AT_FDCWD,
                   nr == SYS_symlinkat ? a[2] : a[1], dir, rel, &err)) {
        return err;
      }
      if (options_.read_only) return ReadOnlyCreateCheck(dir, rel);
      return ret(symlinkat(target.c_str(), dir, rel.c_str()));
    }
    case SYS_mkdir: case SYS_mkdirat: case SYS_rmdir: case SYS_unlink: case SYS_unlinkat:
    case SYS_chmod: case SYS_fchmodat: case SYS_chown: case SYS_lchown: case SYS_fchownat:
    case SYS_readlink: case SYS_readlinkat: case SYS_access: case SYS_faccessat:
    case SYS_faccessat2: case SYS_truncate: case SYS_chdir: case SYS_statfs: case SYS_utimes:
    case SYS_utimensat: case SYS_mknod: case SYS_mknodat:
      if (nr == SYS_utimensat && a[1] == 0) {
        // futimens(fd, times)
        auto f = FileOf(p, fd_of(a[0]));
        if (!f) return -EBADF;
        struct timespec ts[2];
        if (a[2] != 0 && !p.as->CopyIn(a[2], ts, sizeof(ts))) return -EFAULT;
        if (options_.read_only) return -EROFS;
        return ret(futimens(f->host, a[2] != 0 ? ts : nullptr));
      }
      return PathCall(p, nr, a);
    case SYS_umask: {
      const int64_t old = p.umask;
      p.umask = static_cast<mode_t>(a[0]) & 0777;
      return old;
    }

    // Memory.
    case SYS_brk:
      return p.as->Brk(a[0]);
    case SYS_mmap: {
      int host = -1;
      if (!(a[3] & MAP_ANONYMOUS)) {
        auto f = FileOf(p, fd_of(a[4]));
        if (!f) return -EBADF;
        host = f->host;
      }
      return p.as->Mmap(a[0], a[1], static_cast<int>(a[2]), static_cast<int>(a[3]), host, a[5]);
    }
    case SYS_munmap:
      return p.as->Munmap(a[0], a[1]);
    case SYS_mprotect:
      return p.as->Mprotect(a[0], a[1], static_cast<int>(a[2]));
    case SYS_mremap:
      return -ENOMEM;  // callers (realloc) fall back to a new mapping and a copy
    case SYS_madvise:
    case SYS_msync:
      return 0;

    // Processes.
    case SYS_fork:
      return Fork(p, SIGCHLD, 0, 0, 0, 0);
    case SYS_vfork:
      return Fork(p, CLONE_VM | CLONE_VFORK | SIGCHLD, 0, 0, 0, 0);
    case SYS_clone:
      // Linux x86-64 order: flags, stack, parent_tid, child_tid, tls.
      return Fork(p, a[0], a[1], a[2], a[3], a[4]);
    case SYS_execve:
      return Execve(p, a[0], a[1], a[2]);
    case SYS_exit:
    case SYS_exit_group:
      Exit(p, static_cast<int>((a[0] & 0xFF) << 8));
      return kKeepRax;
    case SYS_wait4: {
      struct rusage ru = {};
      const int64_t r = Wait4(p, static_cast<int32_t>(a[0]), a[1], static_cast<int>(a[2]), &ru);
      if (r > 0 && a[3] != 0 && !p.as->CopyOut(a[3], &ru, sizeof(ru))) return -EFAULT;
      return r;
    }
    case SYS_kill:
      return Kill(p, static_cast<int32_t>(a[0]), static_cast<int>(a[1]));
    case SYS_tkill:
      return static_cast<int32_t>(a[0]) <= 0 ? -EINVAL
                                            : Kill(p, static_cast<int32_t>(a[0]),
                                                   static_cast<int>(a[1]), kSiTkill);
    case SYS_tgkill:
      return static_cast<int32_t>(a[1]) <= 0 ? -EINVAL
                                            : Kill(p, static_cast<int32_t>(a[1]),
                                                   static_cast<int>(a[2]), kSiTkill);
    case SYS_rt_sigqueueinfo:
    case SYS_rt_tgsigqueueinfo: {
      const bool tg = nr == SYS_rt_tgsigqueueinfo;
      const int32_t pid = static_cast<int32_t>(tg ? a[1] : a[0]);
      const int sig = static_cast<int>(tg ? a[2] : a[1]);
      GuestSigInfo info;
      if (!p.as->CopyIn(tg ? a[3] : a[2], &info, sizeof(info))) return -EFAULT;
      if (sig < 0 || sig > 64 || pid <= 0) return -EINVAL;
      // Only the kernel may claim to be the kernel or kill(2), except to oneself (as Linux).
      if ((info.code >= 0 || info.code == kSiTkill) && pid != p.pid) return -EPERM;
      auto it = procs_.find(pid);
      if (it == procs_.end() || it->second->state == Process::State::kZombie) return -ESRCH;
      if (sig != 0) SendSignal(*it->second, sig, info);
      return 0;
    }
    case SYS_rt_sigtimedwait:
      if (a[3] != 8) return -EINVAL;
      return SigTimedWait(p, a[0], a[1], a[2]);
    case SYS_getpid:
    case SYS_gettid:
      return p.pid;
    case SYS_getppid:
      return p.ppid;
    case SYS_set_tid_address:
      p.clear_child_tid = a[0];
      return p.pid;
    case SYS_alarm:
    case SYS_setitimer:
    case SYS_getitimer:
    case SYS_timer_create:
    case SYS_timer_settime:
    case SYS_timer_gettime:
    case SYS_timer_getoverrun:
    case SYS_timer_delete:
      return TimerCall(p, nr, a);
    case SYS_getpriority:
    case SYS_setpriority: {
      // Recorded per process, inherited by fork; raising priority (lowering nice) needs
      // what Linux needs, CAP_SYS_NICE, which root has. Who: 0 is the caller (its group,
      // its user), as Linux.
      const int which = static_cast<int>(a[0]);
      const int32_t who = static_cast<int32_t>(a[1]);
      if (which != PRIO_PROCESS && which != PRIO_PGRP && which != PRIO_USER) return -EINVAL;
      const bool set = nr == SYS_setpriority;
      const int want = std::clamp(static_cast<int>(static_cast<int32_t>(a[2])), -20, 19);
      int best = 100;  // getpriority: the highest priority (lowest nice) of those matched
      bool found = false, refused = false;
      for (auto& [pid, q] : procs_) {
        if (q->state == Process::State::kZombie) continue;
        const bool match = which == PRIO_PROCESS ? q->pid == (who == 0 ? p.pid : who)
                           : which == PRIO_PGRP  ? q->pgid == (who == 0 ? p.pgid : who)
                                                 : who == 0 || static_cast<uid_t>(who) == getuid();
        if (!match) continue;
        found = true;
        if (!set) {
          best = std::min(best, q->nice);
        } else if (want < q->nice && geteuid() != 0) {
          refused = true;
        } else {
          q->nice = want;
        }
      }
      if (!found) return -ESRCH;
      if (refused) return -EACCES;
      return set ? 0 : 20 - best;  // the system call's form: 40..1 for nice -20..19
    }
    case SYS_getpgrp:
      return p.pgid;
    case SYS_getpgid:
    case SYS_getsid: {
      Process* t = &p;
      if (a[0] != 0) {
        auto it = procs_.find(static_cast<int32_t>(a[0]));
        if (it == procs_.end() || it->second->state == Process::State::kZombie) return -ESRCH;
        t = it->second.get();
      }
      return nr == SYS_getpgid ? t->pgid : t->sid;
    }
    case SYS_setpgid: {
      Process* t = &p;
      if (a[0] != 0 && static_cast<int32_t>(a[0]) != p.pid) {
        auto it = procs_.find(static_cast<int32_t>(a[0]));
        if (it == procs_.end() || it->second->ppid != p.pid) return -ESRCH;
        t = it->second.get();
      }
      const int64_t pgid = static_cast<int32_t>(a[1]);
      if (pgid < 0) return -EINVAL;
      t->pgid = pgid == 0 ? t->pid : static_cast<int>(pgid);
      return 0;
    }
    case SYS_setsid:
      if (p.pgid == p.pid) return -EPERM;
      p.pgid = p.sid = p.pid;
      return p.pid;
    case SYS_getuid:
      return getuid();
    case SYS_geteuid:
      return geteuid();
    case SYS_getgid:
      return getgid();
    case SYS_getegid:
      return getegid();
    case SYS_getresuid:
    case SYS_getresgid: {
      const uint32_t id = nr == SYS_getresuid ? getuid() : getgid();
      for (int i = 0; i < 3; ++i) {
        if (!p.as->CopyOut(a[i], &id, sizeof(id))) return -EFAULT;
      }
      return 0;
    }
    case SYS_getgroups:
      return 0;
    case SYS_setuid: case SYS_setgid: case SYS_setreuid: case SYS_setregid:
    case SYS_setresuid: case SYS_setresgid: case SYS_setgroups:
      return 0;  // one user: the invoking one (a no-op, as for root setting its own ids)

    // Signals.
    case SYS_rt_sigaction: {
      const int sig = static_cast<int>(a[0]);
      if (sig < 1 || sig > 64 || a[3] != 8) return -EINVAL;
      if (a[1] != 0 && (sig == SIGKILL || sig == SIGSTOP)) return -EINVAL;
      const SigAction old = p.actions[sig];
      if (a[1] != 0) {
        uint64_t k[4];  // handler, flags, restorer, mask (the kernel's struct sigaction)
        if (!p.as->CopyIn(a[1], k, sizeof(k))) return -EFAULT;
        p.actions[sig] = SigAction{k[0], k[1], k[2], k[3]};
        if (Ignores(k[0], sig)) p.pending &= ~Bit(sig);
      }
      if (a[2] != 0) {
        const uint64_t k[4] = {old.handler, old.flags, old.restorer, old.mask};
        if (!p.as->CopyOut(a[2], k, sizeof(k))) return -EFAULT;
      }
      return 0;
    }
    case SYS_rt_sigprocmask: {
      if (a[3] != 8) return -EINVAL;
      const uint64_t old = p.blocked;
      if (a[1] != 0) {
        uint64_t set;
        if (!p.as->CopyIn(a[1], &set, sizeof(set))) return -EFAULT;
        switch (a[0]) {
          case SIG_BLOCK: p.blocked |= set; break;
          case SIG_UNBLOCK: p.blocked &= ~set; break;
          case SIG_SETMASK: p.blocked = set; break;
          default: return -EINVAL;
        }
        p.blocked &= ~(Bit(SIGKILL) | Bit(SIGSTOP));
        DropIgnored(p);
      }
      if (a[2] != 0 && !p.as->CopyOut(a[2], &old, sizeof(old))) return -EFAULT;
      return 0;
    }
    case SYS_rt_sigpending: {
      const uint64_t set = p.pending & p.blocked;
      return p.as->CopyOut(a[0], &set, sizeof(set)) ? 0 : -EFAULT;
    }
    case SYS_rt_sigreturn:
      return SigReturn(p);
    case SYS_rt_sigsuspend: {
      uint64_t set;
      if (a[1] != 8) return -EINVAL;
      if (!p.as->CopyIn(a[0], &set, sizeof(set))) return -EFAULT;
      p.saved_mask = p.blocked;
      p.blocked = set & ~(Bit(SIGKILL) | Bit(SIGSTOP));
      DropIgnored(p);
      p.sigsuspended = true;
      while (!SignalPending(p)) Block(p);
      return -EINTR;
    }
    case SYS_pause:
      while (!SignalPending(p)) Block(p);
      return -EINTR;
    case SYS_sigaltstack:
      return SigAltStack(p, a[0], a[1], static_cast<uint64_t>(p.tf.tf_rsp));

    // Time.
    case SYS_nanosleep:
    case SYS_clock_nanosleep: {
      const bool clock = nr == SYS_clock_nanosleep;
      struct timespec ts;
      if (!p.as->CopyIn(clock ? a[2] : a[0], &ts, sizeof(ts))) return -EFAULT;
      if (ts.tv_nsec < 0 || ts.tv_nsec >= 1000000000 || ts.tv_sec < 0) return -EINVAL;
      // Sleeping on a CPU clock: not offered (a wall-clock sleep would be wrong).
      if (clock && IsCpuClock(static_cast<clockid_t>(a[0]))) return -EINVAL;
      const int64_t ns = ts.tv_sec * 1000000000ll + ts.tv_nsec;
      int64_t deadline = MonotonicNs() + ns;
      if (clock && (a[1] & TIMER_ABSTIME)) {
        struct timespec now;
        clock_gettime(static_cast<clockid_t>(a[0]), &now);
        deadline = MonotonicNs() + ns - (now.tv_sec * 1000000000ll + now.tv_nsec);
      }
      const int64_t r = Sleep(p, deadline);
      const uint64_t rem = clock ? a[3] : a[1];
      if (r == -EINTR && rem != 0) {
        const int64_t left = std::max<int64_t>(0, deadline - MonotonicNs());
        struct timespec l = {static_cast<time_t>(left / 1000000000), static_cast<long>(left % 1000000000)};
        p.as->CopyOut(rem, &l, sizeof(l));
      }
      return r;
    }
    case SYS_clock_gettime:
    case SYS_clock_getres: {
      const clockid_t clock = static_cast<clockid_t>(a[0]);
      struct timespec ts;
      if (IsCpuClock(clock)) {
        // The guest's own CPU clocks (and, by pid, another guest process's): never the
        // host's, whose pids they would name.
        const int64_t ns = CpuClockNs(p, clock);
        if (ns < 0) return ns;
        ts = nr == SYS_clock_gettime ? timespec{ns / 1000000000, ns % 1000000000} : timespec{0, 1};
      } else {
        const int r =
            nr == SYS_clock_gettime ? clock_gettime(clock, &ts) : clock_getres(clock, &ts);
        if (r != 0) return -errno;
      }
      return a[1] == 0 || p.as->CopyOut(a[1], &ts, sizeof(ts)) ? 0 : -EFAULT;
    }
    case SYS_gettimeofday: {
      struct timeval tv;
      gettimeofday(&tv, nullptr);
      return a[0] == 0 || p.as->CopyOut(a[0], &tv, sizeof(tv)) ? 0 : -EFAULT;
    }
    case SYS_time: {
      const int64_t now = ::time(nullptr);
      return a[0] == 0 || p.as->CopyOut(a[0], &now, sizeof(now)) ? now : -EFAULT;
    }
    case SYS_times: {
      const struct tms t = {static_cast<clock_t>(p.utime_ns / kNsPerClockTick),
                            static_cast<clock_t>(p.stime_ns / kNsPerClockTick),
                            static_cast<clock_t>(p.cutime_ns / kNsPerClockTick),
                            static_cast<clock_t>(p.cstime_ns / kNsPerClockTick)};
      if (a[0] != 0 && !p.as->CopyOut(a[0], &t, sizeof(t))) return -EFAULT;
      return MonotonicNs() / kNsPerClockTick;
    }

    // The system.
    case SYS_uname: {
      struct utsname u;
      if (uname(&u) != 0) return -errno;
      strncpy(u.nodename, "minivk", sizeof(u.nodename));
      return p.as->CopyOut(a[0], &u, sizeof(u)) ? 0 : -EFAULT;
    }
    case SYS_sysinfo: {
      struct sysinfo si;
      if (sysinfo(&si) != 0) return -errno;
      si.procs = static_cast<uint16_t>(live_);
      return p.as->CopyOut(a[0], &si, sizeof(si)) ? 0 : -EFAULT;
    }
    case SYS_getrusage: {
      const int who = static_cast<int>(a[0]);
      if (who != RUSAGE_SELF && who != RUSAGE_CHILDREN && who != RUSAGE_THREAD) return -EINVAL;
      const bool children = who == RUSAGE_CHILDREN;
      const int64_t user = children ? p.cutime_ns : p.utime_ns;
      const int64_t sys = children ? p.cstime_ns : p.stime_ns;
      struct rusage ru = {};
      ru.ru_utime = NsToTimeval(user);
      ru.ru_stime = NsToTimeval(sys);
      return p.as->CopyOut(a[1], &ru, sizeof(ru)) ? 0 : -EFAULT;
    }
    case SYS_getrlimit:
    case SYS_prlimit64: {
      const bool pr = nr == SYS_prlimit64;
      const uint64_t out = pr ? a[3] : a[1];
      const int resource = static_cast<int>(pr ? a[1] : a[0]);
      if (out != 0) {
        struct rlimit r;
        if (getrlimit(static_cast<__rlimit_resource>(resource), &r) != 0) return -errno;
        if (!p.as->CopyOut(out, &r, sizeof(r))) return -EFAULT;
      }
      return 0;  // limits are accepted but not enforced
    }
    case SYS_setrlimit:
      return 0;
    case SYS_sched_getaffinity: {
      if (a[1] < 8) return -EINVAL;
      const uint64_t mask = options_.cpus >= 64 ? ~uint64_t{0} : (uint64_t{1} << options_.cpus) - 1;
      return p.as->CopyOut(a[2], &mask, sizeof(mask)) ? 8 : -EFAULT;
    }
    case SYS_sched_yield:
      if (!runq_.empty()) {
        p.state = Process::State::kRunnable;
        runq_.push_back(&p);
        SwitchOut(p);
      }
      return 0;
    case SYS_getrandom: {
      std::vector<unsigned char> bytes(std::min<uint64_t>(a[1], 4096));
      if (getrandom(bytes.data(), bytes.size(), 0) < 0) return -errno;
      return p.as->CopyOut(a[0], bytes.data(), bytes.size()) ? static_cast<int64_t>(bytes.size())
                                                             : -EFAULT;
    }
    case SYS_arch_prctl:
      switch (a[0]) {
        case 0x1001:  // ARCH_SET_GS
        case 0x1002:  // ARCH_SET_FS
          if (a[1] >= kUserTop) return -EPERM;
          p.vf.vx_tls.info[a[0] == 0x1002 ? 0 : 1].base = reinterpret_cast<void*>(a[1]);
          return 0;
        case 0x1003:  // ARCH_GET_FS
        case 0x1004: {  // ARCH_GET_GS
          const uint64_t base =
              reinterpret_cast<uint64_t>(p.vf.vx_tls.info[a[0] == 0x1003 ? 0 : 1].base);
          return p.as->CopyOut(a[1], &base, sizeof(base)) ? 0 : -EFAULT;
        }
        default:
          return -EINVAL;
      }
    case SYS_prctl:
      if (a[0] == 15 /* PR_SET_NAME */) {
        std::string name;
        if (!p.as->CopyInString(a[1], name, 16)) name.resize(std::min<size_t>(name.size(), 15));
        p.comm = name;
        return 0;
      }
      return -EINVAL;
    case SYS_set_robust_list:
      return 0;
    case SYS_futex: {
      const int op = static_cast<int>(a[1]) & FUTEX_CMD_MASK;
      if (op == FUTEX_WAKE) return 0;  // one thread per process: nobody waits
      if (op == FUTEX_WAIT) return -EAGAIN;
      return -ENOSYS;
    }
    case SYS_sync:
      sync();
      return 0;
    default:
      return -ENOSYS;
  }
}

}  // namespace minivk
