// minivk running busybox: each command line runs under `busybox sh -c` natively and as
// minivk's guest, on every backend this machine has; stdout and the exit status must be the
// same. The files they work on are made by the test in a fresh directory.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <vkrt/vmspace.h>

#include "test_support.h"

namespace {

struct Result {
  std::string out;
  int status = -1;  // exit status, 128 + N for signal N, -1 if it could not run
};

// Runs argv with cwd `dir`, stdin /dev/null, stdout captured, stderr to the test's stderr
// only when `show_stderr`. A 120 s watchdog kills the run's process group: a hang fails.
Result RunProgram(const std::vector<std::string>& args, const std::string& dir, bool show_stderr) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    if (chdir(dir.c_str()) != 0) _exit(126);
    const int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(out[1], 1);
    if (!show_stderr) dup2(null, 2);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  Result r;
  r.status = vkrt_test::AwaitChild(pid, out[0], &r.out, std::chrono::seconds(120));
  close(out[0]);
  return r;
}

class BusyboxUnderMinivk : public ::testing::TestWithParam<const char*> {
 protected:
  static void SetUpTestSuite() {
    char templ[] = "/tmp/minivk-busybox-XXXXXX";
    ASSERT_NE(nullptr, mkdtemp(templ));
    dir_ = templ;
    auto write_file = [](const std::string& path, const std::string& data) {
      const int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
      ASSERT_LE(0, fd) << path;
      ASSERT_EQ(static_cast<ssize_t>(data.size()), write(fd, data.data(), data.size()));
      close(fd);
    };
    write_file(dir_ + "/words.txt", "alpha\nbeta\ngamma\ndelta\nalpha\nepsilon\nbeta\nalpha\n");
    std::string data;
    uint32_t x = 12345;
    for (int i = 0; i < 300000; ++i) {  // ~300 KB of deterministic bytes
      x = x * 1103515245 + 12345;
      data.push_back(static_cast<char>(x >> 16));
    }
    write_file(dir_ + "/data.bin", data);
    ASSERT_EQ(0, mkdir((dir_ + "/sub").c_str(), 0755));
    write_file(dir_ + "/sub/one.txt", "1\n");
    write_file(dir_ + "/sub/two.txt", "2\n2\n");
    {
      // /bin/true naming an interpreter that does not exist.
      std::string elf;
      const int fd = open("/bin/true", O_RDONLY);
      ASSERT_LE(0, fd);
      char buf[65536];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) elf.append(buf, static_cast<size_t>(n));
      close(fd);
      const std::string interp = "/lib64/ld-linux-x86-64.so.2";
      const size_t at = elf.find(interp + '\0');
      ASSERT_NE(std::string::npos, at) << "/bin/true does not name " << interp;
      elf[at + interp.size() - 1] = 'X';
      write_file(dir_ + "/badinterp", elf);
      ASSERT_EQ(0, chmod((dir_ + "/badinterp").c_str(), 0755));
    }
    write_file(dir_ + "/script.sh", "#!/bin/busybox sh\necho \"script $1\"\nexit 5\n");
    chmod((dir_ + "/script.sh").c_str(), 0755);
  }
  static void TearDownTestSuite() {
    RunProgram({"/bin/rm", "-rf", dir_}, "/", false);
  }
  static std::string dir_;
};
std::string BusyboxUnderMinivk::dir_;

