#define _GNU_SOURCE
/* Run by kvm_hostile_test in a mount namespace where /dev is an empty tmpfs: without
 * /dev/kvm, the kvm backend must say why and refuse, and the rest must work. Exit 0 on
 * success; otherwise prints what was wrong. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <vkrt/vmspace.h>

int main(void) {
  const char *why = NULL;
  errno = 0;
  if (vkrt_backend_available("kvm", &why) != -1 || errno != EOPNOTSUPP) {
    printf("kvm reported available without /dev/kvm (errno %d)\n", errno);
    return 1;
  }
  if (why == NULL || strstr(why, "/dev/kvm") == NULL) {
    printf("the reason does not name /dev/kvm: %s\n", why ? why : "(null)");
    return 1;
  }
  printf("reason: %s\n", why);
  static char id;
  errno = 0;
  if (vmspace_create(&id, VKRT_TYPE_KVM, NULL) != -1 || errno != EOPNOTSUPP) {
    printf("vmspace_create(VKRT_TYPE_KVM) did not fail with EOPNOTSUPP (errno %d)\n", errno);
    return 1;
  }
  if (strcmp(vkrt_backend_name(), "kvm") == 0) {
    printf("kvm is the default without /dev/kvm\n");
    return 1;
  }
  /* The rest works: the default backend runs a guest `syscall`. */
  if (vmspace_create(&id, VKRT_TYPE_DEFAULT, NULL) != 0) {
    printf("vmspace_create(default): %s\n", strerror(errno));
    return 1;
  }
  void *code = (void *)0x400000;
  if (vmspace_mmap(&id, code, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != code) {
    printf("vmspace_mmap: %s\n", strerror(errno));
    return 1;
  }
  const unsigned char syscall_insn[] = {0x0f, 0x05, 0x0f, 0x0b};
  if (vmspace_pwrite(&id, syscall_insn, sizeof(syscall_insn), 0, 0x400000) !=
      (ssize_t)sizeof(syscall_insn)) {
    printf("vmspace_pwrite: %s\n", strerror(errno));
    return 1;
  }
  struct trapframe tf;
  memset(&tf, 0, sizeof(tf));
  tf.tf_rip = 0x400000;
  tf.tf_rflags = 0x202;
  tf.tf_rax = 39;
  struct vextframe vf;
  memset(&vf, 0, sizeof(vf));
  if (vmspace_ctl(&id, VMSPACE_CTL_RUN, &tf, &vf) != 0 || tf.tf_trapno != T_FAST_SYSCALL ||
      tf.tf_rax != 39) {
    printf("RUN on %s: %s, trapno %ld\n", vkrt_backend_name(), strerror(errno),
           (long)tf.tf_trapno);
    return 1;
  }
  if (vmspace_destroy(&id) != 0) {
    printf("vmspace_destroy: %s\n", strerror(errno));
    return 1;
  }
  printf("default backend %s works\n", vkrt_backend_name());
  return 0;
}
