// The layout of a guest address space's stub under the seccomp backend, shared by the
// assembly in seccomp_stub.S and backend/seccomp/. The stub owns [VKRT_STUB_BASE,
// VKRT_STUB_END) (stub_layout.h); everything below belongs to the guest.
//
//   CODE     64 KiB  read + execute, sealed
//   SCRATCH  4 KiB   the server thread's private scratch (sigaction, poll records)
//   FILTER   8 KiB   the context threads' seccomp program (read-only, sealed)
//   RW       (SLOTS + 1) x 32 KiB, shared with the vkernel (a memfd): per context slot a
//            mailbox page (the stub reports) and its 28 KiB signal stack, where the kernel
//            writes the guest's signal frame; the last slot's mailbox is the server's.
//   RO       (SLOTS + 1) x 4 KiB, the same memfd mapped read-only: per slot the command
//            page the vkernel writes (resume sequence, TLS bases), then the server's.
//
// Trust: every page the stub can write, the guest can write too (it shares the address
// space). The vkernel treats RW contents as guest data; decisions reach the stub only
// through RO pages, which nothing in the stub process can change (docs/security.md).
#ifndef VKRT_SRC_ARCH_X86_64_SECCOMP_LAYOUT_H_
#define VKRT_SRC_ARCH_X86_64_SECCOMP_LAYOUT_H_

#include "arch/x86_64/stub_layout.h"

#define VKRT_SC_CODE VKRT_STUB_BASE
#define VKRT_SC_SCRATCH 0x7FFFFFE10000
#define VKRT_SC_FILTER 0x7FFFFFE11000
#define VKRT_SC_FILTER_SIZE 0x2000
#define VKRT_SC_SLOTS 48
#define VKRT_SC_SLOT_SHIFT 15          /* 32 KiB per slot in RW */
#define VKRT_SC_SLOT_SIZE 0x8000
#define VKRT_SC_STACK_OFFSET 0x1000    /* the signal stack within a slot */
#define VKRT_SC_RW 0x7FFFFFE20000
#define VKRT_SC_RW_SIZE 0x188000       /* (SLOTS + 1) * SLOT_SIZE */
#define VKRT_SC_RO 0x7FFFFFFA8000      /* RW + RW_SIZE */
#define VKRT_SC_RO_SIZE 0x31000        /* (SLOTS + 1) pages */
#define VKRT_SC_SERVER_SLOT 48         /* == SLOTS */
#define VKRT_SC_MEMFD_SIZE 0x1B9000    /* RW_SIZE + RO_SIZE */

/* Mailbox (RW, per slot): written by the stub, read by the vkernel. */
#define MB_REPORT_SEQ 0     /* u32: futex word the vkernel waits on */
#define MB_STUB_SLEEPING 4  /* u32: the context waits in FUTEX_WAIT */
#define MB_SIG 8            /* u32 */
#define MB_CPU 12           /* u32: the CPU the handler ran on (RDTSCP's TSC_AUX) */
#define MB_INFO 16          /* u64: siginfo_t* (a stub address) */
#define MB_UC 24            /* u64: ucontext_t* (a stub address) */
#define MB_SI_CODE 40       /* u32: the siginfo fields the vkernel needs, copied into this */
#define MB_SI_ARCH 44       /* u32: cache line (the frame is read across CPUs) */
#define MB_SI_ADDR 48       /* u64: si_addr / si_call_addr */
#define MB_FPU_SAME 56      /* u32: 1 if the frame's FPU state equals CMD_XREF (see there) */
#define MB_DONE_SEQ 32      /* server slot only: u32, the last batch carried out (a hint) */
#define MB_RESULTS 64       /* server slot: u64 results[SERVER_MAX_OPS] */

/* Command page (RO in the stub, per slot): written by the vkernel. */
#define CMD_RESP_SEQ 0          /* u32: futex word the context waits on */
#define CMD_VKERNEL_SLEEPING 4  /* u32: the vkernel waits in FUTEX_WAIT */
#define CMD_SPIN 8              /* u32: TSC ticks the context spins before it sleeps */
#define CMD_USE_ARCH_PRCTL 12   /* u32: no FSGSBASE instructions: set bases by arch_prctl */
#define CMD_FS_BASE 16          /* u64 */
#define CMD_GS_BASE 24          /* u64 */
#define CMD_TIMEOUT 32          /* struct timespec: the context's futex wait bound */
#define CMD_EXIT 48             /* u32: instead of resuming, the context thread exits */
#define CMD_SERVER_WAIT 52      /* u32: before resuming, wake the server and wait until its
                                   batch of this number is done (translations for this fault) */
