// Guest programs for the vkrt conformance tests: tiny x86-64 machine-code snippets.
//
// Each array holds the bytes GNU as 2.40 produced for the instructions in the comment above
// it (the comment is `objdump -d` of that object, offsets relative to the first byte). The
// tests copy a guest to its load address with vmspace_pwrite() and start it with tf_rip
// pointing at the first byte; `k<Guest><Label>Offset` is the offset of a labelled instruction.
//
// This header is valid C99 and C++ so that c99_api_test.c can share it.

#ifndef VKRT_TESTS_GUEST_CODE_H_
#define VKRT_TESTS_GUEST_CODE_H_

// Unused in a given test file is fine (C warns about unused static const arrays).
#define VKRT_GUEST_CODE __attribute__((unused)) static const unsigned char

// clang-format off

// `syscall`, then jumps back to it: every RUN ends at the syscall.
//      0: 0f 05                  syscall
//      2: eb fc                  jmp    0 <guest>
VKRT_GUEST_CODE kGuestSyscallLoop[] = {
    0x0f, 0x05, 0xeb, 0xfc,
};

// Syscall round trip: syscall, rax += 1, rdi = rax, syscall again.
//      0: 0f 05                  syscall
//      2: 48 83 c0 01            add    $0x1,%rax
//      6: 48 89 c7               mov    %rax,%rdi
//      9: 0f 05                  syscall
//      b: 0f 0b                  ud2
VKRT_GUEST_CODE kGuestSyscallAddOne[] = {
    0x0f, 0x05, 0x48, 0x83, 0xc0, 0x01, 0x48, 0x89, 0xc7, 0x0f, 0x05, 0x0f,
    0x0b,
};

// `syscall` then `int3`: shows the guest survives whatever syscall it made.
//      0: 0f 05                  syscall
//      2: cc                     int3
VKRT_GUEST_CODE kGuestSyscallThenInt3[] = {
    0x0f, 0x05, 0xcc,
};

// r12 times: rax = rbx; syscall; rbx = rax (vkernel returns rax + 1). Then int3.
//      0: 48 89 d8               mov    %rbx,%rax
//      3: 0f 05                  syscall
//      5: 48 89 c3               mov    %rax,%rbx
//      8: 49 ff cc               dec    %r12
//      b: 75 f3                  jne    0 <guest>
//      d: cc                     int3
VKRT_GUEST_CODE kGuestCountLoop[] = {
    0x48, 0x89, 0xd8, 0x0f, 0x05, 0x48, 0x89, 0xc3, 0x49, 0xff, 0xcc, 0x75,
    0xf3, 0xcc,
};

// rax = *(uint64_t*)rdi; syscall.
//      0: 48 8b 07               mov    (%rdi),%rax
//      3: 0f 05                  syscall
VKRT_GUEST_CODE kGuestLoad[] = {
    0x48, 0x8b, 0x07, 0x0f, 0x05,
};

// *(uint64_t*)rdi = rsi; syscall.
//      0: 48 89 37               mov    %rsi,(%rdi)
//      3: 0f 05                  syscall
VKRT_GUEST_CODE kGuestStore[] = {
    0x48, 0x89, 0x37, 0x0f, 0x05,
};

// jmp *rdi.
//      0: ff e7                  jmp    *%rdi
VKRT_GUEST_CODE kGuestJump[] = {
    0xff, 0xe7,
};

// `int $0x80` then `int3`.
//      0: cd 80                  int    $0x80
//      2: cc                     int3
VKRT_GUEST_CODE kGuestInt80[] = {
    0xcd, 0x80, 0xcc,
};
enum { kGuestInt80AfterOffset = 0x2 };

// `sysenter` then `int3`.
//      0: 0f 34                  sysenter
//      2: cc                     int3
VKRT_GUEST_CODE kGuestSysenter[] = {
    0x0f, 0x34, 0xcc,
};
enum { kGuestSysenterAfterOffset = 0x2 };

