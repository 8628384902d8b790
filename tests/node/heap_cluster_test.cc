// dsm::Heap on three nodes in one process (loopback and TCP): collective allocations agree
// without messages, dynamic allocations from every node at once never overlap, any node frees
// any block, and a full heap is an error that says so.
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "dsm/heap.h"
#include "dsm/node.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "node/node_test_util.h"

namespace dsm::testing {
namespace {

constexpr int kNodes = 3;

class HeapClusterTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(
        absl::StrCat(info->test_suite_name(), ".", info->name()), std::chrono::seconds(240));
    absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(GetParam(), kNodes);
    if (!c.ok() && c.status().code() == absl::StatusCode::kPermissionDenied && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
    RegionOptions ro;
    ro.name = "heap";
    ro.size = 256 * kPage;
    absl::StatusOr<std::vector<std::unique_ptr<Region>>> r = cluster_->MapAll(ro);
    ASSERT_TRUE(r.ok()) << r.status();
    regions_ = std::move(*r);
    HeapOptions ho;
    ho.collective_bytes = 64 * kPage;
    for (int i = 0; i < kNodes; ++i) {
      absl::StatusOr<Heap> h = Heap::Attach(regions_[static_cast<size_t>(i)].get(), ho);
      ASSERT_TRUE(h.ok()) << h.status();
      heaps_.push_back(std::make_unique<Heap>(std::move(*h)));
    }
  }

  void TearDown() override {
    heaps_.clear();
    for (int i = static_cast<int>(regions_.size()) - 1; i >= 0; --i) {
      absl::Status s = regions_[static_cast<size_t>(i)]->Unmap();
      EXPECT_TRUE(s.ok()) << "Unmap at node " << i << ": " << s;
    }
    regions_.clear();
    cluster_.reset();
    watchdog_.reset();
  }

  Heap& heap(int i) { return *heaps_[static_cast<size_t>(i)]; }

  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<LocalCluster> cluster_;
  std::vector<std::unique_ptr<Region>> regions_;
  std::vector<std::unique_ptr<Heap>> heaps_;
};

TEST_P(HeapClusterTest, CollectiveAllocationsGetTheSameOffsetsOnEveryNode) {
  std::vector<std::vector<uint64_t>> offsets(kNodes);
  for (int i = 0; i < kNodes; ++i) {
    absl::StatusOr<absl::Span<double>> a = heap(i).CollectiveArray<double>(1000);
    absl::StatusOr<void*> b = heap(i).AllocateCollective(10, 64, HeapPlacement::kOwnPages);
    absl::StatusOr<absl::Span<uint32_t>> c = heap(i).CollectiveArray<uint32_t>(3);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    offsets[static_cast<size_t>(i)] = {heap(i).OffsetOf(a->data()), heap(i).OffsetOf(*b),
                                       heap(i).OffsetOf(c->data())};
  }
  EXPECT_EQ(offsets[1], offsets[0]);
  EXPECT_EQ(offsets[2], offsets[0]);
  EXPECT_EQ(offsets[0][1] % kPage, 0u);                   // own pages start on a boundary
  EXPECT_GE(offsets[0][2], offsets[0][1] + kPage);        // and nothing else shares them
  EXPECT_GE(offsets[0][0], kPage);                        // page 0 is the heap's header
  // Written on one node, read through the same offset on another.
  auto* x = static_cast<uint32_t*>(heap(2).At(offsets[0][2]));
  x[0] = 0xfeedu;
  EXPECT_EQ(static_cast<uint32_t*>(heap(0).At(offsets[0][2]))[0], 0xfeedu);
  // The collective part runs out with an error naming the option.
  absl::StatusOr<void*> big = heap(0).AllocateCollective(64 * kPage);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(big.status().message()), ::testing::HasSubstr("collective_bytes"));
}

