#include "heap/arena.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsm::heap {
namespace {

using ::testing::HasSubstr;

// Zeroed, page-aligned memory standing in for a fresh region.
struct Memory {
  explicit Memory(uint64_t bytes) : size(bytes) {
    base = static_cast<uint8_t*>(std::aligned_alloc(kArenaPage, bytes));
    std::memset(base, 0, bytes);
  }
  ~Memory() { std::free(base); }
  uint8_t* base;
  uint64_t size;
};

TEST(Arena, FreshMemoryGetsAHeaderAndAllocationsAreAligned) {
  Memory m(16 * kArenaPage);
  Arena a(m.base, 0, m.size);
  ASSERT_TRUE(a.Open().ok());
  for (uint64_t align : {1, 16, 64, 256, 4096}) {
    absl::StatusOr<uint64_t> off = a.Allocate(100, align);
    ASSERT_TRUE(off.ok()) << off.status();
    EXPECT_EQ(*off % std::max<uint64_t>(align, 16), 0u) << align;
    EXPECT_GE(*off, kArenaPage);  // the header page is never handed out
  }
  EXPECT_TRUE(a.Validate().ok()) << a.Validate();
  EXPECT_EQ(a.Stats().allocations, 5u);
}

TEST(Arena, ASecondArenaOnTheSameMemoryContinuesWhereTheFirstStopped) {
  Memory m(8 * kArenaPage);
  Arena first(m.base, 0, m.size);
  ASSERT_TRUE(first.Open().ok());
  absl::StatusOr<uint64_t> x = first.Allocate(64, 16);
  ASSERT_TRUE(x.ok());
  Arena second(m.base, 0, m.size);  // another node, after taking the lock
  ASSERT_TRUE(second.Open().ok());
  absl::StatusOr<uint64_t> y = second.Allocate(64, 16);
  ASSERT_TRUE(y.ok());
  EXPECT_NE(*x, *y);
  EXPECT_TRUE(second.Free(*x).ok());
  EXPECT_EQ(second.Stats().allocations, 1u);
}

TEST(Arena, OtherGeometryOrForeignDataIsRefused) {
  Memory m(8 * kArenaPage);
  ASSERT_TRUE(Arena(m.base, 0, m.size).Open().ok());
  absl::Status s = Arena(m.base, 0, 6 * kArenaPage).Open();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("same HeapOptions"));
  std::memset(m.base, 0x5a, 64);
  EXPECT_EQ(Arena(m.base, 0, m.size).Open().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Arena(m.base, 100, m.size).Open().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Arena, FreedBlocksMergeAndReturnToTheTop) {
  Memory m(8 * kArenaPage);
  Arena a(m.base, 0, m.size);
  ASSERT_TRUE(a.Open().ok());
  const uint64_t before = a.Stats().top_bytes;
  std::vector<uint64_t> offs;
  for (int i = 0; i < 4; ++i) offs.push_back(*a.Allocate(200, 16));
  ASSERT_TRUE(a.Free(offs[1]).ok());
  ASSERT_TRUE(a.Free(offs[2]).ok());  // merges with the freed neighbour
  EXPECT_TRUE(a.Validate().ok()) << a.Validate();
  EXPECT_GT(a.Stats().free_list_bytes, 400u);
  // A block as large as both fits into the merged hole, not at the top.
  const uint64_t top_before = a.Stats().top_bytes;
  absl::StatusOr<uint64_t> big = a.Allocate(400, 16);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(*big, offs[1]);
  EXPECT_EQ(a.Stats().top_bytes, top_before);
  for (uint64_t o : {offs[0], *big, offs[3]}) ASSERT_TRUE(a.Free(o).ok());
  EXPECT_TRUE(a.Validate().ok()) << a.Validate();
  EXPECT_EQ(a.Stats().top_bytes, before);  // everything went back to the bump area
  EXPECT_EQ(a.Stats().free_list_bytes, 0u);
  EXPECT_EQ(a.Stats().allocated_bytes, 0u);
}

TEST(Arena, BadFreesAreRefusedAndChangeNothing) {
  Memory m(8 * kArenaPage);
  Arena a(m.base, 0, m.size);
  ASSERT_TRUE(a.Open().ok());
  uint64_t x = *a.Allocate(64, 16);
  uint64_t y = *a.Allocate(64, 16);
  ASSERT_TRUE(a.Free(x).ok());
  absl::Status twice = a.Free(x);
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(twice.message()), HasSubstr("freed twice"));
  EXPECT_EQ(a.Free(y + 16).code(), absl::StatusCode::kInvalidArgument);  // inside a block
  EXPECT_EQ(a.Free(8).code(), absl::StatusCode::kInvalidArgument);       // the header page
  EXPECT_EQ(a.Free(m.size - 16).code(), absl::StatusCode::kInvalidArgument);  // above top
  EXPECT_TRUE(a.Validate().ok()) << a.Validate();
  EXPECT_EQ(a.Stats().allocations, 1u);
}

