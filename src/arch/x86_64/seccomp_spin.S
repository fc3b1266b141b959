/*
 * The seccomp backend's fast wait (backend/seccomp/seccomp_backend.cc), in the vkernel.
 *
 * int vkrt_seccomp_spin_in_rseq(const struct SeccompSpin *a)
 *
 * Releases the guest (the store of the resume sequence number) and spins for its next report,
 * with the caller's signal mask as it is, inside one restartable sequence
 * (vkrt_seccomp_spin_rseq_cs). That spares RUN the two rt_sigprocmask calls that would
 * otherwise block signals around the wait (~0.25 us each here): a handler that runs while the
 * guest is released sends the thread to the abort handler instead. Every way out that leaves
 * RUN still waiting (the spin's time is up; the context sleeps and must be woken; a report
 * that RUN will not simply return) blocks every signal with the sequence's last instruction,
 * so that no handler can run unnoticed between the sequence and the blocked wait that follows.
 *
 * Returns
 *    0  the report came, signals as they were (a system call: RUN returns it)
 *    1  the report came, signals now blocked (*old_mask: the mask before)
 *    2  the spin's time is up, signals now blocked
 *    3  the context sleeps on its futex (wake it), signals now blocked
 *   -1  aborted, and a signal frame below the red zone shows a handler ran on this stack
 *   -2  aborted, no frame below the red zone: a preemption, or a handler on an alternate
 *       stack (the caller looks there: rbp holds `nonce` from before the sequence until the
 *       return, so such a handler's frame says by its saved rbp that it interrupted this call)
 * After an abort, signals are blocked too (*old_mask: the mask before): the abort handler
 * blocks them before it looks for a frame, so a handler that runs between the abort and the
 * block leaves its frame where the look finds it, and none can run after it. (Returning with
 * signals open and spinning again from C let a handler run unseen between two sequences
 * while the guest ran.) The guest may or may not have been released, and a context that
 * went to sleep meanwhile may need a wake: the caller reads its own store back and releases
 * again as needed.
 */
#include "arch/x86_64/seccomp_layout.h"

/* struct SeccompSpin (seccomp_backend.cc) */
#define SP_RESP 0           /* u32*: the command page's CMD_RESP_SEQ */
#define SP_SEQ 8            /* u32: the value that releases the guest */
#define SP_WANT 12          /* u32: the report awaited */
#define SP_MAILBOX 16       /* const u8*: the slot's mailbox */
#define SP_DEADLINE 24      /* u64: TSC at which the spin gives up */
#define SP_PASS 32          /* u64: signals (bit sig-1) whose report RUN returns as it is */
#define SP_ALL 40           /* const u64*: the mask to block */
#define SP_OLD 48           /* u64*: receives the mask before */
#define SP_RSEQ_CS 56       /* u64*: this thread's rseq->rseq_cs */
#define SP_NONCE 64         /* u64: held in rbp meanwhile */

#define FP_XSTATE_MAGIC2 0x46505845
#define SIGSYS_NR 31

	.text
	.globl vkrt_seccomp_spin_in_rseq
	.hidden vkrt_seccomp_spin_in_rseq
	.type vkrt_seccomp_spin_in_rseq, @function
vkrt_seccomp_spin_in_rseq:
	push %rbx
	push %r12
	push %r13
	push %rbp
	mov %rdi, %r12
	mov SP_NONCE(%r12), %rbp
	lea -256(%rsp), %rdi         /* zero [rsp-256, rsp-128): where a frame's magic lands */
	mov $16, %ecx
	xor %eax, %eax
	rep stosq
	mov SP_RESP(%r12), %rdi
	mov SP_SEQ(%r12), %esi
	mov SP_MAILBOX(%r12), %r8
	mov SP_WANT(%r12), %r10d
	mov SP_DEADLINE(%r12), %r9
	mov SP_RSEQ_CS(%r12), %r13
	lea vkrt_seccomp_spin_rseq_cs(%rip), %rax
	mov %rax, (%r13)
.Lscs_start:
	mov %esi, (%rdi)             /* release the guest */
	mfence                       /* against the context's "sleeping" flag (Dekker) */
	cmpl $0, MB_STUB_SLEEPING(%r8)
	jne .Lsneed_wake
1:	cmp MB_REPORT_SEQ(%r8), %r10d
	je .Lsgot
	rdtsc                        /* no PAUSE: under pause-loop exiting it leaves the guest */
	shl $32, %rdx
	or %rdx, %rax
	cmp %r9, %rax
	jb 1b
	mov $2, %ebx
	jmp .Lsblock
.Lsneed_wake:
	mov $3, %ebx
	jmp .Lsblock
.Lsgot:
	mov MB_SIG(%r8), %ecx        /* guest data: at worst it makes RUN block when not needed */
	cmp $SIGSYS_NR, %ecx
	je .Lsdone_got
	cmpl $0, MB_SI_CODE(%r8)
	jle 2f
	dec %ecx
	cmp $64, %ecx
	jae 2f
	mov SP_PASS(%r12), %rax
	bt %rcx, %rax
	jc .Lsdone_got
2:	mov $1, %ebx
.Lsblock:
	mov $14, %eax                /* rt_sigprocmask(SIG_BLOCK, all, old, 8) */
	xor %edi, %edi
	mov SP_ALL(%r12), %rsi
	mov SP_OLD(%r12), %rdx
	mov $8, %r10d
	syscall                      /* the sequence's last instruction */
.Lscs_end:
	mov %ebx, %eax
.Lsreturn:
	movq $0, (%r13)
	pop %rbp
	pop %r13
	pop %r12
	pop %rbx
	ret
.Lsdone_got:
	xor %eax, %eax
	jmp .Lsreturn
	.long 0x53053053             /* RSEQ_SIG */
.Lscs_abort:
	mov $14, %eax                /* rt_sigprocmask(SIG_BLOCK, all, old, 8) first */
	xor %edi, %edi
	mov SP_ALL(%r12), %rsi
	mov SP_OLD(%r12), %rdx
	mov $8, %r10d
	syscall
	lea -256(%rsp), %rdi         /* a handler on this stack left its frame's magic here */
	mov $32, %ecx
3:	cmpl $FP_XSTATE_MAGIC2, (%rdi)
	je 4f
	add $4, %rdi
	dec %ecx
	jnz 3b
	mov $-2, %eax
	jmp .Lsreturn
4:	mov $-1, %eax
	jmp .Lsreturn
	.size vkrt_seccomp_spin_in_rseq, .-vkrt_seccomp_spin_in_rseq

	.section .data.rel.ro, "aw"
	.p2align 5
	.globl vkrt_seccomp_spin_rseq_cs
	.hidden vkrt_seccomp_spin_rseq_cs
	.type vkrt_seccomp_spin_rseq_cs, @object
vkrt_seccomp_spin_rseq_cs:
	.long 0                      /* version */
	.long 0                      /* flags */
	.quad .Lscs_start            /* start_ip */
	.quad .Lscs_end - .Lscs_start  /* post_commit_offset */
	.quad .Lscs_abort            /* abort_ip */
	.size vkrt_seccomp_spin_rseq_cs, 32

	.section .note.GNU-stack,"",@progbits
