/*
 * The seccomp backend's stub: the code in every guest address space at VKRT_STUB_BASE
 * (layout in seccomp_layout.h). Position independent, copied there by
 * vkrt_seccomp_stub_boot in a freshly forked child. Nothing here keeps state in writable
 * memory between instructions that matter: the guest shares the address space and can write
 * every writable page, so arguments of system calls come from registers, immediates and the
 * read-only command pages only.
 *
 * Threads of a stub process:
 *   - the server (the process leader) never runs guest code. It waits on its command page
 *     and carries out batches of system calls the vkernel decided (maps, unmaps, installs,
 *     clone of a context thread, receiving a memory object), then acknowledges each batch by
 *     adding 1 to its eventfd, from a constant in its read-only code: the acknowledgement
 *     travels through the kernel, so no guest can forge or alter it. It exits the process
 *     when the vkernel is gone.
 *   - context threads run guest code. Each has its own slot: a signal stack in shared memory
 *     and a command page. Their seccomp filter (stacked on the server's) makes every guest
 *     system call raise SIGSYS and lets the stub code make only futex calls on stub
 *     addresses, rt_sigreturn, sched_yield and arch_prctl(SET_FS/SET_GS): a context thread
 *     can never map, unmap or open anything, whatever registers the guest jumps in with.
 *
 * The handler (SIGSYS, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, and SIGUSR1, the vkernel's
 * kick) runs on the slot's signal stack with every signal blocked. The kernel has written the
 * guest's registers and FPU state there (the signal frame), which the vkernel maps too. The
 * handler publishes the frame's address, wakes the vkernel if it sleeps, spins a bounded
 * number of times for the vkernel's answer, then sleeps on a futex; it resumes the guest
 * with whatever frame the vkernel left (rt_sigreturn), after loading the TLS bases.
 */
#include "arch/x86_64/seccomp_layout.h"

#define SYS_write 1
#define SYS_poll 7
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_munmap 11
#define SYS_rt_sigaction 13
#define SYS_rt_sigprocmask 14
#define SYS_rt_sigreturn 15
#define SYS_sched_yield 24
#define SYS_clone 56
#define SYS_sigaltstack 131
#define SYS_arch_prctl 158
#define SYS_futex 202
#define SYS_exit_group 231
#define SYS_dup3 292
#define SYS_seccomp 317
#define SYS_close_range 436
#define SYS_mseal 462

#define UC_FPREGS 224                /* ucontext: uc_mcontext.fpregs */
#define HANDLER_FLAGS 0x0C000004     /* SIGINFO|ONSTACK|RESTORER */
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
/* Guest-time mask: everything blocked but ILL TRAP BUS FPE USR1 SEGV SYS. */
#define CONTEXT_MASK 0xFFFFFFFFBFFFF927

	.section .rodata
	.p2align 3
	.globl vkrt_seccomp_stub_offsets
	.hidden vkrt_seccomp_stub_offsets
	.type vkrt_seccomp_stub_offsets, @object
vkrt_seccomp_stub_offsets:
	.quad .Lcontext_ready - .Lblob_start
	.quad .Lblob_end - .Lblob_start
	.size vkrt_seccomp_stub_offsets, 16

	.text
/* void vkrt_seccomp_stub_boot(const SeccompBootArgs *args) */
	.globl vkrt_seccomp_stub_boot
	.hidden vkrt_seccomp_stub_boot
	.type vkrt_seccomp_stub_boot, @function
vkrt_seccomp_stub_boot:
	movslq 0(%rdi), %r12         /* socket */
	movslq 4(%rdi), %r13         /* vkernel pidfd */
	movslq 8(%rdi), %r14         /* memfd */
	movslq 12(%rdi), %rbx        /* acknowledgement eventfd */
	mov 16(%rdi), %r15           /* server filter */
	mov 24(%rdi), %rbp           /* context filter */
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
	.size vkrt_seccomp_stub_boot, .-vkrt_seccomp_stub_boot

	.p2align 12
