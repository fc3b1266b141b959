/*
 * Entry points that must control the FPU and signal state exactly.
 *
 * vmspace_ctl / vkrt_vmspace_run: SPEC §3 says the guest starts with the calling thread's
 * FPU/SSE/AVX state and the caller gets the guest's back. Compiled code between the call
 * and the backend may use vector registers (struct copies), so the state is captured here,
 * before any compiled code runs, into a 64-byte aligned XSAVE area on this frame; the
 * backend reads it as the guest's initial state and overwrites it with the guest's final
 * state; it is loaded back here after all compiled code has run. PKRU is never loaded.
 *
 * vkrt_syscall_in_rseq: a blocking system call with signals unblocked inside a
 * restartable-sequence critical section, so that a signal handler that runs during the wait
 * is noticed even when it was installed with SA_RESTART (the ptrace and seccomp backends'
 * waits).
 */
#define XSAVE_AREA_MAX 16384  /* AMX makes the standard-format area ~11 KiB */

	.text
	.globl vmspace_ctl
	.type vmspace_ctl, @function
/* int vmspace_ctl(void *id, int cmd, struct trapframe *tf, struct vextframe *vf) */
vmspace_ctl:
	mov $-1, %r8                 /* timeout: the thread's setting */
	jmp .Lctl_common
	.size vmspace_ctl, .-vmspace_ctl

	.globl vkrt_vmspace_run
	.type vkrt_vmspace_run, @function
/* int vkrt_vmspace_run(void *id, struct trapframe *tf, struct vextframe *vf, uint64_t ns) */
vkrt_vmspace_run:
	mov %rcx, %r8
	mov %rdx, %rcx
	mov %rsi, %rdx
	mov $1, %esi                 /* VMSPACE_CTL_RUN */
	test %r8, %r8
	jnz .Lctl_common
	mov $-1, %r8
	jmp .Lctl_common
	.size vkrt_vmspace_run, .-vkrt_vmspace_run

.Lctl_common:
	push %rbp
	mov %rsp, %rbp
	push %rbx
	sub $XSAVE_AREA_MAX, %rsp
	and $-64, %rsp
	mov %rdx, %r10
	xor %eax, %eax               /* XSAVE writes XSTATE_BV bits only for saved features */
	mov %rax, 512(%rsp)
	mov %rax, 520(%rsp)
	mov %rax, 528(%rsp)
	mov %rax, 536(%rsp)
	mov %rax, 544(%rsp)
	mov %rax, 552(%rsp)
	mov %rax, 560(%rsp)
	mov %rax, 568(%rsp)
	mov $0x2E7, %eax             /* x87 SSE AVX AVX-512 PKRU: not AMX */
	xor %edx, %edx
	xsave64 (%rsp)
	mov %r10, %rdx
	mov %rsp, %r9
	call vkrt_ctl_impl
	mov %eax, %ebx
	xor %ecx, %ecx
	xgetbv
	and $0xE7, %eax              /* x87 SSE AVX opmask ZMM_Hi256 Hi16_ZMM: never PKRU */
	xor %edx, %edx
	xrstor64 (%rsp)
	mov %ebx, %eax
	mov -8(%rbp), %rbx
	leave
	ret

/*
 * void vkrt_syscall_in_rseq(struct RseqSyscall *call)
 *
 * A blocking system call with signals open, for a RUN that must notice every signal handler
 * that runs in its thread meanwhile, even one installed with SA_RESTART (which the kernel
 * would otherwise restart silently). Precondition: every signal is blocked. Inside one
 * restartable sequence (vkrt_syscall_rseq_cs, armed and disarmed here): set the signal mask
 * to *mask, make the call, and block every signal again. So a handler that runs anywhere from
 * the unblocking to the block aborts the sequence, and none can run after it: the function
 * always returns with every signal blocked. The abort handler blocks them first, then looks
 * for a handler's frame: the frame's FP_XSTATE_MAGIC2 lands in the 64 bytes under rsp-128,
 * which are zeroed beforehand. rcx (set by each `syscall` to the address after it) says how
 * far the sequence got. Preemption aborts too, and so does a sleep in the call. rbp holds
 * `nonce` from before the sequence until the function returns, so the frame of a handler that
 * ran on the alternate signal stack meanwhile says, by its saved rbp, that it interrupted this
 * call and not an earlier one (AltStackHandlerRan).
 *
 * struct RseqSyscall (backend/host.cc) in: mask, nr, args[4], rseq_cs (&rseq->rseq_cs), nonce
 *                                     out: result  the call's result, or -1000 if the call
 *                                                   did not return (see ambiguous)
 *                                          handler 1: a handler's frame showed on this stack
 *                                          stage   0: not aborted; 1: aborted before the mask
 *                                                   was set; 2: aborted after
 *                                          ambiguous 1: aborted at the call's return with rax
 *                                                   still equal to nr: either the call
 *                                                   returned that, or the kernel set it up to
 *                                                   restart (after a handler, or a stop)
 */
