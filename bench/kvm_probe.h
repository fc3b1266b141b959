// kvm_probe.h - the raw KVM exit floor for the kvm backend's benchmarks: no vkrt code, one tiny
// VM of its own (after /work/shared/probes/p5_kvm.c).
//
// Guest (copied to guest-physical 0x9000, identity-mapped with one 2 MiB page; the 2 MiB page
// above it maps guest-physical 0x10000000, which no memory slot backs):
//
//   kentry:     iretq                      ring 0: enter CPL3 through the host's frame
//   lstar:      movb $0, 0x200000          SYSCALL target: exits (KVM_EXIT_MMIO), then
//               mov %cs, %r8d              returns the cheapest way its privilege allows:
//               test $3, %r8b              sysretq at CPL0 (VMX/SVM hardware); at CPL3
//               jnz 1f                     (kvm_pvm runs LSTAR at CPL3) popfq + jmp *%rcx
//               sysretq
//            1: push %r11; popfq; jmp *%rcx
//   user_sys:   syscall; jmp user_sys      CPL3: one exit per KVM_RUN
//   user_pf:    mov 0x40000000, %rax       CPL3: a #PF (nothing mapped there) per KVM_RUN
//               jmp user_pf
//   pf:         hlt                        IDT 14: exits (KVM_EXIT_HLT); then drops the error
//               add $8, %rsp; iretq        code and retries the load
//   other:      hlt; jmp other             any other vector: an unexpected exit
//
// SyscallExit() and FaultExit() each run one KVM_RUN and check its exit: the hardware and KVM
// cost of one guest system call or one guest page fault reaching the host, with nothing done
// there. The kvm backend's round trips add what the contract needs on top (the frame, the FPU
// state) and are reported next to these.
#ifndef VKRT_BENCH_KVM_PROBE_H_
#define VKRT_BENCH_KVM_PROBE_H_

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>

extern "C" {
extern const unsigned char kvm_probe_start[], kvm_probe_end[], kvm_probe_kentry[],
    kvm_probe_lstar[], kvm_probe_user_sys[], kvm_probe_user_pf[], kvm_probe_pf[],
    kvm_probe_other[];
}

asm(R"(
    .pushsection .rodata.kvm_probe, "a"
    .balign 16
kvm_probe_start:
kvm_probe_kentry:
    iretq
kvm_probe_lstar:
    movb $0, 0x200000
    mov %cs, %r8d
    test $3, %r8b
    jnz 1f
    sysretq
1:  push %r11
    popfq
    jmp *%rcx
kvm_probe_user_sys:
    syscall
    jmp kvm_probe_user_sys
kvm_probe_user_pf:
    mov 0x40000000, %rax
    jmp kvm_probe_user_pf
kvm_probe_pf:
    hlt
    add $8, %rsp
    iretq
kvm_probe_other:
    hlt
    jmp kvm_probe_other
kvm_probe_end:
    .popsection
)");

namespace kvm_probe {

class Vm {
 public:
  ~Vm() { Stop(); }