// The command lines: pipelines, loops, redirections, subshells, signals, and the applets the
// issue names, each on the files made above (the directory is the working directory).
const char* const kCommands[] = {
    "echo hello | wc -c",
    "for i in 1 2 3 4 5; do echo \"line $i\"; done | sort -r | uniq -c",
    "x=$( (echo a; echo b; echo a) | sort | uniq | wc -l ); echo \"sub $x\"",
    "sort words.txt | uniq -c | sort -rn | head -n 2",
    "seq 1 1000 | awk '{s+=$1} END {print s}'",
    "awk -F a '{print NF, $0}' words.txt",
    "sha256sum data.bin; cat data.bin | sha256sum",
    "gzip -c data.bin > d.gz && gunzip -c d.gz | sha256sum && rm d.gz",
    "gzip -9 -c words.txt | gunzip | wc -l",
    "sed -e 's/alpha/ALPHA/g' -e '/gamma/d' words.txt",
    "find . -name '*.txt' | sort | xargs wc -l",
    "find sub -type f | sort | xargs -n 1 cat",
    "echo out; echo err >&2; exit 7",
    "cat < words.txt > copy.txt && cmp words.txt copy.txt && echo same; rm -f copy.txt",
    "(cd sub && ls -1 && pwd | sed 's,.*/,,'); echo $?",
    "trap 'echo caught USR1' USR1; kill -USR1 $$; echo after",
    "busybox sh -c 'kill -TERM $$'; echo \"status $?\"",
    "i=0; while [ $i -lt 200 ]; do i=$((i+1)); done; echo $i",
    "yes | head -n 3",
    "sleep 0.05 & wait; echo waited $?",
    "cat words.txt | tr a-z A-Z | tail -n 2",
    "false | true; echo $?; true | false; echo $?",
    "ls /nonexistent-minivk-path 2>/dev/null; echo \"rc $?\"",
    "read line < words.txt; echo \"first: $line\"",
    "echo a > f1; echo b >> f1; cat f1; wc -l < f1; rm f1",
    "dd if=data.bin bs=4096 count=3 2>/dev/null | wc -c",
    "od -An -tx1 -N8 data.bin",
    "exec busybox echo replaced by exec",
    "readlink /proc/self/exe; cd /bin && ./busybox readlink /proc/self/exe",  // links resolved
    "./script.sh arg; echo \"script exit $?\"",
    "for f in sub/*.txt; do (read v < $f; echo \"$f $v\" > $f.out) & done; wait; "
    "cat sub/*.out; rm sub/*.out; echo all done",
    "busybox sh -c 'exit 3' | cat; echo \"pipe $?\"",
    "mkdir -p tmpd/a/b && touch tmpd/a/b/c && find tmpd | sort && rm -r tmpd && echo gone",
    "echo $((6 * 7)); printf '%s-%03d\\n' x 5",
    // Named pipes: each end's open waits for the other (in either order), a reader's open
    // ends with a signal, and O_RDWR never waits.
    "mkfifo ff && { echo through fifo > ff & cat ff; wait; }; { seq 1 20000 > ff & wc -l < ff; "
    "wait; }; { cat ff & echo writer waits > ff; wait; }; timeout 0.2 cat ff; "
    "echo \"timeout $?\"; exec 3<>ff; echo both ends >&3; read l <&3; echo $l; rm ff",
    "seq 1 20000 | sort -n | tail -n 1",
    // glibc's GLIBC_TUNABLES parser reads past its string's end, up to the zero word Linux
    // leaves at the top of the stack.
    "env GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX2 /bin/busybox echo tunables read",
};

