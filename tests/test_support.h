// Test helpers shared by the suites: backend names for parameterised tests, a watchdog
// instead of a hang, and threads that never take the test's signals.
#ifndef VKRT_TESTS_TEST_SUPPORT_H_
#define VKRT_TESTS_TEST_SUPPORT_H_

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

namespace vkrt_test {

// The name a parameterised test instance carries for a VKRT_TYPE_* backend.
inline const char* BackendName(int type) {
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

// "" if backend `type` can run here; otherwise why not (for GTEST_SKIP: a missing kernel
// feature such as /dev/kvm).
inline std::string UnavailableReason(int type) {
  const char* why = nullptr;
  errno = 0;
  if (vkrt_backend_available(BackendName(type), &why) == 0) return "";
  return std::string("backend ") + BackendName(type) +
         " is not available here: " + (why != nullptr ? why : strerror(errno));
}

// A thread with every signal blocked, so signals aimed at the process reach the test thread.
inline std::thread SpawnWithSignalsBlocked(std::function<void()> fn) {
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  std::thread t(std::move(fn));
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return t;
}

// One line of /proc/<pid>/task/<tid>/`file` (comm, wchan, syscall), "" if unreadable.
inline std::string ProcTaskLine(const std::string& task, const char* file) {
  std::ifstream in(task + "/" + file);
  std::string line;
  std::getline(in, line);
  return line;
}

// For a hang's post-mortem: every thread of process `pid` (its name, state, where it sleeps
// in the kernel and the system call it is in, with its arguments) on stderr.
inline void DumpThreads(long pid, const char* who) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  fprintf(stderr, "WATCHDOG: threads of %s (pid %ld):\n", who, pid);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string task = dir + "/" + e->d_name;
    const std::string stat = ProcTaskLine(task, "stat");
    const size_t paren = stat.rfind(')');
    const char state = paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
    fprintf(stderr, "  tid %s %-16s %c wchan=%s syscall=%s\n", e->d_name,
            ProcTaskLine(task, "comm").c_str(), state, ProcTaskLine(task, "wchan").c_str(),
            ProcTaskLine(task, "syscall").c_str());
  }
  closedir(d);
}

// Every process id in /proc.
inline std::vector<long> AllPids() {
  std::vector<long> pids;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return pids;
  while (dirent* e = readdir(proc)) {
    char* end = nullptr;
    const long pid = strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0') pids.push_back(pid);
  }
  closedir(proc);
  return pids;
}

// Every process whose parent is `pid` (from /proc/*/stat).
inline std::vector<long> ChildrenOf(long pid) {
  std::vector<long> children;
  for (long p : AllPids()) {
    std::ifstream in("/proc/" + std::to_string(p) + "/stat");
    std::string stat;
    std::getline(in, stat);
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 4 >= stat.size()) continue;
    if (strtol(stat.c_str() + paren + 4, nullptr, 10) == pid) children.push_back(p);
  }
  return children;
}

// Aborts the process with a message unless destroyed within `limit`. Before it aborts, it
// prints what every thread of this process and of its children (a forked vkernel, stub
// processes) is doing: a hang in CI leaves that much behind.
class Watchdog {
 public:
  Watchdog(std::string what, std::chrono::seconds limit) : what_(std::move(what)) {
    thread_ = SpawnWithSignalsBlocked([this, limit] {
      std::unique_lock<std::mutex> lock(mu_);
      waiting_ = true;
      cv_.notify_all();
      if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
        fprintf(stderr, "WATCHDOG: %s did not finish within %lld s; aborting\n", what_.c_str(),
                static_cast<long long>(limit.count()));
        DumpThreads(getpid(), "this test");
        int shown = 0;
        for (long child : ChildrenOf(getpid())) {
          if (++shown > 8) break;  // (a few: a vkernel's hundred stubs say the same)
          DumpThreads(child, "a child");
          for (long grandchild : ChildrenOf(child)) {
            if (++shown > 8) break;
            DumpThreads(grandchild, "a grandchild");
          }
        }
        fflush(stderr);
        abort();
      }
    });
    // Returns once the thread waits (holding no lock): a test that forks next must not fork
    // while the thread is still starting up (under ASan a child once inherited a lock of
    // that start-up and hung).
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return waiting_; });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  bool waiting_ = false;  // the thread has started and waits
  std::thread thread_;
};

// Waits for child `pid`, which made itself a process-group leader (setpgid(0, 0)) before
// it exec'd, appending what arrives on `out_fd` (-1: nothing to read) to `*out` until EOF.
// Past `limit` the child's threads are shown on stderr and its whole process group is
// killed: a hang becomes a failing status, not a hung suite. (alarm(2) in the child is no
// watchdog for minivk: minivk takes SIGALRM for its own scheduler.) Returns the exit status,
// 128 + N for signal N, -1 if waiting failed; `usage`, if given, gets the child's rusage.
inline int AwaitChild(pid_t pid, int out_fd, std::string* out, std::chrono::seconds limit,
                      struct rusage* usage = nullptr) {
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool reading = out_fd >= 0;
  bool exited = pidfd < 0;  // without a pidfd, waitpid below blocks (no watchdog)
  bool killed = false;
  char buf[4096];
  while (reading || !exited) {
    pollfd fds[2];
    nfds_t n = 0;
    if (reading) fds[n++] = {out_fd, POLLIN, 0};
    if (!exited) fds[n++] = {pidfd, POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    const int wait_ms = killed ? 5000 : static_cast<int>(std::max<long long>(0, left.count()));
    const int ready = poll(fds, n, wait_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      if (killed) break;  // something outside the group still holds the pipe
      fprintf(stderr, "WATCHDOG: child %d did not finish within %lld s; killing its group\n",
              pid, static_cast<long long>(limit.count()));
      DumpThreads(pid, "the child");
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      killed = true;
      continue;
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd == pidfd) {
        exited = true;
        continue;
      }
      const ssize_t got = read(out_fd, buf, sizeof(buf));
      if (got > 0) {
        out->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        reading = false;
      }
    }
  }
  if (pidfd >= 0) close(pidfd);
  int raw = 0;
  if (wait4(pid, &raw, 0, usage) != pid) return -1;
  return WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
}

// The entries of a /proc directory (fd/, task/, ...) other than . and ..; -1 if unreadable.
inline long CountDirEntries(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (d == nullptr) return -1;
  long n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

// The number after `key` (e.g. "VmRSS:") in a /proc status file; -1 if absent.
inline long StatusField(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) == 0)
      return strtol(line.c_str() + key.size(), nullptr, 10);
  }
  return -1;
}

}  // namespace vkrt_test

#endif  // VKRT_TESTS_TEST_SUPPORT_H_