.Lblob_start:
	/* The context filter into FILTER: { u16 len; u64 filter } then the instructions. */
	movzwl 0(%rbp), %ecx
	cmp $((VKRT_SC_FILTER_SIZE - 16) / 8), %ecx
	ja .Lboot_fail
	mov $VKRT_SC_FILTER, %rdi
	mov %cx, 0(%rdi)
	lea 16(%rdi), %rax
	mov %rax, 8(%rdi)
	mov 8(%rbp), %rsi
	lea 16(%rdi), %rdi
	shl $3, %ecx
	rep movsb
	mov $SYS_mprotect, %eax      /* scratch and the rest up to RW: not executable */
	mov $VKRT_SC_SCRATCH, %rdi
	mov $(VKRT_SC_RW - VKRT_SC_SCRATCH), %esi
	mov $3, %edx
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov $SYS_mprotect, %eax
	mov $VKRT_SC_FILTER, %rdi
	mov $VKRT_SC_FILTER_SIZE, %esi
	mov $1, %edx                 /* PROT_READ */
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov $SYS_mprotect, %eax
	mov $VKRT_SC_CODE, %rdi
	mov $VKRT_STUB_CODE_SIZE, %esi
	mov $5, %edx                 /* PROT_READ|PROT_EXEC */
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	/* The shared pages: RW read-write, RO read-only, both from the memfd. */
	mov $SYS_mmap, %eax
	mov $VKRT_SC_RW, %rdi
	mov $VKRT_SC_RW_SIZE, %esi
	mov $3, %edx
	mov $0x11, %r10d             /* MAP_SHARED|MAP_FIXED */
	mov %r14, %r8
	xor %r9d, %r9d
	syscall
	mov $VKRT_SC_RW, %rdi
	cmp %rdi, %rax
	jne .Lboot_fail
	mov $SYS_mmap, %eax
	mov $VKRT_SC_RO, %rdi
	mov $VKRT_SC_RO_SIZE, %esi
	mov $1, %edx
	mov $0x11, %r10d
	mov %r14, %r8
	mov $VKRT_SC_RW_SIZE, %r9d
	syscall
	mov $VKRT_SC_RO, %rdi
	cmp %rdi, %rax
	jne .Lboot_fail
	/* Descriptors: socket -> 0, pidfd -> 1, eventfd -> 2, nothing else. The three are
	   distinct and at least 3 (vkrt_seccomp_stub_boot's contract), so no dup3 overwrites
	   one that is still to be moved. (Scratch copies at fixed numbers did, once the
	   vkernel held 1,000 descriptors.) */
	mov $SYS_dup3, %eax
	mov %r12, %rdi
	mov $SC_FD_SOCKET, %esi
	xor %edx, %edx
	syscall
	cmp $SC_FD_SOCKET, %rax
	jne .Lboot_fail
	mov $SYS_dup3, %eax
	mov %r13, %rdi
	mov $SC_FD_PIDFD, %esi
	xor %edx, %edx
	syscall
	cmp $SC_FD_PIDFD, %rax
	jne .Lboot_fail
	mov $SYS_dup3, %eax
	mov %rbx, %rdi
	mov $SC_FD_ACK, %esi
	xor %edx, %edx
	syscall
	cmp $SC_FD_ACK, %rax
	jne .Lboot_fail
	mov $SYS_close_range, %eax
	mov $SC_FD_FIRST_OBJECT, %edi
	mov $-1, %esi
	xor %edx, %edx
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	/* The server filter, then nothing of the vkernel's memory stays. */
	mov $SYS_seccomp, %eax
	mov $1, %edi                 /* SECCOMP_SET_MODE_FILTER */
	xor %esi, %esi
	mov %r15, %rdx
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	mov $SYS_munmap, %eax
	xor %edi, %edi
	mov $VKRT_STUB_BASE, %rsi
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	/* Seal the stub: no mapping can replace, move or unmap its pages (Linux 6.10+; older
	 * kernels answer ENOSYS and go without). */
	mov $SYS_mseal, %eax
	mov $VKRT_STUB_BASE, %rdi
	mov $VKRT_STUB_SIZE, %esi
	xor %edx, %edx
	syscall
	/* One handler for every signal a context thread takes. */
	mov $VKRT_SC_SCRATCH, %rbx
	lea .Lhandler(%rip), %rax
	mov %rax, 0(%rbx)
	movq $HANDLER_FLAGS, 8(%rbx)
	lea .Lrestorer(%rip), %rax
	mov %rax, 16(%rbx)
	movq $-1, 24(%rbx)           /* sa_mask: everything while the handler runs */
	lea .Lhandled_signals(%rip), %r15
2:	movzbl (%r15), %edi
	test %edi, %edi
	jz 3f
	mov $SYS_rt_sigaction, %eax
	mov %rbx, %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	test %rax, %rax
	jnz .Lboot_fail
	inc %r15
	jmp 2b
3:	xor %r12d, %r12d             /* r12: the last batch carried out */

	/* ---- the server loop ---- */
