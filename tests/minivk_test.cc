// minivk's pieces (examples/minivk/): the ELF reader on busybox-static and on broken files, and
// the page-table builder, checked against the runtime's own walker by running a guest through
// tables it built.
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <elf.h>

#include <algorithm>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <vkrt/vmspace.h>

#include "../examples/minivk/elf.h"
#include "../examples/minivk/internal.h"
#include "../examples/minivk/loader.h"
#include "../examples/minivk/pmap.h"
#include "../examples/minivk/kernel.h"
#include "../examples/minivk/vm.h"

namespace {

std::vector<unsigned char> ReadFile(const char* path) {
  std::vector<unsigned char> bytes;
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return bytes;
  struct stat st;
  if (fstat(fd, &st) == 0) {
    bytes.resize(static_cast<size_t>(st.st_size));
    if (read(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) bytes.clear();
  }
  close(fd);
  return bytes;
}

TEST(MinivkElf, ReadsBusyboxStatic) {
  // busybox-static is one of the project's build dependencies (scripts/build.sh).
  const std::vector<unsigned char> busybox = ReadFile("/bin/busybox");
  ASSERT_FALSE(busybox.empty()) << "/bin/busybox (Debian's busybox-static) is not readable";
  minivk::ElfImage image;
  std::string error;
  ASSERT_TRUE(minivk::ParseElf(busybox.data(), busybox.size(), image, error)) << error;
  EXPECT_FALSE(image.segments.empty());
  EXPECT_NE(0u, image.entry);
  EXPECT_NE(0u, image.phdr_vaddr);
  EXPECT_GT(image.brk_start, image.segments.back().vaddr);
  EXPECT_EQ(0u, image.brk_start % 4096);
  bool executable = false;
  for (const auto& s : image.segments) executable = executable || (s.prot & PROT_EXEC);
  EXPECT_TRUE(executable);
}

// A minimal valid image: header, one program header, one RX segment holding everything.
std::vector<unsigned char> TinyElf() {
  std::vector<unsigned char> bytes(4096, 0);
  Elf64_Ehdr eh = {};
  memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_entry = 0x400100;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = 1;
  Elf64_Phdr ph = {};
  ph.p_type = PT_LOAD;
  ph.p_flags = PF_R | PF_X;
  ph.p_offset = 0;
  ph.p_vaddr = 0x400000;
  ph.p_filesz = 4096;
  ph.p_memsz = 8192;
  memcpy(bytes.data(), &eh, sizeof(eh));
  memcpy(bytes.data() + sizeof(eh), &ph, sizeof(ph));
  return bytes;
}

Elf64_Phdr* Phdr(std::vector<unsigned char>& bytes) {
  return reinterpret_cast<Elf64_Phdr*>(bytes.data() + sizeof(Elf64_Ehdr));
}

TEST(MinivkElf, RefusesWhatItCannotRunAndSaysWhy) {
  minivk::ElfImage image;
  std::string error;
  std::vector<unsigned char> good = TinyElf();
  ASSERT_TRUE(minivk::ParseElf(good.data(), good.size(), image, error)) << error;
  EXPECT_EQ(0x400000u + 8192, image.brk_start);
  EXPECT_EQ(0x400000u + sizeof(Elf64_Ehdr), image.phdr_vaddr);

  struct Case {
    const char* expect;
    void (*spoil)(std::vector<unsigned char>&);
  } cases[] = {
      {"not an ELF file", [](auto& b) { b[1] = 'X'; }},
      {"64-bit", [](auto& b) { b[EI_CLASS] = ELFCLASS32; }},
      {"x86-64", [](auto& b) { reinterpret_cast<Elf64_Ehdr*>(b.data())->e_machine = EM_AARCH64; }},
      {"not an executable", [](auto& b) { reinterpret_cast<Elf64_Ehdr*>(b.data())->e_type = ET_REL; }},
      // The only header made PT_INTERP: its "name" is the ELF header, not a path.
      {"interpreter's name is not a terminated absolute path", [](auto& b) { Phdr(b)->p_type = PT_INTERP; }},
      {"beyond the end of the file", [](auto& b) { Phdr(b)->p_filesz = 1 << 20; Phdr(b)->p_memsz = 1 << 20; }},
      {"file size exceeds", [](auto& b) { Phdr(b)->p_filesz = 8192 + 4096; }},
      {"disagree modulo the page size", [](auto& b) { Phdr(b)->p_vaddr = 0x400010; }},
      {"beyond the user address range", [](auto& b) { Phdr(b)->p_vaddr = 0x7FFFFFFFF000; }},
      {"entry point", [](auto& b) { reinterpret_cast<Elf64_Ehdr*>(b.data())->e_entry = 0x900000; }},
  };
  for (const Case& c : cases) {
    std::vector<unsigned char> bytes = TinyElf();
    c.spoil(bytes);
    error.clear();
    EXPECT_FALSE(minivk::ParseElf(bytes.data(), bytes.size(), image, error)) << c.expect;
    EXPECT_NE(std::string::npos, error.find(c.expect)) << "got: " << error;
  }
  EXPECT_FALSE(minivk::ParseElf(good.data(), 10, image, error));
}

// TinyElf with a second header, PT_INTERP, naming `name` (`len` bytes at file offset 0x800).
std::vector<unsigned char> ElfWithInterpreter(const char* name, size_t len) {
  std::vector<unsigned char> bytes = TinyElf();
  reinterpret_cast<Elf64_Ehdr*>(bytes.data())->e_phnum = 2;
  memcpy(Phdr(bytes) + 1, Phdr(bytes), sizeof(Elf64_Phdr));  // TinyElf's PT_LOAD goes second
  *Phdr(bytes) = Elf64_Phdr{};
  Phdr(bytes)->p_type = PT_INTERP;
  Phdr(bytes)->p_offset = 0x800;
  Phdr(bytes)->p_filesz = len;
  memcpy(bytes.data() + 0x800, name, strlen(name) + 1);  // p_filesz decides what counts
  return bytes;
}

TEST(MinivkElf, ReadsTheInterpreterOfADynamicallyLinkedProgram) {
  minivk::ElfImage image;
  std::string error;
  std::vector<unsigned char> bytes = ElfWithInterpreter("/lib/ld.so\0", 11);
  ASSERT_TRUE(minivk::ParseElf(bytes.data(), bytes.size(), image, error)) << error;
  EXPECT_EQ("/lib/ld.so", image.interpreter);
  EXPECT_EQ(1u, image.segments.size());
  ASSERT_TRUE(minivk::ParseElf(TinyElf().data(), 4096, image, error)) << error;
  EXPECT_EQ("", image.interpreter);

  struct Case {
    const char* name;
    size_t len;
    const char* expect;
  } bad[] = {
      {"/lib/ld.so", 10, "not a terminated"},       // no NUL inside p_filesz
      {"lib/ld.so\0", 10, "not a terminated"},      // relative
      {"\0", 1, "not a terminated"},                // empty
      {"/lib/ld.so\0", 0x900, "beyond the end of the file"},
  };
  for (const Case& c : bad) {
    bytes = ElfWithInterpreter(c.name, c.len);
    if (c.len > 0x800) bytes.resize(0x800 + 16);
    error.clear();
    EXPECT_FALSE(minivk::ParseElf(bytes.data(), bytes.size(), image, error)) << c.expect;
    EXPECT_NE(std::string::npos, error.find(c.expect)) << "got: " << error;
  }
}

TEST(MinivkPmap, FramesAndTables) {
  minivk::PhysMem mem;
  std::string error;
  ASSERT_TRUE(mem.Init(64 * 4096, error)) << error;
  EXPECT_EQ(63u, mem.free_frames());  // frame 0 is never handed out
  minivk::PageTable pt(mem);
  ASSERT_TRUE(pt.Init());
  const uint64_t frame = mem.Alloc();
  ASSERT_NE(0u, frame);
  ASSERT_TRUE(pt.Map(0x400000, frame, PROT_READ | PROT_EXEC));
  const vpte_t e = pt.Lookup(0x400000);
  EXPECT_EQ(frame, e & VPTE_FRAME);
  EXPECT_TRUE(e & VPTE_V);
  EXPECT_FALSE(e & VPTE_RW);
  EXPECT_FALSE(e & VPTE_NX);
  // minivk keeps no accessed/dirty information: entries start accessed, writable ones dirty
  // too (so the runtime installs neighbours and writable translations without walks of its
  // own); a read-only copy-on-write entry keeps A only.
  EXPECT_TRUE(e & VPTE_A);
  EXPECT_FALSE(e & VPTE_M);
  EXPECT_EQ(0u, pt.Lookup(0x401000));
  ASSERT_TRUE(pt.Map(0x7FFFFFFFD000 & ~0xFFFULL, mem.Alloc(), PROT_READ | PROT_WRITE));
  const vpte_t rw = pt.Lookup(0x7FFFFFFFD000);
  EXPECT_EQ(VPTE_V | VPTE_RW | VPTE_A | VPTE_M, rw & (VPTE_V | VPTE_RW | VPTE_A | VPTE_M));
  EXPECT_EQ(VPTE_V | VPTE_A, minivk::PageTable::ReadOnly(rw) & (VPTE_V | VPTE_RW | VPTE_A | VPTE_M));
  EXPECT_EQ(rw & VPTE_FRAME, minivk::PageTable::ReadOnly(rw) & VPTE_FRAME);
  int leaves = 0;
  pt.ForEach([&](uint64_t, vpte_t) { ++leaves; });
  EXPECT_EQ(2, leaves);
  EXPECT_EQ(e, pt.Unmap(0x400000));
  EXPECT_EQ(0u, pt.Lookup(0x400000));
  // Copy-on-write bookkeeping: a second reference keeps a frame.
  mem.Ref(frame);
  mem.Unref(frame);
  EXPECT_EQ(1u, mem.refs(frame));
  const size_t before = mem.free_frames();
  mem.Unref(frame);
  EXPECT_EQ(before + 1, mem.free_frames());
  // Exhaustion: Alloc answers 0, Map false.
  while (mem.Alloc() != 0) {
  }
  EXPECT_FALSE(pt.Map(0x100000000000, 4096, PROT_READ));
}

// The tables minivk builds are what the runtime walks: a guest runs from a page mapped
// through them (the region starts at 0x10000 with object offset 0x10000, so the walk index
// is the virtual page number).
TEST(MinivkPmap, TheRuntimeWalksTheTablesItBuilds) {
  minivk::PhysMem mem;
  std::string error;
  ASSERT_TRUE(mem.Init(16 << 20, error)) << error;
  minivk::PageTable pt(mem);
  ASSERT_TRUE(pt.Init());
  const uint64_t code = mem.Alloc();
  const unsigned char insns[] = {0x48, 0xff, 0xc0, 0x0f, 0x05, 0x0f, 0x0b};  // inc rax; syscall
  memcpy(mem.At(code), insns, sizeof(insns));
  ASSERT_TRUE(pt.Map(0x400000, code, PROT_READ | PROT_EXEC));
  pt.Set(0x400000, pt.Lookup(0x400000) & ~VPTE_A);  // (minivk's start with A: see the walk set it)
  static char id;
  ASSERT_EQ(0, vmspace_create(&id, VKRT_TYPE_DEFAULT, nullptr)) << strerror(errno);
  ASSERT_TRUE(minivk::GovernWithTables(&id, mem, pt, error)) << error;
  struct trapframe tf = {};
  tf.tf_rip = 0x400000;
  tf.tf_rflags = 0x202;
  tf.tf_rax = 9;
  struct vextframe vf = {};
  ASSERT_EQ(0, vmspace_ctl(&id, VMSPACE_CTL_RUN, &tf, &vf)) << strerror(errno);
  EXPECT_EQ(T_FAST_SYSCALL, tf.tf_trapno);
  EXPECT_EQ(10, tf.tf_rax);
  EXPECT_EQ(0x400005, tf.tf_rip);
  EXPECT_TRUE(pt.Lookup(0x400000) & VPTE_A) << "the walker marked the page accessed";
  // An unmapped page faults to the vkernel with the exact address.
  tf.tf_rip = 0x500000;
  ASSERT_EQ(0, vmspace_ctl(&id, VMSPACE_CTL_RUN, &tf, &vf));
  EXPECT_EQ(T_PAGEFLT, tf.tf_trapno);
  EXPECT_EQ(0x500000, tf.tf_addr);
  EXPECT_EQ(0, vmspace_destroy(&id));
}

// busybox-static, loaded by minivk's loader into tables minivk built, runs from its entry
// point to its first system call: segments, stack, argv/envp/auxv are where it expects them.
TEST(MinivkLoader, BusyboxRunsToItsFirstSystemCall) {
  const std::vector<unsigned char> busybox = ReadFile("/bin/busybox");
  ASSERT_FALSE(busybox.empty()) << "/bin/busybox (Debian's busybox-static) is not readable";
  minivk::ElfImage image;
  std::string error;
  ASSERT_TRUE(minivk::ParseElf(busybox.data(), busybox.size(), image, error)) << error;
  minivk::PhysMem mem;
  ASSERT_TRUE(mem.Init(64 << 20, error)) << error;
  minivk::PageTable pt(mem);
  ASSERT_TRUE(pt.Init());
  const uint64_t bias = image.pie ? 0x555555554000 : 0;
  minivk::LoadedProgram loaded;
  ASSERT_TRUE(minivk::LoadProgram(mem, pt, busybox.data(), busybox.size(), image, bias,
                                  {"busybox", "true"}, {"PATH=/bin"}, 0x7FFFFF000000, 32,
                                  loaded, error))
      << error;
  minivk::LoadedProgram refused;
  EXPECT_FALSE(minivk::LoadProgram(mem, pt, busybox.data(), busybox.size(), image, bias, {"x"},
                                   {}, 0x7FFFFFFF0000, 32, refused, error))
      << "a stack above the user range (in the runtime's top 2 MiB)";
  uint64_t argc = 0;
  ASSERT_TRUE(minivk::ReadGuest(mem, pt, loaded.rsp, &argc, 8));
  EXPECT_EQ(2u, argc);
  EXPECT_EQ(0u, loaded.rsp % 16);

  static char id;
  ASSERT_EQ(0, vmspace_create(&id, VKRT_TYPE_DEFAULT, nullptr)) << strerror(errno);
  ASSERT_TRUE(minivk::GovernWithTables(&id, mem, pt, error)) << error;
  struct trapframe tf = {};
  tf.tf_rip = static_cast<int64_t>(loaded.entry);
  tf.tf_rsp = static_cast<int64_t>(loaded.rsp);
  tf.tf_rflags = 0x202;
  struct vextframe vf = {};
  ASSERT_EQ(0, vmspace_ctl(&id, VMSPACE_CTL_RUN, &tf, &vf)) << strerror(errno);
  EXPECT_EQ(T_FAST_SYSCALL, tf.tf_trapno)
      << "trapno " << tf.tf_trapno << " addr " << std::hex << tf.tf_addr << " rip " << tf.tf_rip;
  bool in_text = false;
  for (const auto& seg : image.segments) {
    in_text = in_text || ((seg.prot & PROT_EXEC) && uint64_t(tf.tf_rip) > bias + seg.vaddr &&
                          uint64_t(tf.tf_rip) <= bias + seg.vaddr + seg.memsz);
  }
  EXPECT_TRUE(in_text) << std::hex << tf.tf_rip;
  // glibc's static start-up begins with one of these.
  const int64_t early[] = {9, 12, 21, 63, 89, 158, 218, 257, 273, 302, 334};
  EXPECT_NE(std::end(early), std::find(std::begin(early), std::end(early), tf.tf_rax))
      << "first system call " << tf.tf_rax;
  printf("busybox's first system call: %ld\n", static_cast<long>(tf.tf_rax));
  EXPECT_EQ(0, vmspace_destroy(&id));
}

// With an interpreter, the program starts at the interpreter's entry; AT_BASE says where the
// interpreter is; AT_ENTRY and AT_PHDR still describe the program (Linux's execve).
TEST(MinivkLoader, ADynamicallyLinkedProgramStartsInItsInterpreter) {
  minivk::ElfImage program, interp;
  std::string error;
  std::vector<unsigned char> bytes = TinyElf();
  ASSERT_TRUE(minivk::ParseElf(bytes.data(), bytes.size(), program, error)) << error;
  interp = program;
  interp.pie = true;
  interp.entry = 0x1230;
  minivk::PhysMem mem;
  ASSERT_TRUE(mem.Init(4 << 20, error)) << error;
  minivk::PageTable pt(mem);
  ASSERT_TRUE(pt.Init());
  const uint64_t interp_bias = 0x7FFFF7000000;
  minivk::LoadedProgram loaded;
  ASSERT_TRUE(minivk::BuildStack(mem, pt, program, 0, minivk::Interpreter{&interp, interp_bias},
                                 {"prog"}, {"A=1"}, 0x7FFFFF000000, 4, loaded, error))
      << error;
  EXPECT_EQ(interp_bias + 0x1230, loaded.entry);
  // rsp: argc, argv[0], NULL, envp[0], NULL, then the auxiliary vector.
  std::map<uint64_t, uint64_t> aux;
  for (uint64_t at = loaded.rsp + 5 * 8;; at += 16) {
    uint64_t pair[2];
    ASSERT_TRUE(minivk::ReadGuest(mem, pt, at, pair, sizeof(pair)));
    if (pair[0] == AT_NULL) break;
    aux[pair[0]] = pair[1];
  }
  EXPECT_EQ(interp_bias, aux[AT_BASE]);
  EXPECT_EQ(program.entry, aux[AT_ENTRY]);
  EXPECT_EQ(program.phdr_vaddr, aux[AT_PHDR]);
  // Without one: AT_BASE 0 and the program's own entry.
  ASSERT_TRUE(minivk::BuildStack(mem, pt, program, 0, minivk::Interpreter{}, {"prog"}, {},
                                 0x7FFFFF000000, 4, loaded, error))
      << error;
  EXPECT_EQ(program.entry, loaded.entry);
}

// `busybox echo` as a minivk guest process: its output and exit status are the program's.
TEST(MinivkKernel, BusyboxEchoWritesAndExits) {
  minivk::PhysMem mem;
  std::string error;
  ASSERT_TRUE(mem.Init(256 << 20, error)) << error;
  int out[2];
  ASSERT_EQ(0, pipe(out));
  const int saved = dup(1);
  dup2(out[1], 1);
  int status = -1;
  {
    minivk::Kernel kernel(mem, minivk::Options{});
    if (kernel.Start("/bin/busybox", {"echo", "hello", "from", "minivk"}, {"PATH=/bin"},
                     error)) {
      status = kernel.Run(error);
    }
  }
  dup2(saved, 1);
  close(saved);
  close(out[1]);
  char buf[256] = {};
  const ssize_t n = read(out[0], buf, sizeof(buf) - 1);
  close(out[0]);
  ASSERT_EQ(0, status) << error;
  EXPECT_EQ("hello from minivk\n", std::string(buf, n > 0 ? static_cast<size_t>(n) : 0));
}

// The minivk binary: the guest's output and exit status, --help, and clear refusals.
std::string RunCommand(const std::string& command, int& status) {
  std::string out;
  FILE* f = popen((command + " 2>&1").c_str(), "r");
  if (f == nullptr) return "popen failed";
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const int raw = pclose(f);
  status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return out;
}

// Which host files get minivk's look before each read or write (so that its vkernel thread
// never waits in one): all but regular files, directories, block devices and the memory
// devices that never wait.
TEST(MinivkKernel, OnlyFilesThatCanWaitAreLookedAtBeforeIo) {
  auto of = [](mode_t type, unsigned maj = 0, unsigned min = 0) {
    struct stat st = {};
    st.st_mode = type | 0644;
    st.st_rdev = makedev(maj, min);
    return minivk::MayBlock(st);
  };
  EXPECT_FALSE(of(S_IFREG));
  EXPECT_FALSE(of(S_IFDIR));
  EXPECT_FALSE(of(S_IFBLK, 8, 0));
  for (unsigned never_waits : {3u, 5u, 7u, 8u, 9u}) {  // null zero full random urandom
    EXPECT_FALSE(of(S_IFCHR, 1, never_waits)) << never_waits;
  }
  EXPECT_TRUE(of(S_IFCHR, 1, 11));  // /dev/kmsg: a read waits for the next message
  EXPECT_TRUE(of(S_IFCHR, 5, 0));   // /dev/tty
  EXPECT_TRUE(of(S_IFCHR, 136, 0));  // a pseudo-terminal
  EXPECT_TRUE(of(S_IFIFO));
  EXPECT_TRUE(of(S_IFSOCK));
}

TEST(MinivkKernel, VkernelThreadsArePinnedOnlyWithCpusToSpare) {
  using minivk::VkernelCpus;
  using V = std::vector<int>;
  EXPECT_EQ(V({1}), VkernelCpus({0, 1}, 1, 1));
  EXPECT_EQ(V({0}), VkernelCpus({0, 1}, 0, 1));
  EXPECT_EQ(V(), VkernelCpus({0, 1}, 0, 2)) << "no CPU left for the guests";
  EXPECT_EQ(V(), VkernelCpus({3}, 3, 1));
  EXPECT_EQ(V(), VkernelCpus({0, 1, 2}, 0, 5));
  EXPECT_EQ(V({2, 3}), VkernelCpus({0, 1, 2, 3}, 2, 2));
  EXPECT_EQ(V({3, 0}), VkernelCpus({0, 1, 2, 3}, 3, 2)) << "wraps around";
  EXPECT_EQ(V({5, 7}), VkernelCpus({1, 5, 7}, 5, 2)) << "allowed CPUs need not be contiguous";
  EXPECT_EQ(V({1}), VkernelCpus({1, 5, 7}, 4, 1)) << "now not allowed: from the first";
  EXPECT_EQ(V(), VkernelCpus({}, 0, 1));
}

TEST(MinivkBinary, RunsAProgramOnEveryBackendAndExplainsItself) {
  int status = -1;
  for (const char* backend : {"ptrace", "seccomp", "kvm"}) {
    if (vkrt_backend_available(backend, nullptr) != 0) continue;
    const std::string out = RunCommand(std::string(MINIVK_BIN) + " --backend=" + backend +
                                           " /bin/busybox echo hello from " + backend,
                                       status);
    EXPECT_EQ(0, status) << backend << ": " << out;
    EXPECT_EQ(std::string("hello from ") + backend + "\n", out) << backend;
  }
  // Files pass through to the host: cat and wc of a file the test writes.
  char path[] = "/tmp/minivk-test-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_LE(0, fd);
  const std::string content = "one\ntwo\nthree\n";
  ASSERT_EQ(static_cast<ssize_t>(content.size()), write(fd, content.data(), content.size()));
  close(fd);
  std::string out = RunCommand(std::string(MINIVK_BIN) + " /bin/busybox cat " + path, status);
  EXPECT_EQ(0, status) << out;
  EXPECT_EQ(content, out);
  out = RunCommand(std::string(MINIVK_BIN) + " /bin/busybox wc -l " + path, status);
  EXPECT_EQ(0, status) << out;
  EXPECT_NE(std::string::npos, out.find("3 ")) << out;
  // A directory listing (getdents64, stat) and uname.
  char dir[] = "/tmp/minivk-dir-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(dir));
  for (const char* name : {"beta", "alpha", "gamma"}) {
    const int f = open((std::string(dir) + "/" + name).c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_LE(0, f);
    close(f);
  }
  out = RunCommand(std::string(MINIVK_BIN) + " /bin/busybox ls " + dir, status);
  EXPECT_EQ(0, status) << out;
  EXPECT_EQ("alpha\nbeta\ngamma\n", out);
  for (const char* name : {"beta", "alpha", "gamma"}) unlink((std::string(dir) + "/" + name).c_str());
  rmdir(dir);
  out = RunCommand(std::string(MINIVK_BIN) + " /bin/busybox uname -sn", status);
  EXPECT_EQ(0, status) << out;
  EXPECT_EQ("Linux minivk\n", out);
  out = RunCommand(std::string(MINIVK_BIN) + " /bin/busybox cat /nonexistent-file", status);
  EXPECT_EQ(1, status) << out;
  EXPECT_NE(std::string::npos, out.find("No such file or directory")) << out;
  unlink(path);
  out = RunCommand(std::string(MINIVK_BIN) + " --help", status);
  EXPECT_EQ(0, status);
  EXPECT_NE(std::string::npos, out.find("usage: minivk")) << out;
  EXPECT_NE(std::string::npos, out.find("--no-pin")) << out;
  out = RunCommand(std::string(MINIVK_BIN) + " /nonexistent/program", status);
  EXPECT_EQ(127, status);
  EXPECT_NE(std::string::npos, out.find("/nonexistent/program: No such file")) << out;
  out = RunCommand(std::string(MINIVK_BIN) + " --mem=lots /bin/busybox true", status);
  EXPECT_EQ(2, status);
  EXPECT_NE(std::string::npos, out.find("--mem=lots")) << out;
  out = RunCommand(std::string(MINIVK_BIN) + " --backend=nonsense /bin/busybox true", status);
  EXPECT_EQ(2, status);
  out = RunCommand(std::string(MINIVK_BIN), status);
  EXPECT_EQ(2, status);
  EXPECT_NE(std::string::npos, out.find("usage: minivk")) << out;
}

}  // namespace
