/*
 * <vkrt/vmspace.h> — DragonFly BSD's virtual-kernel interface (vmspace_*) for Linux/x86-64.
 *
 * This header is the whole public C interface of libvkrt. It compiles as C99 and as C++.
 * The behaviour is specified in docs/api.md; in short, every function behaves like the
 * DragonFly system call of the same name: -1 (MAP_FAILED for vmspace_mmap) with errno on
 * failure.
 *
 * Constants that collide with Linux (MAP_VPAGETABLE, the DragonFly madvise numbering used
 * by vmspace_mcontrol/mcontrol) are documented where they are defined.
 */
#ifndef VKRT_VMSPACE_H_
#define VKRT_VMSPACE_H_

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VKRT_API __attribute__((visibility("default")))

/* ---- Register frames (DragonFly x86-64 layout) ---------------------------------------- */

#ifndef VKRT_HAVE_TRAPFRAME
#define VKRT_HAVE_TRAPFRAME 1
/* DragonFly's struct trapframe: 25 x int64, packed, 200 bytes. */
struct trapframe {
  int64_t tf_rdi;
  int64_t tf_rsi;
  int64_t tf_rdx;
  int64_t tf_rcx;
  int64_t tf_r8;
  int64_t tf_r9;
  int64_t tf_rax;
  int64_t tf_rbx;
  int64_t tf_rbp;
  int64_t tf_r10;
  int64_t tf_r11;
  int64_t tf_r12;
  int64_t tf_r13;
  int64_t tf_r14;
  int64_t tf_r15;
  int64_t tf_xflags;
  int64_t tf_trapno;
  int64_t tf_addr;
  int64_t tf_flags;
  int64_t tf_err;
  int64_t tf_rip;
  int64_t tf_cs;
  int64_t tf_rflags;
  int64_t tf_rsp;
  int64_t tf_ss;
} __attribute__((packed));

/* One TLS segment base: info[0] of struct savetls is the FS base, info[1] the GS base. */
struct tls_info {
  void *base;
  long size;
};

struct savetls {
  struct tls_info info[2];
};

struct vextframe {
  struct savetls vx_tls;
};
#endif /* VKRT_HAVE_TRAPFRAME */

/* ---- vmspace_ctl commands -------------------------------------------------------------- */
#define VMSPACE_CTL_RUN 1

/* ---- Trap codes reported in tf_trapno (DragonFly's values) ----------------------------- */
#ifndef T_PRIVINFLT
#define T_PRIVINFLT 1     /* invalid opcode (ud2, sysenter in long mode on AMD) */
#define T_BPTFLT 3        /* int3 */
#define T_ARITHTRAP 6     /* x87 floating point exception (#MF) */
#define T_ASTFLT 7
#define T_PROTFLT 9       /* general protection (privileged instruction at user level) */
#define T_TRCTRAP 10      /* single step (#DB) */
#define T_PAGEFLT 12      /* page fault: tf_addr = address, tf_err = PGEX_* bits */
#define T_ALIGNFLT 14     /* alignment check (#AC) */
#define T_DIVIDE 18       /* integer divide error (#DE) */
#define T_OFLOW 20
#define T_BOUND 21
#define T_DNA 22
#define T_FPOPFLT 24
#define T_SEGNPFLT 26
#define T_STKFLT 27
#define T_XMMFLT 29       /* SIMD floating point exception (#XF) */
#define T_SYSCALL80 0x80  /* int $0x80 */
#define T_FAST_SYSCALL 0x81 /* syscall instruction */
#endif

/* ---- Page fault error bits (tf_err for T_PAGEFLT) -------------------------------------- */
#ifndef PGEX_P
#define PGEX_P 0x01   /* protection violation (page present) */
#define PGEX_W 0x02   /* write access */
#define PGEX_U 0x04   /* user mode access (always set for guests) */
#define PGEX_RSV 0x08 /* reserved bit set in a page table entry */
#define PGEX_I 0x10   /* instruction fetch */
#endif

/* ---- Virtual page tables (MAP_VPAGETABLE) ---------------------------------------------- */
typedef uint64_t vpte_t;
#ifndef VPTE_V
#define VPTE_V 0x0000000000000001ULL       /* valid */
#define VPTE_RW 0x0000000000000002ULL      /* writable */
#define VPTE_U 0x0000000000000004ULL       /* user accessible */
#define VPTE_A 0x0000000000000020ULL       /* accessed (set by the walker) */
#define VPTE_M 0x0000000000000040ULL       /* modified (set by the walker) */
#define VPTE_PS 0x0000000000000080ULL      /* large page */
#define VPTE_G 0x0000000000000100ULL       /* global */
#define VPTE_WIRED 0x0000000000000200ULL
#define VPTE_MANAGED 0x0000000000000400ULL
#define VPTE_NX 0x0000000000000800ULL      /* no execute */
#define VPTE_FRAME 0x000FFFFFFFFFF000ULL   /* byte offset of the next table / page */
#endif

/*
 * MAP_VPAGETABLE: DragonFly uses 0x2000, which is Linux's MAP_LOCKED. vkrt uses bit 24
 * (0x01000000), a bit no Linux MAP_ flag uses (bits 26..31 carry MAP_HUGE_* sizes).
 */
#define MAP_VPAGETABLE 0x01000000

/*
 * `behav` for vmspace_mcontrol()/mcontrol() is DragonFly's madvise numbering 0..11.
 * 0..4 coincide with Linux's (NORMAL, RANDOM, SEQUENTIAL, WILLNEED, DONTNEED). 5..11 are
 * DragonFly's: note that Linux's MADV_FREE is 8, which here means DragonFly's MADV_NOCORE;
 * use VKRT_MADV_FREE (5) for "free".
 */
