/* A small static Linux program for minivk's tests and benchmarks (built with -static, so it
 * runs as a minivk guest):
 *   getppid N        N getppid() calls; prints the nanoseconds per call
 *   touch N          writes one byte to each of N new pages; prints nanoseconds per page
 *   segv             reads address 16 (dies of SIGSEGV)
 *   segv-handler     the same with a SIGSEGV handler that prints si_addr and exits 42
 *   fpu              xmm registers and MXCSR survive system calls, a fork and a signal
 *   forkexec N PROG [ARG...]   N times fork, exec PROG, wait; prints microseconds per round
 *   time PROG [ARG...]         runs PROG (fork, exec, wait) with its stdout on /dev/null;
 *                              prints its milliseconds
 *   alloc        mmaps 1 MiB chunks and touches every page until mmap fails, then does the
 *                same with brk; prints how much each gave and the error (exit 1 if one never
 *                failed within 64 GiB or failed with another error)
 *   timers       alarm, setitimer/getitimer(ITIMER_REAL) and a timer_create timer (relative and
 *                absolute) deliver their signals; prints what it saw (the same natively)
 *   oom          touches every page of a 16 GiB MAP_NORESERVE mapping (a vkernel with less
 *                memory must kill it; exit 1 if it survives)
 *   cow N        writes N pages, forks a child that writes one and exits, then checks and
 *                writes them all again; prints what each side saw
 *   cputime      CPU-time accounting: getrusage, times, wait4's rusage, the CPU clocks (own
 *                and by pid), ITIMER_VIRTUAL and ITIMER_PROF (also for a loop that makes no
 *                system call); prints what it saw (the same natively)
 *   altstack     sigaltstack: handlers with SA_ONSTACK run on the alternate stack (also for a
 *                stack overflow, recovered from twice with siglongjmp), what sigaltstack
 *                reports inside and outside them, SS_AUTODISARM, refusals; prints what it saw
 *   siginfo      what handlers and sigwaitinfo/sigtimedwait learn from siginfo: kill, tgkill,
 *                sigqueue, SIGCHLD (exited, killed), a POSIX timer's si_value and overruns
 *                while its signal waits, a timeout; prints what it saw (the same natively)
 *   longjmp N    N times leaves a signal handler by siglongjmp; prints "done N"
 *   open PATH FLAG...  open(2) with the flags named (rdonly wronly rdwr creat excl trunc
 *                append path nofollow); prints "ok" or the error's name
 *   access-w PATH      access(PATH, W_OK); prints "ok" or the error's name
 *   fs OP PATH [PATH2] one file system call (mkdir rmdir unlink rename link symlink chmod
 *                      chown truncate utime mkfifo); prints "ok" or the error's name
 * (The timed modes measure inside the guest world, so a vkernel's or a UML boot's start-up
 * is not counted.) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xmmintrin.h>

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static void on_segv(int sig, siginfo_t* info, void* ctx) {
  (void)sig;
  (void)ctx;
  printf("SIGSEGV at %p\n", info->si_addr);
  fflush(stdout);
  _exit(42);
}

static volatile int handled;
static void on_usr1(int sig) {
  (void)sig;
  /* Clobber xmm0 in the handler: the interrupted code must get its own value back. */
  __m128 junk = _mm_set1_ps(-1.0f);
  __asm__ volatile("movaps %0, %%xmm0" ::"x"(junk) : "xmm0");
  handled = 1;
}

/* Reports through write(2) only: stdio would allocate, and memory is what runs out here. */
static void say(const char* what, long mib, int err) {
  char line[128];
  const int n = snprintf(line, sizeof(line), "%s: %s after %ld MiB\n", what,
                         err == ENOMEM ? "ENOMEM" : strerror(err), mib);
  if (write(1, line, (size_t)n) != n) _exit(3);
}

enum { kAllocChunk = 1 << 20 };
static const long kAllocBoundMib = 64 * 1024;

