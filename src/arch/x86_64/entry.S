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
 * vkrt_wait_in_rseq: unblocks signals and waits for the traced guest thread to stop, inside
 * a restartable-sequence critical section, so that a signal handler that runs during the
 * wait is noticed even when it was installed with SA_RESTART (see ptrace_backend.cc).
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
 * long vkrt_wait_in_rseq(const uint64_t *sigmask, int tid, int *status)
 *
 * Precondition: signals are blocked; this thread's rseq_cs points at vkrt_wait_rseq_cs.
 * Sets the signal mask to *sigmask, then wait4(tid, status, __WALL), both inside one
 * restartable sequence, so that a signal handler that runs anywhere from the unblocking to
 * the wait (including a wait4 the kernel would restart for SA_RESTART) sends the thread to
 * the abort handler. Preemption also aborts; rcx (set by each `syscall` to the address after
 * it) says how far the thread got, and when that is between the two calls, a signal frame
 * the kernel wrote below the red zone tells a handler from a preemption: the frame's
 * FP_XSTATE_MAGIC2 lands in the 64 bytes under rsp-128, which are zeroed beforehand.
 * Returns wait4's result (a pid or -errno), or
 *   -1001  preempted before the mask was set (signals still blocked): retry
 *   -1002  preempted after the mask was set, no handler ran: block signals and retry
 *   -1003  a signal handler ran (a handler on an alternate stack is not seen between the
 *          two calls, only in wait4)
 */
#define FP_XSTATE_MAGIC2 0x46505845
	.text
	.globl vkrt_wait_in_rseq
	.hidden vkrt_wait_in_rseq
	.type vkrt_wait_in_rseq, @function
vkrt_wait_in_rseq:
	push %r12
	push %r13
	push %r14
	mov %rdi, %r12
	mov %esi, %r13d
	mov %rdx, %r14
	lea -256(%rsp), %rdi         /* zero [rsp-256, rsp-128): where a frame's magic lands */
	mov $16, %ecx
	xor %eax, %eax
	rep stosq
	xor %ecx, %ecx
.Lcs_start:
	mov $14, %eax                /* rt_sigprocmask(SIG_SETMASK, sigmask, NULL, 8) */
	mov $2, %edi
	mov %r12, %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
.Lunblocked:
	mov $61, %eax                /* wait4(tid, status, __WALL, NULL) */
	mov %r13d, %edi
	mov %r14, %rsi
	mov $0x40000000, %edx
	xor %r10d, %r10d
	syscall
.Lcs_end:
	pop %r14
	pop %r13
	pop %r12
	ret
	.long 0x53053053             /* RSEQ_SIG */
.Lcs_abort:
	lea .Lcs_end(%rip), %rdx
	cmp %rdx, %rcx
	je 3f                        /* wait4 had begun: a handler interrupted it */
	lea .Lunblocked(%rip), %rdx
	cmp %rdx, %rcx
	je 1f
	mov $-1001, %rax
	jmp .Lcs_end
1:	lea -256(%rsp), %rdi         /* between the calls: look for a signal frame's magic */
	mov $32, %ecx
2:	cmpl $FP_XSTATE_MAGIC2, (%rdi)
	je 3f
	add $4, %rdi
	dec %ecx
	jnz 2b
	mov $-1002, %rax
	jmp .Lcs_end
3:	mov $-1003, %rax
	jmp .Lcs_end
	.size vkrt_wait_in_rseq, .-vkrt_wait_in_rseq

	.section .data.rel.ro, "aw"
	.p2align 5
	.globl vkrt_wait_rseq_cs
	.hidden vkrt_wait_rseq_cs
	.type vkrt_wait_rseq_cs, @object
vkrt_wait_rseq_cs:
	.long 0                      /* version */
	.long 0                      /* flags */
	.quad .Lcs_start             /* start_ip */
	.quad .Lcs_end - .Lcs_start  /* post_commit_offset */
	.quad .Lcs_abort             /* abort_ip */
	.size vkrt_wait_rseq_cs, 32

