/* A program written against DragonFly's API only (<sys/vmspace.h>, <sys/vkernel.h> and the
 * trapframe headers through include/compat), built three ways by tests/meson.build:
 *   dfly_linked  calls the functions, linked with libvkrt;
 *   dfly_plain   calls the functions, linked only with what a DragonFly libc would give it
 *                (tests/dfly_libc_stub.c: bare system-call wrappers); under
 *                LD_PRELOAD=libvkrt_preload.so the shim's functions come first;
 *   dfly_raw     -DDFLY_RAW: every call is a raw syscall(485..493) or syscall(SYS_mmap), as a
 *                DragonFly program's libc would make it (under the shim).
 * preload_test runs them and expects the same output, byte for byte: results, errno on every
 * error path, what the guest did, and that the program's own SIGSYS and SIGSEGV handlers
 * still get the signals that are theirs. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/vkernel.h>
#include <sys/vmspace.h>
#include <unistd.h>

#ifdef DFLY_RAW
/* DragonFly's system call numbers (SPEC §1); the seventh vmspace_mmap argument goes where
 * syscall(3) puts its eighth, on the stack. */
#define mcontrol(a, l, b, v) ((int)syscall(485, (a), (l), (b), (long)(v)))
#define vmspace_create(id, t, d) ((int)syscall(486, (id), (t), (d)))
#define vmspace_destroy(id) ((int)syscall(487, (id)))
#define vmspace_ctl(id, c, tf, vf) ((int)syscall(488, (id), (c), (tf), (vf)))
#define vmspace_mmap(id, a, l, p, f, fd, o) \
  ((void *)syscall(489, (id), (a), (l), (p), (f), (fd), (long)(o)))
#define vmspace_munmap(id, a, l) ((int)syscall(490, (id), (a), (l)))
#define vmspace_mcontrol(id, a, l, b, v) ((int)syscall(491, (id), (a), (l), (b), (long)(v)))
#define vmspace_pread(id, b, n, f, o) ((ssize_t)syscall(492, (id), (b), (n), (f), (long)(o)))
#define vmspace_pwrite(id, b, n, f, o) ((ssize_t)syscall(493, (id), (b), (n), (f), (long)(o)))
#define own_mmap(a, l, p, f, fd, o) ((void *)syscall(SYS_mmap, (a), (l), (p), (f), (fd), (o)))
#else
#define own_mmap(a, l, p, f, fd, o) mmap((a), (l), (p), (f), (fd), (o))
#endif

static char id1, id2, nobody;

static void report(const char *what, long r) {
  if (r == -1) {
    printf("%-40s -1 %s\n", what, strerror(errno));
  } else {
    printf("%-40s %ld\n", what, r);
  }
  errno = 0;
}

static void report_ptr(const char *what, void *p, void *expected) {
  if (p == MAP_FAILED) {
    printf("%-40s MAP_FAILED %s\n", what, strerror(errno));
  } else {
    printf("%-40s %s\n", what, p == expected ? "at the address asked for" : "elsewhere");
  }
  errno = 0;
}

static volatile sig_atomic_t sigsys_seen, sigsys_code, sigsys_nr;
static void on_sigsys(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)uc;
  sigsys_seen = 1;
  sigsys_code = si->si_code;
  sigsys_nr = si->si_syscall;
}

static sigjmp_buf segv_jump;
static void on_segv(int sig) {
  (void)sig;
  siglongjmp(segv_jump, 1);
}

