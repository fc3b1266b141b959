// Backend selection: VKRT_TYPE_* and names <-> backends (SPEC §5).
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

#include "absl/strings/str_format.h"
#include "backend/backend.h"
#include "backend/kvm/kvm_backend.h"
#include "backend/ptrace/ptrace_backend.h"
#include "backend/seccomp/seccomp_backend.h"
#include "common/errno_status.h"

namespace vkrt {
namespace {

constexpr const char* kNames[] = {nullptr, "ptrace", "seccomp", "kvm"};

// The process default set by vkrt_set_backend(); 0 = not set.
std::atomic<int> api_default{0};

}  // namespace

const char* BackendUnavailable(int type) {
  switch (type) {
    case VKRT_TYPE_PTRACE: return PtraceBackend::Unavailable();
    case VKRT_TYPE_SECCOMP: return SeccompBackend::Unavailable();
    case VKRT_TYPE_KVM: return KvmBackend::Unavailable();
    default: return "unknown backend";
  }
}

namespace {

int DefaultType() {
  if (const char* env = getenv("VKRT_BACKEND"); env != nullptr && *env != '\0') {
    return BackendTypeForName(env);
  }
  if (int t = api_default.load(std::memory_order_acquire); t != 0) return t;
  // Best available first. kvm is chosen only by name: where KVM is itself nested (kvm_pvm)
  // its exits cost more than seccomp's handoffs (docs/performance.md).
  for (int t : {VKRT_TYPE_SECCOMP, VKRT_TYPE_PTRACE}) {
    if (BackendUnavailable(t) == nullptr) return t;
  }
  return VKRT_TYPE_PTRACE;
}

}  // namespace

int BackendTypeForName(const char* name) {
  if (name == nullptr) return -1;
  for (int t = 1; t <= 3; ++t) {
    if (strcmp(name, kNames[t]) == 0) return t;
  }
  return -1;
}

absl::Status SetDefaultBackend(const char* name) {
  const int type = BackendTypeForName(name);
  if (type < 0) {
    return ErrnoError(EINVAL, absl::StrFormat("vkrt_set_backend(%s): not ptrace, seccomp or kvm",
                                              name == nullptr ? "NULL" : name));
  }
  if (const char* why = BackendUnavailable(type)) {
    return ErrnoError(EOPNOTSUPP, absl::StrFormat("vkrt_set_backend(%s): %s", name, why));
  }
  api_default.store(type, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<Backend*> BackendForType(int type) {
  if (type == VKRT_TYPE_DEFAULT) {
    type = DefaultType();
    if (type < 0) {
      return ErrnoError(EINVAL, absl::StrFormat("VKRT_BACKEND=%s: not ptrace, seccomp or kvm",
                                                getenv("VKRT_BACKEND")));
    }
  }
  if (type < VKRT_TYPE_PTRACE || type > VKRT_TYPE_KVM) {
    return ErrnoError(EINVAL, absl::StrFormat("vmspace_create: unknown type %d", type));
  }
  if (const char* why = BackendUnavailable(type)) {
    return ErrnoError(EOPNOTSUPP, absl::StrFormat("backend %s: %s", kNames[type], why));
  }
  if (type == VKRT_TYPE_SECCOMP) return SeccompBackend::Get();
  if (type == VKRT_TYPE_KVM) return KvmBackend::Get();
  return PtraceBackend::Get();
}

}  // namespace vkrt
