#include "backend/kvm/kvm_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "arch/x86_64/frame.h"
#include "arch/x86_64/kvm_layout.h"
#include "arch/x86_64/xstate.h"
#include "backend/host.h"
#include "backend/kvm/exit_decode.h"
#include "backend/kvm/page_tables.h"
#include "common/errno_status.h"
#include "thread_state.h"

extern "C" {
extern const unsigned char vkrt_kvm_guest_start[];
extern const unsigned char vkrt_kvm_guest_end[];
extern const unsigned char vkrt_kvm_vectors[];
extern const unsigned char vkrt_kvm_vectors_end[];
extern const unsigned char vkrt_kvm_resume[];
extern const unsigned char vkrt_kvm_resume_flush[];
extern const uint64_t vkrt_kvm_vector_offsets[33];
}

namespace vkrt {
namespace {

namespace L = kvm_layout;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kTop = VKRT_VM_MAX_USER_ADDRESS;
constexpr uint64_t k2M = 2ULL << 20;
constexpr uint64_t kLowest = 0x10000;  // Linux's default vm.mmap_min_addr
// Mappings up to this size get their page-table entries when mapped; larger ones 2 MiB at a
// time, on the first fault there.
constexpr uint64_t kEagerLimit = 64ULL << 20;
// x87, SSE, AVX and the AVX-512 components: what passes between vkernel and guest.
constexpr uint64_t kGuestXfeatures = 0xE7;
constexpr int kKernelSlot = 0;
constexpr int kTablesSlot = 1;
constexpr int kZapSlot = 2;
constexpr int kFirstDataSlot = 3;
// The stub at kStubVa: `movb $0, exit_page(%rip)` (c6 05 f9 0f 00 00 00: the exit page is
// 0x1000 past the stub, 0xff9 past the instruction's end), then `ud2`, never reached.
constexpr unsigned char kStubCode[] = {0xC6, 0x05, 0xF9, 0x0F, 0x00, 0x00, 0x00, 0x0F, 0x0B};
constexpr uint64_t kStubExitRip = L::kStubVa + 7;

const uint64_t kAllSignals = ~uint64_t{0};
constexpr uint64_t SigBit(int sig) { return uint64_t{1} << (sig - 1); }

uint64_t CodeVa(const unsigned char* sym) {
  return L::kKernelVa + L::kCodeOff + static_cast<uint64_t>(sym - vkrt_kvm_guest_start);
}
uint64_t TssVa(int index) { return L::kKernelVa + L::TssOff(index); }
uint64_t StackTopVa(int index) { return L::kKernelVa + L::StackTopOff(index); }

// <linux/kvm.h> sizes its ioctl numbers with sizeof of structs that end in flexible arrays,
// which C++ compilers size differently from C (12 instead of 8 for kvm_cpuid2 here): the
// numbers the kernel expects, spelled out with the C sizes.
constexpr unsigned long kGetSupportedCpuid = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x05, 8);
constexpr unsigned long kSetCpuid2 = _IOC(_IOC_WRITE, KVMIO, 0x90, 8);
constexpr unsigned long kSetMsrs = _IOC(_IOC_WRITE, KVMIO, 0x89, 8);
constexpr unsigned long kSetSignalMask = _IOC(_IOC_WRITE, KVMIO, 0x8b, 4);
static_assert(sizeof(kvm_vcpu_events) == 64);  // KVM_{GET,SET}_VCPU_EVENTS are sized with it
constexpr uint8_t kBreakpointVector = 3;
constexpr size_t kXsaveSize = 4096;  // struct kvm_xsave's region
constexpr unsigned long kGetXsave = _IOC(_IOC_READ, KVMIO, 0xa4, kXsaveSize);
constexpr unsigned long kSetXsave = _IOC(_IOC_WRITE, KVMIO, 0xa5, kXsaveSize);

const char* IoctlName(unsigned long request) {
  switch (request) {
    case KVM_CREATE_VM: return "KVM_CREATE_VM";
    case KVM_CREATE_VCPU: return "KVM_CREATE_VCPU";
    case KVM_SET_USER_MEMORY_REGION: return "KVM_SET_USER_MEMORY_REGION";
    case kSetCpuid2: return "KVM_SET_CPUID2";
    case KVM_SET_SREGS: return "KVM_SET_SREGS";
    case KVM_SET_REGS: return "KVM_SET_REGS";
    case kSetMsrs: return "KVM_SET_MSRS";
    case KVM_SET_XCRS: return "KVM_SET_XCRS";
    case kGetXsave: return "KVM_GET_XSAVE";
    case kSetXsave: return "KVM_SET_XSAVE";
    case kSetSignalMask: return "KVM_SET_SIGNAL_MASK";
    case KVM_GET_VCPU_EVENTS: return "KVM_GET_VCPU_EVENTS";
    case KVM_SET_VCPU_EVENTS: return "KVM_SET_VCPU_EVENTS";
    case KVM_RUN: return "KVM_RUN";
    default: return "KVM ioctl";
  }
}

// ioctl, restarted when a signal interrupts it (the vkernel's own timers must not make
// set-up calls fail: KVM_CREATE_VM, for one, returns EINTR). Not for KVM_RUN.
template <typename Arg>
int IoctlNoEintr(int fd, unsigned long request, Arg arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

// Checked ioctl: the result, or an error naming the request and the descriptor.
absl::StatusOr<int> Ioctl(int fd, unsigned long request, const void* arg) {
  const int r = IoctlNoEintr(fd, request, arg);
  if (r < 0) return SyscallError(absl::StrFormat("ioctl(%d, %s)", fd, IoctlName(request)));
  return r;
}

// ---- process-wide facts, decided once ---------------------------------------------------------

// kvm_cpuid2, kvm_msrs and kvm_signal_mask end in flexible arrays, which GCC's C++ lays out
// differently from C (entries at offset 12 or 16 instead of 8): build them by hand in the
// kernel's C layout: a header of two 32-bit words, then the entries (the signal mask: its
// length, then the bytes).
struct CpuidBuffer {
  alignas(8) unsigned char bytes[8 + 256 * sizeof(kvm_cpuid_entry2)] = {};
  uint32_t& nent() { return *reinterpret_cast<uint32_t*>(bytes); }
  kvm_cpuid_entry2* entries() { return reinterpret_cast<kvm_cpuid_entry2*>(bytes + 8); }
  void* get() { return bytes; }
};
template <int N>
struct MsrList {
  alignas(8) unsigned char bytes[8 + N * sizeof(kvm_msr_entry)] = {};
  MsrList() { *reinterpret_cast<uint32_t*>(bytes) = N; }
  void* get() { return bytes; }
  kvm_msr_entry& operator[](int i) { return reinterpret_cast<kvm_msr_entry*>(bytes + 8)[i]; }
};
struct SignalMask {
  alignas(8) unsigned char bytes[16] = {};
  explicit SignalMask(uint64_t mask) {
    const uint32_t len = 8;
    memcpy(bytes, &len, 4);
    memcpy(bytes + 4, &mask, 8);
  }
  void* get() { return bytes; }
};
static_assert(sizeof(kvm_msr_entry) == 16 && sizeof(kvm_cpuid_entry2) == 40);

struct System {
  int kvm_fd = -1;
  std::string why;  // empty: usable
  int run_size = 0;
  int max_slots = 0;
  bool readonly_mem = false;
  uint64_t xcr0 = 0;
  uint64_t max_gpa = 0;
  std::unique_ptr<CpuidBuffer> cpuid;
};

const System& GetSystem() {
  static System* system = [] {
    auto* s = new System;
    s->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (s->kvm_fd < 0) {
      s->why = absl::StrFormat("cannot open /dev/kvm: %s", strerror(errno));
      return s;
    }
    if (IoctlNoEintr(s->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
      s->why = "/dev/kvm speaks another KVM API version than 12";
      return s;
    }
    struct Need {
      int cap;
      const char* name;
    };
    for (const Need& need : {Need{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
                             Need{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
                             Need{KVM_CAP_XSAVE, "KVM_CAP_XSAVE"},
                             Need{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"}}) {
      if (IoctlNoEintr(s->kvm_fd, KVM_CHECK_EXTENSION, need.cap) <= 0) {
        s->why = absl::StrFormat("this KVM lacks %s", need.name);
        return s;
      }
    }
    const int sync = IoctlNoEintr(s->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
    if (sync < 0 || (sync & (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)) !=
                        (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)) {
      s->why = "this KVM cannot share registers through kvm_run (KVM_CAP_SYNC_REGS)";
      return s;
    }
    s->readonly_mem = IoctlNoEintr(s->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) > 0;
    s->max_slots = IoctlNoEintr(s->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
    if (s->max_slots <= kFirstDataSlot) s->max_slots = 32;  // KVM's historical minimum
    s->run_size = IoctlNoEintr(s->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (s->run_size <= 0) {
      s->why = absl::StrFormat("KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
      return s;
    }
    if (x86_64::GuestXstateSize() > kXsaveSize) {
      s->why = "this CPU's FPU state does not fit KVM_GET_XSAVE's 4 KiB";
      return s;
    }
    s->cpuid = std::make_unique<CpuidBuffer>();
    CpuidBuffer* cpuid = s->cpuid.get();
    cpuid->nent() = 256;
    if (IoctlNoEintr(s->kvm_fd, kGetSupportedCpuid, cpuid->get()) < 0) {
      s->why = absl::StrFormat("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
      return s;
    }
    uint64_t supported_xcr0 = 0x3;
    int phys_bits = 36;
    for (uint32_t i = 0; i < cpuid->nent(); ++i) {
      const kvm_cpuid_entry2& e = cpuid->entries()[i];
      if (e.function == 0xD && e.index == 0) supported_xcr0 = (uint64_t{e.edx} << 32) | e.eax;
      if (e.function == 0x80000008) phys_bits = static_cast<int>(e.eax & 0xFF);
    }
    s->xcr0 = x86_64::EnabledFeatures() & (supported_xcr0 | 0x3) & kGuestXfeatures;
    s->xcr0 |= 0x3;
    if (phys_bits < 36) phys_bits = 36;
    if (phys_bits > 46) phys_bits = 46;
    s->max_gpa = uint64_t{1} << phys_bits;
    return s;
  }();
  return *system;
}

// What the first system-call exit showed: 0 not yet seen, 1 CPL3 (kvm_pvm), 2 CPL0.
std::atomic<int> g_syscall_cpl_mode{0};

// ---- the address space ---------------------------------------------------------------------

// One vCPU: the guest context of one vkernel thread in one VM.
struct Vcpu {
  int fd = -1;
  kvm_run* run = nullptr;
  int index = 0;
  pid_t tid = 0;
  bool initialised = false;  // segment, control and MSR state loaded
  bool at_cpl3 = false;      // stopped at CPL3 (kvm_pvm's syscall stub): resume by registers
  bool in_handler = false;   // stopped in a vector stub: resume through its tail...
  uint64_t handler_rip = 0;  // ...here (just past its hlt)
  uint64_t handler_rsp = 0;  // ...with this stack pointer (the CPU's frame, error code)
  bool read_pending = false; // stopped in the middle of an emulated read: complete it first
  bool mask_known = false;
  uint64_t mask = 0;         // the KVM_SET_SIGNAL_MASK in force
  bool tls_known = false;
  uint64_t fs_base = 0, gs_base = 0;
  uint64_t flush_gen = 0;     // the space's flush_gen_ this vCPU's TLB was last emptied at
  bool xstate_known = false;  // `xsave` holds the vCPU's FPU state
  alignas(64) unsigned char xsave[kXsaveSize];  // standard XSAVE layout (kvm_xsave)
};

struct Slot {
  uint64_t gpa = 0;
  uint64_t size = 0;
  unsigned char* host = nullptr;
  uint64_t live = 0;  // bytes still used by segments or objects
};

// A piece of the guest range: a mapping (with a slot) or a reservation (slot -1).
struct Segment {
  uint64_t end = 0;
  int prot = PROT_NONE;
  int slot = -1;
  uint64_t gpa = 0;             // of the segment's start
  unsigned char* host = nullptr;  // of the segment's start
};

struct ObjectPiece {
  uint64_t offset = 0;
  uint64_t len = 0;
  int slot = -1;
};

struct Object {
  int fd = -1;  // our duplicate
  bool writable = false;
  uint64_t covered = 0;
  std::vector<ObjectPiece> pieces;
};

std::atomic<uint64_t> g_space_serial{1};

class KvmAddressSpace : public AddressSpace {
 public:
  static absl::StatusOr<std::unique_ptr<KvmAddressSpace>> Create();
  ~KvmAddressSpace() override;

  absl::StatusOr<uint64_t> Map(const MapRequest& request) override;
  absl::Status Unmap(uint64_t addr, uint64_t len) override;
  absl::Status Advise(uint64_t addr, uint64_t len, int behav) override;
  absl::StatusOr<size_t> Read(uint64_t addr, void* buf, size_t len) override {
    return Copy(addr, buf, len, false);
  }
  absl::StatusOr<size_t> Write(uint64_t addr, const void* buf, size_t len) override {
    return Copy(addr, const_cast<void*>(buf), len, true);
  }
  absl::StatusOr<GuestExit> Run(GuestState& state, const RunLimits& limits) override;
  absl::StatusOr<int> AttachObject(int fd) override;
  absl::Status DetachObject(int handle) override;
  absl::Status Install(uint64_t addr, uint64_t len, int prot, int handle,
                       uint64_t offset) override;
  absl::Status FlushInstalls() override;
  size_t TranslationBudget() const override { return 1 << 18; }
  void ReleaseCallerContext() override;

 private:
  KvmAddressSpace(int vm_fd, unsigned char* kernel, unsigned char* tables, unsigned char* zap)
      : vm_fd_(vm_fd), kernel_(kernel), tables_mem_(tables), zap_page_(zap),
        tables_(tables, L::kTablesGpa, L::kTablesSize / kPage) {}

  absl::Status Init();
  absl::Status SetSlot(int id, uint64_t gpa, uint64_t size, void* host, bool readonly);

  // ---- memory state (mu_ held) ----
  absl::StatusOr<int> NewSlot(unsigned char* host, uint64_t size, bool readonly);
  void ReleaseSlotBytes(int id, uint64_t bytes, std::vector<int>& dead);
  absl::Status DeleteSlot(int id);
  uint64_t FindFree(uint64_t hint, uint64_t len) const;
  void SplitAt(uint64_t at);
  // Removes segments and translations of [begin, end): dead slots are deleted and the TLBs
  // flushed before the host memory goes.
  absl::Status RemoveRangeLocked(uint64_t begin, uint64_t end);
  absl::Status Populate(uint64_t seg_start, const Segment& seg, uint64_t begin, uint64_t end);
  absl::Status FlushLocked();
  absl::StatusOr<uint64_t> ObjectGpa(Object& object, uint64_t offset);
  absl::Status GrowObject(Object& object);
  // Where the page holding `va` leads in host memory if the guest may access it for
  // `write`, or nullptr.
  unsigned char* HostFor(uint64_t va, bool write, uint64_t& run_end);
  // vmspace_pread/pwrite through the vkernel's mappings (mu_ taken).
  absl::StatusOr<size_t> Copy(uint64_t addr, void* buf, size_t len, bool write);

  // The fault path's own decision for a plain mapping: populated (retry), a protection
  // fault, or nothing to say.
  enum class FaultFix { kNone, kPopulated, kProtection };
  absl::StatusOr<FaultFix> FixFault(uint64_t addr, uint64_t err);

  // ---- vCPUs ----
  absl::StatusOr<Vcpu*> CallerVcpu();
  absl::Status InitVcpu(Vcpu& v);
  absl::Status LoadXstate(Vcpu& v, const void* area);
  absl::Status StoreXstate(Vcpu& v, void* area);
  // Merges `in` (standard XSAVE layout) into the caller's `out`; keeps the copy in v.xsave.
  void ReportXstate(Vcpu& v, const unsigned char* in, void* out);

  absl::Status Settle(Vcpu& v);
  // Whether KVM holds an exception of the guest's queued for the vCPU's next entry: what a
  // signal that stopped KVM_RUN at CPL3 can leave behind.
  absl::StatusOr<bool> ExceptionInFlight(const Vcpu& v);
  // After a #BP exit: makes KVM forget the #BP's vector (see ExceptionInFlight).
  absl::Status ForgetBreakpoint(const Vcpu& v);
  void PrepareEntry(Vcpu& v, const kvm_regs& guest);
  // The five-word iretq frame (to CPL3 at the guest's rip, rsp, rflags) at the top of the
  // vCPU's ring-0 stack.
  void WriteFrame(const Vcpu& v, const kvm_regs& guest);
  uint64_t* Record(const Vcpu& v) const {
    return reinterpret_cast<uint64_t*>(kernel_ + L::StackTopOff(v.index)) - L::kRecordWords;
  }
  absl::StatusOr<GuestExit> RunVcpu(Vcpu& v, GuestState& state, uint64_t run_mask);
  int InstructionAt(uint64_t rip);

  const int vm_fd_;
  unsigned char* const kernel_;     // kernel slot, L::kKernelSlotSize
  unsigned char* const tables_mem_; // page-table pool, L::kTablesSize
  unsigned char* const zap_page_;
  const uint64_t serial_ = g_space_serial.fetch_add(1);

  // Memory state. Lock order: vpt::Space::mu_ -> mu_.
  std::mutex mu_;
  PageTables tables_;
  std::map<uint64_t, Segment> segments_;  // by start, disjoint
  std::unordered_map<int, Slot> slots_;
  std::vector<int> free_slot_ids_;
  int next_slot_id_ = kFirstDataSlot;
  std::map<uint64_t, uint64_t> free_gpa_;  // start -> end
  std::unordered_map<int, Object> objects_;
  int next_handle_ = 1;
  bool flush_pending_ = false;
  std::atomic<uint64_t> flush_gen_{1};  // counts flushes (read by RUN without mu_)

  // vCPUs. vcpus_mu_ is taken alone.
  std::mutex vcpus_mu_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::unordered_map<pid_t, Vcpu*> by_tid_;
  std::vector<Vcpu*> idle_;
};

// The calling thread's last (space, vCPU): RUN takes no lock when it hits.
struct CallerCache {
  uint64_t serial = 0;
  Vcpu* vcpu = nullptr;
};
thread_local CallerCache t_cache;

absl::StatusOr<std::unique_ptr<KvmAddressSpace>> KvmAddressSpace::Create() {
  const System& sys = GetSystem();
  if (!sys.why.empty()) return ErrnoError(EOPNOTSUPP, "kvm backend: " + sys.why);
  const int vm_fd = IoctlNoEintr(sys.kvm_fd, KVM_CREATE_VM, 0);
  if (vm_fd < 0) {
    const int err = errno == ENOMEM || errno == EMFILE || errno == ENFILE ? errno : EAGAIN;
    return ErrnoError(err, absl::StrFormat("ioctl(/dev/kvm, KVM_CREATE_VM): %s",
                                           strerror(errno)));
  }
  auto map = [](uint64_t size, int extra) -> unsigned char* {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | extra, -1, 0);
    return p == MAP_FAILED ? nullptr : static_cast<unsigned char*>(p);
  };
  unsigned char* kernel = map(L::kKernelSlotSize, 0);
  unsigned char* tables = map(L::kTablesSize, 0);
  unsigned char* zap = map(kPage, 0);
  if (kernel == nullptr || tables == nullptr || zap == nullptr) {
    const int err = errno;
    if (kernel) munmap(kernel, L::kKernelSlotSize);
    if (tables) munmap(tables, L::kTablesSize);
    if (zap) munmap(zap, kPage);
    close(vm_fd);
    return ErrnoError(err, "mmap of a kvm VM's kernel and page-table memory");
  }
  std::unique_ptr<KvmAddressSpace> space(new KvmAddressSpace(vm_fd, kernel, tables, zap));
  if (auto s = space->Init(); !s.ok()) return s;
  return space;
}

absl::Status KvmAddressSpace::SetSlot(int id, uint64_t gpa, uint64_t size, void* host,
                                      bool readonly) {
  kvm_userspace_memory_region region = {};
  region.slot = static_cast<uint32_t>(id);
  region.flags = readonly ? KVM_MEM_READONLY : 0;
  region.guest_phys_addr = gpa;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (IoctlNoEintr(vm_fd_, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
    return SyscallError(absl::StrFormat(
        "ioctl(KVM_SET_USER_MEMORY_REGION, slot %d, gpa %#x, size %#x)", id, gpa, size));
  }
  return absl::OkStatus();
}

absl::Status KvmAddressSpace::Init() {
  const System& sys = GetSystem();
  // Ring-0 code, the syscall stub, GDT, IDT and one TSS per vCPU page.
  const size_t code_len = static_cast<size_t>(vkrt_kvm_guest_end - vkrt_kvm_guest_start);
  memcpy(kernel_ + L::kCodeOff, vkrt_kvm_guest_start, code_len);
  memcpy(kernel_ + L::kStubOff, kStubCode, sizeof(kStubCode));
  auto* gdt = reinterpret_cast<uint64_t*>(kernel_ + L::kGdtOff);
  gdt[L::kKernelCs / 8] = 0x00AF9B000000FFFFULL;  // 64-bit code, DPL0, accessed
  gdt[L::kKernelSs / 8] = 0x00CF93000000FFFFULL;  // data, DPL0, accessed
  gdt[L::kUserSs / 8] = 0x00CFF3000000FFFFULL;    // data, DPL3, accessed
  gdt[L::kUserCs / 8] = 0x00AFFB000000FFFFULL;    // 64-bit code, DPL3, accessed
  // The TSS descriptor (0x40) is never loaded from here: each vCPU's TR is set directly.
  auto* idt = reinterpret_cast<uint64_t*>(kernel_ + L::kIdtOff);
  for (int i = 0; i < 33; ++i) {
    const int vector = i < 32 ? i : 0x80;
    const uint64_t handler = L::kKernelVa + L::kCodeOff + vkrt_kvm_vector_offsets[i];
    const uint64_t dpl = (vector == 3 || vector == 0x80) ? 3 : 0;
    const uint64_t type = 0x8E | (dpl << 5);  // present interrupt gate
    idt[vector * 2] = (handler & 0xFFFF) | (uint64_t{L::kKernelCs} << 16) | (type << 40) |
                      ((handler >> 16) & 0xFFFF) << 48;
    idt[vector * 2 + 1] = handler >> 32;
  }
  for (int i = 0; i < L::kMaxVcpus; ++i) {
    unsigned char* page = kernel_ + L::TssOff(i);
    const uint64_t rsp0 = StackTopVa(i);
    memcpy(page + 4, &rsp0, 8);
    const uint16_t iomap = 104;  // no I/O bitmap: `in`/`out` at CPL3 raise #GP
    memcpy(page + 102, &iomap, 2);
  }

  if (auto s = SetSlot(kKernelSlot, 0, L::kKernelSlotSize, kernel_, false); !s.ok()) return s;
  if (auto s = SetSlot(kTablesSlot, L::kTablesGpa, L::kTablesSize, tables_mem_, false);
      !s.ok()) {
    return s;
  }
  if (auto s = SetSlot(kZapSlot, L::kZapGpa, kPage, zap_page_, false); !s.ok()) return s;
  free_gpa_[L::kDataGpa] = sys.max_gpa;

  // The runtime's own translations: supervisor-only kernel pages, the user stub and exit page.
  struct Fixed {
    uint64_t va, gpa;
    int prot;
    bool user;
  };
  std::vector<Fixed> fixed = {
      {L::kKernelVa + L::kCodeOff, L::kCodeOff, PROT_READ | PROT_EXEC, false},
      {L::kKernelVa + L::kGdtOff, L::kGdtOff, PROT_READ | PROT_WRITE, false},
      {L::kKernelVa + L::kIdtOff, L::kIdtOff, PROT_READ, false},
      {L::kStubVa, L::kStubOff, PROT_READ | PROT_EXEC, true},
      {L::kExitVa, L::kExitGpa, PROT_READ | PROT_WRITE, true},
  };
  for (int i = 0; i < L::kMaxVcpus; ++i) {
    fixed.push_back({TssVa(i), L::TssOff(i), PROT_READ | PROT_WRITE, false});
    fixed.push_back({L::kKernelVa + L::StackPageOff(i), L::StackPageOff(i),
                     PROT_READ | PROT_WRITE, false});
  }
  for (const Fixed& f : fixed) {
    auto set = tables_.Set(f.va, PageTables::Leaf(f.gpa, f.prot, f.user));
    if (!set.ok()) return set.status();
  }
  return absl::OkStatus();
}

KvmAddressSpace::~KvmAddressSpace() {
  if (t_cache.serial == serial_) t_cache = CallerCache{};
  for (auto& v : vcpus_) {
    if (v->run != nullptr) munmap(v->run, static_cast<size_t>(GetSystem().run_size));
    if (v->fd >= 0) close(v->fd);
  }
  close(vm_fd_);
  for (auto& [id, slot] : slots_) munmap(slot.host, slot.size);
  for (auto& [handle, object] : objects_) close(object.fd);
  munmap(kernel_, L::kKernelSlotSize);
  munmap(tables_mem_, L::kTablesSize);
  munmap(zap_page_, kPage);
}

// ---- memory ---------------------------------------------------------------------------------

absl::StatusOr<int> KvmAddressSpace::NewSlot(unsigned char* host, uint64_t size, bool readonly) {
  const System& sys = GetSystem();
  const uint64_t span = (size + k2M - 1) & ~(k2M - 1);
  uint64_t gpa = 0;
  for (auto it = free_gpa_.begin(); it != free_gpa_.end(); ++it) {
    if (it->second - it->first >= span) {
      gpa = it->first;
      const uint64_t end = it->second;
      free_gpa_.erase(it);
      if (gpa + span < end) free_gpa_[gpa + span] = end;
      break;
    }
  }
  if (gpa == 0) {
    return ErrnoError(ENOMEM, absl::StrFormat(
        "kvm: no guest-physical room for %#x bytes (limit %#x)", size, sys.max_gpa));
  }
  int id;
  if (!free_slot_ids_.empty()) {
    id = free_slot_ids_.back();
    free_slot_ids_.pop_back();
  } else if (next_slot_id_ < sys.max_slots) {
    id = next_slot_id_++;
  } else {
    free_gpa_[gpa] = gpa + span;
    return ErrnoError(ENOMEM, absl::StrFormat("kvm: all %d memory slots are in use",
                                              sys.max_slots));
  }
  if (auto s = SetSlot(id, gpa, size, host, readonly && sys.readonly_mem); !s.ok()) {
    free_slot_ids_.push_back(id);
    free_gpa_[gpa] = gpa + span;
    return s;
  }
  slots_[id] = Slot{gpa, size, host, size};
  return id;
}

absl::Status KvmAddressSpace::DeleteSlot(int id) {
  Slot slot = slots_[id];
  // Deleting a slot makes KVM drop every shadow/TDP translation and flush every vCPU.
  flush_gen_.fetch_add(1, std::memory_order_release);
  absl::Status s = SetSlot(id, slot.gpa, 0, slot.host, false);
  munmap(slot.host, slot.size);
  slots_.erase(id);
  free_slot_ids_.push_back(id);
  const uint64_t span = (slot.size + k2M - 1) & ~(k2M - 1);
  uint64_t start = slot.gpa;
  uint64_t end = slot.gpa + span;
  auto next = free_gpa_.lower_bound(start);
  if (next != free_gpa_.end() && next->first == end) {
    end = next->second;
    free_gpa_.erase(next);
  }
  auto prev = free_gpa_.lower_bound(start);
  if (prev != free_gpa_.begin()) {
    --prev;
    if (prev->second == start) {
      start = prev->first;
      free_gpa_.erase(prev);
    }
  }
  free_gpa_[start] = end;
  flush_pending_ = false;
  return s;
}

void KvmAddressSpace::ReleaseSlotBytes(int id, uint64_t bytes, std::vector<int>& dead) {
  Slot& slot = slots_[id];
  slot.live -= std::min(slot.live, bytes);
  if (slot.live == 0) dead.push_back(id);
}

absl::Status KvmAddressSpace::FlushLocked() {
  // KVM drops every translation it derived from our tables when a memory slot is deleted:
  // the one way, with kvm_pvm's shadow paging as with VMX/SVM's TDP, to make it forget
  // entries the host changed in memory (invlpg and CR3 reloads in the guest do not; the
  // shadow MMU trusts the tables it write-protected). Delete and re-add a dummy slot.
  flush_pending_ = false;
  flush_gen_.fetch_add(1, std::memory_order_release);
  if (auto s = SetSlot(kZapSlot, L::kZapGpa, 0, zap_page_, false); !s.ok()) return s;
  return SetSlot(kZapSlot, L::kZapGpa, kPage, zap_page_, false);
}

uint64_t KvmAddressSpace::FindFree(uint64_t hint, uint64_t len) const {
  auto fits = [&](uint64_t start) {
    if (start < kLowest || start + len < start || start + len > kTop) return false;
    auto it = segments_.upper_bound(start);
    if (it != segments_.end() && it->first < start + len) return false;
    if (it != segments_.begin()) {
      --it;
      if (it->second.end > start) return false;
    }
    return true;
  };
  if (hint != 0 && fits(hint)) return hint;
  // Top down, as Linux places mappings, first below a 128 MiB gap (Linux's mmap_base sits
  // below the stack), then anywhere.
  for (uint64_t top : {uint64_t{kTop - (128ULL << 20)}, uint64_t{kTop}}) {
    uint64_t gap_end = top;
    for (auto it = segments_.rbegin(); it != segments_.rend(); ++it) {
      if (it->first >= gap_end) continue;
      if (it->second.end <= gap_end && gap_end - it->second.end >= len) return gap_end - len;
      gap_end = std::min(gap_end, it->first);
    }
    if (gap_end >= kLowest + len) return gap_end - len;
  }
  return 0;
}

void KvmAddressSpace::SplitAt(uint64_t at) {
  auto it = segments_.upper_bound(at);
  if (it == segments_.begin()) return;
  --it;
  if (it->first == at || it->second.end <= at) return;
  Segment tail = it->second;
  const uint64_t delta = at - it->first;
  if (tail.slot >= 0) {
    tail.gpa += delta;
    tail.host += delta;
  }
  it->second.end = at;
  segments_[at] = tail;
}

absl::Status KvmAddressSpace::RemoveRangeLocked(uint64_t begin, uint64_t end) {
  SplitAt(begin);
  SplitAt(end);
  std::vector<int> dead;
  std::vector<std::pair<unsigned char*, uint64_t>> release;
  for (auto it = segments_.lower_bound(begin); it != segments_.end() && it->first < end;) {
    const uint64_t len = it->second.end - it->first;
    if (it->second.slot >= 0) {
      release.emplace_back(it->second.host, len);
      ReleaseSlotBytes(it->second.slot, len, dead);
    }
    it = segments_.erase(it);
  }
  const bool cleared = tables_.Clear(begin, end) > 0;
  absl::Status status = absl::OkStatus();
  if (!dead.empty()) {
    for (int id : dead) {
      // Its host memory goes with it; pieces of it in `release` must not be unmapped again.
      const Slot& slot = slots_[id];
      release.erase(std::remove_if(release.begin(), release.end(),
                                   [&](const auto& r) {
                                     return r.first >= slot.host &&
                                            r.first < slot.host + slot.size;
                                   }),
                    release.end());
      if (auto s = DeleteSlot(id); !s.ok() && status.ok()) status = s;
    }
  } else if (cleared || flush_pending_) {
    status = FlushLocked();
  }
  // Only now, with no translation left to them, may the pages go. The address range stays
  // reserved (an inaccessible placeholder) until its slot is deleted, so that no later host
  // mapping lands inside a slot's range and is unmapped with it.
  for (const auto& [host, len] : release) {
    mmap(host, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  }
  return status;
}

absl::Status KvmAddressSpace::Populate(uint64_t seg_start, const Segment& seg, uint64_t begin,
                                       uint64_t end) {
  for (uint64_t va = begin; va < end; va += kPage) {
    const uint64_t entry = PageTables::Leaf(seg.gpa + (va - seg_start), seg.prot, true);
    auto old = tables_.Set(va, entry);
    if (!old.ok()) return old.status();
    if (PageTables::NeedsFlush(*old, entry)) flush_pending_ = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> KvmAddressSpace::Map(const MapRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t len = request.len;
  uint64_t addr = request.addr;
  if (!(request.flags & MAP_FIXED)) {
    addr = FindFree(request.addr, len);
    if (addr == 0) {
      return ErrnoError(ENOMEM, absl::StrFormat("vmspace_mmap: no free range of %#x bytes", len));
    }
  }
  Segment seg;
  seg.end = addr + len;
  seg.prot = request.prot;
  const int type = request.flags & (MAP_SHARED | MAP_PRIVATE | MAP_SHARED_VALIDATE);
  const int host_flags =
      (request.flags & ~(MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_GROWSDOWN | MAP_STACK |
                         MAP_LOCKED | MAP_TYPE)) | type;
  const int host_prot = request.prot == PROT_NONE
                            ? PROT_NONE
                            : PROT_READ | (request.prot & PROT_WRITE);
  // An anonymous reservation (PROT_NONE: a VPAGETABLE region's, or a dropped range) needs no
  // host memory and has no arguments to check: it may span most of the address space.
  const bool reservation = request.prot == PROT_NONE && request.fd < 0;
  void* host = reservation ? nullptr
                           : mmap(nullptr, len, host_prot, host_flags, request.fd, request.offset);
  if (host == MAP_FAILED) {
    return SyscallError(absl::StrFormat("mmap(NULL, %#x, %#x, %#x, %d, %#x) for the guest", len,
                                        host_prot, host_flags, request.fd, request.offset));
  }
  if (request.prot == PROT_NONE) {
    if (host != nullptr) munmap(host, len);  // nothing to reach; the call checked the arguments
  } else {
    auto slot = NewSlot(static_cast<unsigned char*>(host), len, !(request.prot & PROT_WRITE));
    if (!slot.ok()) {
      munmap(host, len);
      return slot.status();
    }
    seg.slot = *slot;
    seg.gpa = slots_[*slot].gpa;
    seg.host = static_cast<unsigned char*>(host);
  }
  if (auto s = RemoveRangeLocked(addr, addr + len); !s.ok()) return s;
  segments_[addr] = seg;
  if (seg.slot >= 0 && len <= kEagerLimit) {
    if (auto s = Populate(addr, seg, addr, addr + len); !s.ok()) {
      (void)RemoveRangeLocked(addr, addr + len);
      return s;
    }
  }
  if (flush_pending_) {
    if (auto s = FlushLocked(); !s.ok()) return s;
  }
  return addr;
}

absl::Status KvmAddressSpace::Unmap(uint64_t addr, uint64_t len) {
  std::lock_guard<std::mutex> lock(mu_);
  return RemoveRangeLocked(addr, addr + len);
}

absl::Status KvmAddressSpace::Advise(uint64_t addr, uint64_t len, int behav) {
  const int advice = LinuxAdvice(behav);
  if (advice < 0) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = addr + len;
  auto it = segments_.upper_bound(addr);
  if (it != segments_.begin()) --it;
  for (; it != segments_.end() && it->first < end; ++it) {
    if (it->second.slot < 0 || it->second.end <= addr) continue;
    const uint64_t from = std::max(addr, it->first);
    const uint64_t to = std::min(end, it->second.end);
    (void)madvise(it->second.host + (from - it->first), to - from, advice);
  }
  return absl::OkStatus();
}

unsigned char* KvmAddressSpace::HostFor(uint64_t va, bool write, uint64_t& run_end) {
  auto it = segments_.upper_bound(va);
  if (it == segments_.begin()) return nullptr;
  --it;
  const Segment& seg = it->second;
  if (va >= seg.end || seg.slot < 0) return nullptr;
  if (write ? !(seg.prot & PROT_WRITE) : seg.prot == PROT_NONE) return nullptr;
  run_end = seg.end;
  return seg.host + (va - it->first);
}

absl::StatusOr<size_t> KvmAddressSpace::Copy(uint64_t addr, void* buf, size_t len,
                                             bool write) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t done = 0;
  while (done < len) {
    uint64_t run_end = 0;
    unsigned char* host = HostFor(addr + done, write, run_end);
    if (host == nullptr) break;
    const size_t want = std::min<uint64_t>(len - done, run_end - (addr + done));
    // Through the kernel: a file page beyond its end must end the copy, not raise SIGBUS.
    auto got = CopyProcessMemory(getpid(), write, reinterpret_cast<uint64_t>(host),
                                 static_cast<unsigned char*>(buf) + done, want);
    if (!got.ok() || *got == 0) break;
    done += *got;
    if (*got < want) break;
  }
  if (done == 0) {
    return ErrnoError(EFAULT, absl::StrFormat("%s(%#x): not %s", write ? "vmspace_pwrite"
                                                                          : "vmspace_pread",
                                              addr, write ? "writable" : "readable"));
  }
  return done;
}

absl::Status KvmAddressSpace::GrowObject(Object& object) {
  struct stat st;
  if (fstat(object.fd, &st) < 0) return SyscallError("fstat of a MAP_VPAGETABLE object");
  const uint64_t size = (static_cast<uint64_t>(st.st_size) + kPage - 1) & ~(kPage - 1);
  if (size <= object.covered) return absl::OkStatus();
  const uint64_t len = size - object.covered;
  const int prot = PROT_READ | (object.writable ? PROT_WRITE : 0);
  void* host = mmap(nullptr, len, prot, MAP_SHARED, object.fd,
                    static_cast<off_t>(object.covered));
  if (host == MAP_FAILED) {
    return SyscallError(absl::StrFormat("mmap of MAP_VPAGETABLE object bytes [%#x, %#x)",
                                        object.covered, size));
  }
  auto slot = NewSlot(static_cast<unsigned char*>(host), len, !object.writable);
  if (!slot.ok()) {
    munmap(host, len);
    return slot.status();
  }
  object.pieces.push_back(ObjectPiece{object.covered, len, *slot});
  object.covered = size;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> KvmAddressSpace::ObjectGpa(Object& object, uint64_t offset) {
  if (offset >= object.covered) {
    if (auto s = GrowObject(object); !s.ok()) return s;
    if (offset >= object.covered) {
      return ErrnoError(ENXIO, absl::StrFormat(
          "MAP_VPAGETABLE: page at object offset %#x lies beyond the object's end (%#x)",
          offset, object.covered));
    }
  }
  for (const ObjectPiece& piece : object.pieces) {
    if (offset >= piece.offset && offset < piece.offset + piece.len) {
      return slots_[piece.slot].gpa + (offset - piece.offset);
    }
  }
  return ErrnoError(ENXIO, "MAP_VPAGETABLE: object offset not covered");
}

absl::StatusOr<int> KvmAddressSpace::AttachObject(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return SyscallError(absl::StrFormat("fcntl(%d, F_GETFL)", fd));
  const int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) return SyscallError(absl::StrFormat("fcntl(%d, F_DUPFD_CLOEXEC)", fd));
  std::lock_guard<std::mutex> lock(mu_);
  Object object;
  object.fd = dup;
  object.writable = (flags & O_ACCMODE) == O_RDWR;
  if (auto s = GrowObject(object); !s.ok()) {
    close(dup);
    return s;
  }
  const int handle = next_handle_++;
  objects_[handle] = std::move(object);
  return handle;
}

absl::Status KvmAddressSpace::DetachObject(int handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = objects_.find(handle);
  if (it == objects_.end()) return absl::OkStatus();
  absl::Status status = absl::OkStatus();
  for (const ObjectPiece& piece : it->second.pieces) {
    if (auto s = DeleteSlot(piece.slot); !s.ok() && status.ok()) status = s;
  }
  close(it->second.fd);
  objects_.erase(it);
  return status;
}

absl::Status KvmAddressSpace::Install(uint64_t addr, uint64_t len, int prot, int handle,
                                      uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = objects_.find(handle);
  if (it == objects_.end()) {
    return ErrnoError(EINVAL, absl::StrFormat("kvm Install: unknown object handle %d", handle));
  }
  Object& object = it->second;
  if (!object.writable) prot &= ~PROT_WRITE;
  for (uint64_t done = 0; done < len; done += kPage) {
    auto gpa = ObjectGpa(object, offset + done);
    if (!gpa.ok()) return gpa.status();
    const uint64_t entry = PageTables::Leaf(*gpa, prot, true);
    auto old = tables_.Set(addr + done, entry);
    if (!old.ok()) return old.status();
    if (PageTables::NeedsFlush(*old, entry)) flush_pending_ = true;
  }
  return absl::OkStatus();
}

absl::Status KvmAddressSpace::FlushInstalls() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!flush_pending_) return absl::OkStatus();
  return FlushLocked();
}

absl::StatusOr<KvmAddressSpace::FaultFix> KvmAddressSpace::FixFault(uint64_t addr,
                                                                    uint64_t err) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = segments_.upper_bound(addr);
  if (it == segments_.begin()) return FaultFix::kNone;
  --it;
  const Segment& seg = it->second;
  if (addr >= seg.end) return FaultFix::kNone;
  const bool allowed = (err & PGEX_W)   ? (seg.prot & PROT_WRITE) != 0
                       : (err & PGEX_I) ? (seg.prot & PROT_EXEC) != 0
                                        : seg.prot != PROT_NONE;
  if (!allowed) return FaultFix::kProtection;
  if (seg.slot < 0 || (err & PGEX_P) || tables_.Get(addr) != 0) return FaultFix::kNone;
  // A large mapping's entries are made 2 MiB at a time, on the first fault there.
  const uint64_t from = std::max(it->first, addr & ~(k2M - 1));
  const uint64_t to = std::min(seg.end, (addr & ~(k2M - 1)) + k2M);
  if (auto s = Populate(it->first, seg, from, to); !s.ok()) return s;
  return FaultFix::kPopulated;
}

// ---- vCPUs ----------------------------------------------------------------------------------

absl::StatusOr<Vcpu*> KvmAddressSpace::CallerVcpu() {
  if (t_cache.serial == serial_) return t_cache.vcpu;
  const pid_t tid = ThreadState::CurrentTid();
  std::lock_guard<std::mutex> lock(vcpus_mu_);
  Vcpu* v = nullptr;
  if (auto it = by_tid_.find(tid); it != by_tid_.end()) {
    v = it->second;
  } else if (!idle_.empty()) {
    v = idle_.back();
    idle_.pop_back();
  } else {
    if (static_cast<int>(vcpus_.size()) >= L::kMaxVcpus) {
      return ErrnoError(EAGAIN, absl::StrFormat(
          "kvm: a vmspace runs at most %d vkernel threads", L::kMaxVcpus));
    }
    auto fresh = std::make_unique<Vcpu>();
    fresh->index = static_cast<int>(vcpus_.size());
    fresh->fd = IoctlNoEintr(vm_fd_, KVM_CREATE_VCPU, fresh->index);
    if (fresh->fd < 0) {
      // Out of memory or descriptors: say so (docs/api.md); anything else is KVM's vCPU
      // limit, EAGAIN as for the other backends' context limits.
      const int err = (errno == ENOMEM || errno == EMFILE || errno == ENFILE) ? errno : EAGAIN;
      return ErrnoError(err, absl::StrFormat("ioctl(KVM_CREATE_VCPU, %d): %s", fresh->index,
                                             strerror(errno)));
    }
    void* run = mmap(nullptr, static_cast<size_t>(GetSystem().run_size),
                     PROT_READ | PROT_WRITE, MAP_SHARED, fresh->fd, 0);
    if (run == MAP_FAILED) {
      const int err = errno;
      close(fresh->fd);
      return ErrnoError(err, "mmap of a vCPU's kvm_run");
    }
    fresh->run = static_cast<kvm_run*>(run);
    v = fresh.get();
    vcpus_.push_back(std::move(fresh));
  }
  v->tid = tid;
  by_tid_[tid] = v;
  t_cache = CallerCache{serial_, v};
  return v;
}

void KvmAddressSpace::ReleaseCallerContext() {
  const pid_t tid = ThreadState::CurrentTid();
  if (t_cache.serial == serial_) t_cache = CallerCache{};
  std::lock_guard<std::mutex> lock(vcpus_mu_);
  auto it = by_tid_.find(tid);
  if (it == by_tid_.end()) return;
  Vcpu* v = it->second;
  by_tid_.erase(it);
  v->mask_known = false;  // the next thread has its own mask
  idle_.push_back(v);
}

absl::Status KvmAddressSpace::InitVcpu(Vcpu& v) {
  const System& sys = GetSystem();
  if (auto r = Ioctl(v.fd, kSetCpuid2, sys.cpuid->get()); !r.ok()) return r.status();
  kvm_sregs sregs = {};
  if (IoctlNoEintr(v.fd, KVM_GET_SREGS, &sregs) < 0) return SyscallError("ioctl(KVM_GET_SREGS)");
  auto segment = [](uint16_t selector, bool code, int dpl) {
    kvm_segment s = {};
    s.base = 0;
    s.limit = 0xFFFFFFFF;
    s.selector = selector;
    s.type = code ? 11 : 3;
    s.present = 1;
    s.dpl = static_cast<uint8_t>(dpl);
    s.db = code ? 0 : 1;
    s.s = 1;
    s.l = code ? 1 : 0;
    s.g = 1;
    return s;
  };
  sregs.cs = segment(L::kKernelCs, true, 0);
  sregs.ss = segment(L::kKernelSs, false, 0);
  // Null data selectors as Linux user code has them, with DPL3 so that iretq to CPL3 keeps
  // them (and the FS/GS bases) as they are.
  sregs.ds = sregs.es = sregs.fs = sregs.gs = segment(0, false, 3);
  sregs.tr = kvm_segment{};
  sregs.tr.base = TssVa(v.index);
  sregs.tr.limit = 0x67;
  sregs.tr.selector = L::kTssSel;
  sregs.tr.type = 11;  // busy 64-bit TSS
  sregs.tr.present = 1;
  sregs.ldt = kvm_segment{};
  sregs.ldt.type = 2;
  sregs.ldt.unusable = 1;
  sregs.gdt.base = L::kKernelVa + L::kGdtOff;
  sregs.gdt.limit = 10 * 8 - 1;
  sregs.idt.base = L::kKernelVa + L::kIdtOff;
  sregs.idt.limit = 256 * 16 - 1;
  sregs.cr0 = 0x80050033;  // PG AM WP NE ET MP PE
  sregs.cr3 = tables_.root_gpa();
  sregs.cr4 = 0x20 | 0x200 | 0x400 | 0x40000;  // PAE OSFXSR OSXMMEXCPT OSXSAVE
  sregs.efer = 0xD01;  // SCE LME LMA NXE
  memset(sregs.interrupt_bitmap, 0, sizeof(sregs.interrupt_bitmap));
  if (auto r = Ioctl(v.fd, KVM_SET_SREGS, &sregs); !r.ok()) return r.status();
  // No exception queued or remembered from before (a vCPU started afresh after a failure):
  // ExceptionInFlight relies on it.
  kvm_vcpu_events events = {};
  if (auto r = Ioctl(v.fd, KVM_SET_VCPU_EVENTS, &events); !r.ok()) return r.status();

  MsrList<10> msrs;
  const std::pair<uint32_t, uint64_t> values[] = {
      {0xC0000081, uint64_t{L::kKernelCs} << 32},  // STAR: syscall CS/SS
      {0xC0000082, L::kStubVa},                    // LSTAR
      {0xC0000083, L::kStubVa},                    // CSTAR (no 32-bit code segment anyway)
      {0xC0000084, 0x47700},                       // SFMASK: TF DF IF IOPL NT AC
      {0x174, 0},                                  // SYSENTER_CS 0: sysenter faults
      {0x175, 0},
      {0x176, 0},
      {0xC0000100, 0},  // FS_BASE
      {0xC0000101, 0},  // GS_BASE
      {0xC0000102, 0},  // KERNEL_GS_BASE
  };
  for (int i = 0; i < 10; ++i) {
    msrs[i].index = values[i].first;
    msrs[i].data = values[i].second;
  }
  const int set = IoctlNoEintr(v.fd, kSetMsrs, msrs.get());
  if (set != 10) {
    return ErrnoError(EIO, absl::StrFormat("ioctl(KVM_SET_MSRS): set %d of 10 MSRs", set));
  }
  kvm_xcrs xcrs = {};
  xcrs.nr_xcrs = 1;
  xcrs.xcrs[0].xcr = 0;
  xcrs.xcrs[0].value = sys.xcr0;
  if (IoctlNoEintr(v.fd, KVM_SET_XCRS, &xcrs) < 0) {
    xcrs.xcrs[0].value = 0x7;  // x87 SSE AVX at least
    (void)IoctlNoEintr(v.fd, KVM_SET_XCRS, &xcrs);
  }
  v.run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
  v.initialised = true;
  v.at_cpl3 = false;
  v.in_handler = false;
  v.read_pending = false;
  v.tls_known = true;
  v.fs_base = v.gs_base = 0;
  v.xstate_known = false;
  return absl::OkStatus();
}

absl::Status KvmAddressSpace::LoadXstate(Vcpu& v, const void* area) {
  if (v.xstate_known && x86_64::SameGuestXstate(v.xsave, area)) return absl::OkStatus();
  const size_t size = x86_64::GuestXstateSize();
  memset(v.xsave, 0, sizeof(v.xsave));
  memcpy(v.xsave, area, size);
  unsigned char* bytes = v.xsave;
  uint64_t bv;
  memcpy(&bv, bytes + 512, 8);
  bv &= GetSystem().xcr0 & kGuestXfeatures;
  memcpy(bytes + 512, &bv, 8);
  memset(bytes + 520, 0, 56);  // XCOMP_BV 0: standard format
  if (x86_64::LinuxWouldDropMxcsr(bytes)) x86_64::MarkSseInUse(bytes);
  if (auto r = Ioctl(v.fd, kSetXsave, v.xsave); !r.ok()) {
    v.xstate_known = false;
    return r.status();
  }
  // Kept for comparison with the caller's area: its XSTATE_BV as the caller had it.
  memcpy(bytes + 512, static_cast<const unsigned char*>(area) + 512, 8);
  v.xstate_known = true;
  return absl::OkStatus();
}

absl::Status KvmAddressSpace::StoreXstate(Vcpu& v, void* area) {
  if (auto r = Ioctl(v.fd, kGetXsave, v.xsave); !r.ok()) {
    v.xstate_known = false;
    return r.status();
  }
  ReportXstate(v, v.xsave, area);
  return absl::OkStatus();
}

void KvmAddressSpace::ReportXstate(Vcpu& v, const unsigned char* in, void* area) {
  v.xstate_known = true;
  auto* out = static_cast<unsigned char*>(area);
  uint64_t old_bv, guest_bv;
  memcpy(&old_bv, out + 512, 8);
  memcpy(&guest_bv, in + 512, 8);
  memcpy(out, in, 512);
  const size_t size = x86_64::GuestXstateSize();
  if (size > 576) memcpy(out + 576, in + 576, size - 576);
  // The guest's components, the caller's own for the rest (PKRU, AMX).
  const uint64_t bv = (guest_bv & kGuestXfeatures) | (old_bv & ~kGuestXfeatures);
  memcpy(out + 512, &bv, 8);
  // Kept for comparison with what the caller passes next: the area as returned.
  memcpy(v.xsave + 512, &bv, 8);
}

absl::StatusOr<bool> KvmAddressSpace::ExceptionInFlight(const Vcpu& v) {
  kvm_vcpu_events events = {};
  if (auto r = Ioctl(v.fd, KVM_GET_VCPU_EVENTS, &events); !r.ok()) return r.status();
  // KVM_GET_VCPU_EVENTS hides a queued soft exception (#BP from int3; #OF cannot happen in
  // 64-bit mode), assuming the guest's rip still points at the instruction. Under kvm_pvm
  // it points past it, and the #BP is delivered at the next entry. The vector it reports
  // stays that of the last exception queued: ForgetBreakpoint clears it at every #BP exit,
  // so a #BP vector seen here is one queued since, never delivered.
  return events.exception.injected != 0 || events.exception.pending != 0 ||
         events.exception.nr == kBreakpointVector;
}

absl::Status KvmAddressSpace::ForgetBreakpoint(const Vcpu& v) {
  kvm_vcpu_events events = {};
  if (auto r = Ioctl(v.fd, KVM_GET_VCPU_EVENTS, &events); !r.ok()) return r.status();
  if (events.exception.nr != kBreakpointVector || events.exception.injected != 0 ||
      events.exception.pending != 0) {
    return absl::OkStatus();
  }
  events.exception.nr = 0;
  if (auto r = Ioctl(v.fd, KVM_SET_VCPU_EVENTS, &events); !r.ok()) return r.status();
  return absl::OkStatus();
}

absl::Status KvmAddressSpace::Settle(Vcpu& v) {
  // An emulated read waits for its data: let KVM finish the instruction (without running
  // the guest) before the registers are replaced.
  v.read_pending = false;
  v.run->kvm_dirty_regs = 0;
  v.run->immediate_exit = 1;
  const int r = ioctl(v.fd, KVM_RUN, 0);
  v.run->immediate_exit = 0;
  if (r < 0 && errno != EINTR) return SyscallError("ioctl(KVM_RUN, immediate_exit)");
  return absl::OkStatus();
}

void KvmAddressSpace::WriteFrame(const Vcpu& v, const kvm_regs& guest) {
  uint64_t* frame = Record(v) + L::kRecRip;  // where the CPU left its own
  frame[0] = guest.rip;
  frame[1] = L::kUserCs;
  frame[2] = guest.rflags;
  frame[3] = guest.rsp;
  frame[4] = L::kUserSs;
}

void KvmAddressSpace::PrepareEntry(Vcpu& v, const kvm_regs& guest) {
  kvm_regs& r = v.run->s.regs.regs;
  const uint64_t gen = flush_gen_.load(std::memory_order_acquire);
  if (v.in_handler) {
    // The vector stub that exited goes on: it returns through the CPU's frame, rewritten
    // here (from the top of its tail, wherever a signal stopped it).
    // Only registers the vkernel changed are written (KVM then need not take them).
    WriteFrame(v, guest);
    kvm_regs want = guest;
    want.rip = v.handler_rip;
    want.rsp = v.handler_rsp;
    if (v.handler_rsp == StackTopVa(v.index) - 48) {
      // Past the error code, through the resume gadget: under kvm_pvm a register write
      // costs less than one more ring-0 instruction (measured: ~0.7 µs per fault).
      want.rip = CodeVa(vkrt_kvm_resume);
      want.rsp = StackTopVa(v.index) - 40;
    }
    if (v.flush_gen != gen) {
      want.rip = CodeVa(vkrt_kvm_resume_flush);
      want.rsp = StackTopVa(v.index) - 5 * 8;
      v.flush_gen = gen;
      v.in_handler = false;
    }
    want.rflags = 0x2;
    if (memcmp(&want, &r, sizeof(want)) == 0) {
      v.run->kvm_dirty_regs = 0;
    } else {
      r = want;
      v.run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
    }
    return;
  }
  v.in_handler = false;
  r = guest;
  if (!v.at_cpl3) {
    // From ring 0: iretq through a frame on the vCPU's ring-0 stack.
    WriteFrame(v, guest);
    r.rip = CodeVa(vkrt_kvm_resume);
    if (v.flush_gen != gen) {
      r.rip = CodeVa(vkrt_kvm_resume_flush);
      v.flush_gen = gen;
    }
    r.rsp = StackTopVa(v.index) - 5 * 8;
    r.rflags = 0x2;
  }
  v.run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
}

int KvmAddressSpace::InstructionAt(uint64_t rip) {
  unsigned char bytes[2];
  {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t entry = tables_.Get(rip);
    uint64_t entry2 = tables_.Get(rip + 1);
    if (!(entry & PageTables::kPresent) || !(entry2 & PageTables::kPresent)) return -1;
    for (int i = 0; i < 2; ++i) {
      const uint64_t e = i == 0 ? entry : entry2;
      const uint64_t gpa = (e & PageTables::kFrameMask) | ((rip + i) & (kPage - 1));
      const unsigned char* host = nullptr;
      for (const auto& [id, slot] : slots_) {
        if (gpa >= slot.gpa && gpa < slot.gpa + slot.size) host = slot.host + (gpa - slot.gpa);
      }
      if (host == nullptr) return -1;
      auto got = CopyProcessMemory(getpid(), false, reinterpret_cast<uint64_t>(host), &bytes[i], 1);
      if (!got.ok() || *got != 1) return -1;
    }
  }
  return bytes[0] | (bytes[1] << 8);
}

absl::StatusOr<GuestExit> KvmAddressSpace::Run(GuestState& state, const RunLimits& limits) {
  ThreadState& ts = ThreadState::Current();
  auto vcpu = CallerVcpu();
  if (!vcpu.ok()) return vcpu.status();
  Vcpu& v = **vcpu;

  uint64_t old_mask = 0;
  syscall(SYS_rt_sigprocmask, SIG_BLOCK, &kAllSignals, &old_mask, 8);
  bool timer_armed = false;
  absl::Cleanup cleanup = [&] {  // handlers of signals that ended KVM_RUN run here
    if (timer_armed) ts.DisarmTimer();
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old_mask, nullptr, 8);
  };
  if (ts.TakeInterrupt()) return GuestExit{};  // kInterrupted
  if (limits.timeout_ns != 0) {
    if (auto s = ts.ArmTimer(limits.timeout_ns); !s.ok()) return s;
    timer_armed = true;
  }
  // While the guest runs, the caller's own mask applies (and the kick always gets through).
  const uint64_t run_mask = old_mask & ~SigBit(ThreadState::KickSignal());
  return RunVcpu(v, state, run_mask);
}

absl::StatusOr<GuestExit> KvmAddressSpace::RunVcpu(Vcpu& v, GuestState& state,
                                                   uint64_t run_mask) {
  if (!v.initialised) {
    if (auto s = InitVcpu(v); !s.ok()) return s;
  }
  if (!v.mask_known || v.mask != run_mask) {
    SignalMask mask(run_mask);
    if (auto r = Ioctl(v.fd, kSetSignalMask, mask.get()); !r.ok()) return r.status();
    v.mask = run_mask;
    v.mask_known = true;
  }
  if (!v.tls_known || v.fs_base != state.fs_base || v.gs_base != state.gs_base) {
    MsrList<2> msrs;
    msrs[0].index = 0xC0000100;
    msrs[0].data = state.fs_base;
    msrs[1].index = 0xC0000101;
    msrs[1].data = state.gs_base;
    if (IoctlNoEintr(v.fd, kSetMsrs, msrs.get()) != 2) {
      return SyscallError("ioctl(KVM_SET_MSRS, FS/GS base)");
    }
    v.fs_base = state.fs_base;
    v.gs_base = state.gs_base;
    v.tls_known = true;
  }
  if (auto s = LoadXstate(v, state.xstate); !s.ok()) return s;

  trapframe& tf = *state.tf;
  kvm_regs guest = {};
  guest.rax = tf.tf_rax;
  guest.rbx = tf.tf_rbx;
  guest.rcx = tf.tf_rcx;
  guest.rdx = tf.tf_rdx;
  guest.rsi = tf.tf_rsi;
  guest.rdi = tf.tf_rdi;
  guest.rsp = tf.tf_rsp;
  guest.rbp = tf.tf_rbp;
  guest.r8 = tf.tf_r8;
  guest.r9 = tf.tf_r9;
  guest.r10 = tf.tf_r10;
  guest.r11 = tf.tf_r11;
  guest.r12 = tf.tf_r12;
  guest.r13 = tf.tf_r13;
  guest.r14 = tf.tf_r14;
  guest.r15 = tf.tf_r15;
  guest.rip = tf.tf_rip;
  guest.rflags = tf.tf_rflags;

  auto report = [&](const kvm_regs& r, uint64_t rip, uint64_t rsp, uint64_t rflags) {
    tf.tf_rax = r.rax;
    tf.tf_rbx = r.rbx;
    tf.tf_rcx = r.rcx;
    tf.tf_rdx = r.rdx;
    tf.tf_rsi = r.rsi;
    tf.tf_rdi = r.rdi;
    tf.tf_rbp = r.rbp;
    tf.tf_r8 = r.r8;
    tf.tf_r9 = r.r9;
    tf.tf_r10 = r.r10;
    tf.tf_r11 = r.r11;
    tf.tf_r12 = r.r12;
    tf.tf_r13 = r.r13;
    tf.tf_r14 = r.r14;
    tf.tf_r15 = r.r15;
    tf.tf_rip = static_cast<int64_t>(rip);
    tf.tf_rsp = static_cast<int64_t>(rsp);
    tf.tf_rflags = static_cast<int64_t>(rflags);
    tf.tf_cs = x86_64::kUserCs;
    tf.tf_ss = x86_64::kUserSs;
  };
  auto broken = [&](const std::string& why) {
    v.initialised = false;  // start this vCPU afresh next time
    return ErrnoError(EFAULT, "kvm: " + why);
  };

  bool interrupted = false;
  int deliveries = 0;  // re-entries, pending signals held off, to deliver an exception
  for (;;) {
    if (deliveries > 0) {
      v.run->kvm_dirty_regs = 0;  // the vCPU goes on exactly where the signal stopped it
    } else {
      if (v.read_pending) {
        if (auto s = Settle(v); !s.ok()) return s;
      }
      PrepareEntry(v, guest);
    }
    int r = ioctl(v.fd, KVM_RUN, 0);
    kvm_run* run = v.run;
    uint32_t exit_reason = run->exit_reason;
    uint64_t synthetic_rip = 0;
    if (r < 0 && errno == EINTR) {
      const kvm_regs& now = run->s.regs.regs;
      const bool cpl3 = (run->s.regs.sregs.cs.selector & 3) == 3;
      // Past a stub's hlt: in the tail the host let run. At a stub's first byte: an
      // exception on its way to the host.
      const bool in_tail = now.rip >= CodeVa(vkrt_kvm_vectors) &&
                           now.rip < CodeVa(vkrt_kvm_vectors_end) &&
                           (now.rip - CodeVa(vkrt_kvm_vectors)) % 16 != 0;
      if (!cpl3 && (in_tail || now.rip == CodeVa(vkrt_kvm_resume) ||
                    (now.rip >= CodeVa(vkrt_kvm_resume_flush) &&
                     now.rip <= CodeVa(vkrt_kvm_resume_flush) + 8))) {
        // Stopped before the guest ran: its state is what we were about to load (in the
        // handler's tail, which starts over next time).
        v.flush_gen = 0;  // the flush may not have run
        v.at_cpl3 = false;
        v.in_handler = in_tail && v.in_handler;
        report(guest, guest.rip, guest.rsp, guest.rflags);
        if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
        return GuestExit{};
      }
      // The vCPU is on its way out through the runtime's own code: the exit is taken as if
      // it had happened (the code left to run is one instruction that only exits), never by
      // running the vCPU on, which could enter the guest again with every signal blocked.
      if (!cpl3 && now.rip >= CodeVa(vkrt_kvm_vectors) &&
          now.rip < CodeVa(vkrt_kvm_vectors_end)) {
        interrupted = true;
        synthetic_rip = now.rip + 1;  // an exception at a stub's hlt
        exit_reason = KVM_EXIT_HLT;
      } else if (now.rip == L::kStubVa) {
        interrupted = true;  // `syscall` at the stub's exit instruction
        exit_reason = KVM_EXIT_MMIO;
        synthetic_rip = kStubExitRip;
      } else if (!cpl3) {
        return broken(absl::StrFormat("a signal stopped ring 0 at rip %#x", now.rip));
      } else if (auto queued = ExceptionInFlight(v); !queued.ok()) {
        return queued.status();
      } else if (*queued) {
        // The guest's instruction raised an exception that KVM had queued, not yet
        // delivered (under kvm_pvm every guest exception passes through that queue). KVM
        // delivers a queued exception at the next entry whatever registers it is given:
        // reported as a bare interrupt, it would land on whatever the vkernel runs next (a
        // signal handler, another thread), with this instruction's address and error code.
        // Deliver it now instead, the signals already pending held off for that one entry:
        // the vCPU only goes from here to a vector stub's hlt, and the exit reports it (a
        // page fault as an interrupt at the faulting instruction, as for one a signal caught
        // at the hlt). (Only those: should the guest run after all, a later signal, the
        // RUN's timeout or an interrupt, still ends it.)
        // (Again if another signal came before the entry: it is held off too.)
        if (++deliveries > 64) {
          return broken("an exception stayed queued with the pending signals held off");
        }
        uint64_t signals_pending = 0;
        syscall(SYS_rt_sigpending, &signals_pending, 8);
        SignalMask held(v.mask | signals_pending);
        if (auto b = Ioctl(v.fd, kSetSignalMask, held.get()); !b.ok()) return b.status();
        v.mask_known = false;  // the next RUN sets its own mask again
        interrupted = true;
        continue;
      } else {
        v.at_cpl3 = true;
        v.in_handler = false;
        report(now, now.rip, now.rsp, now.rflags);
        if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
        return GuestExit{};
      }
    } else if (r < 0) {
      return broken(absl::StrFormat("ioctl(KVM_RUN): %s", strerror(errno)));
    }

    const kvm_regs& now = run->s.regs.regs;
    // Where the vCPU stopped (a synthetic exit: where it would have).
    const uint64_t exit_rip = synthetic_rip != 0 ? synthetic_rip : now.rip;
    const bool stub_write = synthetic_rip != 0 || (run->mmio.is_write &&
                                                   run->mmio.phys_addr == L::kExitGpa);
    switch (exit_reason) {
      case KVM_EXIT_MMIO: {
        v.in_handler = false;
        v.at_cpl3 = (run->s.regs.sregs.cs.selector & 3) == 3;
        if (stub_write && exit_rip == kStubExitRip) {
          // `syscall`: rcx holds the return address, r11 the flags (a guest that jumped to
          // the stub chose them: only flags a guest can hold are reported).
          if (g_syscall_cpl_mode.load(std::memory_order_relaxed) == 0) {
            g_syscall_cpl_mode.store(v.at_cpl3 ? 1 : 2, std::memory_order_relaxed);
          }
          if (!x86_64::IsCanonical(now.rcx)) {
            // Only a guest that jumped to the stub can get here with a non-canonical rcx
            // (`syscall` stores the next rip). Reporting it as tf_rip would hand the vkernel
            // a rip no CPU holds, which RUN then refuses (EINVAL; found by api_fuzz). The CPU
            // answers a non-canonical return address with #GP: so does vkrt, at the stub.
            report(now, L::kStubVa, now.rsp,
                   (now.r11 & x86_64::kRflagsUserChangeable) | x86_64::kRflagsAlwaysSet);
            if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
            GuestExit exit;
            exit.kind = GuestExit::Kind::kException;
            exit.trapno = T_PROTFLT;
            return exit;
          }
          report(now, now.rcx, now.rsp,
                 (now.r11 & x86_64::kRflagsUserChangeable) | x86_64::kRflagsAlwaysSet);
          if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
          GuestExit exit;
          exit.kind = GuestExit::Kind::kSyscall;
          exit.trapno = T_FAST_SYSCALL;
          exit.err = 2;
          return exit;
        }
        // The guest itself touched the exit page (the only guest-reachable address no slot
        // backs): a protection fault there. A read stops at the instruction (KVM waits for
        // its data); a write has completed, so rip is past it.
        if (!run->mmio.is_write) v.read_pending = true;
        report(now, now.rip, now.rsp, now.rflags);
        if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
        GuestExit exit;
        exit.kind = GuestExit::Kind::kPageFault;
        exit.trapno = T_PAGEFLT;
        exit.addr = L::kExitVa + (run->mmio.phys_addr & (kPage - 1));
        exit.err = PGEX_U | PGEX_P | (run->mmio.is_write ? PGEX_W : 0);
        return exit;
      }
      case KVM_EXIT_HLT: {
        v.at_cpl3 = false;
        // Which stub halted tells the vector; the stack pointer whether the CPU pushed an
        // error code.
        const uint64_t vectors = CodeVa(vkrt_kvm_vectors);
        const uint64_t top = StackTopVa(v.index);
        if (exit_rip <= vectors || exit_rip >= CodeVa(vkrt_kvm_vectors_end) ||
            (exit_rip - vectors - 1) % 16 != 0 || (now.rsp != top - 40 && now.rsp != top - 48)) {
          return broken(absl::StrFormat("the ring-0 code stopped at rip %#x rsp %#x", exit_rip,
                                        now.rsp));
        }
        const int index = static_cast<int>((exit_rip - vectors - 1) / 16);
        const int vector = index < 32 ? index : 0x80;
        const bool error_pushed = now.rsp == top - 48;
        if (vector == kBreakpointVector) {
          if (auto s = ForgetBreakpoint(v); !s.ok()) return s;
        }
        const uint64_t* stack = reinterpret_cast<const uint64_t*>(
            kernel_ + L::StackTopOff(v.index) - (top - now.rsp));
        uint64_t record[L::kRecordWords];
        record[L::kRecCr2] = run->s.regs.sregs.cr2;
        record[L::kRecVector] = static_cast<uint64_t>(vector);
        record[L::kRecErr] = error_pushed ? stack[0] : 0;
        memcpy(&record[L::kRecRip], stack + (error_pushed ? 1 : 0), 5 * 8);
        // The stub's tail drops an error code only for the vectors the CPU pushes one for.
        v.in_handler = error_pushed == KvmVectorHasErrorCode(vector);
        v.handler_rip = exit_rip;  // (a synthetic exit: the next entry moves rip past the hlt)
        v.handler_rsp = now.rsp;
        KvmException ex = DecodeKvmException(
            record, error_pushed, [this](uint64_t va) { return InstructionAt(va); });
        if (!ex.valid) {
          return broken(absl::StrFormat("exception %d in ring 0 at %#x", vector,
                                        record[L::kRecRip]));
        }
        if (ex.exit.kind == GuestExit::Kind::kPageFault && interrupted) {
          // A signal came while the fault was on its way: end the RUN at the faulting
          // instruction (it faults again, and is resolved then, when the guest resumes).
          report(now, ex.rip, ex.rsp, ex.rflags);
          if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
          return GuestExit{};
        }
        if (ex.exit.kind == GuestExit::Kind::kPageFault) {
          auto fix = FixFault(ex.exit.addr, ex.exit.err);
          if (!fix.ok()) return fix.status();
          if (*fix == FaultFix::kPopulated) {
            guest = now;
            guest.rip = ex.rip;
            guest.rsp = ex.rsp;
            guest.rflags = ex.rflags;
            continue;
          }
          if (*fix == FaultFix::kProtection) ex.exit.err |= PGEX_P;
          if (vpt::Space* space = vpt(); space != nullptr && *fix == FaultFix::kProtection) {
            const vpt::Access access = (ex.exit.err & PGEX_W)   ? vpt::Access::kWrite
                                       : (ex.exit.err & PGEX_I) ? vpt::Access::kExecute
                                                                : vpt::Access::kRead;
            SpaceInstaller installer(*this);
            auto resolved = space->Resolve(ex.exit.addr, access, installer);
            if (!resolved.ok()) return resolved.status();
            if (resolved->outcome == vpt::Resolution::Outcome::kInstalled) {
              guest = now;
              guest.rip = ex.rip;
              guest.rsp = ex.rsp;
              guest.rflags = ex.rflags;
              continue;
            }
            if (resolved->outcome == vpt::Resolution::Outcome::kFault) {
              ex.exit.err = resolved->err;
            }
          }
        }
        report(now, ex.rip, ex.rsp, ex.rflags);
        if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
        return ex.exit;
      }
      case KVM_EXIT_INTERNAL_ERROR:
        if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION &&
            (run->s.regs.sregs.cs.selector & 3) == 3) {
          // An instruction KVM cannot emulate touched the exit page: refuse it.
          v.at_cpl3 = true;
          v.in_handler = false;
          report(now, now.rip, now.rsp, now.rflags);
          if (auto s = StoreXstate(v, state.xstate); !s.ok()) return s;
          GuestExit exit;
          exit.kind = GuestExit::Kind::kException;
          exit.trapno = T_PROTFLT;
          return exit;
        }
        return broken(absl::StrFormat(
            "KVM internal error %u at rip %#x (cpl %d; data %#x %#x %#x %#x)",
            run->internal.suberror, now.rip, run->s.regs.sregs.cs.selector & 3,
            run->internal.ndata > 0 ? run->internal.data[0] : 0,
            run->internal.ndata > 1 ? run->internal.data[1] : 0,
            run->internal.ndata > 2 ? run->internal.data[2] : 0,
            run->internal.ndata > 3 ? run->internal.data[3] : 0));
      case KVM_EXIT_SHUTDOWN:
        return broken("the vCPU shut down (triple fault)");
      case KVM_EXIT_FAIL_ENTRY:
        return broken(absl::StrFormat(
            "VM entry failed (hardware reason %#llx)",
            static_cast<unsigned long long>(run->fail_entry.hardware_entry_failure_reason)));
      default:
        return broken(absl::StrFormat("unexpected KVM exit %u at rip %#x", run->exit_reason,
                                      now.rip));
    }
  }
}

}  // namespace

// ---- the backend ----------------------------------------------------------------------------

KvmBackend* KvmBackend::Get() {
  static KvmBackend backend;
  return &backend;
}

absl::StatusOr<std::unique_ptr<AddressSpace>> KvmBackend::CreateAddressSpace() {
  auto space = KvmAddressSpace::Create();
  if (!space.ok()) return space.status();
  return std::unique_ptr<AddressSpace>(std::move(*space));
}

namespace {

// Runs `syscall` once in a fresh VM: the backend works here, and the exit tells the mode.
std::string SelfTest() {
  auto space = KvmAddressSpace::Create();
  if (!space.ok()) return std::string(space.status().message());
  MapRequest request;
  request.addr = 0x10000;
  request.len = kPage;
  request.prot = PROT_READ | PROT_WRITE | PROT_EXEC;
  request.flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
  auto mapped = (*space)->Map(request);
  if (!mapped.ok()) return std::string(mapped.status().message());
  const unsigned char code[] = {0x0F, 0x05, 0x0F, 0x0B};  // syscall; ud2
  auto wrote = (*space)->Write(0x10000, code, sizeof(code));
  if (!wrote.ok()) return std::string(wrote.status().message());
  trapframe tf = {};
  tf.tf_rip = 0x10000;
  tf.tf_rsp = 0x10FF0;
  tf.tf_rflags = 0x202;
  tf.tf_rax = 39;
  tf.tf_cs = x86_64::kUserCs;
  tf.tf_ss = x86_64::kUserSs;
  const size_t size = (x86_64::XstateSize() + 63) & ~size_t{63};
  void* area = aligned_alloc(64, size);
  if (area == nullptr) return "out of memory";
  memset(area, 0, size);
  asm volatile("fxsave64 %0" : "=m"(*static_cast<unsigned char(*)[512]>(area)));
  GuestState state{&tf, 0, 0, area};
  auto exit = (*space)->Run(state, RunLimits{});
  free(area);
  (*space)->ReleaseCallerContext();
  if (!exit.ok()) return "self test: " + std::string(exit.status().message());
  if (exit->kind != GuestExit::Kind::kSyscall || tf.tf_rip != 0x10002 || tf.tf_rax != 39) {
    return absl::StrFormat("self test: a guest `syscall` came back as trap %d at %#x",
                           exit->trapno, tf.tf_rip);
  }
  return "";
}

}  // namespace

const char* KvmBackend::Unavailable() {
  static const std::string* why = [] {
    const System& sys = GetSystem();
    if (!sys.why.empty()) return new std::string(sys.why);
    return new std::string(SelfTest());
  }();
  return why->empty() ? nullptr : why->c_str();
}

const char* KvmBackend::Mode() {
  if (Unavailable() != nullptr) return nullptr;
  switch (g_syscall_cpl_mode.load(std::memory_order_relaxed)) {
    case 1: return "pvm (syscall entry at CPL3)";
    case 2: return "hardware (syscall entry at CPL0)";
    default: return "unknown";
  }
}

}  // namespace vkrt