static void *thread_main(void *arg) {
  (void)arg;
  report("thread: vmspace_create", vmspace_create(&id2, 0, NULL));
  report("thread: vmspace_create again", vmspace_create(&id2, 0, NULL));
  report("thread: vmspace_destroy", vmspace_destroy(&id2));
  return NULL;
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  /* Before any vmspace exists: EINVAL, as DragonFly. */
  report("destroy before any create", vmspace_destroy(&nobody));

  report("vmspace_create", vmspace_create(&id1, 0, NULL));
  report("vmspace_create again", vmspace_create(&id1, 0, NULL));
  report("vmspace_create with data", vmspace_create(&id2, 0, &id2));
  report("vmspace_destroy unknown", vmspace_destroy(&nobody));
  report("vmspace_munmap unknown id", vmspace_munmap(&nobody, (void *)0x400000, 4096));

  const int rwx = PROT_READ | PROT_WRITE | PROT_EXEC;
  const int fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
  report_ptr("vmspace_mmap length 0", vmspace_mmap(&id1, (void *)0x400000, 0, rwx, fixed, -1, 0),
             NULL);
  report_ptr("vmspace_mmap misaligned MAP_FIXED",
             vmspace_mmap(&id1, (void *)0x400123, 4096, rwx, fixed, -1, 0), NULL);
  report_ptr("vmspace_mmap bad fd",
             vmspace_mmap(&id1, (void *)0x400000, 4096, rwx, MAP_SHARED | MAP_FIXED, 1000, 0),
             NULL);
  report_ptr("vmspace_mmap code", vmspace_mmap(&id1, (void *)0x400000, 4096, rwx, fixed, -1, 0),
             (void *)0x400000);
  report_ptr("vmspace_mmap stack",
             vmspace_mmap(&id1, (void *)0x7000000, 4 * 4096, PROT_READ | PROT_WRITE, fixed, -1, 0),
             (void *)0x7000000);

  /* A file mapped at an offset given as the seventh argument. */
  int memfd = (int)syscall(SYS_memfd_create, "dfly", 0);
  char page[4096];
  memset(page, 'A', sizeof(page));
  report("write page 0", write(memfd, page, sizeof(page)));
  memset(page, 'B', sizeof(page));
  report("write page 1", write(memfd, page, sizeof(page)));
  report_ptr("vmspace_mmap file at offset 4096",
             vmspace_mmap(&id1, (void *)0x500000, 4096, PROT_READ, MAP_SHARED | MAP_FIXED, memfd,
                          4096),
             (void *)0x500000);
  char c = 0;
  report("vmspace_pread file page", vmspace_pread(&id1, &c, 1, 0, 0x500000));
  printf("%-40s %c\n", "  byte read", c);
  report("vmspace_pwrite read-only page", vmspace_pwrite(&id1, &c, 1, 0, 0x500000));
  report("vmspace_pread unmapped", vmspace_pread(&id1, &c, 1, 0, 0x600000));
  report("vmspace_pread flags 1", vmspace_pread(&id1, &c, 1, 1, 0x500000));

  /* A guest: `inc %rax; pcmpeqd %xmm1,%xmm1; syscall; ud2`: its FPU state comes back. */
  const unsigned char code[] = {0x48, 0xff, 0xc0, 0x66, 0x0f, 0x76, 0xc9, 0x0f, 0x05, 0x0f, 0x0b};
  report("vmspace_pwrite code", vmspace_pwrite(&id1, code, sizeof(code), 0, 0x400000));
  struct trapframe tf;
  struct vextframe vf;
  memset(&tf, 0, sizeof(tf));
  memset(&vf, 0, sizeof(vf));
  tf.tf_rip = 0x400000;
  tf.tf_rsp = 0x7004000;
  tf.tf_rflags = 0x202;
  tf.tf_rax = 41;
  __asm__ __volatile__("pxor %%xmm1, %%xmm1" : : : "xmm1");
  const long run = vmspace_ctl(&id1, VMSPACE_CTL_RUN, &tf, &vf);
  uint64_t xmm1[2];
  __asm__ __volatile__("movdqu %%xmm1, %0" : "=m"(xmm1));
  report("vmspace_ctl RUN", run);
  printf("%-40s trapno %ld rax %ld rip %#lx err %ld\n", "  guest stopped", (long)tf.tf_trapno,
         (long)tf.tf_rax, (long)tf.tf_rip, (long)tf.tf_err);
  printf("%-40s %#llx %#llx\n", "  xmm1 after RUN (the guest's)", (unsigned long long)xmm1[0],
         (unsigned long long)xmm1[1]);
  report("vmspace_ctl RUN again", vmspace_ctl(&id1, VMSPACE_CTL_RUN, &tf, &vf));
  printf("%-40s trapno %ld rip %#lx\n", "  guest stopped", (long)tf.tf_trapno, (long)tf.tf_rip);
  report("vmspace_ctl unknown command", vmspace_ctl(&id1, 99, &tf, &vf));

  report("vmspace_mcontrol behav 12", vmspace_mcontrol(&id1, (void *)0x400000, 4096, 12, 0));
  report("vmspace_mcontrol MADV_SETMAP on plain",
         vmspace_mcontrol(&id1, (void *)0x400000, 4096, MADV_SETMAP, 0));
  report("vmspace_mcontrol MADV_DONTNEED",
         vmspace_mcontrol(&id1, (void *)0x7000000, 4096, MADV_DONTNEED, 0));
  report("vmspace_munmap with a hole", vmspace_munmap(&id1, (void *)0x400000, 0x200000));
  report("vmspace_munmap code", vmspace_munmap(&id1, (void *)0x400000, 4096));
  report("vmspace_munmap length 0", vmspace_munmap(&id1, (void *)0x400000, 0));

  /* MAP_VPAGETABLE on the program's own memory: a page table in a memfd, then reads. */
  int phys = (int)syscall(SYS_memfd_create, "phys", 0);
  report("ftruncate phys", ftruncate(phys, 1 << 20));
  uint64_t *tables = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, phys, 0);
  /* Top-level table at 0 with one 1 GiB-page entry... simpler: a 4-level chain for page 0. */
  tables[0] = 0x1000 | VPTE_V | VPTE_RW | VPTE_U;            /* level 4 -> 0x1000 */
  tables[512] = 0x2000 | VPTE_V | VPTE_RW | VPTE_U;          /* level 3 -> 0x2000 */
  tables[1024] = 0x3000 | VPTE_V | VPTE_RW | VPTE_U;         /* level 2 -> 0x3000 */
  tables[1536] = 0x80000 | VPTE_V | VPTE_RW | VPTE_U;        /* page 0 -> 0x80000 */
  tables[0x80000 / 8] = 0x1122334455667788ULL;
  char *region = own_mmap(NULL, 1 << 21, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_VPAGETABLE,
                          phys, 0);
  printf("%-40s %s\n", "mmap MAP_VPAGETABLE (own space)",
         region == MAP_FAILED ? strerror(errno) : "ok");
  report("mcontrol behav 12", mcontrol(region, 4096, 12, 0));
  report("mcontrol MADV_SETMAP", mcontrol(region, 1 << 21, MADV_SETMAP, VPTE_V | VPTE_RW));
  printf("%-40s %#llx\n", "read through the tables",
         (unsigned long long)*(volatile uint64_t *)region);
  printf("%-40s %s\n", "level-1 entry has A",
         (tables[1536] & VPTE_A) ? "yes" : "no");
  report("mcontrol MADV_INVAL", mcontrol(region, 4096, MADV_INVAL, 0));

  /* A thread created now makes its own calls. */
  pthread_t thread;
  pthread_create(&thread, NULL, thread_main, NULL);
  pthread_join(thread, NULL);

  /* The program's own handlers get what is theirs. */
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  report("sigaction(SIGSYS)", sigaction(SIGSYS, &sa, NULL));
  kill(getpid(), SIGSYS);
  printf("%-40s seen %d si_code %d\n", "kill(SIGSYS) reached the program", (int)sigsys_seen,
         (int)sigsys_code);
  /* The program's own seccomp filter traps system call 499. */
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 499, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof(filter) / sizeof(filter[0]), filter};
  report("prctl(PR_SET_NO_NEW_PRIVS)", prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
  report("seccomp(SET_MODE_FILTER)", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
  sigsys_seen = 0;
  syscall(499);
  printf("%-40s seen %d si_code %d syscall %d\n", "its own filter's trap reached it",
         (int)sigsys_seen, (int)sigsys_code, (int)sigsys_nr);
  signal(SIGSEGV, on_segv);
  if (sigsetjmp(segv_jump, 1) == 0) {
    volatile int *volatile unmapped = (volatile int *)16;
    *unmapped = 1;
    printf("%-40s no\n", "SIGSEGV reached the program");
  } else {
    printf("%-40s yes\n", "SIGSEGV reached the program");
  }

  report("vmspace_destroy", vmspace_destroy(&id1));
  report("vmspace_destroy again", vmspace_destroy(&id1));
  return 0;
}
