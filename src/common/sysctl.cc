#include "common/sysctl.h"

#include <stdio.h>

namespace vkrt {

uint64_t ReadSysctl(const char* path, uint64_t fallback) {
  uint64_t value = fallback;
  if (FILE* f = fopen(path, "re")) {
    unsigned long long v;
    if (fscanf(f, "%llu", &v) == 1) value = v;
    fclose(f);
  }
  return value;
}

}  // namespace vkrt