// `ud2`.
//      0: 0f 0b                  ud2
VKRT_GUEST_CODE kGuestUd2[] = {
    0x0f, 0x0b,
};

// `int3`, then spins.
//      0: cc                     int3
//      1: eb fe                  jmp    1 <spin>
VKRT_GUEST_CODE kGuestInt3[] = {
    0xcc, 0xeb, 0xfe,
};
enum { kGuestInt3SpinOffset = 0x1 };

// Integer divide by zero: 1 / 0 with div.
//      0: 31 c9                  xor    %ecx,%ecx
//      2: 31 d2                  xor    %edx,%edx
//      4: b8 01 00 00 00         mov    $0x1,%eax
//      9: f7 f1                  div    %ecx
//      b: 0f 05                  syscall
VKRT_GUEST_CODE kGuestDivide[] = {
    0x31, 0xc9, 0x31, 0xd2, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xf7, 0xf1, 0x0f,
    0x05,
};
enum { kGuestDivideFaultOffset = 0x9 };

// `hlt` (privileged).
//      0: f4                     hlt
VKRT_GUEST_CODE kGuestHlt[] = {
    0xf4,
};

// `mov %cr0, %rax` (privileged).
//      0: 0f 20 c0               mov    %cr0,%rax
VKRT_GUEST_CODE kGuestMovFromCr0[] = {
    0x0f, 0x20, 0xc0,
};

// nop; nop; syscall.
//      0: 90                     nop
//      1: 90                     nop
//      2: 0f 05                  syscall
VKRT_GUEST_CODE kGuestNops[] = {
    0x90, 0x90, 0x0f, 0x05,
};
enum { kGuestNopsSecondOffset = 0x1 };

// Unmasks ZE in MXCSR (0x1f80 & ~0x200 = 0x1d80), then divss 1.0 / 0.0 (needs a stack).
//      0: 68 80 1d 00 00         push   $0x1d80
//      5: 0f ae 14 24            ldmxcsr (%rsp)
//      9: 66 0f ef c9            pxor   %xmm1,%xmm1
//      d: b8 01 00 00 00         mov    $0x1,%eax
//     12: f3 0f 2a c0            cvtsi2ss %eax,%xmm0
//     16: f3 0f 5e c1            divss  %xmm1,%xmm0
//     1a: 0f 05                  syscall
VKRT_GUEST_CODE kGuestSseDivideByZero[] = {
    0x68, 0x80, 0x1d, 0x00, 0x00, 0x0f, 0xae, 0x14, 0x24, 0x66, 0x0f, 0xef,
    0xc9, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xf3, 0x0f, 0x2a, 0xc0, 0xf3, 0x0f,
    0x5e, 0xc1, 0x0f, 0x05,
};
enum { kGuestSseDivideByZeroFaultOffset = 0x16 };

// Unmasks ZE in the x87 control word (0x37f & ~0x4 = 0x37b), computes 1.0 / 0.0 with fdiv,
// then fwait raises the pending exception (needs a stack).
//      0: 68 7b 03 00 00         push   $0x37b
//      5: d9 2c 24               fldcw  (%rsp)
//      8: d9 ee                  fldz
//      a: d9 e8                  fld1
//      c: d8 f1                  fdiv   %st(1),%st
//      e: 9b                     fwait
//      f: 0f 05                  syscall
VKRT_GUEST_CODE kGuestX87DivideByZero[] = {
    0x68, 0x7b, 0x03, 0x00, 0x00, 0xd9, 0x2c, 0x24, 0xd9, 0xee, 0xd9, 0xe8,
    0xd8, 0xf1, 0x9b, 0x0f, 0x05,
};
enum { kGuestX87DivideByZeroFaultOffset = 0xe };

