/* What a DragonFly libc gives dfly_plain at link time: the vmspace_* and mcontrol functions
 * as bare system-call wrappers with DragonFly's numbers (ENOSYS on Linux). Under
 * LD_PRELOAD=libvkrt_preload.so the shim's definitions come first and these are never
 * called. */
#define _GNU_SOURCE
#include <sys/types.h>
#include <sys/vmspace.h>
#include <unistd.h>

int mcontrol(void *addr, size_t len, int behav, off_t value) {
  return (int)syscall(485, addr, len, behav, value);
}
int vmspace_create(void *id, int type, void *data) { return (int)syscall(486, id, type, data); }
int vmspace_destroy(void *id) { return (int)syscall(487, id); }
int vmspace_ctl(void *id, int cmd, struct trapframe *tf, struct vextframe *vf) {
  return (int)syscall(488, id, cmd, tf, vf);
}
void *vmspace_mmap(void *id, void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  return (void *)syscall(489, id, addr, len, prot, flags, fd, off);
}
int vmspace_munmap(void *id, void *addr, size_t len) { return (int)syscall(490, id, addr, len); }
int vmspace_mcontrol(void *id, void *addr, size_t len, int behav, off_t value) {
  return (int)syscall(491, id, addr, len, behav, value);
}
ssize_t vmspace_pread(void *id, void *buf, size_t n, int flags, off_t off) {
  return syscall(492, id, buf, n, flags, off);
}
ssize_t vmspace_pwrite(void *id, const void *buf, size_t n, int flags, off_t off) {
  return syscall(493, id, buf, n, flags, off);
}
