// dsm::Stats as data: every field is printed, summed and subtracted through the one list.
#include "dsm/stats.h"

#include <set>
#include <string>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace dsm {
namespace {

// A Stats whose every counter and gauge is `base + its position`, flags set.
Stats Numbered(uint64_t base) {
  Stats s;
  uint64_t i = 0;
  Stats::ForEachField([&](const char*, Stats::Kind, auto field) {
    if constexpr (std::is_same_v<decltype(field), bool Stats::*>) {
      s.*field = true;
    } else {
      s.*field = base + i;
    }
    ++i;
  });
  return s;
}

TEST(Stats, ToStringPrintsEveryFieldOnceInDeclarationOrder) {
  const Stats s = Numbered(100);
  const std::string text = s.ToString();
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  std::set<std::string> names;
  size_t i = 0;
  Stats::ForEachField([&](const char* name, Stats::Kind kind, auto) {
    ASSERT_LT(i, lines.size());
    std::vector<std::string> parts = absl::StrSplit(lines[i], ' ', absl::SkipEmpty());
    ASSERT_EQ(parts.size(), 2u) << lines[i];
    EXPECT_EQ(parts[0], name);
    EXPECT_EQ(parts[1], kind == Stats::Kind::kFlag ? "1" : std::to_string(100 + i)) << name;
    names.insert(name);
    ++i;
  });
  EXPECT_EQ(i, lines.size());
  EXPECT_EQ(names.size(), lines.size());  // no name twice
  EXPECT_NE(text.find("read_faults "), std::string::npos);
  EXPECT_NE(text.find("memory_locked_bytes "), std::string::npos);
}

TEST(Stats, SumAddsEveryFieldAndSubtractionKeepsGaugesAndFlags) {
  const Stats a = Numbered(1000);
  const Stats b = Numbered(10);
  const Stats sum = a + b;
  uint64_t i = 0;
  Stats::ForEachField([&](const char* name, Stats::Kind, auto field) {
    if constexpr (std::is_same_v<decltype(field), bool Stats::*>) {
      EXPECT_TRUE(sum.*field) << name;
    } else {
      EXPECT_EQ(sum.*field, 1010 + 2 * i) << name;
    }
    ++i;
  });
  const Stats delta = a - b;
  Stats::ForEachField([&](const char* name, Stats::Kind kind, auto field) {
    if constexpr (!std::is_same_v<decltype(field), bool Stats::*>) {
      EXPECT_EQ(delta.*field, kind == Stats::Kind::kCounter ? 990u : a.*field) << name;
    }
  });
  // A counter that went down (a restarted node) gives 0, not a wrapped value.
  EXPECT_EQ((b - a).read_faults, 0u);
  Stats none;
  EXPECT_FALSE((none + none).memory_locked);
}

}  // namespace
}  // namespace dsm
