/*
 * <vkrt/vmspace.h> from a plain C99 program: the header compiles as C99, the frame layout is
 * DragonFly's, and the basic calls work from C. Exits 0 and prints "c99 ok" on success.
 *
 * The very first thing it does is call the API before any vmspace ever existed in this
 * process, which must fail with EINVAL (DragonFly: no per-process vkernel state yet).
 */
#define _DEFAULT_SOURCE 1 /* MAP_ANONYMOUS */

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <vkrt/vmspace.h>

#include "guest_code.h"

/* Compile-time layout checks without static_assert: a negative array size fails to build. */
#define VKRT_C99_CHECK(name, cond) typedef char vkrt_c99_check_##name[(cond) ? 1 : -1]

VKRT_C99_CHECK(trapframe_size, sizeof(struct trapframe) == 200);
VKRT_C99_CHECK(rdi, offsetof(struct trapframe, tf_rdi) == 0);
VKRT_C99_CHECK(rcx, offsetof(struct trapframe, tf_rcx) == 24);
VKRT_C99_CHECK(rax, offsetof(struct trapframe, tf_rax) == 48);
VKRT_C99_CHECK(r10, offsetof(struct trapframe, tf_r10) == 72);
VKRT_C99_CHECK(r15, offsetof(struct trapframe, tf_r15) == 112);
VKRT_C99_CHECK(trapno, offsetof(struct trapframe, tf_trapno) == 128);
VKRT_C99_CHECK(addr, offsetof(struct trapframe, tf_addr) == 136);
VKRT_C99_CHECK(err, offsetof(struct trapframe, tf_err) == 152);
VKRT_C99_CHECK(rip, offsetof(struct trapframe, tf_rip) == 160);
VKRT_C99_CHECK(cs, offsetof(struct trapframe, tf_cs) == 168);
VKRT_C99_CHECK(rflags, offsetof(struct trapframe, tf_rflags) == 176);
VKRT_C99_CHECK(rsp, offsetof(struct trapframe, tf_rsp) == 184);
VKRT_C99_CHECK(ss, offsetof(struct trapframe, tf_ss) == 192);
VKRT_C99_CHECK(vextframe_size, sizeof(struct vextframe) == 32);
VKRT_C99_CHECK(gs_base, offsetof(struct vextframe, vx_tls.info[1].base) == 16);
VKRT_C99_CHECK(cmd_run, VMSPACE_CTL_RUN == 1);
VKRT_C99_CHECK(fast_syscall, T_FAST_SYSCALL == 0x81);
VKRT_C99_CHECK(madv_setmap, MADV_SETMAP == 11);

static int failures;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

/* Checks that a call returned `failure` with errno `expected`. */
#define CHECK_ERRNO(call, failure, expected)                                            \
  do {                                                                                  \
    int check_err_;                                                                     \
    errno = 0;                                                                          \
    if ((call) != (failure)) {                                                          \
      fprintf(stderr, "%s:%d: %s did not fail\n", __FILE__, __LINE__, #call);           \
      ++failures;                                                                       \
    } else if ((check_err_ = errno) != (expected)) {                                    \
      fprintf(stderr, "%s:%d: %s: errno %d (%s), want %d\n", __FILE__, __LINE__, #call, \
              check_err_, strerror(check_err_), (expected));                            \
      ++failures;                                                                       \
    }                                                                                   \
  } while (0)

static char space_id; /* the vmspace's id is this object's address */
static char other_id; /* never created */

static void check_before_any_vmspace(void) {
  struct trapframe tf;
  struct vextframe vf;
  char buf[8];
  memset(&tf, 0, sizeof(tf));
  memset(&vf, 0, sizeof(vf));
  CHECK_ERRNO(vmspace_destroy((void *)1), -1, EINVAL);
  CHECK_ERRNO(vmspace_ctl(&other_id, VMSPACE_CTL_RUN, &tf, &vf), -1, EINVAL);
  CHECK_ERRNO(vmspace_mmap(&other_id, (void *)0x400000, 0x1000, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
              MAP_FAILED, EINVAL);
  CHECK_ERRNO(vmspace_munmap(&other_id, (void *)0x400000, 0x1000), -1, EINVAL);
  CHECK_ERRNO(vmspace_mcontrol(&other_id, (void *)0x400000, 0x1000, 0, 0), -1, EINVAL);
  CHECK_ERRNO(vmspace_pread(&other_id, buf, sizeof(buf), 0, 0x400000), -1, EINVAL);
  CHECK_ERRNO(vmspace_pwrite(&other_id, buf, sizeof(buf), 0, 0x400000), -1, EINVAL);
}

static void check_syscall_round_trip(void *id) {
  struct trapframe tf;
  struct vextframe vf;
  void *code = vmspace_mmap(id, (void *)0x400000, 0x1000, PROT_READ | PROT_WRITE | PROT_EXEC,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  void *stack = vmspace_mmap(id, (void *)0x7000000, 0x10000, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  CHECK(code == (void *)0x400000);
  CHECK(stack == (void *)0x7000000);
  CHECK(vmspace_pwrite(id, kGuestSyscallAddOne, sizeof(kGuestSyscallAddOne), 0, 0x400000) ==
        (ssize_t)sizeof(kGuestSyscallAddOne));
  if (failures != 0) return;

  memset(&tf, 0, sizeof(tf));
  memset(&vf, 0, sizeof(vf));
  tf.tf_rip = 0x400000;
  tf.tf_rsp = 0x7010000;
  tf.tf_rflags = 0x202;
  tf.tf_rax = 39;
  tf.tf_rdi = 0x1234;
  CHECK(vmspace_ctl(id, VMSPACE_CTL_RUN, &tf, &vf) == 0);
  CHECK(tf.tf_trapno == T_FAST_SYSCALL);
  CHECK(tf.tf_err == 2);
  CHECK(tf.tf_rip == 0x400002);
  CHECK(tf.tf_rax == 39);
  CHECK(tf.tf_rdi == 0x1234);
  CHECK(tf.tf_cs == 0x33);
  CHECK(tf.tf_ss == 0x2b);

  tf.tf_rax = 41; /* the result: the guest adds one and makes another call with it */
  CHECK(vmspace_ctl(id, VMSPACE_CTL_RUN, &tf, &vf) == 0);
  CHECK(tf.tf_trapno == T_FAST_SYSCALL);
  CHECK(tf.tf_rip == 0x40000b);
  CHECK(tf.tf_rax == 42);
  CHECK(tf.tf_rdi == 42);
}

int main(void) {
  /* Must come first: no vmspace has ever existed in this process. */
  check_before_any_vmspace();

  CHECK(vmspace_create(&space_id, VKRT_TYPE_DEFAULT, NULL) == 0);
  CHECK_ERRNO(vmspace_create(&space_id, VKRT_TYPE_DEFAULT, NULL), -1, EEXIST);
  CHECK_ERRNO(vmspace_destroy(&other_id), -1, ENOENT);
  if (failures == 0) check_syscall_round_trip(&space_id);
  CHECK(vmspace_destroy(&space_id) == 0);

  if (failures != 0) {
    fprintf(stderr, "c99 FAILED (%d)\n", failures);
    return 1;
  }
  printf("c99 ok\n");
  return 0;
}
