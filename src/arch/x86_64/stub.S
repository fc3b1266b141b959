/*
 * The stub: the code that lives in every guest address space (ptrace backend), at
 * VKRT_STUB_BASE, position independent. It is copied there by vkrt_stub_boot in a freshly
 * forked child. Nothing here uses a stack, so guest code (which shares the address space)
 * cannot steer it by scribbling on memory: every system call number and flag comes from an
 * immediate operand in read-only code, and the seccomp filter only admits system calls
 * made from this code.
 *
 * Threads of a stub process:
 *   - the spawner (the process leader): waits on its control socket and clones one
 *     context thread per request; exits the whole process when the vkernel dies (its
 *     pidfd polls readable) or closes the socket.
 *   - context threads: one per (vkernel thread, vmspace); parked in pause() until their
 *     vkernel thread seizes them with ptrace, then they run guest code under
 *     PTRACE_SYSEMU. They block every asynchronous signal; SIGSEGV/SIGBUS/SIGFPE go to
 *     the fault handler below on the context's own signal stack so the vkernel can read
 *     the hardware trap number and error code.
 */
#include "arch/x86_64/stub_layout.h"

#define SYS_read 0
#define SYS_write 1
#define SYS_poll 7
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_munmap 11
#define SYS_rt_sigaction 13
#define SYS_rt_sigprocmask 14
#define SYS_rt_sigreturn 15
#define SYS_pause 34
#define SYS_clone 56
#define SYS_sigaltstack 131
#define SYS_exit_group 231
#define SYS_seccomp 317

#define CONTEXT_CLONE_FLAGS 0x50F00  /* VM|FS|FILES|SIGHAND|THREAD|SYSVSEM */
#define HANDLER_FLAGS 0x4C000004     /* SIGINFO|ONSTACK|RESTORER|NODEFER */
#define UC_MCONTEXT 40
#define SC_ERR 152
#define SC_TRAPNO 160
#define SC_CR2 176

	.section .rodata
	.p2align 3
	.globl vkrt_stub_offsets
	.hidden vkrt_stub_offsets
	.type vkrt_stub_offsets, @object
vkrt_stub_offsets:
	.quad .Lfault_report_end - .Lblob_start
	.quad .Linject_syscall - .Lblob_start
	.size vkrt_stub_offsets, 16

	.text
/* void vkrt_stub_boot(int ctl_fd, int vkernel_pidfd, const struct sock_fprog *prog) */
	.globl vkrt_stub_boot
	.hidden vkrt_stub_boot
	.type vkrt_stub_boot, @function
vkrt_stub_boot:
	mov %edi, %r12d
	mov %esi, %r13d
	mov %rdx, %r14
	/* The stack may lie inside the stub region (ASLR off); it is not used from here on. */
	mov $SYS_mmap, %eax
	mov $VKRT_STUB_BASE, %rdi
	mov $VKRT_STUB_SIZE, %esi
	mov $7, %edx                 /* RWX until copied; the code becomes R-X */
	mov $0x32, %r10d             /* MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED */
	mov $-1, %r8
	xor %r9d, %r9d
	syscall
	mov $VKRT_STUB_BASE, %rdi
	cmp %rdi, %rax
	jne 1f
	lea .Lblob_start(%rip), %rsi
	lea .Lblob_end(%rip), %rcx
	sub %rsi, %rcx
	rep movsb
	mov $VKRT_STUB_BASE, %rax
	jmp *%rax
1:	mov $SYS_exit_group, %eax
	mov $122, %edi
	syscall
	ud2
	.size vkrt_stub_boot, .-vkrt_stub_boot

	.p2align 12
.Lblob_start:
	/* r12 = control socket, r13 = vkernel pidfd, r14 = seccomp program (still mapped). */
	mov $SYS_mprotect, %eax
	mov $VKRT_STUB_BASE, %rdi
	mov $VKRT_STUB_CODE_SIZE, %esi
	mov $5, %edx                 /* PROT_READ|PROT_EXEC */
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov $SYS_seccomp, %eax
	mov $1, %edi                 /* SECCOMP_SET_MODE_FILTER */
	xor %esi, %esi
	mov %r14, %rdx
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov $SYS_munmap, %eax
	xor %edi, %edi
	mov $VKRT_STUB_BASE, %rsi
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	/* struct kernel_sigaction at the scratch page. */
	mov $VKRT_STUB_SCRATCH, %rbx
	lea .Lfault_handler(%rip), %rax
	mov %rax, 0(%rbx)
	movq $HANDLER_FLAGS, 8(%rbx)
	lea .Lrestorer(%rip), %rax
	mov %rax, 16(%rbx)
	movq $0, 24(%rbx)
	mov $11, %r15d               /* SIGSEGV */
	mov $SYS_rt_sigaction, %eax
	mov %r15d, %edi
	mov %rbx, %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov $SYS_rt_sigaction, %eax
	mov $7, %edi                 /* SIGBUS */
	mov %rbx, %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov $SYS_rt_sigaction, %eax
	mov $8, %edi                 /* SIGFPE */
	mov %rbx, %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	test %rax, %rax
	jnz .Lboot_fail

