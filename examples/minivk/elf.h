// minivk: reading an x86-64 Linux executable (the guest programs, busybox-static first; a
// dynamically linked one names its interpreter, the dynamic linker, which minivk loads beside it).
// Pure: parses bytes, so it is tested without running anything.
#ifndef VKRT_EXAMPLES_MINIVK_ELF_H_
#define VKRT_EXAMPLES_MINIVK_ELF_H_

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

namespace minivk {

// One PT_LOAD segment: `filesz` bytes from file `offset` at `vaddr`, zero up to `memsz`.
struct LoadSegment {
  uint64_t vaddr = 0;
  uint64_t memsz = 0;
  uint64_t filesz = 0;
  uint64_t offset = 0;
  int prot = 0;  // PROT_READ/WRITE/EXEC from p_flags
};

struct ElfImage {
  bool pie = false;         // ET_DYN (static-pie): every address below is relative to a bias
  uint64_t entry = 0;
  uint64_t phdr_vaddr = 0;  // where the program headers are in memory (AT_PHDR), 0 if not loaded
  uint16_t phnum = 0;
  uint16_t phentsize = 0;
  uint64_t brk_start = 0;   // the page after the highest segment end (the heap starts here)
  bool exec_stack = false;  // PT_GNU_STACK asks for an executable stack
  std::string interpreter;  // PT_INTERP's path (the dynamic linker); empty for a static program
  std::vector<LoadSegment> segments;
};

// Parses `bytes` as an x86-64 ELF executable (ET_EXEC, or ET_DYN: static-pie, a PIE, or a
// dynamic linker run as a program). Returns false with `error` naming what is wrong: not ELF,
// not 64-bit little-endian x86-64, not an executable, an interpreter name outside the file or
// not a terminated path, a segment outside the file, filesz > memsz, misaligned or
// overlapping segments, addresses beyond the user range.
bool ParseElf(const unsigned char* bytes, size_t size, ElfImage& image, std::string& error);

}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_ELF_H_
