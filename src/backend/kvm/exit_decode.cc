#include "backend/kvm/exit_decode.h"

#include "arch/x86_64/frame.h"
#include "arch/x86_64/kvm_layout.h"

namespace vkrt {
namespace {

namespace L = kvm_layout;

constexpr int kInt80 = 0x80CD;    // cd 80
constexpr int kSysenter = 0x340F;  // 0f 34

bool HasErrorCode(int vector) {
  switch (vector) {
    case 8: case 10: case 11: case 12: case 13: case 14: case 17: case 21: case 29: case 30:
      return true;
    default:
      return false;
  }
}

// Vectors no CPU exception raises in this VM (no NMI, no machine check, no `into` in 64-bit
// mode, reserved numbers): if one arrives, the guest ran `int $N`.
bool SoftwareOnly(int vector) {
  switch (vector) {
    case 2: case 4: case 9: case 15: case 18: case 20: case 22: case 23: case 24: case 25:
    case 26: case 27: case 28: case 31:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool KvmVectorHasErrorCode(int vector) { return HasErrorCode(vector); }

KvmException DecodeKvmException(const uint64_t* record, bool pushed_error,
                                absl::FunctionRef<int(uint64_t)> insn) {
  KvmException out;
  const int vector = static_cast<int>(record[L::kRecVector]);
  const uint64_t* frame = record + L::kRecRip;
  if (frame[1] != L::kUserCs || frame[4] != L::kUserSs || (vector > 31 && vector != 0x80)) {
    return out;  // not a CPL3 exception: nothing the guest did
  }
  out.valid = true;
  out.rip = frame[0];
  out.rflags = frame[2];
  out.rsp = frame[3];
  GuestExit& exit = out.exit;
  exit.kind = GuestExit::Kind::kException;
  exit.trapno = x86_64::TrapCodeForVector(vector);
  exit.err = pushed_error ? record[L::kRecErr] : 0;
  if ((SoftwareOnly(vector) || (HasErrorCode(vector) && !pushed_error)) &&
      insn(out.rip - 2) == (0xCD | (vector << 8))) {
    // `int $N` through a gate the guest may not use: the #GP hardware raises for it, at the
    // instruction, with the IDT error code.
    exit.trapno = T_PROTFLT;
    exit.err = (static_cast<uint64_t>(vector) << 3) | 2;
    out.rip -= 2;
    return out;
  }
  switch (vector) {
    case 14:
      exit.kind = GuestExit::Kind::kPageFault;
      exit.addr = record[L::kRecCr2];
      // P, W, RSV and I as the hardware says; the guest always runs at user level.
      exit.err = (record[L::kRecErr] & (PGEX_P | PGEX_W | PGEX_RSV | PGEX_I)) | PGEX_U;
      break;
    case 0x80:  // through the DPL3 gate: rip is already past the instruction
      exit.kind = GuestExit::Kind::kSyscall80;
      exit.trapno = T_SYSCALL80;
      exit.err = 2;
      break;
    case 6:
    case 13: {
      const int bytes = insn(out.rip);
      if (bytes == kInt80 && (vector == 6 || record[L::kRecErr] == ((0x80 << 3) | 2))) {
        // kvm_pvm raises #UD for `int $0x80`; a CPU whose gate were DPL0 would raise #GP.
        exit.kind = GuestExit::Kind::kSyscall80;
        exit.trapno = T_SYSCALL80;
        exit.err = 2;
        out.rip += 2;
      } else if (bytes == kSysenter) {
        // Refused as AMD refuses it in long mode (Intel raises #GP: SYSENTER_CS is 0).
        exit.trapno = T_PRIVINFLT;
        exit.err = 0;
      }
      break;
    }
    default:
      break;
  }
  return out;
}

}  // namespace vkrt