#define CMD_XREF_ON 56          /* u32: CMD_XREF holds the guest's FPU state as the vkernel
                                   last loaded or read it: the handler compares the frame's */
#define CMD_NAP 60              /* u32: the vkernel thread went on to another context: stop
                                   spinning for the answer and sleep */
#define CMD_XCMP_COUNT 64       /* u32: entries in CMD_XCMP */
#define CMD_XCMP_SIZE 68        /* u32: bytes of the XSAVE area the comparison may read */
#define CMD_XCMP 72             /* { u32 bv_bit, u32 offset, u32 len } x CMD_XCMP_MAX: the
                                   components compared when in use (after the legacy area) */
#define CMD_XCMP_MAX 4
#define CMD_XREF 1024           /* the reference XSAVE area (standard format), up to 3 KiB */
#define CMD_XREF_MAX 3072
#define XCMP_LEGACY 416         /* FCW..XMM15: always compared */
#define XCMP_FEATURES 0xE7      /* XSTATE_BV bits that pass between vkernel and guest */
#define XCMP_BV_BITS 0xE4       /* of those, the bits the comparison checks: not x87 and SSE,
                                   whose registers XSAVE writes whether in use or not (an
                                   XSTATE_BV bit 0 or 1 may read 0 or 1 for a state in its
                                   initial configuration: the legacy area decides) */

/* Server command page (RO): a batch of system calls the vkernel decided. */
#define SRV_SEQ 0               /* u32: futex word the server waits on */
#define SRV_COUNT 4             /* u32: operations in the batch */
#define SRV_TIMEOUT 8           /* struct timespec: how often the server checks its vkernel */
#define SRV_OPS 64              /* ops[]: { nr, a0, a1, a2, a3, a4, a5 } (u64 each) */
#define SRV_OP_SIZE 56
#define SRV_MAX_OPS 64

/* The stub's fixed descriptors. */
#define SC_FD_SOCKET 0          /* to the vkernel: fds arrive (and it ends when the stub does) */
#define SC_FD_PIDFD 1           /* the vkernel process: readable when it is gone */
#define SC_FD_ACK 2             /* an eventfd: +1 per batch carried out (acknowledgements) */
#define SC_FD_FIRST_OBJECT 3

#define SC_KICK_SIGNAL 10       /* SIGUSR1: the vkernel stops a running guest */

#ifndef __ASSEMBLER__
#include <stdint.h>

namespace vkrt::x86_64 {

static_assert(VKRT_SC_RW + VKRT_SC_RW_SIZE == VKRT_SC_RO);
static_assert(VKRT_SC_RW_SIZE == (VKRT_SC_SLOTS + 1) * VKRT_SC_SLOT_SIZE);
static_assert(VKRT_SC_RO_SIZE == (VKRT_SC_SLOTS + 1) * 0x1000);
static_assert(VKRT_SC_RO + VKRT_SC_RO_SIZE <= VKRT_STUB_END);
static_assert(VKRT_SC_MEMFD_SIZE == VKRT_SC_RW_SIZE + VKRT_SC_RO_SIZE);
static_assert(SRV_OPS + SRV_MAX_OPS * SRV_OP_SIZE <= 0x1000);
static_assert(MB_RESULTS + SRV_MAX_OPS * 8 <= 0x1000);
static_assert(CMD_XCMP + CMD_XCMP_MAX * 12 <= 128 && CMD_XREF + CMD_XREF_MAX == 0x1000);

// What vkrt_seccomp_stub_boot needs; read before the vkernel's memory is unmapped.
struct SeccompBootArgs {
  int32_t socket_fd;
  int32_t pidfd;
  int32_t memfd;
  int32_t ack_fd;
  const void* server_filter;   // struct sock_fprog*: the whole stub process
  const void* context_filter;  // struct sock_fprog*: copied to FILTER for context threads
};

// Offsets of labels inside the stub code, filled in by seccomp_stub.S.
struct SeccompStubOffsets {
  uint64_t context_ready;  // the `ud2` a new context thread traps on first
  uint64_t code_end;       // end of the code that may make system calls
};
extern "C" const SeccompStubOffsets vkrt_seccomp_stub_offsets;

// In a freshly forked child: builds the stub (see seccomp_stub.S) and becomes its server
// thread. Uses no stack after loading `args`. socket_fd, pidfd and ack_fd must be distinct
// and at least 3 (they are moved to 0, 1 and 2 in that order).
extern "C" [[noreturn]] void vkrt_seccomp_stub_boot(const SeccompBootArgs* args);

}  // namespace vkrt::x86_64
#endif

#endif  // VKRT_SRC_ARCH_X86_64_SECCOMP_LAYOUT_H_
