/* uml_fpu_shim: runs User-Mode Linux (or any program) with PTRACE_GETREGSET and
 * PTRACE_SETREGSET failing with EIO.
 *
 * Why: Debian 12's linux.uml (6.1) reads and writes its processes' FPU state through the
 * NT_X86_XSTATE regset with a fixed-size buffer. Hosts whose XSAVE area is larger (AVX-512,
 * AMX) and kernels that insist on the full size answer EFAULT, and UML panics at its first
 * process ("ptrace set fp regs failed, errno = 14"). When the regset probe fails at boot, UML
 * falls back to PTRACE_GETFPREGS/SETFPREGS (the legacy 512-byte area), which works. The filter
 * only touches those two ptrace requests; UML's own system call interception is unchanged.
 *
 * usage: uml_fpu_shim PROGRAM [ARGUMENT...] */
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    fprintf(argc < 2 ? stderr : stdout,
            "usage: uml_fpu_shim PROGRAM [ARGUMENT...]\n"
            "Runs PROGRAM with ptrace(PTRACE_GETREGSET/SETREGSET) failing (EIO), so that\n"
            "User-Mode Linux 6.1 uses the legacy FPU register calls on hosts with large\n"
            "XSAVE areas.\n");
    return argc < 2 ? 2 : 0;
  }
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == NULL) {
    fprintf(stderr, "uml_fpu_shim: seccomp_init failed\n");
    return 1;
  }
  int rc = 0;
  rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EIO), SCMP_SYS(ptrace), 1,
                         SCMP_A0(SCMP_CMP_EQ, PTRACE_GETREGSET));
  rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EIO), SCMP_SYS(ptrace), 1,
                         SCMP_A0(SCMP_CMP_EQ, PTRACE_SETREGSET));
  if (rc != 0 || seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1) != 0 || seccomp_load(ctx) != 0) {
    fprintf(stderr, "uml_fpu_shim: loading the seccomp filter failed\n");
    return 1;
  }
  seccomp_release(ctx);
  execvp(argv[1], argv + 1);
  fprintf(stderr, "uml_fpu_shim: %s: %s\n", argv[1], strerror(errno));
  return 127;
}
