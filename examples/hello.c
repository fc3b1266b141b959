/*
 * hello: the smallest vkernel. It creates a vmspace, maps one page of code into it, runs
 * the guest, serves its write(2) by printing what the guest wrote, and ends when the guest
 * calls exit(2).
 *
 * Usage: hello [--help]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <vkrt/vmspace.h>

/*
 * The guest, at 0x400000:
 *   0:  48 8d 35 1a 00 00 00   lea    0x1a(%rip),%rsi     # msg at 0x21
 *   7:  bf 01 00 00 00         mov    $1,%edi             # fd 1
 *   c:  ba 0d 00 00 00         mov    $13,%edx            # length
 *  11:  b8 01 00 00 00         mov    $1,%eax             # write
 *  16:  0f 05                  syscall
 *  18:  b8 3c 00 00 00         mov    $60,%eax            # exit
 *  1d:  31 ff                  xor    %edi,%edi
 *  1f:  0f 05                  syscall
 *  21:  "Hello, vkrt!\n"
 */
static const unsigned char kGuest[] = {
    0x48, 0x8d, 0x35, 0x1a, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00,
    0xba, 0x0d, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0xb8, 0x3c, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05, 0x48, 0x65, 0x6c,
    0x6c, 0x6f, 0x2c, 0x20, 0x76, 0x6b, 0x72, 0x74, 0x21, 0x0a};

#define GUEST_CODE 0x400000UL

static int die(const char *what) {
  const char *why = vkrt_last_error();
  fprintf(stderr, "hello: %s: %s\n", what, why[0] != '\0' ? why : strerror(errno));
  return 1;
}

int main(int argc, char **argv) {
  if (argc > 1) {
    int help = strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
    fprintf(help ? stdout : stderr,
            "usage: %s [--help]\n"
            "Runs a tiny guest program in a vkrt vmspace and prints what it writes.\n"
            "VKRT_BACKEND=ptrace|seccomp|kvm picks the backend.\n",
            argv[0]);
    return help ? 0 : 2;
  }
  static int space; /* the vmspace id: any unique pointer */
  if (vmspace_create(&space, 0, NULL) != 0) return die("vmspace_create");
  if (vmspace_mmap(&space, (void *)GUEST_CODE, 4096, PROT_READ | PROT_EXEC | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
    return die("vmspace_mmap");
  if (vmspace_pwrite(&space, kGuest, sizeof(kGuest), 0, GUEST_CODE) != (ssize_t)sizeof(kGuest))
    return die("vmspace_pwrite");

  struct trapframe tf;
  struct vextframe vf;
  memset(&tf, 0, sizeof(tf));
  memset(&vf, 0, sizeof(vf));
  tf.tf_rip = GUEST_CODE;
  tf.tf_rflags = 0x202;
  for (;;) {
    if (vmspace_ctl(&space, VMSPACE_CTL_RUN, &tf, &vf) != 0) return die("vmspace_ctl");
    if (tf.tf_trapno != T_FAST_SYSCALL) {
      fprintf(stderr, "hello: guest trapped: trapno %ld at rip %#lx\n", (long)tf.tf_trapno,
              (unsigned long)tf.tf_rip);
      return 1;
    }
    if (tf.tf_rax == 1) { /* write(fd, buf, len): copy the guest's buffer out */
      char buf[256];
      size_t len = (size_t)tf.tf_rdx < sizeof(buf) ? (size_t)tf.tf_rdx : sizeof(buf);
      ssize_t got = vmspace_pread(&space, buf, len, 0, tf.tf_rsi);
      if (got < 0) return die("vmspace_pread");
      fwrite(buf, 1, (size_t)got, stdout);
      tf.tf_rax = got;
    } else if (tf.tf_rax == 60) { /* exit(status) */
      fflush(stdout);
      int status = (int)tf.tf_rdi;
      if (vmspace_destroy(&space) != 0) return die("vmspace_destroy");
      return status;
    } else {
      tf.tf_rax = -ENOSYS;
    }
  }
}
