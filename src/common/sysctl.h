// Reading a numeric Linux sysctl (/proc/sys/...), with a fallback where it is unreadable.
#ifndef VKRT_SRC_COMMON_SYSCTL_H_
#define VKRT_SRC_COMMON_SYSCTL_H_

#include <stdint.h>

namespace vkrt {

// The unsigned number in `path` (e.g. "/proc/sys/vm/max_map_count"), or `fallback`.
uint64_t ReadSysctl(const char* path, uint64_t fallback);

}  // namespace vkrt

#endif  // VKRT_SRC_COMMON_SYSCTL_H_
