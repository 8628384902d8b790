#include "launch/hostlist.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsm::launch {
namespace {

using ::testing::ElementsAre;

TEST(HostList, PlainNamesAndRangesWithPadding) {
  auto h = ExpandHostList("login,n[08-10],gpu5");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(*h, ElementsAre("login", "n08", "n09", "n10", "gpu5"));
}

TEST(HostList, ListInsideBracketsAndSuffix) {
  auto h = ExpandHostList("rack[1,3-4]-ib");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(*h, ElementsAre("rack1-ib", "rack3-ib", "rack4-ib"));
}

TEST(HostList, TwoBracketGroupsMultiplyOut) {
  auto h = ExpandHostList("r[1-2]n[1-2]");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(*h, ElementsAre("r1n1", "r1n2", "r2n1", "r2n2"));
}

TEST(HostList, MalformedListsAreRejectedWithTheText) {
  for (const char* bad : {"n[1-3", "n1-3]", "n[3-1]", "n[a-b]", "a,,b", "n[]", "n[1-]"}) {
    auto h = ExpandHostList(bad);
    ASSERT_FALSE(h.ok()) << bad;
    EXPECT_THAT(std::string(h.status().message()), ::testing::HasSubstr(bad));
  }
}

TEST(HostList, HugeRangeIsRefusedNotExpanded) {
  EXPECT_FALSE(ExpandHostList("n[0-99999999]").ok());
}

TEST(TasksPerNode, RepeatsExpand) {
  auto t = ExpandTasksPerNode("2(x3),1");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(*t, ElementsAre(2u, 2u, 2u, 1u));
}

TEST(TasksPerNode, MalformedCountsAreRejected) {
  for (const char* bad : {"", "2(3)", "2(x)", "x", "2(x0)", "-1", "2(x3"}) {
    EXPECT_FALSE(ExpandTasksPerNode(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace dsm::launch