/* mmap until it fails; returns the error (0 if the bound was reached), *mib what it got. */
static int alloc_mmap(long* mib) {
  static char* chunks[64 * 1024];
  int err = 0;
  for (*mib = 0; *mib < kAllocBoundMib; ++*mib) {
    char* p = mmap(NULL, kAllocChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      err = errno;
      break;
    }
    for (long off = 0; off < kAllocChunk; off += 4096) p[off] = 1;
    chunks[*mib] = p;
  }
  /* Given back, so that brk has the same memory to try. */
  for (long i = 0; i < *mib; ++i) munmap(chunks[i], kAllocChunk);
  return err;
}

static int alloc_brk(long* mib) {
  for (*mib = 0; *mib < kAllocBoundMib; ++*mib) {
    char* p = sbrk(kAllocChunk);
    if (p == (void*)-1) return errno;
    for (long off = 0; off < kAllocChunk; off += 4096) p[off] = 1;
  }
  return 0;
}

static volatile int alarms, usr2s;
static void on_alarm(int sig) { (void)sig; ++alarms; }
static void on_usr2(int sig) { (void)sig; ++usr2s; }

/* Waits (signals blocked, then sigsuspend) until *count reaches n; 0 on success. */
static int wait_for(volatile int* count, int n) {
  sigset_t none;
  sigemptyset(&none);
  const int64_t give_up = now_ns() + 10000000000LL;
  while (*count < n) {
    if (now_ns() > give_up) return -1;
    sigsuspend(&none);
  }
  return 0;
}

static int timers(void) {
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGALRM);
  sigaddset(&block, SIGUSR2);
  sigprocmask(SIG_BLOCK, &block, NULL);
  signal(SIGALRM, on_alarm);
  signal(SIGUSR2, on_usr2);
  /* alarm: the old alarm's seconds left. (What was armed before is not printed: a test
   * harness's watchdog alarm survives exec natively. This ITIMER_REAL replaces it.) */
  alarm(5);
  printf("alarm(5), then alarm(0): %u\n", alarm(0));
  /* A periodic ITIMER_REAL. */
  struct itimerval every = {{0, 20000}, {0, 20000}}, got, off = {{0, 0}, {0, 0}};
  if (setitimer(ITIMER_REAL, &every, NULL) != 0) return perror("setitimer"), 1;
  if (getitimer(ITIMER_REAL, &got) != 0) return perror("getitimer"), 1;
  printf("itimer armed: interval %ld us, value in (0, 20000]: %d\n", (long)got.it_interval.tv_usec,
         got.it_value.tv_sec == 0 && got.it_value.tv_usec > 0 && got.it_value.tv_usec <= 20000);
  if (wait_for(&alarms, 3) != 0) return printf("itimer: only %d ticks\n", alarms), 1;
  setitimer(ITIMER_REAL, &off, &got);
  getitimer(ITIMER_REAL, &got);
  printf("itimer: 3 ticks, then off: %d\n", got.it_value.tv_sec == 0 && got.it_value.tv_usec == 0);
  /* timer_create with SIGUSR2: relative, then absolute. */
  struct sigevent ev;
  memset(&ev, 0, sizeof(ev));
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGUSR2;
  timer_t id;
  if (timer_create(CLOCK_MONOTONIC, &ev, &id) != 0) return perror("timer_create"), 1;
  struct itimerspec once = {{0, 0}, {0, 10000000}}, cur;
  if (timer_settime(id, 0, &once, NULL) != 0) return perror("timer_settime"), 1;
  timer_gettime(id, &cur);
  printf("posix timer armed: %d\n", cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec > 0);
  if (wait_for(&usr2s, 1) != 0) return printf("posix timer: no signal\n"), 1;
  timer_gettime(id, &cur);
  printf("posix timer fired, then disarmed: %d\n", cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  struct itimerspec at = {{0, 0}, {now.tv_sec, now.tv_nsec}};
  at.it_value.tv_nsec += 10000000;
  if (at.it_value.tv_nsec >= 1000000000) at.it_value.tv_sec++, at.it_value.tv_nsec -= 1000000000;
  if (timer_settime(id, TIMER_ABSTIME, &at, NULL) != 0) return perror("timer_settime abs"), 1;
  if (wait_for(&usr2s, 2) != 0) return printf("posix timer: no absolute signal\n"), 1;
  printf("posix timer fired at an absolute time\n");
  const int deleted = timer_delete(id);
  const int again = timer_delete(id) == -1 && errno == EINVAL;
  printf("delete: %d, again EINVAL: %d\n", deleted, again);
  return 0;
}