.Lspawner_loop:
	mov $VKRT_STUB_SCRATCH, %rbx
	mov %r12d, 64(%rbx)          /* pollfd[0] = { ctl, POLLIN } */
	movl $1, 68(%rbx)
	mov %r13d, 72(%rbx)          /* pollfd[1] = { vkernel pidfd, POLLIN } */
	movl $1, 76(%rbx)
	mov $SYS_poll, %eax
	lea 64(%rbx), %rdi
	mov $2, %esi
	mov $-1, %edx
	syscall
	cmp $-4, %rax                /* -EINTR */
	je .Lspawner_loop
	test %rax, %rax
	js .Lspawner_exit
	testw $0x39, 78(%rbx)        /* vkernel gone: POLLIN|POLLERR|POLLHUP|POLLNVAL */
	jnz .Lspawner_exit
	mov $SYS_read, %eax
	mov %r12d, %edi
	lea 128(%rbx), %rsi
	mov $4, %edx
	syscall
	cmp $4, %rax
	jne .Lspawner_exit           /* socket closed: the vmspace is being destroyed */
	mov 128(%rbx), %ebp          /* slot index, range-checked below */
	cmp $VKRT_STUB_MAX_SLOTS, %ebp
	jae .Lspawner_loop
	mov $SYS_clone, %eax
	mov $CONTEXT_CLONE_FLAGS, %edi
	xor %esi, %esi
	xor %edx, %edx
	xor %r10d, %r10d
	xor %r8d, %r8d
	syscall
	test %rax, %rax
	jz .Lcontext_start
	jmp .Lspawner_loop
.Lspawner_exit:
	mov $SYS_exit_group, %eax
	xor %edi, %edi
	syscall
.Lboot_fail:
	mov $SYS_exit_group, %eax
	mov $123, %edi
	syscall
	ud2

.Lcontext_start:
	/* rbp = slot index; rbx = slot base */
	mov %ebp, %ebx
	shl $14, %rbx                /* * VKRT_STUB_SLOT_SIZE */
	mov $VKRT_STUB_SLOTS, %rax
	add %rax, %rbx
	lea VKRT_STUB_SLOT_ALTSTACK(%rbx), %rax
	mov %rax, 0(%rbx)            /* stack_t { ss_sp, ss_flags = 0, ss_size } */
	movl $0, 8(%rbx)
	movq $(VKRT_STUB_SLOT_SIZE - VKRT_STUB_SLOT_ALTSTACK), 16(%rbx)
	mov $SYS_sigaltstack, %eax
	mov %rbx, %rdi
	xor %esi, %esi
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	/* Block everything but the synchronous faults: ILL TRAP BUS FPE SEGV SYS. */
	mov $0xFFFFFFFFBFFFFB27, %rax
	mov %rax, 32(%rbx)
	mov $SYS_rt_sigprocmask, %eax
	mov $2, %edi                 /* SIG_SETMASK */
	lea 32(%rbx), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov %ebp, 48(%rbx)           /* tell the vkernel this context is ready */
	mov $SYS_write, %eax
	mov %r12d, %edi
	lea 48(%rbx), %rsi
	mov $4, %edx
	syscall
.Lpark:
	mov $SYS_pause, %eax
	syscall
	jmp .Lpark

	/* Runs on the context's signal stack for SIGSEGV, SIGBUS and SIGFPE raised by guest
	 * code, and reports the hardware trap number (rdi), error code (rsi), fault address
	 * (rdx) and si_code (r10) to the tracing vkernel thread through a system call it
	 * intercepts (PTRACE_SYSEMU). */
.Lfault_handler:
	movslq 8(%rsi), %r10         /* si_code: SEGV_ACCERR means the page is mapped */
	mov UC_MCONTEXT+SC_TRAPNO(%rdx), %rdi
	mov UC_MCONTEXT+SC_ERR(%rdx), %rsi
	mov UC_MCONTEXT+SC_CR2(%rdx), %rdx
	mov $-1, %rax
	syscall
.Lfault_report_end:
	ud2

.Lrestorer:
	mov $SYS_rt_sigreturn, %eax
	syscall
	ud2

	/* One system call injected by the vkernel (registers set with PTRACE_SETREGS, run
	 * with PTRACE_CONT); the int3 hands control back. */
.Linject_syscall:
	syscall
	int3
	ud2
.Lblob_end:

	.section .note.GNU-stack,"",@progbits
