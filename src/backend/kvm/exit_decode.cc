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

}  // namespace

KvmException DecodeKvmException(const uint64_t* record, int insn) {
  KvmException out;
  const int vector = static_cast<int>(record[L::kRecVector]);
  out.rip = record[L::kRecRip];
  if (record[L::kRecCs] != L::kUserCs || record[L::kRecSs] != L::kUserSs ||
      (vector > 31 && vector != 0x80)) {
    return out;  // not a CPL3 exception: nothing the guest did
  }
  out.valid = true;
  GuestExit& exit = out.exit;
  exit.kind = GuestExit::Kind::kException;
  exit.trapno = x86_64::TrapCodeForVector(vector);
  exit.err = HasErrorCode(vector) ? record[L::kRecErr] : 0;
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
    case 13:
      if (insn == kInt80 && (vector == 6 || record[L::kRecErr] == ((0x80 << 3) | 2))) {
        // kvm_pvm raises #UD for `int $0x80`; a CPU whose gate were DPL0 would raise #GP.
        exit.kind = GuestExit::Kind::kSyscall80;
        exit.trapno = T_SYSCALL80;
        exit.err = 2;
        out.rip += 2;
      } else if (insn == kSysenter) {
        // Refused as AMD refuses it in long mode (Intel raises #GP: SYSENTER_CS is 0).
        exit.trapno = T_PRIVINFLT;
        exit.err = 0;
      }
      break;
    default:
      break;
  }
  return out;
}

}  // namespace vkrt