static volatile int vtalrms, profs;
static void on_vtalrm(int sig) { (void)sig; ++vtalrms; }
static void on_prof(int sig) { (void)sig; ++profs; }

static int64_t cpu_ns(clockid_t clock) {
  struct timespec ts;
  if (clock_gettime(clock, &ts) != 0) return -1;
  return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* Burns `ms` milliseconds of this process's CPU time (by its CPU clock); 0, or -1 if the
 * clock has not moved that far within 20 s of wall time. */
static int burn_ms(int ms) {
  const int64_t start = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
  const int64_t give_up = now_ns() + 20000000000LL;
  while (cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - start < ms * 1000000LL) {
    if (now_ns() > give_up) return -1;
  }
  return 0;
}

static int64_t tv_ns(struct timeval tv) { return tv.tv_sec * 1000000000ll + tv.tv_usec * 1000ll; }

/* A loop with no system call in it until *count reaches n (a CPU-time timer must end it);
 * 0, or -1 after some 4e9 rounds (seconds of CPU time) without. */
static int spin_until(volatile int* count, int n) {
  for (unsigned long i = 0; i < 4000000000UL; ++i) {
    if (*count >= n) return 0;
  }
  return -1;
}

static int cputime(void) {
  if (burn_ms(60) != 0) return printf("the process CPU clock did not reach 60 ms\n"), 1;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("getrusage self >= 50 ms: %d\n", tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime) >= 50000000);
  struct tms t;
  times(&t);
  printf("times self >= 5 ticks: %d\n", t.tms_utime + t.tms_stime >= 5);
  struct timespec res;
  printf("clock_getres process: %d\n",
         clock_getres(CLOCK_PROCESS_CPUTIME_ID, &res) == 0 && res.tv_sec == 0 && res.tv_nsec > 0);
  printf("thread clock >= 50 ms: %d\n", cpu_ns(CLOCK_THREAD_CPUTIME_ID) >= 50000000);
  clockid_t own;
  printf("own clock by pid >= 50 ms: %d\n",
         clock_getcpuclockid(getpid(), &own) == 0 && cpu_ns(own) >= 50000000);

  /* A child that burns 60 ms: its time comes back through wait4 and to RUSAGE_CHILDREN. */
  const pid_t child = fork();
  if (child == 0) _exit(burn_ms(60) == 0 ? 0 : 1);
  int status = 0;
  struct rusage cru;
  if (wait4(child, &status, 0, &cru) != child) return perror("wait4"), 1;
  printf("child status %d, wait4 rusage >= 50 ms: %d\n", WEXITSTATUS(status),
         tv_ns(cru.ru_utime) + tv_ns(cru.ru_stime) >= 50000000);
  getrusage(RUSAGE_CHILDREN, &ru);
  printf("getrusage children >= 50 ms: %d\n", tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime) >= 50000000);
  times(&t);
  printf("times children >= 5 ticks: %d\n", t.tms_cutime + t.tms_cstime >= 5);
  clockid_t gone;
  printf("clock of a reaped child: %s\n",
         clock_getcpuclockid(child, &gone) == 0 ? (cpu_ns(gone) < 0 ? strerrorname_np(errno) : "ok")
                                                : "no clock id");
  printf("getrusage(7): %s\n", getrusage(7, &ru) == 0 ? "ok" : strerrorname_np(errno));

  /* ITIMER_VIRTUAL and ITIMER_PROF, every 20 ms, first in a loop without system calls. */
  signal(SIGVTALRM, on_vtalrm);
  signal(SIGPROF, on_prof);
  const struct itimerval every20 = {{0, 20000}, {0, 20000}};
  setitimer(ITIMER_VIRTUAL, &every20, NULL);
  struct itimerval now;
  getitimer(ITIMER_VIRTUAL, &now);
  /* (Linux reports the value rounded up to its tick, plus one: 24 ms at 250 Hz.) */
  printf("virtual armed: %d\n", now.it_value.tv_sec == 0 && now.it_value.tv_usec > 0 &&
                                    now.it_value.tv_usec <= 30000 &&
                                    now.it_interval.tv_usec == 20000);
  if (spin_until(&vtalrms, 3) != 0) return printf("no SIGVTALRM\n"), 1;
  const struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_VIRTUAL, &off, &now);
  getitimer(ITIMER_VIRTUAL, &now);
  printf("SIGVTALRM at least 3 times; disarmed: %d\n",
         now.it_value.tv_sec == 0 && now.it_value.tv_usec == 0);
  setitimer(ITIMER_PROF, &every20, NULL);
  if (spin_until(&profs, 3) != 0) return printf("no SIGPROF\n"), 1;
  setitimer(ITIMER_PROF, &off, NULL);
  printf("SIGPROF at least 3 times\n");
  /* One shot, then nothing more. */
  const struct itimerval once = {{0, 0}, {0, 10000}};
  const int before = vtalrms;
  setitimer(ITIMER_VIRTUAL, &once, NULL);
  if (spin_until(&vtalrms, before + 1) != 0) return printf("no one-shot SIGVTALRM\n"), 1;
  getitimer(ITIMER_VIRTUAL, &now);
  printf("one shot fired, then disarmed: %d\n",
         now.it_value.tv_sec == 0 && now.it_value.tv_usec == 0);
  return 0;
}

