/*
 * A source written against DragonFly's headers compiles unchanged with vkrt's compatibility
 * include directory (`pkg-config --cflags vkrt`) and runs: create, map, run a guest to its
 * first system call, destroy.
 */
#define _GNU_SOURCE
#include <sys/types.h>
#include <sys/mman.h>
#include <sys/tls.h>
#include <sys/vkernel.h>
#include <sys/vmspace.h>
#include <machine/frame.h>
#include <machine/trap.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static int fail(const char *what) {
  fprintf(stderr, "compat_test: %s: %s\n", what, strerror(errno));
  return 1;
}

int main(void) {
  /* vpte_t and the VPTE_ bits, as <sys/vkernel.h> gives them on DragonFly. */
  vpte_t pte = 0x3000 | VPTE_V | VPTE_RW | VPTE_U;
  if ((pte & VPTE_FRAME) != 0x3000 || VPTE_PAGE_ENTRIES != 512 || VPTE_NX != 0x800)
    return fail("VPTE constants");
  static int space;
  /* `syscall` (0f 05) at 0x400000. */
  static const unsigned char code[] = {0x0f, 0x05};
  struct trapframe tf;
  struct vextframe vf;
  struct savetls *tls = &vf.vx_tls;
  if (vmspace_create(&space, 0, NULL) != 0) return fail("vmspace_create");
  if (vmspace_mmap(&space, (void *)0x400000, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANON | MAP_FIXED, -1, 0) == MAP_FAILED)
    return fail("vmspace_mmap");
  if (vmspace_pwrite(&space, code, sizeof(code), 0, 0x400000) != (ssize_t)sizeof(code))
    return fail("vmspace_pwrite");
  memset(&tf, 0, sizeof(tf));
  memset(&vf, 0, sizeof(vf));
  tls->info[0].base = NULL;
  tf.tf_rip = 0x400000;
  tf.tf_rflags = 0x202;
  tf.tf_rax = 20; /* DragonFly's getpid */
  if (vmspace_ctl(&space, VMSPACE_CTL_RUN, &tf, &vf) != 0) return fail("vmspace_ctl");
  if (tf.tf_trapno != T_FAST_SYSCALL || tf.tf_rax != 20 || tf.tf_err != 2) {
    fprintf(stderr, "compat_test: trapno %ld rax %ld err %ld\n", (long)tf.tf_trapno,
            (long)tf.tf_rax, (long)tf.tf_err);
    return 1;
  }
  if (vmspace_destroy(&space) != 0) return fail("vmspace_destroy");
  puts("compat ok");
  return 0;
}
