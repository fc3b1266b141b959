#include "arch/x86_64/xstate.h"

#include <string.h>

#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

namespace vkrt::x86_64 {
namespace {

constexpr size_t kBvOffset = 512;

// A standard-format area as XSAVE leaves it for a thread that used x87, SSE and AVX: every
// register written, the in-use bits as given.
std::vector<unsigned char> Area(uint64_t bv) {
  std::vector<unsigned char> a(GuestXstateSize() + 64, 0);
  const uint16_t fcw = 0x037F;
  memcpy(a.data(), &fcw, 2);
  const uint32_t mxcsr = 0x1F80;
  memcpy(a.data() + 24, &mxcsr, 4);
  for (size_t i = 32; i < 416; ++i) a[i] = static_cast<unsigned char>(i * 7);  // ST0-7, XMM
  memcpy(a.data() + kBvOffset, &bv, 8);
  for (size_t i = 576; i < a.size(); ++i) a[i] = static_cast<unsigned char>(i * 13);
  return a;
}

void SetBv(std::vector<unsigned char>& a, uint64_t bv) { memcpy(a.data() + kBvOffset, &bv, 8); }

TEST(Xstate, EqualAreasAreTheSame) {
  const auto a = Area(0x7);
  const auto b = Area(0x7);
  EXPECT_TRUE(SameGuestXstate(a.data(), b.data()));
}

// XSAVE writes the legacy area's registers whether or not x87 and SSE are "in use", and may
// report either bit as 0 or 1 for a component in its initial configuration (this host's
// signal frames say x87 is in use where the vkernel's XSAVE said not): the registers decide.
TEST(Xstate, X87AndSseInUseBitsDoNotDecide) {
  const auto a = Area(0x2);
  for (uint64_t bv : {0x0ULL, 0x1ULL, 0x3ULL}) {
    auto b = Area(0x2);
    SetBv(b, bv);
    EXPECT_TRUE(SameGuestXstate(a.data(), b.data())) << "XSTATE_BV " << bv;
  }
}

TEST(Xstate, LegacyRegistersDecide) {
  const auto a = Area(0x3);
  for (size_t offset : {size_t{0}, size_t{24}, size_t{32}, size_t{159}, size_t{160}, size_t{415}}) {
    auto b = Area(0x3);
    b[offset] ^= 1;
    EXPECT_FALSE(SameGuestXstate(a.data(), b.data())) << "byte " << offset;
  }
}

// Beyond the legacy area a component whose bit is clear is in its initial state whatever its
// bytes say: the bits must agree, and only in-use components are compared.
TEST(Xstate, OtherComponentsGoByTheirInUseBits) {
  XstateComponent components[4];
  const int n = GuestXstateComponents(components, 4);
  if (n == 0) GTEST_SKIP() << "the OS enabled no AVX or AVX-512 state on this machine";
  const XstateComponent& c = components[0];
  const uint64_t bit = uint64_t{1} << c.index;
  const auto a = Area(0x3 | bit);
  auto b = Area(0x3);
  EXPECT_FALSE(SameGuestXstate(a.data(), b.data())) << "in use on one side only";
  b = Area(0x3 | bit);
  b[c.offset + c.size - 1] ^= 1;
  EXPECT_FALSE(SameGuestXstate(a.data(), b.data())) << "an in-use component differs";
  auto idle_a = Area(0x3);
  auto idle_b = Area(0x3);
  idle_b[c.offset] ^= 1;
  EXPECT_TRUE(SameGuestXstate(idle_a.data(), idle_b.data())) << "bytes of an idle component";
}

TEST(Xstate, XrstorRefusalNamesWhatXrstorWouldFaultOn) {
  constexpr uint64_t kXcr0 = 0x7;  // x87, SSE, AVX
  constexpr uint32_t kMask = 0xFFFF;  // with DAZ
  auto good = Area(0x7);
  EXPECT_EQ(nullptr, XrstorRefusal(good.data(), kXcr0, kMask));
  auto compacted = Area(0x3);
  const uint64_t xcomp = (uint64_t{1} << 63) | 0x3;
  memcpy(compacted.data() + kBvOffset + 8, &xcomp, 8);
  EXPECT_NE(nullptr, XrstorRefusal(compacted.data(), kXcr0, kMask));
  EXPECT_NE(nullptr, XrstorRefusal(Area(0x7 | (1u << 5)).data(), kXcr0, kMask))
      << "opmask not enabled";
  auto reserved = Area(0x3);
  reserved[kBvOffset + 63] = 1;
  EXPECT_NE(nullptr, XrstorRefusal(reserved.data(), kXcr0, kMask));
  auto mxcsr = Area(0x3);
  const uint32_t bad = 0x1F80u | (1u << 16);
  memcpy(mxcsr.data() + 24, &bad, 4);
  EXPECT_NE(nullptr, XrstorRefusal(mxcsr.data(), kXcr0, kMask));
  auto daz = Area(0x3);
  const uint32_t with_daz = 0x1F80u | 0x40u;
  memcpy(daz.data() + 24, &with_daz, 4);
  EXPECT_EQ(nullptr, XrstorRefusal(daz.data(), kXcr0, kMask));
  EXPECT_NE(nullptr, XrstorRefusal(daz.data(), kXcr0, 0xFFBF)) << "DAZ on a CPU without it";
}

TEST(Xstate, MxcsrMaskHasTheFlagsAndControls) {
  // Bits 0-15 but DAZ (bit 6) are architectural on every SSE2 CPU. (AMD adds bit 17, MM:
  // this machine's mask may be 0x2FFFF, which a fixed 0xFFFF rule refused.)
  EXPECT_EQ(0xFFBFu, MxcsrMask() & 0xFFBFu);
  auto top = Area(0x3);
  const uint32_t bit31 = 0x1F80u | (1u << 31);
  memcpy(top.data() + 24, &bit31, 4);
  EXPECT_NE(nullptr, XrstorRefusal(top.data(), 0x3, MxcsrMask())) << "no CPU has MXCSR bit 31";
}

TEST(Xstate, AnMxcsrLinuxWouldDropIsKeptBySseMarkedInUse) {
  auto a = Area(0x1);  // SSE and AVX in their initial state
  EXPECT_FALSE(LinuxWouldDropMxcsr(a.data())) << "MXCSR 0x1F80: nothing to drop";
  const uint32_t round_up = 0x5F80;
  memcpy(a.data() + 24, &round_up, 4);
  EXPECT_TRUE(LinuxWouldDropMxcsr(a.data()));
  EXPECT_FALSE(LinuxWouldDropMxcsr(Area(0x3).data())) << "SSE in use";
  auto avx = Area(0x5);
  memcpy(avx.data() + 24, &round_up, 4);
  EXPECT_FALSE(LinuxWouldDropMxcsr(avx.data())) << "AVX in use: Linux copies MXCSR";
  const auto before = a;
  MarkSseInUse(a.data());
  EXPECT_FALSE(LinuxWouldDropMxcsr(a.data()));
  uint64_t bv;
  memcpy(&bv, a.data() + kBvOffset, 8);
  EXPECT_EQ(0x3u, bv);
  for (size_t i = 160; i < 416; ++i) ASSERT_EQ(0, a[i]) << "XMM byte " << i;
  EXPECT_EQ(0, memcmp(before.data(), a.data(), 160)) << "x87 and MXCSR unchanged";
  EXPECT_EQ(0, memcmp(before.data() + 576, a.data() + 576, a.size() - 576));
}

TEST(Xstate, EnabledFeaturesIncludeX87AndSse) {
  EXPECT_EQ(0x3u, EnabledFeatures() & 0x3);  // XCR0 bit 0 is always 1; SSE for x86-64 Linux
}

}  // namespace
}  // namespace vkrt::x86_64