  // Builds the VM, its vCPU at CPL3 in `user_sys` (syscall = true) or `user_pf`. "" or why not.
  std::string Start(bool syscall) {
    kvm_ = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_ < 0) return std::string("open /dev/kvm: ") + strerror(errno);
    vm_ = ioctl(kvm_, KVM_CREATE_VM, 0);
    if (vm_ < 0) return std::string("KVM_CREATE_VM: ") + strerror(errno);
    mem_ = static_cast<unsigned char*>(mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (mem_ == MAP_FAILED) {
      mem_ = nullptr;
      return "mmap of the probe VM's memory failed";
    }
    kvm_userspace_memory_region region = {};
    region.memory_size = kMemSize;
    region.userspace_addr = reinterpret_cast<uint64_t>(mem_);
    if (ioctl(vm_, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
      return std::string("KVM_SET_USER_MEMORY_REGION: ") + strerror(errno);
    }
    vcpu_ = ioctl(vm_, KVM_CREATE_VCPU, 0);
    if (vcpu_ < 0) return std::string("KVM_CREATE_VCPU: ") + strerror(errno);
    run_size_ = ioctl(kvm_, KVM_GET_VCPU_MMAP_SIZE, 0);
    void* run = mmap(nullptr, static_cast<size_t>(run_size_), PROT_READ | PROT_WRITE, MAP_SHARED,
                     vcpu_, 0);
    if (run == MAP_FAILED) return "mmap of kvm_run failed";
    run_ = static_cast<kvm_run*>(run);
    BuildMemory();
    return EnterUser(syscall ? Addr(kvm_probe_user_sys) : Addr(kvm_probe_user_pf));
  }

  void Stop() {
    if (run_ != nullptr) munmap(run_, static_cast<size_t>(run_size_));
    if (vcpu_ >= 0) close(vcpu_);
    if (vm_ >= 0) close(vm_);
    if (kvm_ >= 0) close(kvm_);
    if (mem_ != nullptr) munmap(mem_, kMemSize);
    run_ = nullptr;
    mem_ = nullptr;
    vcpu_ = vm_ = kvm_ = -1;
  }

  // One guest `syscall` to the host and back. "" or what went wrong.
  std::string SyscallExit() {
    if (ioctl(vcpu_, KVM_RUN, 0) < 0) return std::string("KVM_RUN: ") + strerror(errno);
    if (run_->exit_reason != KVM_EXIT_MMIO || run_->mmio.phys_addr != 0x10000000) {
      return "probe: unexpected exit " + std::to_string(run_->exit_reason);
    }
    return "";
  }

  // The privilege level the last syscall exit happened at (3 under kvm_pvm, 0 on hardware).
  int LstarCpl() {
    kvm_sregs s;
    if (ioctl(vcpu_, KVM_GET_SREGS, &s) < 0) return -1;
    return s.cs.selector & 3;
  }

  // One guest page fault to the host and back (the fault is taken again each time).
  std::string FaultExit() {
    if (ioctl(vcpu_, KVM_RUN, 0) < 0) return std::string("KVM_RUN: ") + strerror(errno);
    if (run_->exit_reason != KVM_EXIT_HLT) {
      return "probe: unexpected exit " + std::to_string(run_->exit_reason);
    }
    const uint64_t* frame = reinterpret_cast<const uint64_t*>(mem_ + kKernelStack - 48);
    if (frame[1] != Addr(kvm_probe_user_pf)) return "probe: #PF at an unexpected rip";
    return "";
  }

 private:
  static constexpr uint64_t kMemSize = 4ULL << 20;
  static constexpr uint64_t kCode = 0x9000, kGdt = 0x4000, kIdt = 0x5000, kTss = 0x6000;
  static constexpr uint64_t kFrame = 0x7000, kKernelStack = 0x8000, kUserStack = 0x20000;

  static uint64_t Addr(const unsigned char* label) {
    return kCode + static_cast<uint64_t>(label - kvm_probe_start);
  }

  void BuildMemory() {
    auto word = [this](uint64_t at) -> uint64_t& { return *reinterpret_cast<uint64_t*>(mem_ + at); };
    word(0x1000) = 0x2000 | 7;                 // PML4[0] -> PDPT
    word(0x2000) = 0x3000 | 7;                 // PDPT[0] -> PD (PDPT[1], VA 1 GiB: nothing)
    word(0x3000) = 0x0 | 0x87;                 // VA 0..2 MiB -> GPA 0, 2 MiB page, user RW
    word(0x3008) = 0x10000000 | 0x87;          // VA 2..4 MiB -> GPA 256 MiB: no slot (MMIO)
    word(kGdt + 0x10) = 0x00AF9B000000FFFFULL;  // 0x10 kernel code
    word(kGdt + 0x18) = 0x00CF93000000FFFFULL;  // 0x18 kernel data
    word(kGdt + 0x20) = 0x00CFFB000000FFFFULL;  // 0x23 user code32 (sysret's base)
    word(kGdt + 0x28) = 0x00CFF3000000FFFFULL;  // 0x2b user data
    word(kGdt + 0x30) = 0x00AFFB000000FFFFULL;  // 0x33 user code64
    word(kTss + 4) = kKernelStack;               // RSP0
    *reinterpret_cast<uint16_t*>(mem_ + kTss + 102) = 104;
    for (int v = 0; v < 32; ++v) {
      const uint64_t h = v == 14 ? Addr(kvm_probe_pf) : Addr(kvm_probe_other);
      word(kIdt + 16 * v) = (h & 0xFFFF) | (0x10ULL << 16) | (0x8EULL << 40) |
                            ((h >> 16) & 0xFFFF) << 48;
      word(kIdt + 16 * v + 8) = h >> 32;
    }
    memcpy(mem_ + kCode, kvm_probe_start, static_cast<size_t>(kvm_probe_end - kvm_probe_start));
  }

  std::string EnterUser(uint64_t rip) {
    kvm_sregs s;
    if (ioctl(vcpu_, KVM_GET_SREGS, &s) < 0) return "KVM_GET_SREGS failed";
    auto seg = [](uint16_t sel, bool code) {
      kvm_segment g = {};
      g.limit = 0xFFFFFFFF;
      g.selector = sel;
      g.type = code ? 11 : 3;
      g.present = 1;
      g.s = 1;
      g.l = code ? 1 : 0;
      g.db = code ? 0 : 1;
      g.g = 1;
      return g;
    };
    s.cs = seg(0x10, true);
    s.ss = seg(0x18, false);
    s.ds = s.es = s.fs = s.gs = seg(0, false);
    s.ds.dpl = s.es.dpl = s.fs.dpl = s.gs.dpl = 3;
    s.tr = kvm_segment{};
    s.tr.base = kTss;
    s.tr.limit = 0x67;
    s.tr.selector = 0x40;
    s.tr.type = 11;
    s.tr.present = 1;
    s.ldt = kvm_segment{};
    s.ldt.type = 2;
    s.ldt.unusable = 1;
    s.gdt.base = kGdt;
    s.gdt.limit = 0x4F;
    s.idt.base = kIdt;
    s.idt.limit = 32 * 16 - 1;
    s.cr0 = 0x80010033;
    s.cr3 = 0x1000;
    s.cr4 = 0x620;
    s.efer = 0xD01;
    if (ioctl(vcpu_, KVM_SET_SREGS, &s) < 0) return std::string("KVM_SET_SREGS: ") + strerror(errno);
    // STAR, LSTAR, SFMASK, in the C layout of struct kvm_msrs (see kvm_backend.cc).
    alignas(8) unsigned char msrs[8 + 3 * sizeof(kvm_msr_entry)] = {};
    *reinterpret_cast<uint32_t*>(msrs) = 3;
    auto* e = reinterpret_cast<kvm_msr_entry*>(msrs + 8);
    e[0].index = 0xC0000081;
    e[0].data = (0x23ULL << 48) | (0x10ULL << 32);
    e[1].index = 0xC0000082;
    e[1].data = Addr(kvm_probe_lstar);
    e[2].index = 0xC0000084;
    e[2].data = 0x47700;
    if (ioctl(vcpu_, _IOC(_IOC_WRITE, KVMIO, 0x89, 8), msrs) != 3) return "KVM_SET_MSRS failed";
    uint64_t* frame = reinterpret_cast<uint64_t*>(mem_ + kFrame);
    frame[0] = rip;
    frame[1] = 0x33;
    frame[2] = 0x202;
    frame[3] = kUserStack;
    frame[4] = 0x2B;
    kvm_regs r = {};
    r.rip = Addr(kvm_probe_kentry);
    r.rsp = kFrame;
    r.rflags = 0x2;
    if (ioctl(vcpu_, KVM_SET_REGS, &r) < 0) return std::string("KVM_SET_REGS: ") + strerror(errno);
    return "";
  }

  int kvm_ = -1, vm_ = -1, vcpu_ = -1;
  int run_size_ = 0;
  kvm_run* run_ = nullptr;
  unsigned char* mem_ = nullptr;
};

}  // namespace kvm_probe

#endif  // VKRT_BENCH_KVM_PROBE_H_