// Dynamically linked programs (Debian's essential packages: coreutils, grep, sed, bash, dash,
// perl-base), which minivk starts in their ELF interpreter as Linux does; busybox sh finds
// them in PATH for the commands it has no applet for (nice, comm, split on Debian).
const char* const kDynamicCommands[] = {
    "/bin/ls -1 sub | /usr/bin/sort -r",
    // statx, and the extended attributes ls -l reads (ACLs, security labels).
    "/bin/ls -l words.txt | /usr/bin/cut -d' ' -f1,5; /bin/ls -l sub > /dev/null; echo \"ls $?\"",
    "/usr/bin/stat -c '%s %F %a' words.txt sub",
    "/bin/cat words.txt | /usr/bin/sort | /usr/bin/uniq -c | /usr/bin/sort -rn | /usr/bin/head -n 2",
    "/bin/grep -c alpha words.txt; /bin/sed -n 2p words.txt",
    "/usr/bin/sha256sum data.bin",
    "echo x | /usr/bin/nice -n 1 /bin/cat; /usr/bin/nice -n 5 /usr/bin/nice",
    "/usr/bin/comm -12 words.txt words.txt | /usr/bin/wc -l",
    "/usr/bin/perl -e 'print join(q(,), map { $_ * $_ } 1..5), qq(\n)'",
    "/bin/bash -c 'a=(x y z); echo ${#a[@]} ${a[1]}; /bin/ls sub | /usr/bin/wc -l; exit 4'; "
    "echo \"bash $?\"",
    "/bin/sh -c 'echo dash $((1 + 2))'",
    "/usr/bin/env -i /bin/echo empty environment",
    // Timers: coreutils' timeout arms a timer_create timer; perl's alarm is alarm(2).
    "/usr/bin/timeout 0.2 /bin/sleep 5; echo \"timeout $?\"",
    "/usr/bin/perl -e '$SIG{ALRM} = sub { print qq(alarm\\n); exit 3 }; alarm 1; sleep 5'; "
    "echo \"perl $?\"",
    // An interpreter that is not there: execve fails with ENOENT, as on Linux.
    "./badinterp; echo \"rc $?\"",
};

std::string Describe(const std::string& command, const Result& r) {
  return "`" + command + "` -> status " + std::to_string(r.status) + ", stdout:\n" + r.out;
}

// Each command under `busybox sh -c`, natively and under minivk on `backend`, in `dir`:
// the same stdout and exit status.
template <size_t N>
void ExpectSameAsNative(const std::string& backend, const char* const (&commands)[N],
                        const std::string& dir) {
  for (const char* command : commands) {
    const Result native = RunProgram({"/bin/busybox", "sh", "-c", command}, dir, false);
    ASSERT_NE(-1, native.status) << command;
    const Result guest = RunProgram(
        {MINIVK_BIN, "--backend=" + backend, "/bin/busybox", "sh", "-c", command}, dir, true);
    EXPECT_EQ(native.status, guest.status)
        << backend << "\nnative: " << Describe(command, native)
        << "\nminivk: " << Describe(command, guest);
    EXPECT_EQ(native.out, guest.out) << backend << ": `" << command << "`";
  }
}

TEST_P(BusyboxUnderMinivk, SameStdoutAndStatusAsNative) {
  const std::string backend = GetParam();
  const char* why = nullptr;
  if (vkrt_backend_available(backend.c_str(), &why) != 0) {
    GTEST_SKIP() << "backend " << backend << " unavailable here: " << (why ? why : "?");
  }
  ExpectSameAsNative(backend, kCommands, dir_);
}

TEST_P(BusyboxUnderMinivk, DynamicallyLinkedProgramsRunInTheirInterpreter) {
  const std::string backend = GetParam();
  const char* why = nullptr;
  if (vkrt_backend_available(backend.c_str(), &why) != 0) {
    GTEST_SKIP() << "backend " << backend << " unavailable here: " << (why ? why : "?");
  }
  ExpectSameAsNative(backend, kDynamicCommands, dir_);
  // A dynamically linked program as minivk's first process, and the error for one whose
  // interpreter is missing.
  const Result ls = RunProgram({MINIVK_BIN, "--backend=" + backend, "/bin/ls", "sub"}, dir_, true);
  EXPECT_EQ(0, ls.status);
  EXPECT_EQ("one.txt\ntwo.txt\n", ls.out);
  const Result bad = RunProgram({"/bin/sh", "-c", std::string(MINIVK_BIN) + " --backend=" +
                                                      backend + " ./badinterp 2>&1"},
                                dir_, false);
  EXPECT_NE(0, bad.status);
  EXPECT_NE(std::string::npos, bad.out.find("interpreter /lib64/ld-linux-x86-64.so.X")) << bad.out;
}

INSTANTIATE_TEST_SUITE_P(Backends, BusyboxUnderMinivk,
                         ::testing::Values("seccomp", "ptrace", "kvm"),
                         [](const auto& info) { return std::string(info.param); });