// Every node allocates from two threads at once and fills each block with its own byte; no
// block may overlap another (each still holds its byte at the end), and blocks freed by
// another node than their allocator leave the heap empty.
TEST_P(HeapClusterTest, ConcurrentAllocationsFromEveryNodeNeverOverlap) {
  struct Block {
    uint64_t offset;
    uint64_t size;
    uint8_t fill;
  };
  absl::Mutex mu;
  std::vector<Block> blocks;
  std::atomic<int> errors{0};
  constexpr int kThreads = 2, kPerThread = 30;
  std::vector<std::function<void()>> fns;
  for (int n = 0; n < kNodes; ++n) {
    for (int t = 0; t < kThreads; ++t) {
      fns.push_back([&, n, t] {
        for (int k = 0; k < kPerThread; ++k) {
          const uint64_t size = 24 + static_cast<uint64_t>((n * 7 + t * 13 + k * 29) % 300);
          const HeapPlacement where = k % 5 == 0 ? HeapPlacement::kOwnPages
                                                 : HeapPlacement::kPacked;
          absl::StatusOr<void*> p = heap(n).Allocate(size, 16, where);
          if (!p.ok()) {
            ADD_FAILURE() << "node " << n << ": " << p.status();
            ++errors;
            return;
          }
          const uint8_t fill = static_cast<uint8_t>(1 + n * kThreads + t);
          std::memset(*p, fill, size);
          absl::MutexLock l(&mu);
          blocks.push_back({heap(n).OffsetOf(*p), size, fill});
        }
      });
    }
  }
  RunParallel(fns);
  ASSERT_EQ(errors.load(), 0);
  ASSERT_EQ(blocks.size(), size_t{kNodes * kThreads * kPerThread});
  for (const Block& b : blocks) {
    // Checked on a node other than the writer: the bytes come through the protocol.
    const uint8_t* p = static_cast<const uint8_t*>(heap(0).At(b.offset));
    for (uint64_t i = 0; i < b.size; ++i) {
      ASSERT_EQ(p[i], b.fill) << "block at " << b.offset << " byte " << i << " overwritten";
    }
  }
  absl::StatusOr<HeapStats> s = heap(1).GetStats();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->allocations, blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    Heap& h = heap(static_cast<int>(i % kNodes));
    ASSERT_TRUE(h.Free(h.At(blocks[i].offset)).ok());
  }
  s = heap(2).GetStats();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->allocations, 0u);
  EXPECT_EQ(s->allocated_bytes, 0u);
  EXPECT_EQ(s->free_bytes, s->shared_capacity);
}

TEST_P(HeapClusterTest, FullHeapAndBadFreesAreErrorsSeenByEveryNode) {
  absl::StatusOr<void*> all = heap(0).Allocate(150 * kPage);
  ASSERT_TRUE(all.ok()) << all.status();
  absl::StatusOr<void*> more = heap(1).Allocate(50 * kPage);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(heap(2).Free(heap(2).At(heap(0).OffsetOf(*all))).ok());
  absl::Status twice = heap(1).Free(heap(1).At(heap(0).OffsetOf(*all)));
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument) << twice;
  int local = 0;
  EXPECT_EQ(heap(0).Free(&local).code(), absl::StatusCode::kInvalidArgument);
  more = heap(1).Allocate(50 * kPage);
  EXPECT_TRUE(more.ok()) << more.status();
}

TEST_P(HeapClusterTest, AttachingWithOtherOptionsIsRefused) {
  HeapOptions other;
  other.collective_bytes = 32 * kPage;
  absl::StatusOr<Heap> h = Heap::Attach(regions_[1].get(), other);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kFailedPrecondition) << h.status();
  EXPECT_THAT(std::string(h.status().message()), ::testing::HasSubstr("same HeapOptions"));
  HeapOptions bad;
  bad.offset = 100;
  EXPECT_EQ(Heap::Attach(regions_[0].get(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Transports, HeapClusterTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         [](const ::testing::TestParamInfo<TransportKind>& p) {
                           return p.param == TransportKind::kTcp ? "Tcp" : "Loopback";
                         });

}  // namespace
}  // namespace dsm::testing
