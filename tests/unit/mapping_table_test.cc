#include "mapping_table.h"

#include <gtest/gtest.h>

namespace vkrt {
namespace {

TEST(MappingTable, FullyMappedAcrossAdjacentMappings) {
  MappingTable t;
  t.Insert(0x1000, 0x2000, 3, 0);
  t.Insert(0x3000, 0x1000, 1, 0);
  EXPECT_TRUE(t.FullyMapped(0x1000, 0x3000));
  EXPECT_TRUE(t.FullyMapped(0x2000, 0x1000));
  EXPECT_FALSE(t.FullyMapped(0x0, 0x2000));
  EXPECT_FALSE(t.FullyMapped(0x1000, 0x4000));
}

TEST(MappingTable, InsertReplacesOverlapAndSplits) {
  MappingTable t;
  t.Insert(0x10000, 0x10000, 1, 0);
  t.Insert(0x14000, 0x2000, 3, 0);
  auto pieces = t.Pieces(0x10000, 0x10000);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].start, 0x10000u);
  EXPECT_EQ(pieces[0].end, 0x14000u);
  EXPECT_EQ(pieces[1].prot, 3);
  EXPECT_EQ(pieces[2].start, 0x16000u);
  EXPECT_EQ(pieces[2].end, 0x20000u);
}

TEST(MappingTable, RemoveMakesHolesAndPiecesSkipThem) {
  MappingTable t;
  t.Insert(0x10000, 0x4000, 1, 0);
  t.Remove(0x11000, 0x1000);
  EXPECT_FALSE(t.FullyMapped(0x10000, 0x4000));
  auto pieces = t.Pieces(0x0, 0x100000);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0].end, 0x11000u);
  EXPECT_EQ(pieces[1].start, 0x12000u);
  t.Remove(0x0, 0x100000);
  EXPECT_EQ(t.size(), 0u);
}

}  // namespace
}  // namespace vkrt