.Lserver_loop:
	mov $(VKRT_SC_RO + VKRT_SC_SERVER_SLOT * 0x1000), %rbx
	mov SRV_SEQ(%rbx), %eax
	cmp %eax, %r12d
	jne .Lserver_batch
	mov $SYS_futex, %eax
	mov %rbx, %rdi
	mov $FUTEX_WAIT, %esi
	mov %r12d, %edx
	lea SRV_TIMEOUT(%rbx), %r10
	syscall
	cmp $-110, %rax              /* -ETIMEDOUT: is the vkernel still there? */
	jne .Lserver_loop
	mov $VKRT_SC_SCRATCH, %rdi
	movl $SC_FD_PIDFD, 64(%rdi)  /* pollfd { pidfd, POLLIN } */
	movl $1, 68(%rdi)
	mov $SYS_poll, %eax
	lea 64(%rdi), %rdi
	mov $1, %esi
	xor %edx, %edx
	syscall
	test %rax, %rax
	jnz .Lserver_exit            /* readable (gone) or an error: leave */
	jmp .Lserver_loop
.Lserver_batch:
	mov %eax, %r12d
	mov SRV_COUNT(%rbx), %r13d
	cmp $SRV_MAX_OPS, %r13d
	ja .Lserver_exit
	xor %r14d, %r14d             /* op index */
	lea SRV_OPS(%rbx), %r15      /* op */
.Lserver_op:
	cmp %r13d, %r14d
	jae .Lserver_ack
	/* Everything the new thread of a clone needs is in registers: the vkernel may write
	 * the next batch over this page before the new thread first runs. */
	mov 0(%r15), %rbx            /* the call's number; bit 63: it must succeed */
	mov %ebx, %eax
	mov 8(%r15), %rdi
	mov 16(%r15), %rsi
	mov 24(%r15), %rdx
	mov 32(%r15), %r10
	mov 40(%r15), %r8
	mov 48(%r15), %r9
	mov %r9, %rbp                /* for clone: the new context's slot */
	syscall
	test %rax, %rax
	jnz 4f
	cmp $SYS_clone, %rbx
	je .Lcontext_start           /* the new context thread */
4:	bt $63, %rbx                 /* a call that must succeed failed (a translation that */
	jnc 5f                       /* could not be removed): no guest may run on; the */
	cmp $-4095, %rax             /* vkernel sees the stub gone */
	jae .Lserver_exit
5:	mov $(VKRT_SC_RO + VKRT_SC_SERVER_SLOT * 0x1000), %rbx
	mov $(VKRT_SC_RW + VKRT_SC_SERVER_SLOT * VKRT_SC_SLOT_SIZE + MB_RESULTS), %rdi
	mov %rax, (%rdi,%r14,8)
	inc %r14d
	add $SRV_OP_SIZE, %r15
	jmp .Lserver_op
.Lserver_ack:
	/* Tell the vkernel (the eventfd, +1 from read-only code: an acknowledgement no guest can
	 * forge or alter), then a context that waits for this batch (memory: a hint). In this
	 * order: the woken context may take the CPU, and the vkernel must not wait for the
	 * acknowledgement meanwhile. */
	mov $SYS_write, %eax
	mov $SC_FD_ACK, %edi
	lea .Lone(%rip), %rsi
	mov $8, %edx
	syscall
	cmp $8, %rax
	jne .Lserver_exit
	mov $(VKRT_SC_RW + VKRT_SC_SERVER_SLOT * VKRT_SC_SLOT_SIZE + MB_DONE_SEQ), %rdi
	mov %r12d, (%rdi)
	mov $SYS_futex, %eax
	mov $FUTEX_WAKE, %esi
	mov $0x7FFFFFFF, %edx
	syscall
	jmp .Lserver_loop
.Lserver_exit:
	mov $SYS_exit_group, %eax
	xor %edi, %edi
	syscall
.Lboot_fail:
	mov $SYS_exit_group, %eax
	mov $123, %edi
	syscall
	ud2

	/* ---- a new context thread: rbp = its slot (the vkernel's choice) ---- */
.Lcontext_start:
	cmp $VKRT_SC_SLOTS, %rbp
	jae .Lserver_exit
	mov %rbp, %rbx
	shl $VKRT_SC_SLOT_SHIFT, %rbx
	mov $VKRT_SC_RW, %rax
	add %rax, %rbx               /* rbx = mailbox */
	lea VKRT_SC_STACK_OFFSET(%rbx), %rax
	mov %rax, 64(%rbx)           /* stack_t { ss_sp, ss_flags = 0, ss_size } */
	movl $0, 72(%rbx)
	movq $(VKRT_SC_SLOT_SIZE - VKRT_SC_STACK_OFFSET), 80(%rbx)
	mov $SYS_sigaltstack, %eax
	lea 64(%rbx), %rdi
	xor %esi, %esi
	syscall
	test %rax, %rax
	jnz .Lserver_exit
	mov $CONTEXT_MASK, %rax
	mov %rax, 96(%rbx)
	mov $SYS_rt_sigprocmask, %eax
	mov $2, %edi                 /* SIG_SETMASK */
	lea 96(%rbx), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	test %rax, %rax
	jnz .Lserver_exit
	mov $SYS_seccomp, %eax
	mov $1, %edi
	xor %esi, %esi
	mov $VKRT_SC_FILTER, %rdx
	syscall
	test %rax, %rax
	jnz .Lserver_exit
