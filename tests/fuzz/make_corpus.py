#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/{api,walker}/).

The encodings are documented at the top of api_fuzz.cc and walker_fuzz.cc; this file must
follow them. Seeds are deterministic: rerunning the script rewrites the same bytes.
  usage: tests/fuzz/make_corpus.py [OUTPUT_DIR]   (default: the corpus/ next to this file)
"""
import os
import struct
import sys

# ---- api_fuzz ----------------------------------------------------------------------------
CREATE, DESTROY, MMAP, MUNMAP, MCONTROL, PWRITE, PREAD, RUN, RESUME, CODE, VPT = range(11)
PROT_R, PROT_W, PROT_X = 1, 2, 4
# Flag bit positions in api_fuzz.cc's Flags() table.
F_SHARED, F_PRIVATE, F_FIXED, F_ANON, F_VPT, F_NORESERVE, F_STACK, F_NOREPLACE = (
    1 << i for i in range(8))
F_GROWSDOWN, F_32BIT, F_VALIDATE, F_DENYWRITE, F_POPULATE, F_LOCKED, F_HUGETLB, F_SYNC = (
    1 << i for i in range(8, 16))
FD_NONE, FD_MEMFD, FD_MEMFD_RO, FD_PIPE, FD_DEVZERO, FD_CLOSED = 0, 1, 3, 4, 5, 6
CODE_BASE, VPT_BASE, SCRATCH = 0x400000, 0x20000000, 0x10000000


def u8(v): return struct.pack('<B', v & 0xff)
def u16(v): return struct.pack('<H', v & 0xffff)
def u32(v): return struct.pack('<I', v & 0xffffffff)
def u64(v): return struct.pack('<Q', v & 0xffffffffffffffff)


def pool(i): return u8(i)          # ids 0..3 of the pool
def foreign(v): return u8(0xC0) + u32(v)
def null_id(): return u8(0xFF)

# Addresses (api_fuzz.cc Addr()).
def a_zero(): return u8(0)
def a_scratch(page): return u8(1) + u16(page)
def a_region(n, off): return u8(2) + u8(n) + u16(off)
def a_neartop(pages): return u8(3) + u8(pages - 1)
def a_stub(pages): return u8(4) + u16(pages)
def a_noncanon(pages): return u8(5) + u32(pages)
def a_raw(v): return u8(6) + u64(v)
def a_unaligned(off): return u8(7) + u32(off)
def a_low(page): return u8(8) + u8(page)
def a_vsyscall(off): return u8(9) + u8(off)

# Lengths (Len()).
def l_zero(): return u8(0)
def l_pages(n): return u8(1) + u8(n - 1)
def l_bytes(n): return u8(2) + u16(n)
def l_manypages(n): return u8(3) + u16(n - 1)
def l_raw(v): return u8(4) + u64(v)
def l_wrap(d): return u8(5) + u8(d)
def l_overtop(d): return u8(6) + u8(d)
def l_max(): return u8(7)

def prot(p): return u8(p & 7)
def prot_raw(p): return u8(0x80) + u32(p)
def flags(f): return u16(f)
def flags_raw(f): return u16(0xffff) + u32(f)
def fd(kind): return u8(kind)
def o_zero(): return u8(0)
def o_pages(n): return u8(1) + u8(n)
def o_raw(v): return u8(2) + u64(v)


def create(i, type_byte=0, data=False, raw_type=None):
    """type_byte < 0xE0: the default backend; 0xE0 + t: type t (0..3); raw_type: any int."""
    t = u8(0xF0) + u32(raw_type) if raw_type is not None else u8(type_byte)
    return u8(CREATE) + pool(i) + t + u8(0xFF if data else 0)
def destroy(idb): return u8(DESTROY) + idb
def mmap(idb, addr, ln, pr, fl, f, off): return u8(MMAP) + idb + addr + ln + pr + fl + f + off
def munmap(idb, addr, ln): return u8(MUNMAP) + idb + addr + ln
def mcontrol(idb, addr, ln, behav, value=0):
    b = u8(behav) if behav < 0xF0 else u8(0xF0) + u32(behav)
    tail = (u8(value >> 12) + u16(value & 0xfff)) if behav == 11 else u64(value)
    return u8(MCONTROL) + idb + addr + ln + b + tail
def pwrite(idb, addr, data, fl=0):
    f = u8(0xFF) + u8(fl) if fl else u8(0)
    return u8(PWRITE) + idb + addr + u16(len(data)) + f + data[:256]
def pread(idb, addr, n, fl=0):
    return u8(PREAD) + idb + addr + u16(n) + (u8(0xFF) + u8(fl) if fl else u8(0))
def code(idb, insns, rax=0, rdi=0, mode=0):
    return u8(CODE) + idb + u8(len(insns) - 1) + insns + u64(rax) + u64(rdi) + u8(mode)
def reg(v): return u8(3) + u64(v)
def run(idb, regs, rip_addr, rflags_202=True, tls=None, mode=0):
    """regs: 25 values (None = 0) in trapframe order; rip_addr: an Addr() encoding."""
    out = u8(RUN) + idb
    for v in regs: out += u8(0) if v is None else reg(v)
    out += rip_addr + u8(1 if rflags_202 else 0)
    out += (u8(0xFF) + reg(tls[0]) + reg(tls[1])) if tls else u8(0)
    return out + u8(mode)
def resume(idb, rax=0, mode=0): return u8(RESUME) + idb + reg(rax) + u8(mode)
def vpt(idb, root_page, entries, length_units=0, offset_pages=0, root_bits=0):
    """entries: (page, slot, frame_page, bits, nx); length = (units+1)*16 KiB."""
    out = u8(VPT) + idb + u8(root_page) + u8(len(entries))
    for page, slot, frame, bits, nx in entries:
        out += u8(page) + u16(slot) + u16(frame) + u16(bits) + u8(1 if nx else 0)
    return out + u8(length_units) + u8(offset_pages) + u16(root_bits)

def regs_with(**kv):
    names = ('rdi rsi rdx rcx r8 r9 rax rbx rbp r10 r11 r12 r13 r14 r15 xflags trapno addr '
             'flags err rip cs rflags rsp ss').split()
    return [kv.get(n) for n in names]

V, RW, U, A, M, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
SYSCALL_LOOP = bytes([0x0f, 0x05, 0xeb, 0xfc])


def four_level(leaves):
    """Tables in memfd pages 0..3 for index 0..511 of the region; leaves: (slot, page, bits, nx)."""
    return ([(0, 0, 1, V | RW | U, False), (1, 0, 2, V | RW | U, False), (2, 0, 3, V | RW | U, False)]
            + [(3, slot, page, bits, nx) for slot, page, bits, nx in leaves])


def api_seeds():
    s = {}
    # Before any vmspace exists every call is EINVAL (named to replay first).
    s['00-before-create'] = (destroy(pool(0)) + munmap(pool(1), a_scratch(0), l_pages(1)) +
                             pread(pool(2), a_scratch(0), 16) + resume(pool(3)))
    s['01-lifetime'] = (create(0) + create(0) + create(1, raw_type=7) + create(2, 0, data=True)
                        + create(3, 0xE1) + destroy(pool(1)) + destroy(foreign(0x1234)) +
                        destroy(null_id()) + destroy(pool(0)) + destroy(pool(0)))
    s['02-syscall-loop'] = (create(0) + code(pool(0), SYSCALL_LOOP, rax=39) +
                            resume(pool(0), 20) + resume(pool(0), 1) + resume(pool(0), 60))
    s['03-traps'] = (create(0) + create(1) +
                     code(pool(0), bytes([0x0f, 0x0b])) +                 # ud2
                     code(pool(1), bytes([0xcc, 0xcd, 0x80, 0x0f, 0x34])) +  # int3, int 0x80, sysenter
                     resume(pool(1)) + resume(pool(1)) +
                     code(pool(0), bytes([0x31, 0xc9, 0xf7, 0xf1])) +     # div by zero
                     code(pool(0), bytes([0xf4])) +                       # hlt: #GP
                     code(pool(1), bytes([0x48, 0x89, 0x07]), rdi=0) +    # store to 0
                     code(pool(1), bytes([0xff, 0x14, 0x25, 0x00, 0x00, 0x60, 0xff])))  # call vsyscall
    s['04-loop-timeout'] = create(0) + code(pool(0), bytes([0xeb, 0xfe])) + resume(pool(0))
    s['05-anon-copy'] = (create(0) +
                         mmap(pool(0), a_scratch(0), l_pages(16), prot(PROT_R | PROT_W),
                              flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                         pwrite(pool(0), a_scratch(1), bytes(range(200))) +
                         pwrite(pool(0), a_unaligned(0x3ffc), b'crossing pages') +
                         pread(pool(0), a_scratch(0), 65536) + pread(pool(0), a_scratch(15), 8192) +
                         munmap(pool(0), a_scratch(4), l_pages(4)) +
                         pread(pool(0), a_scratch(3), 8192) + pwrite(pool(0), a_scratch(4), b'x') +
                         munmap(pool(0), a_scratch(0), l_pages(16)) +
                         mmap(pool(0), a_zero(), l_max(), prot(PROT_R | PROT_W),
                              flags(F_PRIVATE | F_ANON | F_NORESERVE), fd(FD_NONE), o_zero()) +
                         pwrite(pool(0), a_region(0, 0), b'hint') +
                         pwrite(pool(0), a_scratch(0), b'z', fl=4))
    s['06-mmap-errors'] = (create(0) +
                           mmap(pool(0), a_zero(), l_zero(), prot(3), flags(F_PRIVATE | F_ANON), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_zero(), l_pages(1), prot(3), flags(F_ANON), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_zero(), l_pages(1), prot(3), flags(F_PRIVATE | F_ANON), fd(FD_MEMFD), o_zero()) +
                           mmap(pool(0), a_unaligned(5), l_pages(1), prot(3), flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_neartop(1), l_pages(2), prot(3), flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_stub(3), l_pages(1), prot(3), flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_noncanon(7), l_pages(1), prot(3), flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_low(0), l_pages(1), prot(3), flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_zero(), l_overtop(0), prot(3), flags(F_PRIVATE | F_ANON), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_zero(), l_wrap(3), prot(3), flags(F_PRIVATE | F_ANON), fd(FD_NONE), o_zero()) +
                           mmap(pool(0), a_zero(), l_pages(1), prot(3), flags(F_SHARED), fd(FD_CLOSED), o_zero()) +
                           mmap(pool(0), a_zero(), l_pages(1), prot(3), flags(F_SHARED), fd(FD_MEMFD_RO), o_zero()) +
                           mmap(pool(0), a_zero(), l_pages(1), prot(1), flags(F_SHARED), fd(FD_PIPE), o_zero()) +
                           mmap(pool(0), a_zero(), l_pages(1), prot(3), flags(F_SHARED), fd(FD_MEMFD), o_raw(5)) +
                           mmap(pool(0), a_zero(), l_pages(1), prot_raw(0x1000003), flags(F_SHARED), fd(FD_MEMFD), o_zero()) +
                           mmap(pool(0), a_zero(), l_pages(1), prot(3), flags_raw(0x7fffffff), fd(FD_NONE), o_zero()))
    s['07-file-mappings'] = (create(0) +
                             mmap(pool(0), a_scratch(0), l_pages(8), prot(3), flags(F_SHARED | F_FIXED), fd(FD_MEMFD), o_pages(1)) +
                             mmap(pool(0), a_scratch(8), l_pages(8), prot(1), flags(F_PRIVATE | F_FIXED), fd(FD_MEMFD_RO), o_zero()) +
                             mmap(pool(0), a_scratch(16), l_pages(4), prot(3), flags(F_PRIVATE | F_FIXED), fd(FD_DEVZERO), o_zero()) +
                             mmap(pool(0), a_scratch(32), l_pages(4), prot(3), flags(F_SHARED | F_FIXED), fd(FD_MEMFD), o_pages(0xff)) +
                             mmap(pool(0), a_scratch(40), l_pages(4), prot(3), flags(F_SHARED | F_NOREPLACE), fd(FD_MEMFD), o_zero()) +
                             mmap(pool(0), a_scratch(40), l_pages(4), prot(3), flags(F_SHARED | F_NOREPLACE), fd(FD_MEMFD), o_zero()) +
                             pwrite(pool(0), a_scratch(1), b'shared') + pread(pool(0), a_scratch(8), 4096) +
                             pwrite(pool(0), a_scratch(8), b'ro') + pwrite(pool(0), a_scratch(16), b'zero') +
                             pwrite(pool(0), a_scratch(33), b'beyond the end of the memfd'))
    s['08-mcontrol'] = (create(0) +
                        mmap(pool(0), a_scratch(0), l_pages(8), prot(3), flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                        b''.join(mcontrol(pool(0), a_scratch(0), l_pages(8), b) for b in range(11)) +
                        mcontrol(pool(0), a_scratch(0), l_pages(8), 11, 0x1000) +
                        mcontrol(pool(0), a_scratch(0), l_pages(8), 0xF0, 12) +
                        mcontrol(pool(0), a_scratch(0), l_wrap(0), 4) +
                        mcontrol(pool(0), a_neartop(1), l_pages(2), 4) +
                        mcontrol(pool(0), a_zero(), l_raw(0x7FFFFFE00000), 10))
    leaves = [(0, 16, V | RW | U, False), (1, 17, V | U, False), (2, 18, V | RW | U, True),
              (3, 19, V | RW | U | A | M, False), (4, 2000, V | RW | U, False)]
    s['09-vpagetable'] = (create(0) + vpt(pool(0), 0, four_level(leaves)) +
                          pwrite(pool(0), a_raw(VPT_BASE), bytes([0x0f, 0x05, 0x0f, 0x0b])) +
                          pread(pool(0), a_raw(VPT_BASE), 16) +
                          pwrite(pool(0), a_raw(VPT_BASE + 0x1000), b'read-only') +
                          pread(pool(0), a_raw(VPT_BASE + 0x2000), 8192) +
                          pread(pool(0), a_raw(VPT_BASE + 0x4000), 8) +
                          run(pool(0), regs_with(rsp=VPT_BASE + 0x3f00), a_raw(VPT_BASE)) +
                          resume(pool(0)) +
                          code(pool(0), bytes([0x48, 0x89, 0x07, 0xff, 0xe6]), rdi=VPT_BASE + 0x1000) +
                          code(pool(0), bytes([0xff, 0xe7]), rdi=VPT_BASE + 0x2000) +
                          code(pool(0), bytes([0x48, 0x89, 0x07, 0x0f, 0x05]), rdi=VPT_BASE + 0x3008) +
                          mcontrol(pool(0), a_raw(VPT_BASE), l_pages(4), 10) +
                          mcontrol(pool(0), a_raw(VPT_BASE), l_pages(4), 11, 0x1000) +
                          pread(pool(0), a_raw(VPT_BASE), 16))
    s['10-vpagetable-large'] = (create(1) +
                                vpt(pool(1), 4, [(4, 0, 5, V | RW | U, False), (5, 0, 6, V | RW | U, False),
                                                 (6, 0, 0, V | RW | U | PS, False)], length_units=3) +
                                pwrite(pool(1), a_raw(VPT_BASE + 0x5000), b'2 MiB page') +
                                pread(pool(1), a_raw(VPT_BASE), 0x10000) +
                                mmap(pool(1), a_raw(VPT_BASE), l_pages(2), prot(3),
                                     flags(F_PRIVATE | F_ANON | F_FIXED), fd(FD_NONE), o_zero()) +
                                pread(pool(1), a_raw(VPT_BASE), 0x10000) +
                                mmap(pool(1), a_raw(VPT_BASE), l_pages(4), prot(1),
                                     flags(F_SHARED | F_VPT | F_FIXED), fd(FD_MEMFD), o_zero()) +
                                mmap(pool(1), a_raw(VPT_BASE), l_pages(4), prot(3),
                                     flags(F_SHARED | F_VPT | F_STACK), fd(FD_MEMFD), o_zero()) +
                                mmap(pool(1), a_raw(VPT_BASE), l_pages(4), prot(3),
                                     flags(F_SHARED | F_VPT), fd(FD_MEMFD_RO), o_zero()) +
                                mmap(pool(1), a_raw(VPT_BASE), l_pages(4), prot(3),
                                     flags(F_SHARED | F_VPT), fd(FD_PIPE), o_zero()) +
                                munmap(pool(1), a_raw(VPT_BASE + 0x8000), l_pages(4)))
    s['11-bad-frames'] = (create(0) + code(pool(0), SYSCALL_LOOP) +
                          run(pool(0), regs_with(), a_noncanon(0x10)) +
                          run(pool(0), regs_with(), a_raw(CODE_BASE), tls=(0xffff800000000000, 0)) +
                          run(pool(0), regs_with(), a_raw(CODE_BASE), tls=(0, 0x7ffffffff000)) +
                          run(pool(0), regs_with(), a_raw(CODE_BASE), mode=0xF0) +
                          run(pool(0), regs_with(), a_raw(CODE_BASE), mode=0xF1) +
                          run(pool(0), regs_with(), a_raw(CODE_BASE), mode=0xFA) +
                          run(pool(0), regs_with(), a_raw(CODE_BASE), mode=0xE3) +
                          run(foreign(7), regs_with(), a_raw(CODE_BASE)) +
                          run(pool(0), regs_with(rsp=0x800000000000, cs=0x10, ss=0, rflags=0xffffffff),
                              a_raw(CODE_BASE), rflags_202=False) +
                          run(pool(0), regs_with(), a_stub(0)) + run(pool(0), regs_with(), a_vsyscall(0)))
    s['12-single-step-ac'] = (create(0) +
                              code(pool(0), bytes([0x9c, 0x48, 0x81, 0x0c, 0x24, 0x00, 0x41, 0x04, 0x00,
                                                   0x9d, 0x90, 0x8b, 0x46, 0x01, 0x0f, 0x05])) +
                              resume(pool(0)) + resume(pool(0)) + resume(pool(0)))
    s['13-fpu'] = (create(0) +  # unmask every SSE exception, then divide by zero
                   code(pool(0), bytes([0x68, 0x00, 0x00, 0x00, 0x00, 0x0f, 0xae, 0x14, 0x24,
                                        0x0f, 0x57, 0xc0, 0xf3, 0x0f, 0x5e, 0xc0, 0x0f, 0x05])))
    return s


# ---- walker_fuzz -------------------------------------------------------------------------
def w_entries(entries):
    out = u8(len(entries))
    for page, slot, value in entries:
        out += u8(page) + u16(slot) + u64(value)
    return out


def w_walk(index, access, prot_bits=7, interfere=0):
    return u64(index) + u8(access) + u8(prot_bits) + u8(interfere)


R, W, X = 0, 1, 2
NX = 0x800


def walker_seeds():
    s = {}
    chain = [(0, 0, 0x1000 | V | RW | U), (1, 0, 0x2000 | V | RW | U), (2, 0, 0x3000 | V | RW | U),
             (3, 0, 0x7000 | V | RW | U), (3, 1, 0x8000 | V | U), (3, 2, 0x9000 | V | RW | U | NX),
             (3, 3, 0xa000 | V | RW | U | A | M)]
    root = 0x0000 | V | RW | U
    s['00-four-levels'] = u8(15) + u64(root) + w_entries(chain) + b''.join(
        w_walk(i, a) for i in range(5) for a in (R, W, X))
    s['01-large-pages'] = u8(7) + u64(root) + w_entries(
        [(0, 0, 0x1000 | V | RW | U), (0, 1, 0x40000000 | V | RW | PS),
         (1, 0, 0x2000 | V | RW), (1, 1, 0x200000 | V | PS | NX), (2, 0, 0x3000 | V | RW | PS | M)]) + b''.join(
        w_walk(i, a) for i in (0, 5, 1 << 9, (1 << 9) + 7, 1 << 18, (1 << 18) + 12345, (1 << 27) + 1) for a in (R, W, X))
    s['02-root-ps'] = u8(0) + u64(0x5000 | V | RW | PS) + u8(0) + w_walk(0x123456789, W) + w_walk(0xfffffffff, X)
    s['03-self-loop'] = u8(0) + u64(V | RW) + w_entries([(0, 0, V | RW), (0, 511, 0xfffffffff000 | V | RW)]) + b''.join(
        w_walk(i, a) for i in (0, 0xfffffffff, ~0) for a in (R, W, X))
    s['04-beyond-object'] = u8(1) + u64(0x1000 | V | RW) + w_entries([(1, 0, 0x100000 | V | RW), (0, 0, 0x100000 | V)]) + w_walk(0, R) + w_walk(0, W)
    s['05-missing-and-ro'] = u8(3) + u64(V | U) + w_entries([(0, 0, 0x1000 | V)]) + w_walk(0, W) + w_walk(0, R) + w_walk(1 << 27, R)
    s['06-interference'] = u8(15) + u64(root) + w_entries(chain) + w_walk(0, W, 7, 3) + w_walk(1, R, 3, 2) + w_walk(2, W, 7, 1 | 4) + w_walk(3, W, 7, 3 | 4)
    s['07-nx-root'] = u8(3) + u64(V | RW | NX) + w_entries([(0, 0, 0x1000 | V | RW)]) + w_walk(0, X) + w_walk(0, R)
    s['08-prot-none'] = u8(15) + u64(root) + w_entries(chain) + w_walk(3, R, 0) + w_walk(3, W, 1) + w_walk(0, X, 4)
    s['09-garbage'] = bytes((i * 37 + 11) & 0xff for i in range(300))
    s['10-high-frames'] = u8(15) + u64(0xfff0000000000fff) + w_entries([(0, 0, 0xffffffffffffffff), (0, 1, 0xfffffffffffff001)]) + w_walk(0, R) + w_walk(1 << 27, W)
    s['11-empty'] = b''
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
    for sub, seeds in (('api', api_seeds()), ('walker', walker_seeds())):
        d = os.path.join(out, sub)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, 'seed-' + name), 'wb') as f:
                f.write(data)
        print(f'{d}: {len(seeds)} seeds')


if __name__ == '__main__':
    main()