/*
 * long vkrt_futex_wait_in_rseq(const uint64_t *sigmask, const uint32_t *uaddr, uint32_t val,
 *                              const struct timespec *timeout)
 *
 * vkrt_wait_in_rseq's twin for the seccomp backend: sets the signal mask, then
 * futex(uaddr, FUTEX_WAIT, val, timeout) (shared, not private: the word lives in memory
 * shared with a stub process), both inside one restartable sequence (vkrt_futex_rseq_cs).
 * Same results: the futex call's (0 or -errno), or -1001/-1002/-1003 as above. It returns
 * with every signal blocked: the sequence goes on after the futex call to block them again,
 * and the abort handler blocks them before it looks for a handler's frame, so that a handler
 * that runs after the wait (a timeout and a signal at once, or a signal just after) is seen
 * too. (Returning with signals open let such a handler run unseen, and RUN then never ended:
 * 1 in ~140 runs of TimerSignalEndsRunWithSaRestart/seccomp under ASan.)
 */
	.text
	.globl vkrt_futex_wait_in_rseq
	.hidden vkrt_futex_wait_in_rseq
	.type vkrt_futex_wait_in_rseq, @function
vkrt_futex_wait_in_rseq:
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rdi, %r12
	mov %rsi, %r13
	mov %edx, %r14d
	mov %rcx, %r15
	lea -256(%rsp), %rdi
	mov $16, %ecx
	xor %eax, %eax
	rep stosq
	xor %ecx, %ecx
.Lfcs_start:
	mov $14, %eax                /* rt_sigprocmask(SIG_SETMASK, sigmask, NULL, 8) */
	mov $2, %edi
	mov %r12, %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
.Lfunblocked:
	mov $202, %eax               /* futex(uaddr, FUTEX_WAIT, val, timeout) */
	mov %r13, %rdi
	xor %esi, %esi
	mov %r14d, %edx
	mov %r15, %r10
	syscall
.Lfafter:
	mov %rax, %r8                /* the futex's result */
	mov $14, %eax                /* rt_sigprocmask(SIG_BLOCK, all, NULL, 8), still inside */
	xor %edi, %edi
	lea .Lfall_signals(%rip), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
.Lfblocked:
	mov %r8, %rax
.Lfcs_end:
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	ret
	.long 0x53053053             /* RSEQ_SIG */
.Lfcs_abort:
	/* Block signals first: a handler that runs from here until the block is done leaves its
	 * frame under rsp too, and the look for one below comes after it. */
	mov %rcx, %r13               /* how far the sequence got (the last call's return) */
	mov %rax, %r14               /* the futex's result, if it had just returned */
	mov $14, %eax
	xor %edi, %edi
	lea .Lfall_signals(%rip), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	lea .Lfblocked(%rip), %rdx
	cmp %rdx, %r13
	je 4f                        /* after the futex and the block: r8 has the result */
	mov %r14, %r8
	lea .Lfafter(%rip), %rdx
	cmp %rdx, %r13
	je 4f                        /* at the futex's return: r14 had its result */
	lea .Lfunblocked(%rip), %rdx
	cmp %rdx, %r13
	je 1f
	mov $-1001, %rax
	jmp .Lfcs_end
1:	mov $-1002, %r8              /* between the calls: a preemption, unless a frame shows */
4:	lea -256(%rsp), %rdi         /* at or after the futex: a handler ran if a frame shows */
	mov $32, %ecx
2:	cmpl $FP_XSTATE_MAGIC2, (%rdi)
	je 3f
	add $4, %rdi
	dec %ecx
	jnz 2b
	mov %r8, %rax                /* no handler: preempted (or the futex's own result) */
	jmp .Lfcs_end
3:	mov $-1003, %rax
	jmp .Lfcs_end
	.size vkrt_futex_wait_in_rseq, .-vkrt_futex_wait_in_rseq

	.section .rodata
	.p2align 3
.Lfall_signals:
	.quad -1

	.section .data.rel.ro, "aw"
	.p2align 5
	.globl vkrt_futex_rseq_cs
	.hidden vkrt_futex_rseq_cs
	.type vkrt_futex_rseq_cs, @object
vkrt_futex_rseq_cs:
	.long 0
	.long 0
	.quad .Lfcs_start
	.quad .Lfcs_end - .Lfcs_start
	.quad .Lfcs_abort
	.size vkrt_futex_rseq_cs, 32

	.section .note.GNU-stack,"",@progbits
