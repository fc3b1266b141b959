/* DragonFly-compatible <sys/tls.h>: struct tls_info and struct savetls. */
#ifndef VKRT_COMPAT_SYS_TLS_H_
#define VKRT_COMPAT_SYS_TLS_H_
#include <vkrt/vmspace.h>
#endif