TEST(Arena, FullHeapSaysHowMuchIsLeft) {
  Memory m(4 * kArenaPage);
  Arena a(m.base, 0, m.size);
  ASSERT_TRUE(a.Open().ok());
  ASSERT_TRUE(a.Allocate(2 * kArenaPage, 16).ok());
  absl::StatusOr<uint64_t> more = a.Allocate(2 * kArenaPage, 16);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(more.status().message()), HasSubstr("bytes left at the top"));
  EXPECT_EQ(a.Allocate(0, 16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.Allocate(16, 24).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.Allocate(16, 8192).status().code(), absl::StatusCode::kInvalidArgument);
}

// Random allocations and frees against a model: every live block keeps its own bytes (no two
// overlap), the invariants hold after every step, and everything freed returns the arena to
// empty.
TEST(Arena, RandomWorkloadNeverOverlapsAndKeepsTheInvariants) {
  Memory m(64 * kArenaPage);
  Arena a(m.base, 0, m.size);
  ASSERT_TRUE(a.Open().ok());
  std::mt19937_64 rng(12345);
  struct Live {
    uint64_t size;
    uint8_t fill;
  };
  std::map<uint64_t, Live> live;
  int exhausted = 0;
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 100 < 55) {
      const uint64_t size = 1 + rng() % (rng() % 10 == 0 ? 3000 : 200);
      const uint64_t align = uint64_t{1} << (rng() % 13);
      absl::StatusOr<uint64_t> off = a.Allocate(size, align);
      if (!off.ok()) {
        ASSERT_EQ(off.status().code(), absl::StatusCode::kResourceExhausted) << off.status();
        ++exhausted;
        continue;
      }
      ASSERT_EQ(*off % std::max<uint64_t>(align, 16), 0u);
      ASSERT_LE(*off + size, m.size);
      const uint8_t fill = static_cast<uint8_t>(rng());
      std::memset(m.base + *off, fill, size);
      ASSERT_TRUE(live.emplace(*off, Live{size, fill}).second) << "offset handed out twice";
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      for (uint64_t i = 0; i < it->second.size; ++i) {
        ASSERT_EQ(m.base[it->first + i], it->second.fill) << "block at " << it->first
                                                          << " overwritten at byte " << i;
      }
      ASSERT_TRUE(a.Free(it->first).ok());
      live.erase(it);
    }
    if (step % 97 == 0) {
      ASSERT_TRUE(a.Validate().ok()) << "step " << step << ": " << a.Validate();
    }
  }
  EXPECT_GT(exhausted, 0) << "the workload should have filled the arena at times";
  for (const auto& [off, l] : live) ASSERT_TRUE(a.Free(off).ok());
  ASSERT_TRUE(a.Validate().ok()) << a.Validate();
  EXPECT_EQ(a.Stats().allocations, 0u);
  EXPECT_EQ(a.Stats().top_bytes, a.Stats().capacity);
}

}  // namespace
}  // namespace dsm::heap
