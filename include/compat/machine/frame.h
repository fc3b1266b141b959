/* DragonFly-compatible <machine/frame.h>: struct trapframe (x86-64 layout). */
#ifndef VKRT_COMPAT_MACHINE_FRAME_H_
#define VKRT_COMPAT_MACHINE_FRAME_H_
#include <vkrt/vmspace.h>
#endif
