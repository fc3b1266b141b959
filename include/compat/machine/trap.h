/* DragonFly-compatible <machine/trap.h>: T_* trap codes; PGEX_* page fault bits. */
#ifndef VKRT_COMPAT_MACHINE_TRAP_H_
#define VKRT_COMPAT_MACHINE_TRAP_H_
#include <vkrt/vmspace.h>
#endif