// Two vkernel threads (--cpus=2) give the same results.
TEST(MinivkOptions, TwoCpusRunTheSamePipelines) {
  char templ[] = "/tmp/minivk-cpus-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(templ));
  const std::string command =
      "for i in $(seq 1 30); do echo $i | wc -c; done | sort | uniq -c; "
      "(seq 1 30000 | sha256sum) & (seq 1 30000 | md5sum) & wait";
  const Result native = RunProgram({"/bin/busybox", "sh", "-c", command}, templ, false);
  const Result guest =
      RunProgram({MINIVK_BIN, "--cpus=2", "/bin/busybox", "sh", "-c", command}, templ, true);
  EXPECT_EQ(native.status, guest.status);
  // The two background jobs may finish in either order.
  auto sorted_lines = [](const std::string& s) {
    std::vector<std::string> lines;
    size_t at = 0;
    while (at < s.size()) {
      const size_t nl = s.find('\n', at);
      lines.push_back(s.substr(at, nl - at));
      at = nl == std::string::npos ? s.size() : nl + 1;
    }
    std::sort(lines.begin(), lines.end());
    return lines;
  };
  EXPECT_EQ(sorted_lines(native.out), sorted_lines(guest.out)) << guest.out;
  rmdir(templ);
}

// The vkernel thread stays on one CPU while minivk may use more CPUs than --cpus, and not
// with --no-pin. The guest reads /proc/self/status through minivk, which opens it: the
// status is minivk's own (its first thread, vkernel thread 0).
TEST(MinivkOptions, VkernelThreadStaysOnOneCpuWithCpusToSpare) {
  cpu_set_t mine;
  ASSERT_EQ(0, sched_getaffinity(0, sizeof(mine), &mine));
  const int allowed = CPU_COUNT(&mine);
  const std::vector<std::string> grep = {"/bin/busybox", "grep", "Cpus_allowed_list",
                                         "/proc/self/status"};
  // "Cpus_allowed_list:\t0-1,4\n" -> 3: how many CPUs the list names; -1 if none.
  auto cpus_of = [](const std::string& out) {
    const size_t tab = out.find('\t');
    if (tab == std::string::npos) return -1;
    int count = 0;
    const char* at = out.c_str() + tab + 1;
    while (*at >= '0' && *at <= '9') {
      char* end = nullptr;
      const long lo = strtol(at, &end, 10);
      const long hi = *end == '-' ? strtol(end + 1, &end, 10) : lo;
      count += static_cast<int>(hi - lo + 1);
      at = *end == ',' ? end + 1 : end;
    }
    return count;
  };
  for (const char* backend : {"seccomp", "ptrace", "kvm"}) {
    if (vkrt_backend_available(backend, nullptr) != 0) continue;
    // How many CPUs minivk's first thread may use, run with `option`.
    auto cpus_with = [&](const std::string& option) {
      std::vector<std::string> args = {MINIVK_BIN, std::string("--backend=") + backend};
      if (!option.empty()) args.push_back(option);
      args.insert(args.end(), grep.begin(), grep.end());
      const Result r = RunProgram(args, "/", false);
      EXPECT_EQ(0, r.status) << backend << " " << option << ": " << r.out;
      return cpus_of(r.out);
    };
    EXPECT_EQ(allowed > 1 ? 1 : allowed, cpus_with("")) << backend;
    EXPECT_EQ(allowed, cpus_with("--no-pin")) << backend;
    // --cpus=N with no CPU to spare: not pinned (--cpus goes to 64).
    if (allowed <= 64) {
      EXPECT_EQ(allowed, cpus_with("--cpus=" + std::to_string(allowed))) << backend;
    }
  }
}