// Changes registers, then syscall: rbx <-> r12, r13 += 0x10, r14 = ~r14, rbp += 7, r8 = r15,
// push r9 (rsp -= 8), rax = 0x77.
//      0: 49 87 dc               xchg   %rbx,%r12
//      3: 49 83 c5 10            add    $0x10,%r13
//      7: 49 f7 d6               not    %r14
//      a: 48 8d 6d 07            lea    0x7(%rbp),%rbp
//      e: 4d 89 f8               mov    %r15,%r8
//     11: 41 51                  push   %r9
//     13: b8 77 00 00 00         mov    $0x77,%eax
//     18: 0f 05                  syscall
VKRT_GUEST_CODE kGuestChangeRegisters[] = {
    0x49, 0x87, 0xdc, 0x49, 0x83, 0xc5, 0x10, 0x49, 0xf7, 0xd6, 0x48, 0x8d,
    0x6d, 0x07, 0x4d, 0x89, 0xf8, 0x41, 0x51, 0xb8, 0x77, 0x00, 0x00, 0x00,
    0x0f, 0x05,
};

// rdi = %fs:0x10; rax = 39; syscall.
//      0: 64 48 8b 3c 25 10 00   mov    %fs:0x10,%rdi
//      7: 00 00
//      9: b8 27 00 00 00         mov    $0x27,%eax
//      e: 0f 05                  syscall
VKRT_GUEST_CODE kGuestFsLoad[] = {
    0x64, 0x48, 0x8b, 0x3c, 0x25, 0x10, 0x00, 0x00, 0x00, 0xb8, 0x27, 0x00,
    0x00, 0x00, 0x0f, 0x05,
};

// rdi = %gs:0x10; rax = 39; syscall.
//      0: 65 48 8b 3c 25 10 00   mov    %gs:0x10,%rdi
//      7: 00 00
//      9: b8 27 00 00 00         mov    $0x27,%eax
//      e: 0f 05                  syscall
VKRT_GUEST_CODE kGuestGsLoad[] = {
    0x65, 0x48, 0x8b, 0x3c, 0x25, 0x10, 0x00, 0x00, 0x00, 0xb8, 0x27, 0x00,
    0x00, 0x00, 0x0f, 0x05,
};

// Reports xmm0 in rdi (low) / rsi (high), loads xmm1 from (rbx), syscall (SSE2 only).
//      0: 66 48 0f 7e c7         movq   %xmm0,%rdi
//      5: 66 0f 70 d0 ee         pshufd $0xee,%xmm0,%xmm2
//      a: 66 48 0f 7e d6         movq   %xmm2,%rsi
//      f: f3 0f 6f 0b            movdqu (%rbx),%xmm1
//     13: 0f 05                  syscall
VKRT_GUEST_CODE kGuestSse[] = {
    0x66, 0x48, 0x0f, 0x7e, 0xc7, 0x66, 0x0f, 0x70, 0xd0, 0xee, 0x66, 0x48,
    0x0f, 0x7e, 0xd6, 0xf3, 0x0f, 0x6f, 0x0b, 0x0f, 0x05,
};

// Reports ymm0 in rdi, rsi, rdx, r10 (bits 0-63 .. 192-255), loads ymm1 from (rbx), syscall
// (AVX only).
//      0: c4 e1 f9 7e c7         vmovq  %xmm0,%rdi
//      5: c4 e3 f9 16 c6 01      vpextrq $0x1,%xmm0,%rsi
//      b: c4 e3 7d 19 c2 01      vextractf128 $0x1,%ymm0,%xmm2
//     11: c4 e1 f9 7e d2         vmovq  %xmm2,%rdx
//     16: c4 c3 f9 16 d2 01      vpextrq $0x1,%xmm2,%r10
//     1c: c5 fe 6f 0b            vmovdqu (%rbx),%ymm1
//     20: 0f 05                  syscall
VKRT_GUEST_CODE kGuestAvx[] = {
    0xc4, 0xe1, 0xf9, 0x7e, 0xc7, 0xc4, 0xe3, 0xf9, 0x16, 0xc6, 0x01, 0xc4,
    0xe3, 0x7d, 0x19, 0xc2, 0x01, 0xc4, 0xe1, 0xf9, 0x7e, 0xd2, 0xc4, 0xc3,
    0xf9, 0x16, 0xd2, 0x01, 0xc5, 0xfe, 0x6f, 0x0b, 0x0f, 0x05,
};