#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31) /* linux/signal.h */
#endif

static char* alt_base;
static size_t alt_size;
static volatile int alt_on, alt_flags, alt_change;
static sigjmp_buf overflow_jmp, usr2_jmp;
static void on_usr2_jump(int sig) {
  (void)sig;
  siglongjmp(usr2_jmp, 1);
}

static const char* ss_flags_name(int flags) {
  switch (flags) {
    case 0: return "0";
    case SS_ONSTACK: return "SS_ONSTACK";
    case SS_DISABLE: return "SS_DISABLE";
    case (int)SS_AUTODISARM: return "SS_AUTODISARM";
    case (int)(SS_ONSTACK | SS_AUTODISARM): return "SS_ONSTACK|SS_AUTODISARM";
    default: return "?";
  }
}

static void on_usr1_alt(int sig) {
  (void)sig;
  char here;
  alt_on = &here > alt_base && &here < alt_base + alt_size;
  stack_t now;
  sigaltstack(NULL, &now);
  alt_flags = now.ss_flags;
  stack_t other = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0};
  alt_change = sigaltstack(&other, NULL) == 0 ? 0 : errno;
}

static void on_overflow(int sig) {
  (void)sig;
  char here;
  alt_on = &here > alt_base && &here < alt_base + alt_size;
  siglongjmp(overflow_jmp, 1);
}

static volatile char sink;
static int recurse(int depth) {
  volatile char pad[4096];
  if (depth > (1 << 20)) return 0; /* 4 GiB deep: the stack overflows long before */
  pad[0] = (char)depth;
  sink = pad[0];
  return recurse(depth + 1) + pad[1];
}

