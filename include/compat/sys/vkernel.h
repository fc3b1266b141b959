/* DragonFly-compatible <sys/vkernel.h>: the virtual page table part (vpte_t, VPTE_*). */
#ifndef VKRT_COMPAT_SYS_VKERNEL_H_
#define VKRT_COMPAT_SYS_VKERNEL_H_
#include <vkrt/vmspace.h>
#ifndef VPTE_PAGE_ENTRIES
#define VPTE_PAGE_ENTRIES 512        /* entries per 4 KiB table */
#define VPTE_PAGE_BITS 9
#define VPTE_PAGE_MASK ((1 << VPTE_PAGE_BITS) - 1)
#define VPTE_PAGETABLE_SIZE 4096
#endif
#endif
