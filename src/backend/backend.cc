#include "backend/backend.h"

#include <sys/mman.h>

namespace vkrt {

absl::Status AddressSpace::DropTranslations(uint64_t addr, uint64_t len) {
  MapRequest reserve;
  reserve.addr = addr;
  reserve.len = len;
  reserve.prot = PROT_NONE;
  reserve.flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED;
  auto mapped = Map(reserve);
  return mapped.ok() ? absl::OkStatus() : mapped.status();
}

}  // namespace vkrt
