/* DragonFly-compatible <sys/vmspace.h>: the vmspace_* interface of libvkrt. */
#ifndef VKRT_COMPAT_SYS_VMSPACE_H_
#define VKRT_COMPAT_SYS_VMSPACE_H_
#include <vkrt/vmspace.h>
#endif