.Lcontext_ready:
	ud2                          /* the first report: the vkernel's first RUN resumes here */
	ud2

	/* ---- the handler: rdi = signal, rsi = siginfo, rdx = ucontext ---- */
.Lhandler:
	mov %rsp, %rax
	mov $VKRT_SC_RW, %rcx
	sub %rcx, %rax
	shr $VKRT_SC_SLOT_SHIFT, %rax
	cmp $VKRT_SC_SLOTS, %rax     /* not on a context's signal stack: give up */
	jae .Lhandler_die
	mov %rax, %r12
	shl $VKRT_SC_SLOT_SHIFT, %rax
	lea (%rcx,%rax), %rbx        /* rbx = mailbox */
	mov %r12, %rax
	shl $12, %rax
	mov $VKRT_SC_RO, %rcx
	lea (%rcx,%rax), %r13        /* r13 = command page */
	mov %edi, MB_SIG(%rbx)
	mov %rsi, MB_INFO(%rbx)
	mov %rdx, MB_UC(%rbx)
	mov 8(%rsi), %eax            /* si_code */
	mov %eax, MB_SI_CODE(%rbx)
	mov 28(%rsi), %eax           /* si_arch (SIGSYS) */
	mov %eax, MB_SI_ARCH(%rbx)
	mov 16(%rsi), %rax           /* si_addr, si_call_addr */
	mov %rax, MB_SI_ADDR(%rbx)
	/* Is the frame's FPU state the one the vkernel last loaded or read (CMD_XREF)? Then it
	 * need not read it across CPUs. Compared here, where the kernel has just written the
	 * frame: the legacy area, the in-use bits, the in-use components. The handler started
	 * with a clean FPU state (rt_sigreturn loads the frame's), so xmm0-2 are free. */
	xor %r8d, %r8d               /* r8d: MB_FPU_SAME */
	cmpl $0, CMD_XREF_ON(%r13)
	je .Lfpu_done
	mov UC_FPREGS(%rdx), %r9     /* the frame's XSAVE area: inside this slot's stack? */
	test $63, %r9
	jnz .Lfpu_done
	lea VKRT_SC_STACK_OFFSET(%rbx), %rax
	cmp %rax, %r9
	jb .Lfpu_done
	mov CMD_XCMP_SIZE(%r13), %eax
	add %r9, %rax
	jc .Lfpu_done
	lea VKRT_SC_SLOT_SIZE(%rbx), %rcx
	cmp %rcx, %rax
	ja .Lfpu_done
	lea CMD_XREF(%r13), %r10     /* r10: the reference */
	mov 512(%r9), %r14           /* r14: XSTATE_BV */
	mov %r14, %rax
	xor 512(%r10), %rax
	test $XCMP_BV_BITS, %eax
	jnz .Lfpu_done
	pxor %xmm0, %xmm0            /* xmm0: every difference or'ed */
	xor %ecx, %ecx
	mov $XCMP_LEGACY, %r11d
	call .Lfpu_cmp
	mov CMD_XCMP_COUNT(%r13), %r15d
	lea CMD_XCMP(%r13), %rdi
1:	test %r15d, %r15d
	jz 2f
	mov 0(%rdi), %ecx            /* a component: compared if the frame uses it */
	bt %rcx, %r14
	jnc 3f
	mov 4(%rdi), %ecx
	mov 8(%rdi), %r11d
	add %rcx, %r11
	call .Lfpu_cmp
3:	add $12, %rdi
	dec %r15d
	jmp 1b
2:	pxor %xmm1, %xmm1
	pcmpeqb %xmm1, %xmm0
	pmovmskb %xmm0, %eax
	cmp $0xFFFF, %eax
	sete %r8b