static int altstack(void) {
  stack_t now;
  sigaltstack(NULL, &now);
  printf("initially: %s\n", ss_flags_name(now.ss_flags));
  alt_size = 1 << 16;
  alt_base = malloc(alt_size);
  stack_t tiny = {.ss_sp = alt_base, .ss_size = 1024, .ss_flags = 0};
  printf("1 KiB: %s\n", sigaltstack(&tiny, NULL) == 0 ? "ok" : strerrorname_np(errno));
  stack_t odd = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0x10};
  printf("unknown flag: %s\n", sigaltstack(&odd, NULL) == 0 ? "ok" : strerrorname_np(errno));
  stack_t set = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0};
  if (sigaltstack(&set, NULL) != 0) return perror("sigaltstack"), 1;
  sigaltstack(NULL, &now);
  printf("set: %s, same place: %d\n", ss_flags_name(now.ss_flags),
         now.ss_sp == alt_base && now.ss_size == alt_size);

  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr1_alt;
  sa.sa_flags = SA_ONSTACK;
  sigaction(SIGUSR1, &sa, NULL);
  raise(SIGUSR1);
  printf("SA_ONSTACK handler: on the alternate stack %d, reports %s, change refused %s\n", alt_on,
         ss_flags_name(alt_flags), alt_change ? strerrorname_np(alt_change) : "no");
  sa.sa_flags = 0;
  sigaction(SIGUSR1, &sa, NULL);
  raise(SIGUSR1);
  printf("handler without SA_ONSTACK: on the alternate stack %d, reports %s\n", alt_on,
         ss_flags_name(alt_flags));

  /* A stack overflow, twice: the SIGSEGV handler can run only on the alternate stack. */
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_overflow;
  sa.sa_flags = SA_ONSTACK | SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);
  for (int round = 0; round < 2; ++round) {
    alt_on = 0;
    if (sigsetjmp(overflow_jmp, 1) == 0) {
      recurse(0);
      return printf("the recursion returned\n"), 1;
    }
    printf("stack overflow %d: handled on the alternate stack %d\n", round + 1, alt_on);
  }
  signal(SIGSEGV, SIG_DFL);

  /* SS_AUTODISARM: disarmed while its handler runs, armed again after. */
  stack_t autod = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = (int)SS_AUTODISARM};
  if (sigaltstack(&autod, NULL) != 0) return perror("sigaltstack autodisarm"), 1;
  sa.sa_handler = on_usr1_alt;
  sa.sa_flags = SA_ONSTACK;
  sigaction(SIGUSR1, &sa, NULL);
  raise(SIGUSR1);
  sigaltstack(NULL, &now);
  printf("SS_AUTODISARM: on the alternate stack %d, reports %s inside, %s after\n", alt_on,
         ss_flags_name(alt_flags), ss_flags_name(now.ss_flags));
  stack_t off = {.ss_flags = SS_DISABLE};
  sigaltstack(&off, NULL);
  sigaltstack(NULL, &now);
  printf("disabled: %s\n", ss_flags_name(now.ss_flags));
  return 0;
}

static volatile int seen_code, seen_pid_ok, seen_value;
static void on_usr1_info(int sig, siginfo_t* info, void* ctx) {
  (void)sig;
  (void)ctx;
  seen_code = info->si_code;
  seen_pid_ok = info->si_pid == getpid() && info->si_uid == getuid();
  seen_value = info->si_value.sival_int;
}

static const char* si_code_name(int code) {
  switch (code) {
    case SI_USER: return "SI_USER";
    case SI_QUEUE: return "SI_QUEUE";
    case SI_TIMER: return "SI_TIMER";
    case SI_TKILL: return "SI_TKILL";
    case SI_KERNEL: return "SI_KERNEL";
    case CLD_EXITED: return "CLD_EXITED";
    case CLD_KILLED: return "CLD_KILLED";
    default: return "?";
  }
}

