#include "elf.h"

#include <elf.h>
#include <string.h>
#include <sys/mman.h>

#include <algorithm>

namespace minivk {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kUserTop = 0x7FFFFFE00000;  // DragonFly's VM_MAX_USER_ADDRESS

bool Fail(std::string& error, std::string what) {
  error = std::move(what);
  return false;
}

}  // namespace

bool ParseElf(const unsigned char* bytes, size_t size, ElfImage& image, std::string& error) {
  image = ElfImage{};
  Elf64_Ehdr eh;
  if (size < sizeof(eh)) return Fail(error, "shorter than an ELF header");
  memcpy(&eh, bytes, sizeof(eh));
  if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return Fail(error, "not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB) {
    return Fail(error, "not a 64-bit little-endian ELF file");
  }
  if (eh.e_machine != EM_X86_64) return Fail(error, "not an x86-64 program");
  if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN) return Fail(error, "not an executable");
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0) {
    return Fail(error, "no usable program headers");
  }
  if (eh.e_phoff > size || size - eh.e_phoff < uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr)) {
    return Fail(error, "program headers beyond the end of the file");
  }
  image.pie = eh.e_type == ET_DYN;
  image.entry = eh.e_entry;
  image.phnum = eh.e_phnum;
  image.phentsize = eh.e_phentsize;
  uint64_t end = 0;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    memcpy(&ph, bytes + eh.e_phoff + uint64_t{i} * sizeof(ph), sizeof(ph));
    if (ph.p_type == PT_INTERP) {
      if (ph.p_offset > size || size - ph.p_offset < ph.p_filesz) {
        return Fail(error, "its interpreter's name lies beyond the end of the file");
      }
      const auto* name = reinterpret_cast<const char*>(bytes + ph.p_offset);
      const size_t len = strnlen(name, ph.p_filesz);
      if (len == 0 || len == ph.p_filesz || len >= 4096 || name[0] != '/') {
        return Fail(error, "its interpreter's name is not a terminated absolute path");
      }
      image.interpreter.assign(name, len);
    }
    if (ph.p_type == PT_GNU_STACK) image.exec_stack = (ph.p_flags & PF_X) != 0;
    if (ph.p_type == PT_PHDR) image.phdr_vaddr = ph.p_vaddr;
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz) return Fail(error, "a segment's file size exceeds its size");
    if (ph.p_offset > size || size - ph.p_offset < ph.p_filesz) {
      return Fail(error, "a segment lies beyond the end of the file");
    }
    if ((ph.p_vaddr - ph.p_offset) % kPage != 0) {
      return Fail(error, "a segment's address and file offset disagree modulo the page size");
    }
    if (ph.p_vaddr + ph.p_memsz < ph.p_vaddr || ph.p_vaddr + ph.p_memsz > kUserTop) {
      return Fail(error, "a segment lies beyond the user address range");
    }
    if (!image.segments.empty() && (ph.p_vaddr & ~(kPage - 1)) < end) {
      return Fail(error, "segments overlap or are not in ascending order");
    }
    LoadSegment seg;
    seg.vaddr = ph.p_vaddr;
    seg.memsz = ph.p_memsz;
    seg.filesz = ph.p_filesz;
    seg.offset = ph.p_offset;
    seg.prot = ((ph.p_flags & PF_R) ? PROT_READ : 0) | ((ph.p_flags & PF_W) ? PROT_WRITE : 0) |
               ((ph.p_flags & PF_X) ? PROT_EXEC : 0);
    image.segments.push_back(seg);
    end = (ph.p_vaddr + ph.p_memsz + kPage - 1) & ~(kPage - 1);
    // AT_PHDR without PT_PHDR: the headers are loaded if a segment covers them.
    if (image.phdr_vaddr == 0 && eh.e_phoff >= ph.p_offset &&
        eh.e_phoff < ph.p_offset + ph.p_filesz) {
      image.phdr_vaddr = ph.p_vaddr + (eh.e_phoff - ph.p_offset);
    }
  }
  if (image.segments.empty()) return Fail(error, "nothing to load (no PT_LOAD segment)");
  const bool entry_inside = std::any_of(
      image.segments.begin(), image.segments.end(), [&](const LoadSegment& s) {
        return image.entry >= s.vaddr && image.entry < s.vaddr + s.memsz && (s.prot & PROT_EXEC);
      });
  if (!entry_inside) return Fail(error, "the entry point is not in an executable segment");
  image.brk_start = end;
  return true;
}

}  // namespace minivk
