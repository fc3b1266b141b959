// Ring-0 code of a kvm-backend VM (layout: kvm_layout.h). It is data for the host: the
// backend copies the bytes between vkrt_kvm_guest_start and vkrt_kvm_guest_end to the
// kernel slot's code page, mapped supervisor-only and read-only at VKRT_KVM_KERNEL_VA +
// VKRT_KVM_CODE_OFF. Position independent: only relative jumps.
//
// Every exception the guest raises at CPL3 enters through the IDT on the vCPU's ring-0
// stack (TSS.RSP0), where the CPU leaves its frame (and an error code for some vectors). The
// vector's stub halts at once: KVM_EXIT_HLT hands the vCPU to the host, which reads the frame
// from the stack page, the vector from where the vCPU halted and CR2 from its registers. To
// let the guest go on, the host rewrites the frame and resumes the stub (iretq), or, where the
// CPU pushed an error code, and from anywhere else in ring 0, points rip at vkrt_kvm_resume
// and rsp at the five-word iretq frame, with the guest's general registers in place.

#include "arch/x86_64/kvm_layout.h"

        .section .rodata.vkrt_kvm_guest, "a"
        .balign 64
        .globl vkrt_kvm_guest_start
        .hidden vkrt_kvm_guest_start
vkrt_kvm_guest_start:

// Vector stubs, 16 bytes apart: the host tells the vector from where the vCPU halted. Each
// halts at once (under kvm_pvm every ring-0 instruction costs, so there are as few as
// possible: no record is pushed, CR2 comes from the vCPU's registers); a vector without an
// error code returns from its stub when the host lets the guest go on.
        .globl vkrt_kvm_vectors
        .hidden vkrt_kvm_vectors
vkrt_kvm_vectors:
.macro VEC_NOERR n
        .balign 16
vkrt_kvm_vec\n:
        hlt
        iretq
.endm
.macro VEC_ERR n
        .balign 16
vkrt_kvm_vec\n:
        hlt
        ud2             // never resumed here: the host resumes these through vkrt_kvm_resume,
                        // past the error code (a register write costs less than an `addq`)
.endm

        VEC_NOERR 0
        VEC_NOERR 1
        VEC_NOERR 2
        VEC_NOERR 3
        VEC_NOERR 4
        VEC_NOERR 5
        VEC_NOERR 6
        VEC_NOERR 7
        VEC_ERR 8
        VEC_NOERR 9
        VEC_ERR 10
        VEC_ERR 11
        VEC_ERR 12
        VEC_ERR 13
        VEC_ERR 14
        VEC_NOERR 15
        VEC_NOERR 16
        VEC_ERR 17
        VEC_NOERR 18
        VEC_NOERR 19
        VEC_NOERR 20
        VEC_ERR 21
        VEC_NOERR 22
        VEC_NOERR 23
        VEC_NOERR 24
        VEC_NOERR 25
        VEC_NOERR 26
        VEC_NOERR 27
        VEC_NOERR 28
        VEC_ERR 29
        VEC_ERR 30
        VEC_NOERR 31
        VEC_NOERR 128   // int $0x80 through a DPL3 gate (hardware that delivers it)
        .balign 16
        .globl vkrt_kvm_vectors_end
        .hidden vkrt_kvm_vectors_end
vkrt_kvm_vectors_end:

        .globl vkrt_kvm_resume
        .hidden vkrt_kvm_resume
vkrt_kvm_resume:
        iretq                   // rsp = the host's five-word frame: back to the guest

        // The same after the host dropped translations: a CR3 reload empties this vCPU's
        // TLB of guest entries as well (KVM's own flush should have done it already).
        .globl vkrt_kvm_resume_flush
        .hidden vkrt_kvm_resume_flush
vkrt_kvm_resume_flush:
        pushq %rax
        movq %cr3, %rax
        movq %rax, %cr3
        popq %rax
        iretq

        .globl vkrt_kvm_guest_end
        .hidden vkrt_kvm_guest_end
vkrt_kvm_guest_end:

// Offsets of the vector stubs from vkrt_kvm_guest_start, for the IDT: vectors 0..31, 128.
        .balign 8
        .globl vkrt_kvm_vector_offsets
        .hidden vkrt_kvm_vector_offsets
vkrt_kvm_vector_offsets:
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,128
        .quad vkrt_kvm_vec\n - vkrt_kvm_guest_start
        .endr

        .section .note.GNU-stack, "", @progbits