// --read-only refuses changes (EROFS) and allows reading, as a read-only mount does: devices
// and FIFOs stay writable, a missing name is ENOENT unless it would be created; --root makes
// another directory the guest's "/".
TEST(MinivkOptions, ReadOnlyAndRoot) {
  char templ[] = "/tmp/minivk-root-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(templ));
  const std::string dir = templ;
  ASSERT_EQ(0, mkdir((dir + "/bin").c_str(), 0755));
  ASSERT_EQ(0, symlink("/bin/busybox", (dir + "/bin/busybox").c_str()));
  {
    const int fd = open((dir + "/hello.txt").c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_LE(0, fd);
    ASSERT_EQ(3, write(fd, "hi\n", 3));
    close(fd);
  }
  ASSERT_EQ(0, mkfifo((dir + "/ff").c_str(), 0644));
  ASSERT_EQ(0, symlink("hello.txt", (dir + "/ln").c_str()));
  Result r = RunProgram({MINIVK_BIN, "--read-only", "/bin/busybox", "sh", "-c",
                  "cat hello.txt; echo x > new.txt; echo \"write $?\"; rm hello.txt; "
                  "echo \"rm $?\"; echo fine > /dev/null; echo \"null $?\"; "
                  "echo more >> hello.txt; echo \"append $?\"; "
                  "(echo through > ff &); cat ff; echo \"fifo $?\"; "
                  "cat missing 2>&1; mkdir -p bin; echo \"mkdir -p $?\"; ls"},
                 dir, false);
  EXPECT_EQ(0, r.status);
  EXPECT_EQ(
      "hi\nwrite 1\nrm 1\nnull 0\nappend 1\nthrough\nfifo 0\n"
      "cat: can't open 'missing': No such file or directory\nmkdir -p 0\nbin\nff\nhello.txt\nln\n",
      r.out);
  // open(2), access(2) and the calls that make, change or remove names give a read-only
  // mount's answers, in its order (each checked once against a read-only bind mount of such
  // a directory).
  const struct {
    std::vector<std::string> args;
    const char* answer;
  } kCalls[] = {
      {{"open", "hello.txt", "wronly", "creat", "excl"}, "EEXIST"},
      {{"open", "ln", "creat", "excl"}, "EEXIST"},
      {{"open", "new2", "wronly", "creat"}, "EROFS"},
      {{"open", "missing", "wronly"}, "ENOENT"},
      {{"open", "bin", "wronly"}, "EISDIR"},
      {{"open", "bin", "rdonly", "creat"}, "EISDIR"},
      {{"open", "ln", "wronly", "nofollow"}, "ELOOP"},
      {{"open", "ln", "wronly"}, "EROFS"},
      {{"open", "hello.txt", "rdonly", "trunc"}, "EROFS"},
      {{"open", "hello.txt", "wronly", "append"}, "EROFS"},
      {{"open", "hello.txt", "wronly", "path"}, "ok"},
      {{"open", "/dev/null", "wronly"}, "ok"},
      {{"access-w", "hello.txt"}, "EROFS"},
      {{"access-w", "bin"}, "EROFS"},
      {{"access-w", "missing"}, "ENOENT"},
      {{"access-w", "ff"}, "ok"},
      {{"access-w", "/dev/null"}, "ok"},
      {{"fs", "mkdir", "bin"}, "EEXIST"},  // so `mkdir -p` of a directory that exists works
      {{"fs", "mkdir", "bin/"}, "EEXIST"},
      {{"fs", "mkdir", "ln"}, "EEXIST"},
      {{"fs", "mkdir", "new"}, "EROFS"},
      {{"fs", "mkdir", "missing/new"}, "ENOENT"},
      {{"fs", "mkdir", "hello.txt/new"}, "ENOTDIR"},
      {{"fs", "mkfifo", "ff"}, "EEXIST"},
      {{"fs", "mkfifo", "new"}, "EROFS"},
      {{"fs", "symlink", "bin", "x"}, "EEXIST"},
      {{"fs", "symlink", "new", "x"}, "EROFS"},
      {{"fs", "link", "hello.txt", "bin"}, "EEXIST"},
      {{"fs", "link", "hello.txt", "new"}, "EROFS"},
      {{"fs", "link", "missing", "new"}, "ENOENT"},
      {{"fs", "rmdir", "bin"}, "EROFS"},
      {{"fs", "rmdir", "missing"}, "EROFS"},
      {{"fs", "unlink", "missing/x"}, "ENOENT"},
      {{"fs", "rename", "hello.txt", "x"}, "EROFS"},
      {{"fs", "rename", "hello.txt", "missing/x"}, "ENOENT"},
      {{"fs", "chmod", "hello.txt"}, "EROFS"},
      {{"fs", "chmod", "missing"}, "ENOENT"},
      {{"fs", "chown", "hello.txt"}, "EROFS"},
      {{"fs", "utime", "missing"}, "ENOENT"},
      {{"fs", "truncate", "hello.txt"}, "EROFS"},
      {{"fs", "truncate", "bin"}, "EISDIR"},
      {{"fs", "truncate", "ff"}, "EINVAL"},
  };
  for (const auto& call : kCalls) {
    std::vector<std::string> argv = {MINIVK_BIN, "--read-only", MINIVK_GUEST};
    argv.insert(argv.end(), call.args.begin(), call.args.end());
    r = RunProgram(argv, dir, true);
    EXPECT_EQ(0, r.status);
    std::string what;
    for (const std::string& arg : call.args) what += " " + arg;
    EXPECT_EQ(std::string(call.answer) + "\n", r.out) << "minivk_guest" << what;
  }
  struct stat st;
  EXPECT_NE(0, stat((dir + "/new.txt").c_str(), &st)) << "--read-only let a file be created";
  EXPECT_EQ(0, stat((dir + "/hello.txt").c_str(), &st)) << "--read-only let a file be removed";
  // In the guest, / is the directory (the symbolic link's target /bin/busybox is resolved by
  // the host, so busybox itself is still found).
  r = RunProgram({MINIVK_BIN, "--root=" + dir, "/bin/busybox", "sh", "-c",
           "cat /hello.txt; ls /; cd /bin && pwd"},
          "/", false);
  EXPECT_EQ(0, r.status);
  EXPECT_EQ("hi\nbin\nff\nhello.txt\nln\n/bin\n", r.out);
  RunProgram({"/bin/rm", "-rf", dir}, "/", false);
}

// Runs minivk_guest with `args` natively and as minivk's guest on every backend here: the
// exit status must be 0 and the output the same. The native output.
std::string ExpectSameOutputAsNative(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {MINIVK_GUEST};
  argv.insert(argv.end(), args.begin(), args.end());
  const Result native = RunProgram(argv, "/", true);
  EXPECT_EQ(0, native.status) << native.out;
  for (const char* backend : {"seccomp", "ptrace", "kvm"}) {
    if (vkrt_backend_available(backend, nullptr) != 0) continue;
    std::vector<std::string> under = {MINIVK_BIN, std::string("--backend=") + backend};
    under.insert(under.end(), argv.begin(), argv.end());
    const Result r = RunProgram(under, "/", true);
    EXPECT_EQ(0, r.status) << backend << "\n" << r.out;
    EXPECT_EQ(native.out, r.out) << backend;
  }
  return native.out;
}

// alarm, setitimer/getitimer and timer_create timers: the guest prints what it saw, which
// must be what it prints natively.
TEST(MinivkGuest, TimersDeliverTheirSignals) {
  ExpectSameOutputAsNative({"timers"});
}

// CPU-time accounting (getrusage, times, wait4's rusage, the CPU clocks) and the CPU-time
// timers (ITIMER_VIRTUAL, ITIMER_PROF, also in a loop that never makes a system call): the
// guest prints what it saw, which must be what it prints natively.
TEST(MinivkGuest, CpuTimeIsTheGuestsOwn) {
  ExpectSameOutputAsNative({"cputime"});
}

// sigaltstack: SA_ONSTACK handlers run on the alternate stack (a stack overflow is caught
// there, twice, leaving by siglongjmp), what sigaltstack reports inside and outside them,
// SS_AUTODISARM and the refusals: the same as natively.
TEST(MinivkGuest, AlternateSignalStack) {
  ExpectSameOutputAsNative({"altstack"});
}

// siginfo as Linux fills it (kill, tgkill, sigqueue, SIGCHLD exited and killed, a POSIX
// timer's value and overruns), sigwaitinfo/sigtimedwait, and an ignored signal that came
// while blocked not ending a sigsuspend: the same as natively.
TEST(MinivkGuest, SignalInformation) {
  ExpectSameOutputAsNative({"siginfo"});
}

// A handler left by siglongjmp leaves nothing behind in minivk: its frame's saved FPU
// state is dropped when the stack is reused (it once stayed, ~11 KiB a time with AMX:
// 50,000 such signals grew minivk by 540 MB).
TEST(MinivkGuest, HandlersLeftByLongjmpCostNothing) {
  int out[2];
  ASSERT_EQ(0, pipe2(out, O_CLOEXEC));
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    dup2(out[1], 1);
    execl(MINIVK_BIN, MINIVK_BIN, MINIVK_GUEST, "longjmp", "50000", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  std::string text;
  struct rusage usage = {};
  EXPECT_EQ(0, vkrt_test::AwaitChild(pid, out[0], &text, std::chrono::seconds(120), &usage));
  close(out[0]);
  EXPECT_EQ("done 50000\n", text);
  EXPECT_LT(usage.ru_maxrss, 100 * 1024) << "minivk's peak RSS in KiB";
}

// Copy-on-write after fork: each side keeps its own values, on every backend.
TEST(MinivkGuest, CopyOnWriteKeepsEachSidesValues) {
  const std::string native = ExpectSameOutputAsNative({"cow", "512"});
  EXPECT_EQ("child 0, parent kept 512 of 512 pages\n", native);
}

// A guest's faults become signals the Linux way: without a handler the process dies of
// SIGSEGV (minivk exits 128 + 11); with one, the handler gets the faulting address. FPU
// state is the process's own across system calls, fork and a signal handler. On every
// backend.
TEST(MinivkGuest, FaultsSignalsAndFpuState) {
  for (const char* backend : {"seccomp", "ptrace", "kvm"}) {
    if (vkrt_backend_available(backend, nullptr) != 0) continue;
    const std::string flag = std::string("--backend=") + backend;
    Result r = RunProgram({MINIVK_BIN, flag, MINIVK_GUEST, "segv"}, "/", false);
    EXPECT_EQ(128 + SIGSEGV, r.status) << backend;
    r = RunProgram({MINIVK_BIN, flag, MINIVK_GUEST, "segv-handler"}, "/", false);
    EXPECT_EQ(42, r.status) << backend;
    EXPECT_EQ("SIGSEGV at 0x10\n", r.out) << backend;
    r = RunProgram({MINIVK_BIN, flag, MINIVK_GUEST, "fpu"}, "/", true);
    EXPECT_EQ(0, r.status) << backend;
    EXPECT_EQ("xmm0 kept, mxcsr kept, handler ran\n", r.out) << backend;
    r = RunProgram({MINIVK_BIN, flag, MINIVK_GUEST, "touch", "300"}, "/", true);
    EXPECT_EQ(0, r.status) << backend;
    EXPECT_NE(std::string::npos, r.out.find("ns per page")) << r.out;
    r = RunProgram({MINIVK_BIN, flag, MINIVK_GUEST, "getppid", "1000"}, "/", true);
    EXPECT_EQ(0, r.status) << backend;
    EXPECT_NE(std::string::npos, r.out.find("ns per getppid")) << r.out;
  }
  // --trace names the fault and the signal.
  const Result r = RunProgram({"/bin/sh", "-c", std::string(MINIVK_BIN) + " --trace " + MINIVK_GUEST +
                                             " segv 2>&1"},
                       "/", false);
  EXPECT_NE(std::string::npos, r.out.find("fault at 0x10 (read)")) << r.out;
  EXPECT_NE(std::string::npos, r.out.find("signal 11 (default)")) << r.out;
}

}  // namespace