.Lfpu_done:
	mov %r8d, MB_FPU_SAME(%rbx)
	rdtscp                       /* ecx = TSC_AUX: the CPU number (Linux) */
	and $0xFFF, %ecx
	mov %ecx, MB_CPU(%rbx)
	mov CMD_RESP_SEQ(%r13), %r14d
	inc %r14d                    /* r14 = this report, and the answer awaited */
	mov %r14d, MB_REPORT_SEQ(%rbx)
	mfence                       /* against the vkernel's "sleeping" flag (Dekker) */
	cmpl $0, CMD_VKERNEL_SLEEPING(%r13)
	je .Lhandler_wait
	mov $SYS_futex, %eax
	mov %rbx, %rdi               /* &mailbox.report_seq */
	mov $FUTEX_WAKE, %esi
	mov $1, %edx
	syscall
.Lhandler_wait:
	/* Spin until the TSC passes now + CMD_SPIN ticks, then sleep. No PAUSE: under a
	 * hypervisor with pause-loop exiting it leaves the guest (1.1 us each here). */
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov CMD_SPIN(%r13), %r15d
	add %rax, %r15               /* r15 = the deadline */
5:	cmp CMD_RESP_SEQ(%r13), %r14d
	je .Lhandler_resume
	cmpl $0, CMD_NAP(%r13)       /* the vkernel went on to another context: sleep now, */
	jne 6f                       /* leaving the CPU to whatever it woke */
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	cmp %r15, %rax
	jb 5b
6:	movl $1, MB_STUB_SLEEPING(%rbx)
	mfence
	mov CMD_RESP_SEQ(%r13), %edx
	cmp %edx, %r14d
	je .Lhandler_woken
	mov $SYS_futex, %eax
	mov %r13, %rdi               /* &command.resp_seq */
	mov $FUTEX_WAIT, %esi
	lea CMD_TIMEOUT(%r13), %r10
	syscall
	jmp 6b
.Lhandler_woken:
	movl $0, MB_STUB_SLEEPING(%rbx)
.Lhandler_resume:
	cmpl $0, CMD_EXIT(%r13)
	jne .Lcontext_exit
	mov CMD_SERVER_WAIT(%r13), %r14d
	test %r14d, %r14d
	jz .Lhandler_go
	/* The vkernel queued translations for this fault: wake the server (it runs in this
	 * process, so handing it the CPU is cheap) and wait until it is done. */
	mov $SYS_futex, %eax
	mov $(VKRT_SC_RO + VKRT_SC_SERVER_SLOT * 0x1000 + SRV_SEQ), %rdi
	mov $FUTEX_WAKE, %esi
	mov $1, %edx
	syscall
	mov $(VKRT_SC_RW + VKRT_SC_SERVER_SLOT * VKRT_SC_SLOT_SIZE + MB_DONE_SEQ), %rbx
8:	mov (%rbx), %edx
	mov %edx, %eax
	sub %r14d, %eax
	jns .Lhandler_go             /* done >= awaited (sequence arithmetic) */
	mov $SYS_futex, %eax
	mov %rbx, %rdi
	mov $FUTEX_WAIT, %esi
	lea CMD_TIMEOUT(%r13), %r10
	syscall
	jmp 8b
.Lhandler_go:
	cmpl $0, CMD_USE_ARCH_PRCTL(%r13)
	jne 7f
	mov CMD_FS_BASE(%r13), %rax
	wrfsbase %rax
	mov CMD_GS_BASE(%r13), %rax
	wrgsbase %rax
	ret                          /* to the restorer: rt_sigreturn */
7:	mov $SYS_arch_prctl, %eax
	mov $ARCH_SET_FS, %edi
	mov CMD_FS_BASE(%r13), %rsi
	syscall
	mov $SYS_arch_prctl, %eax
	mov $ARCH_SET_GS, %edi
	mov CMD_GS_BASE(%r13), %rsi
	syscall
	ret
	/* xmm0 |= frame ^ reference over bytes [rcx, r11) (16-byte multiples; rcx < r11) */
.Lfpu_cmp:
	movdqa (%r9,%rcx), %xmm1
	pxor (%r10,%rcx), %xmm1
	por %xmm1, %xmm0
	add $16, %rcx
	cmp %r11, %rcx
	jb .Lfpu_cmp
	ret
.Lcontext_exit:
	mov $60, %eax                /* exit(0): this thread only (its vkernel thread left) */
	xor %edi, %edi
	syscall
.Lhandler_die:
	ud2                          /* SIGILL while blocked: the kernel kills the stub */

.Lrestorer:
	mov $SYS_rt_sigreturn, %eax
	syscall
	ud2

	.p2align 3
.Lone:
	.quad 1                      /* what an acknowledgement adds (read-only: the code page) */
.Lhandled_signals:
	.byte 31, 11, 7, 4, 8, 5, SC_KICK_SIGNAL, 0
.Lblob_end:

	.section .note.GNU-stack,"",@progbits
