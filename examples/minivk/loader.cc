#include "loader.h"

#include <cpuid.h>
#include <elf.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>

namespace minivk {
namespace {

constexpr uint64_t kPage = 4096;

// The host address of guest byte `va`, or nullptr if its page is not mapped.
unsigned char* HostOf(const PhysMem& mem, const PageTable& pt, uint64_t va) {
  const vpte_t e = pt.Lookup(va & ~(kPage - 1));
  if (!(e & VPTE_V)) return nullptr;
  return mem.At(e & VPTE_FRAME) + (va & (kPage - 1));
}

}  // namespace

bool WriteGuest(PhysMem& mem, const PageTable& pt, uint64_t va, const void* src, size_t len) {
  const auto* from = static_cast<const unsigned char*>(src);
  while (len > 0) {
    unsigned char* to = HostOf(mem, pt, va);
    if (to == nullptr) return false;
    const size_t n = std::min<size_t>(len, kPage - (va & (kPage - 1)));
    memcpy(to, from, n);
    va += n;
    from += n;
    len -= n;
  }
  return true;
}

bool ReadGuest(const PhysMem& mem, const PageTable& pt, uint64_t va, void* dst, size_t len) {
  auto* to = static_cast<unsigned char*>(dst);
  while (len > 0) {
    const unsigned char* from = HostOf(mem, pt, va);
    if (from == nullptr) return false;
    const size_t n = std::min<size_t>(len, kPage - (va & (kPage - 1)));
    memcpy(to, from, n);
    va += n;
    to += n;
    len -= n;
  }
  return true;
}

namespace {

// AT_HWCAP as Linux gives it on x86-64: CPUID leaf 1's EDX feature bits.
uint64_t Hwcap() {
  unsigned eax, ebx, ecx, edx;
  __cpuid(1, eax, ebx, ecx, edx);
  return edx;
}

// A fresh frame at `va`, or, if two segments share the page, the union of their rights.
bool MapFreshPage(PhysMem& mem, PageTable& pt, uint64_t va, int prot) {
  const vpte_t e = pt.Lookup(va);
  if (e & VPTE_V) {
    const int old = PROT_READ | ((e & VPTE_RW) ? PROT_WRITE : 0) | ((e & VPTE_NX) ? 0 : PROT_EXEC);
    pt.Set(va, PageTable::Leaf(e & VPTE_FRAME, old | prot));
    return true;
  }
  const uint64_t frame = mem.Alloc();
  return frame != 0 && pt.Map(va, frame, prot);
}

}  // namespace

bool LoadSegments(PhysMem& mem, PageTable& pt, const unsigned char* file, size_t size,
                  const ElfImage& image, uint64_t bias, std::string& error) {
  for (const LoadSegment& seg : image.segments) {
    const uint64_t start = (bias + seg.vaddr) & ~(kPage - 1);
    const uint64_t end = (bias + seg.vaddr + seg.memsz + kPage - 1) & ~(kPage - 1);
    for (uint64_t va = start; va < end; va += kPage) {
      if (!MapFreshPage(mem, pt, va, seg.prot)) {
        error = "out of guest memory loading the program";
        return false;
      }
    }
    if (seg.offset + seg.filesz > size ||
        !WriteGuest(mem, pt, bias + seg.vaddr, file + seg.offset, seg.filesz)) {
      error = "a segment could not be copied";
      return false;
    }
  }
  return true;
}

bool BuildStack(PhysMem& mem, PageTable& pt, const ElfImage& image, uint64_t bias,
                Interpreter interp, const std::vector<std::string>& argv,
                const std::vector<std::string>& envp, uint64_t stack_top, size_t stack_pages,
                LoadedProgram& out, std::string& error) {
  if (stack_top > 0x7FFFFFE00000 || stack_top % kPage != 0 || stack_pages == 0) {
    error = "the stack must be whole pages ending at or below 0x7FFFFFE00000";
    return false;
  }
  for (size_t i = 1; i <= stack_pages; ++i) {
    if (!MapFreshPage(mem, pt, stack_top - i * kPage, PROT_READ | PROT_WRITE)) {
      error = "out of guest memory for the stack";
      return false;
    }
  }

  // The strings as Linux lays them out: at the very top a zero word, below it the program's
  // file name (AT_EXECFN), then the environment and argument strings, each block in
  // ascending order (argv[0] lowest); below them the platform name and the random bytes,
  // then the vectors (16-byte aligned). Programs read past a string's end into the next
  // one and rely on the zero word to stop them (glibc's GLIBC_TUNABLES parser does).
  uint64_t sp = stack_top;
  auto push_bytes = [&](const void* data, size_t len) {
    sp -= len;
    return WriteGuest(mem, pt, sp, data, len) ? sp : 0;
  };
  const uint64_t zero_word = 0;
  bool ok = push_bytes(&zero_word, sizeof(zero_word)) != 0;
  const std::string& file_name = argv.empty() ? std::string() : argv[0];
  const uint64_t execfn = push_bytes(file_name.c_str(), file_name.size() + 1);
  std::vector<uint64_t> argv_at(argv.size()), envp_at(envp.size());
  for (size_t i = envp.size(); i-- > 0;) {
    envp_at[i] = push_bytes(envp[i].c_str(), envp[i].size() + 1);
  }
  for (size_t i = argv.size(); i-- > 0;) {
    argv_at[i] = push_bytes(argv[i].c_str(), argv[i].size() + 1);
  }
  static const char kPlatform[] = "x86_64";
  sp &= ~uint64_t{15};
  const uint64_t platform_at = push_bytes(kPlatform, sizeof(kPlatform));
  sp &= ~uint64_t{15};
  unsigned char random[16];
  if (getrandom(random, sizeof(random), 0) != sizeof(random)) memset(random, 0x5a, sizeof(random));
  const uint64_t random_at = push_bytes(random, sizeof(random));
  ok = ok && execfn != 0 && platform_at != 0 && random_at != 0;
  for (uint64_t at : argv_at) ok = ok && at != 0;
  for (uint64_t at : envp_at) ok = ok && at != 0;
  std::vector<uint64_t> words;
  words.push_back(argv.size());
  words.insert(words.end(), argv_at.begin(), argv_at.end());
  words.push_back(0);
  words.insert(words.end(), envp_at.begin(), envp_at.end());
  words.push_back(0);
  const uint64_t auxv[][2] = {
      {AT_PHDR, image.phdr_vaddr + bias}, {AT_PHENT, image.phentsize},
      {AT_PHNUM, image.phnum},            {AT_PAGESZ, kPage},
      {AT_BASE, interp.image != nullptr ? interp.bias : 0},
      {AT_ENTRY, image.entry + bias},     {AT_RANDOM, random_at},
      {AT_UID, getuid()},                 {AT_EUID, geteuid()},
      {AT_GID, getgid()},                 {AT_EGID, getegid()},
      {AT_SECURE, 0},                     {AT_EXECFN, execfn},
      {AT_PLATFORM, platform_at},         {AT_CLKTCK, 100},
      {AT_HWCAP, Hwcap()},                {AT_NULL, 0},
  };
  for (const auto& pair : auxv) {
    words.push_back(pair[0]);
    words.push_back(pair[1]);
  }
  sp = (sp - words.size() * 8) & ~uint64_t{15};
  if (!ok || sp < stack_top - stack_pages * kPage ||
      !WriteGuest(mem, pt, sp, words.data(), words.size() * 8)) {
    error = "the arguments do not fit the stack";
    return false;
  }
  out.entry = interp.image != nullptr ? interp.image->entry + interp.bias : image.entry + bias;
  out.rsp = sp;
  out.brk = image.brk_start + bias;
  return true;
}


bool LoadProgram(PhysMem& mem, PageTable& pt, const unsigned char* file, size_t size,
                 const ElfImage& image, uint64_t bias, const std::vector<std::string>& argv,
                 const std::vector<std::string>& envp, uint64_t stack_top, size_t stack_pages,
                 LoadedProgram& out, std::string& error) {
  return LoadSegments(mem, pt, file, size, image, bias, error) &&
         BuildStack(mem, pt, image, bias, Interpreter{}, argv, envp, stack_top, stack_pages, out,
                    error);
}

}  // namespace minivk