// *(uint64_t*)rdi = rsi (tells the test the guest runs), then spins forever.
//      0: 48 89 37               mov    %rsi,(%rdi)
//      3: eb fe                  jmp    3 <loop>
VKRT_GUEST_CODE kGuestFlagThenSpin[] = {
    0x48, 0x89, 0x37, 0xeb, 0xfe,
};
enum { kGuestFlagThenSpinLoopOffset = 0x3 };

// Jumps to the first byte above the guest's range, where vkrt's own code lives.
//      0: 48 b8 00 00 e0 ff ff   movabs $0x7fffffe00000,%rax
//      7: 7f 00 00
//      a: ff e0                  jmp    *%rax
VKRT_GUEST_CODE kGuestJumpAboveTop[] = {
    0x48, 0xb8, 0x00, 0x00, 0xe0, 0xff, 0xff, 0x7f, 0x00, 0x00, 0xff, 0xe0,
};

// zmm1 = NOT zmm0 (all 512 bits), then syscall: AVX-512 state in both directions.
//      0: 62 f3 7d 48 25 c8 33   vpternlogd $0x33,%zmm0,%zmm0,%zmm1
//      7: 0f 05                  syscall
VKRT_GUEST_CODE kGuestNotZmm0IntoZmm1[] = {
    0x62, 0xf3, 0x7d, 0x48, 0x25, 0xc8, 0x33, 0x0f, 0x05,
};

// Spins forever.
//      0: eb fe                  jmp    0 <guest>
VKRT_GUEST_CODE kGuestSpin[] = {
    0xeb, 0xfe,
};

// Calls the vsyscall page's gettimeofday(rdi, rsi), then ud2 (reached only if the host
// kernel emulated the call).
//      0: 48 c7 c0 00 00 60 ff   mov    $0xffffffffff600000,%rax
//      7: ff d0                  call   *%rax
//      9: 0f 0b                  ud2
VKRT_GUEST_CODE kGuestCallVsyscall[] = {
    0x48, 0xc7, 0xc0, 0x00, 0x00, 0x60, 0xff, 0xff, 0xd0, 0x0f, 0x0b,
};

// rax = sum of the qwords at rdi, rdi + rdx, rdi + 2*rdx, ... (rsi of them), then syscall.
//      0: 31 c0                  xor    %eax,%eax
//      2: 48 03 07               add    (%rdi),%rax
//      5: 48 01 d7               add    %rdx,%rdi
//      8: 48 ff ce               dec    %rsi
//      b: 75 f5                  jne    2 <sweep+0x2>
//      d: 0f 05                  syscall
VKRT_GUEST_CODE kGuestSweepRead[] = {
    0x31, 0xc0, 0x48, 0x03, 0x07, 0x48, 0x01, 0xd7, 0x48, 0xff, 0xce, 0x75,
    0xf5, 0x0f, 0x05,
};

// Stores rdx into the first qword of rsi pages from rdi on, then syscall.
//      0: 48 89 17               mov    %rdx,(%rdi)
//      3: 48 81 c7 00 10 00 00   add    $0x1000,%rdi
//      a: 48 ff ce               dec    %rsi
//      d: 75 f1                  jne    0 <touch>
//      f: 0f 05                  syscall
VKRT_GUEST_CODE kGuestSweepWrite[] = {
    0x48, 0x89, 0x17, 0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, 0x48, 0xff,
    0xce, 0x75, 0xf1, 0x0f, 0x05,
};
// clang-format on

#endif  // VKRT_TESTS_GUEST_CODE_H_
