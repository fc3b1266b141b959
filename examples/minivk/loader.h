// minivk: putting a program (and a dynamically linked one's interpreter) into a guest address space (the page tables of pmap.h):
// its segments, a stack with argv, envp and the auxiliary vector, as Linux's execve leaves
// them for the program's entry point (SysV x86-64 ABI).
#ifndef VKRT_EXAMPLES_MINIVK_LOADER_H_
#define VKRT_EXAMPLES_MINIVK_LOADER_H_

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "elf.h"
#include "pmap.h"

namespace minivk {

struct LoadedProgram {
  uint64_t entry = 0;  // rip to start at
  uint64_t rsp = 0;    // rsp to start with (argc there)
  uint64_t brk = 0;    // the heap's start
};

// Copies between minivk and guest virtual memory through `pt` (every page must be mapped).
bool WriteGuest(PhysMem& mem, const PageTable& pt, uint64_t va, const void* src, size_t len);
bool ReadGuest(const PhysMem& mem, const PageTable& pt, uint64_t va, void* dst, size_t len);

// The dynamic linker a dynamically linked program starts in: its image and where it is.
struct Interpreter {
  const ElfImage* image = nullptr;
  uint64_t bias = 0;
};

// The two halves of LoadProgram: the segments (fresh frames with the file's bytes, zeros
// beyond), then the stack with its vectors (`out` gets entry, rsp and brk). With an
// interpreter, the program starts at the interpreter's entry, AT_BASE says where the
// interpreter is, and AT_ENTRY/AT_PHDR still describe the program (as Linux's execve does).
bool LoadSegments(PhysMem& mem, PageTable& pt, const unsigned char* file, size_t size,
                  const ElfImage& image, uint64_t bias, std::string& error);
bool BuildStack(PhysMem& mem, PageTable& pt, const ElfImage& image, uint64_t bias,
                Interpreter interp, const std::vector<std::string>& argv,
                const std::vector<std::string>& envp, uint64_t stack_top, size_t stack_pages,
                LoadedProgram& out, std::string& error);

// Maps `image`'s segments (read from `file`, `bias` added for static-pie) with fresh frames
// and a `stack_pages`-page stack ending at `stack_top`, then writes argv, envp and the
// auxiliary vector (AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE 0, AT_ENTRY, AT_RANDOM,
// AT_UID/GID, AT_SECURE 0, AT_EXECFN). False with `error` when memory runs out.
bool LoadProgram(PhysMem& mem, PageTable& pt, const unsigned char* file, size_t size,
                 const ElfImage& image, uint64_t bias, const std::vector<std::string>& argv,
                 const std::vector<std::string>& envp, uint64_t stack_top, size_t stack_pages,
                 LoadedProgram& out, std::string& error);

}  // namespace minivk

#endif  // VKRT_EXAMPLES_MINIVK_LOADER_H_