static int siginfo_mode(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_usr1_info;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGUSR1, &sa, NULL);
  kill(getpid(), SIGUSR1);
  printf("kill: %s, pid and uid mine %d\n", si_code_name(seen_code), seen_pid_ok);
  syscall(SYS_tgkill, getpid(), getpid(), SIGUSR1);
  printf("tgkill: %s, pid and uid mine %d\n", si_code_name(seen_code), seen_pid_ok);
  sigqueue(getpid(), SIGUSR1, (union sigval){.sival_int = 42});
  printf("sigqueue: %s, value %d, pid and uid mine %d\n", si_code_name(seen_code), seen_value,
         seen_pid_ok);

  /* SIGCHLD, taken with sigwaitinfo while blocked (its default action ignores it). */
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  for (int round = 0; round < 2; ++round) {
    const pid_t child = fork();
    if (child == 0) {
      if (round == 1) raise(SIGKILL);
      _exit(3);
    }
    siginfo_t info;
    const int got = sigwaitinfo(&chld, &info);
    printf("SIGCHLD %d: %s, pid right %d, status %d\n", got == SIGCHLD, si_code_name(info.si_code),
           info.si_pid == child, info.si_status);
    waitpid(child, NULL, 0);
  }

  /* A SIGCHLD that came while blocked and is ignored when unblocked does not end a
   * sigsuspend: only the alarm's handler does. */
  const pid_t quiet = fork();
  if (quiet == 0) _exit(0);
  waitpid(quiet, NULL, 0);  /* its SIGCHLD stays pending (blocked) */
  signal(SIGALRM, on_alarm);
  alarms = 0;
  const struct itimerval in_20ms = {{0, 0}, {0, 20000}};
  setitimer(ITIMER_REAL, &in_20ms, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigsuspend(&none);
  printf("sigsuspend ended by the alarm's handler: %d\n", alarms == 1);

  /* sigtimedwait: a timeout, then a signal raised while blocked. */
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  sigprocmask(SIG_BLOCK, &usr2, NULL);
  const struct timespec ten_ms = {0, 10000000};
  siginfo_t info;
  printf("sigtimedwait, nothing: %s\n",
         sigtimedwait(&usr2, &info, &ten_ms) < 0 ? strerrorname_np(errno) : "a signal");
  raise(SIGUSR2);
  const int got = sigtimedwait(&usr2, &info, &ten_ms);
  printf("sigtimedwait, raised: %d %s, still pending %d\n", got == SIGUSR2,
         si_code_name(info.si_code), ({ sigset_t p; sigpending(&p); sigismember(&p, SIGUSR2); }));

  /* A timer every millisecond whose signal stays blocked for 30 ms: one signal, the rest
   * counted as overruns. */
  sigset_t rt;
  sigemptyset(&rt);
  sigaddset(&rt, SIGRTMIN);
  sigprocmask(SIG_BLOCK, &rt, NULL);
  struct sigevent ev;
  memset(&ev, 0, sizeof(ev));
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGRTMIN;
  ev.sigev_value.sival_int = 7;
  timer_t timer;
  if (timer_create(CLOCK_MONOTONIC, &ev, &timer) != 0) return perror("timer_create"), 1;
  const struct itimerspec every_ms = {{0, 1000000}, {0, 1000000}};
  timer_settime(timer, 0, &every_ms, NULL);
  const int64_t until = now_ns() + 30000000;
  while (now_ns() < until) {
  }
  const int rt_got = sigwaitinfo(&rt, &info);
  const int overruns = timer_getoverrun(timer);
  printf("timer: %d %s, value %d, id right %d, overruns >= 5: %d, timer_getoverrun the same %d\n",
         rt_got == SIGRTMIN, si_code_name(info.si_code), info.si_value.sival_int,
         info.si_timerid == (int)(intptr_t)timer, info.si_overrun >= 5,
         overruns == info.si_overrun);
  timer_delete(timer);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr,
            "usage: %s getppid N | touch N | segv | segv-handler | fpu |\n"
            "       forkexec N PROG [ARG...] | time PROG [ARG...] | alloc | oom | timers |\n"
            "       cow N | cputime | altstack | siginfo | longjmp N | open PATH FLAG... |\n"
            "       access-w PATH | fs OP PATH [PATH2]\n",
            argv[0]);
    return 2;
  }
  if (strcmp(argv[1], "getppid") == 0 && argc == 3) {
    const long n = atol(argv[2]);
    const int64_t t0 = now_ns();
    for (long i = 0; i < n; ++i) getppid();
    printf("%.1f ns per getppid\n", (double)(now_ns() - t0) / (double)n);
    return 0;
  }
  if (strcmp(argv[1], "touch") == 0 && argc == 3) {
    const long n = atol(argv[2]);
    char* p = mmap(NULL, (size_t)n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) return 1;
    const int64_t t0 = now_ns();
    for (long i = 0; i < n; ++i) p[i * 4096] = 1;
    printf("%.1f ns per page\n", (double)(now_ns() - t0) / (double)n);
    return 0;
  }
  if (strcmp(argv[1], "segv") == 0 || strcmp(argv[1], "segv-handler") == 0) {
    if (argv[1][4] == '-') {
      struct sigaction sa;
      memset(&sa, 0, sizeof(sa));
      sa.sa_sigaction = on_segv;
      sa.sa_flags = SA_SIGINFO;
      sigaction(SIGSEGV, &sa, NULL);
    }
    volatile int* volatile bad = (volatile int*)(uintptr_t)16;
    return *bad;
  }
  if (strcmp(argv[1], "fpu") == 0) {
    signal(SIGUSR1, on_usr1);
    _mm_setcsr(_mm_getcsr() | 0x6000); /* rounding: toward zero */
    const __m128 mine = _mm_set_ps(1.5f, 2.5f, 3.5f, 4.5f);
    __asm__ volatile("movaps %0, %%xmm0" ::"x"(mine) : "xmm0");
    for (int i = 0; i < 100; ++i) getppid();
    raise(SIGUSR1);
    const pid_t child = fork();
    if (child == 0) _exit(0);
    int status;
    waitpid(child, &status, 0);
    __m128 back;
    __asm__ volatile("movaps %%xmm0, %0" : "=x"(back));
    float got[4], want[4];
    _mm_storeu_ps(got, back);
    _mm_storeu_ps(want, mine);
    const int csr_ok = (_mm_getcsr() & 0x6000) == 0x6000;
    printf("xmm0 %s, mxcsr %s, handler %s\n", memcmp(got, want, sizeof(got)) == 0 ? "kept" : "LOST",
           csr_ok ? "kept" : "LOST", handled ? "ran" : "did not run");
    return 0;
  }
  if ((strcmp(argv[1], "forkexec") == 0 && argc >= 4) ||
      (strcmp(argv[1], "time") == 0 && argc >= 3)) {
    const int timed = argv[1][0] == 't';
    const long n = timed ? 1 : atol(argv[2]);
    char** prog = argv + (timed ? 2 : 3);
    const int64_t t0 = now_ns();
    for (long i = 0; i < n; ++i) {
      const pid_t child = fork();
      if (child < 0) return 1;
      if (child == 0) {
        if (timed) {
          const int null = open("/dev/null", O_WRONLY);
          if (null >= 0) dup2(null, 1);
        }
        execv(prog[0], prog);
        _exit(127);
      }
      int status;
      if (waitpid(child, &status, 0) != child || !WIFEXITED(status) ||
          WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s: %s failed\n", argv[0], prog[0]);
        return 1;
      }
    }
    const double ns = (double)(now_ns() - t0);
    if (timed) {
      printf("%.1f ms\n", ns / 1e6);
    } else {
      printf("%.1f us per fork+exec+wait\n", ns / 1e3 / (double)n);
    }
    return 0;
  }
  if (strcmp(argv[1], "alloc") == 0) {
    long mmap_mib = 0, brk_mib = 0;
    const int mmap_err = alloc_mmap(&mmap_mib);
    say("mmap", mmap_mib, mmap_err);
    const int brk_err = alloc_brk(&brk_mib);
    say("brk", brk_mib, brk_err);
    return mmap_err == ENOMEM && brk_err == ENOMEM ? 0 : 1;
  }
  if (strcmp(argv[1], "timers") == 0) return timers();
  if (strcmp(argv[1], "cputime") == 0) return cputime();
  if (strcmp(argv[1], "altstack") == 0) return altstack();
  if (strcmp(argv[1], "siginfo") == 0) return siginfo_mode();
  if (strcmp(argv[1], "longjmp") == 0 && argc == 3) {
    const long n = atol(argv[2]);
    signal(SIGUSR2, on_usr2_jump);
    for (long i = 0; i < n; ++i) {
      if (sigsetjmp(usr2_jmp, 1) == 0) raise(SIGUSR2);
    }
    printf("done %ld\n", n);
    return 0;
  }
  if (strcmp(argv[1], "cow") == 0 && argc == 3) {
    /* N pages written, a child that writes one of them and exits, then the parent writes
     * them all again: each process sees its own values. */
    const long n = atol(argv[2]);
    char* p = mmap(NULL, (size_t)n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED || n < 1) return 1;
    for (long i = 0; i < n; ++i) p[i * 4096] = 1;
    const pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
      p[0] = 2;
      _exit(p[0] == 2 && p[4096 * (n - 1)] == 1 ? 0 : 1);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) return 1;
    long same = 0;
    for (long i = 0; i < n; ++i) same += p[i * 4096] == 1;
    for (long i = 0; i < n; ++i) p[i * 4096] = 3;
    printf("child %d, parent kept %ld of %ld pages\n", WEXITSTATUS(status), same, n);
    return 0;
  }
  if (strcmp(argv[1], "oom") == 0) {
    const size_t len = (size_t)16 << 30;
    char* p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
      perror("mmap");
      return 1;
    }
    for (size_t off = 0; off < len; off += 4096) p[off] = 1;
    printf("survived touching 16 GiB\n");
    return 1;
  }
  if (strcmp(argv[1], "open") == 0 && argc >= 4) {
    static const struct {
      const char* name;
      int flag;
    } kFlags[] = {{"rdonly", O_RDONLY}, {"wronly", O_WRONLY}, {"rdwr", O_RDWR},
                  {"creat", O_CREAT},   {"excl", O_EXCL},     {"trunc", O_TRUNC},
                  {"append", O_APPEND}, {"path", O_PATH},     {"nofollow", O_NOFOLLOW}};
    int flags = 0;
    for (int i = 3; i < argc; ++i) {
      size_t k = 0;
      while (k < sizeof(kFlags) / sizeof(kFlags[0]) && strcmp(kFlags[k].name, argv[i]) != 0) ++k;
      if (k == sizeof(kFlags) / sizeof(kFlags[0])) {
        fprintf(stderr, "%s: unknown open flag %s\n", argv[0], argv[i]);
        return 2;
      }
      flags |= kFlags[k].flag;
    }
    const int fd = open(argv[2], flags, 0644);
    printf("%s\n", fd >= 0 ? "ok" : strerrorname_np(errno));
    return 0;
  }
  if (strcmp(argv[1], "access-w") == 0 && argc == 3) {
    printf("%s\n", access(argv[2], W_OK) == 0 ? "ok" : strerrorname_np(errno));
    return 0;
  }
  if (strcmp(argv[1], "fs") == 0 && (argc == 4 || argc == 5)) {
    const char* op = argv[2];
    const char* a = argv[3];
    const char* b = argc == 5 ? argv[4] : "";
    int r;
    if (strcmp(op, "mkdir") == 0) r = mkdir(a, 0755);
    else if (strcmp(op, "rmdir") == 0) r = rmdir(a);
    else if (strcmp(op, "unlink") == 0) r = unlink(a);
    else if (strcmp(op, "rename") == 0) r = rename(a, b);
    else if (strcmp(op, "link") == 0) r = link(a, b);
    else if (strcmp(op, "symlink") == 0) r = symlink(b, a);  /* makes a, pointing at b */
    else if (strcmp(op, "chmod") == 0) r = chmod(a, 0600);
    else if (strcmp(op, "chown") == 0) r = chown(a, getuid(), getgid());
    else if (strcmp(op, "truncate") == 0) r = truncate(a, 0);
    else if (strcmp(op, "utime") == 0) r = utimes(a, NULL);
    else if (strcmp(op, "mkfifo") == 0) r = mkfifo(a, 0644);
    else {
      fprintf(stderr, "%s: unknown fs operation %s\n", argv[0], op);
      return 2;
    }
    printf("%s\n", r == 0 ? "ok" : strerrorname_np(errno));
    return 0;
  }
  fprintf(stderr, "%s: unknown mode %s\n", argv[0], argv[1]);
  return 2;
}