#define VKRT_MADV_FREE 5
#ifndef MADV_NOSYNC
#define MADV_NOSYNC 6
#endif
#ifndef MADV_AUTOSYNC
#define MADV_AUTOSYNC 7
#endif
#ifndef MADV_NOCORE
#define MADV_NOCORE 8
#endif
#ifndef MADV_CORE
#define MADV_CORE 9
#endif
#define MADV_INVAL 10
#define MADV_SETMAP 11

/* The top of the guest address range (DragonFly's VM_MAX_USER_ADDRESS). */
#define VKRT_VM_MAX_USER_ADDRESS 0x00007FFFFFE00000ULL

/* ---- The DragonFly interface ----------------------------------------------------------- */
VKRT_API int vmspace_create(void *id, int type, void *data);
VKRT_API int vmspace_destroy(void *id);
VKRT_API int vmspace_ctl(void *id, int cmd, struct trapframe *tframe, struct vextframe *vframe);
VKRT_API void *vmspace_mmap(void *id, void *addr, size_t len, int prot, int flags, int fd, off_t offset);
VKRT_API int vmspace_munmap(void *id, void *addr, size_t len);
VKRT_API int vmspace_mcontrol(void *id, void *addr, size_t len, int behav, off_t value);
VKRT_API ssize_t vmspace_pread(void *id, void *buf, size_t nbyte, int flags, off_t offset);
VKRT_API ssize_t vmspace_pwrite(void *id, const void *buf, size_t nbyte, int flags, off_t offset);
VKRT_API int mcontrol(void *addr, size_t len, int behav, off_t value);

/* ---- vkrt extensions ------------------------------------------------------------------- */

/*
 * Backends. `type` of vmspace_create() picks the backend of that vmspace:
 * VKRT_TYPE_DEFAULT (0) is the process default (VKRT_BACKEND in the environment, else
 * vkrt_set_backend(), else the best available); the others name one backend. Unknown
 * types are EINVAL; a backend this machine lacks is EOPNOTSUPP. `data` must be NULL.
 */
#define VKRT_TYPE_DEFAULT 0
#define VKRT_TYPE_PTRACE 1
#define VKRT_TYPE_SECCOMP 2
#define VKRT_TYPE_KVM 3

/* Name of the process default backend ("ptrace", ...); NULL with errno = EOPNOTSUPP if
 * the backend named by VKRT_BACKEND is unavailable. */
VKRT_API const char *vkrt_backend_name(void);

/* Sets the process default backend by name for later vmspace_create() calls. EINVAL for
 * an unknown name, EOPNOTSUPP if it is unavailable on this machine. */
VKRT_API int vkrt_set_backend(const char *name);

/* 0 if the named backend can run here; otherwise -1 with errno and, if `why` is not NULL,
 * a static sentence naming the reason in *why. */
VKRT_API int vkrt_backend_available(const char *name, const char **why);

/* Per-thread run timeout in nanoseconds for VMSPACE_CTL_RUN (0 = none, the default). A RUN
 * that reaches it returns 0 with tf_trapno = 0 and the guest's state at that moment. */
VKRT_API int vkrt_set_run_timeout(uint64_t timeout_ns);

/* VMSPACE_CTL_RUN with a timeout for this call only (0 = the thread's setting). */
VKRT_API int vkrt_vmspace_run(void *id, struct trapframe *tframe, struct vextframe *vframe,
                     uint64_t timeout_ns);

/*
 * RUN with the guest's FPU state in memory instead of in the calling thread's registers (for
 * a vkernel that keeps each guest's FPU state in a buffer anyway: it saves two XSAVE/XRSTOR
 * pairs per RUN, ~0.3 us here). `fpu` is a 64-byte aligned area of vkrt_fpu_area_size()
 * bytes in XSAVE's standard format (XCOMP_BV 0): the guest starts with the x87, SSE, AVX and
 * AVX-512 state it holds, and RUN leaves the guest's state there when it returns. The
 * calling thread's own FPU registers are left alone, as by any C function (MXCSR and the x87
 * control word unchanged). `timeout_ns` as for vkrt_vmspace_run(). Errors: those of
 * VMSPACE_CTL_RUN; `fpu` NULL: EFAULT; not aligned, compacted format, an XSAVE header XRSTOR
 * would refuse (XSTATE_BV beyond XCR0, reserved bytes set) or an MXCSR with reserved bits:
 * EINVAL, and the guest does not run. vmspace_ctl() and this function may be
 * mixed on one vmspace and thread.
 */
VKRT_API size_t vkrt_fpu_area_size(void);
/* Fills an area of vkrt_fpu_area_size() bytes with the FPU state a new Linux thread starts
 * with (FCW 0x37F, MXCSR 0x1F80, every register zero). */
VKRT_API void vkrt_fpu_area_init(void *fpu);
VKRT_API int vkrt_vmspace_run_fpu(void *id, struct trapframe *tframe,
                                  struct vextframe *vframe, uint64_t timeout_ns, void *fpu);

/* Thread-safe "interrupt that vCPU": ends the RUN that thread `tid` (a gettid() value of a
 * thread of this process) is executing, or if it is not running a guest, its next RUN,
 * which then returns at once. Either returns 0 with tf_trapno = 0. ESRCH if `tid` has never
 * called into vkrt. */
VKRT_API int vkrt_interrupt(pid_t tid);

/* A sentence describing the calling thread's last vkrt failure (the call and arguments that
 * failed and why), or "" if none. Valid until the thread's next vkrt call. */
VKRT_API const char *vkrt_last_error(void);

/* The signal vkrt reserves to wake a thread out of RUN (timeouts and vkrt_interrupt). */
VKRT_API int vkrt_kick_signal(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VKRT_VMSPACE_H_ */
