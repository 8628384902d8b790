#include "lock/interval_index.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <tuple>
#include <vector>

namespace dsm::lock {
namespace {

using Interval = std::tuple<uint64_t, uint64_t, uint64_t>;  // start, end, id

std::set<Interval> Overlaps(const IntervalIndex& idx, uint64_t a, uint64_t b) {
  std::set<Interval> out;
  idx.ForEachOverlap(a, b, [&](uint64_t s, uint64_t e, uint64_t id) {
    EXPECT_TRUE(out.emplace(s, e, id).second) << "visited twice";
    return true;
  });
  return out;
}

TEST(IntervalIndex, MatchesBruteForceUnderRandomInsertErase) {
  std::mt19937_64 rng(7);
  IntervalIndex idx;
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> model;  // (start, id) -> end
  uint64_t next_id = 1;
  for (int step = 0; step < 20000; ++step) {
    const int op = rng() % 3;
    if (op == 0 || model.empty()) {
      const uint64_t s = rng() % 1000, e = s + 1 + rng() % 100;
      idx.Insert(s, e, next_id);
      model[{s, next_id}] = e;
      ++next_id;
    } else if (op == 1) {
      auto it = model.begin();
      std::advance(it, rng() % model.size());
      ASSERT_TRUE(idx.Erase(it->first.first, it->first.second));
      model.erase(it);
    } else {
      const uint64_t a = rng() % 1100, b = a + 1 + rng() % 50;
      std::set<Interval> want;
      for (const auto& [k, e] : model) {
        if (k.first < b && a < e) want.emplace(k.first, e, k.second);
      }
      ASSERT_EQ(Overlaps(idx, a, b), want) << "query [" << a << "," << b << ")";
    }
    ASSERT_EQ(idx.size(), model.size());
  }
  EXPECT_FALSE(idx.Erase(5, 999999));
}

TEST(IntervalIndex, StopsEarlyWhenAsked) {
  IntervalIndex idx;
  for (uint64_t i = 0; i < 10; ++i) idx.Insert(0, 100, i + 1);
  int calls = 0;
  EXPECT_FALSE(idx.ForEachOverlap(50, 51, [&](uint64_t, uint64_t, uint64_t) {
    ++calls;
    return false;
  }));
  EXPECT_EQ(calls, 1);
}

TEST(RangeSet, MatchesBitmapModel) {
  std::mt19937_64 rng(11);
  RangeSet set;
  std::vector<bool> bits(300, false);
  for (int step = 0; step < 5000; ++step) {
    const uint64_t a = rng() % 280, b = a + 1 + rng() % 20;
    switch (rng() % 3) {
      case 0:
        set.Add(a, b);
        for (uint64_t i = a; i < b; ++i) bits[i] = true;
        break;
      case 1:
        set.Subtract(a, b);
        for (uint64_t i = a; i < b; ++i) bits[i] = false;
        break;
      default: {
        bool want = false;
        for (uint64_t i = a; i < b; ++i) want = want || bits[i];
        ASSERT_EQ(set.Overlaps(a, b), want);
      }
    }
    // Disjoint, non-adjacent, and exactly the bitmap.
    std::vector<bool> got(300, false);
    uint64_t prev_end = 0;
    bool first = true;
    for (const auto& [s, e] : set.ranges()) {
      ASSERT_LT(s, e);
      if (!first) {
        ASSERT_GT(s, prev_end);
      }
      first = false;
      prev_end = e;
      for (uint64_t i = s; i < e; ++i) got[i] = true;
    }
    ASSERT_EQ(got, bits);
  }
}

}  // namespace
}  // namespace dsm::lock