#define RC_MASK 0
#define RC_NR 8
#define RC_ARGS 16
#define RC_RSEQ_CS 48
#define RC_RESULT 56
#define RC_HANDLER 64
#define RC_STAGE 68
#define RC_AMBIGUOUS 72
#define RC_NONCE 80
#define NOT_RETURNED -1000
#define FP_XSTATE_MAGIC2 0x46505845
	.text
	.globl vkrt_syscall_in_rseq
	.hidden vkrt_syscall_in_rseq
	.type vkrt_syscall_in_rseq, @function
vkrt_syscall_in_rseq:
	push %rbx
	push %r12
	push %r13
	push %r14
	push %r15
	push %rbp
	mov %rdi, %r12
	mov RC_NONCE(%r12), %rbp
	lea -256(%rsp), %rdi         /* zero [rsp-256, rsp-128): where a frame's magic lands */
	mov $16, %ecx
	xor %eax, %eax
	rep stosq
	movq $NOT_RETURNED, RC_RESULT(%r12)
	movl $0, RC_HANDLER(%r12)
	movl $0, RC_STAGE(%r12)
	movl $0, RC_AMBIGUOUS(%r12)
	mov RC_NR(%r12), %rbx
	mov $NOT_RETURNED, %r15      /* the result, once copied from rax */
	mov RC_RSEQ_CS(%r12), %r13
	lea vkrt_syscall_rseq_cs(%rip), %rax
	mov %rax, (%r13)
	xor %ecx, %ecx
.Lrc_start:
	mov $14, %eax                /* rt_sigprocmask(SIG_SETMASK, mask, NULL, 8) */
	mov $2, %edi
	mov RC_MASK(%r12), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
.Lrc_unblocked:
	mov %rbx, %rax               /* the call */
	mov RC_ARGS(%r12), %rdi
	mov RC_ARGS+8(%r12), %rsi
	mov RC_ARGS+16(%r12), %rdx
	mov RC_ARGS+24(%r12), %r10
	syscall
.Lrc_after:
	mov %rax, %r15
	mov $14, %eax                /* rt_sigprocmask(SIG_BLOCK, all, NULL, 8), still inside */
	xor %edi, %edi
	lea .Lrc_all_signals(%rip), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
.Lrc_blocked:
	mov %r15, RC_RESULT(%r12)
.Lrc_end:
	mov RC_RSEQ_CS(%r12), %r13
	movq $0, (%r13)
	pop %rbp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbx
	ret
	.long 0x53053053             /* RSEQ_SIG */
.Lrc_abort:
	/* Block signals first: a handler that runs from here until the block is done leaves its
	 * frame under rsp too, and the look for one below comes after it. */
	mov %rcx, %r13               /* how far the sequence got (the last call's return) */
	mov %rax, %r14               /* the call's result, if it had just returned */
	mov $14, %eax
	xor %edi, %edi
	lea .Lrc_all_signals(%rip), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	movl $2, RC_STAGE(%r12)
	lea .Lrc_blocked(%rip), %rdx
	cmp %rdx, %r13
	je 2f                        /* after the call and the block: r15 has the result */
	lea .Lrc_after(%rip), %rdx
	cmp %rdx, %r13
	jne 1f
	cmp $NOT_RETURNED, %r15
	jne 2f                       /* at the call's return, r15 has the result ... */
	mov %r14, %r15               /* ... or rax had it still, unless the call restarts */
	cmp %rbx, %r14
	jne 2f
	movl $1, RC_AMBIGUOUS(%r12)
	jmp 2f
1:	lea .Lrc_unblocked(%rip), %rdx
	cmp %rdx, %r13
	je 3f                        /* between the two calls */
	movl $1, RC_STAGE(%r12)      /* before the mask was set: no handler can have run */
	jmp .Lrc_end
2:	mov %r15, RC_RESULT(%r12)
3:	lea -256(%rsp), %rdi         /* a handler ran if its frame's magic shows */
	mov $32, %ecx
4:	cmpl $FP_XSTATE_MAGIC2, (%rdi)
	je 5f
	add $4, %rdi
	dec %ecx
	jnz 4b
	jmp .Lrc_end
5:	movl $1, RC_HANDLER(%r12)
	jmp .Lrc_end
	.size vkrt_syscall_in_rseq, .-vkrt_syscall_in_rseq

	.section .rodata
	.p2align 3
.Lrc_all_signals:
	.quad -1
	.section .data.rel.ro, "aw"
	.p2align 5
	.globl vkrt_syscall_rseq_cs
	.hidden vkrt_syscall_rseq_cs
	.type vkrt_syscall_rseq_cs, @object
vkrt_syscall_rseq_cs:
	.long 0                      /* version */
	.long 0                      /* flags */
	.quad .Lrc_start             /* start_ip */
	.quad .Lrc_end - .Lrc_start  /* post_commit_offset */
	.quad .Lrc_abort             /* abort_ip */
	.size vkrt_syscall_rseq_cs, 32

	.section .note.GNU-stack,"",@progbits
