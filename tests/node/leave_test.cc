// Leaving in order with nodes in one process, over every transport: Finalize with interleaved
// homes loses nothing while one node still reads; a node that leaves alone with Shutdown is
// recorded as left, and what needed it afterwards fails at once, saying so.
#include <unistd.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node_test_util.h"

namespace dsm::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kNodes = 3;
constexpr int kPagesPerNode = 6;

class Leave : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<LocalCluster>> c =
        LocalCluster::Start(GetParam(), kNodes, [this](Options& o) {
          o.on_pages_lost = [this](const std::string&, uint64_t, uint64_t n) { lost_ += n; };
        });
    if (!c.ok() && c.status().code() == absl::StatusCode::kPermissionDenied && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
  }

  std::atomic<uint64_t> lost_{0};
  std::unique_ptr<LocalCluster> cluster_;
};

uint8_t* At(Region& r, int page) { return static_cast<uint8_t*>(r.data()) + page * kPage; }

// Nodes 1 and 2 finish first; node 0 then reads every node's pages (homed everywhere) and
// finishes last. Every Finalize succeeds and no page is lost.
TEST_P(Leave, FinalizeWithInterleavedHomesServesTheLastReader) {
  RegionOptions ro;
  ro.name = "leave-interleaved";
  ro.size = kNodes * kPagesPerNode * kPage;
  ro.home_policy = HomePolicy::kInterleaved;
  absl::StatusOr<std::vector<std::unique_ptr<Region>>> regions = cluster_->MapAll(ro);
  ASSERT_TRUE(regions.ok()) << regions.status();
  for (int n = 0; n < kNodes; ++n) {
    FillPattern(At(*(*regions)[n], n * kPagesPerNode), kPagesPerNode * kPage, 10 + n,
                n * kPagesPerNode * kPage);
  }
  std::vector<absl::Status> finished(kNodes);
  std::vector<std::string> mismatch;
  bool sigbus = false;
  RunParallel({
      [&] {
        for (int n = 1; n < kNodes; ++n) {
          sigbus |= RaisesSigbus([&] {
            std::optional<std::string> bad =
                CheckPattern(At(*(*regions)[0], n * kPagesPerNode), kPagesPerNode * kPage,
                             10 + n, n * kPagesPerNode * kPage);
            if (bad) mismatch.push_back(*bad);
          });
        }
        finished[0] = cluster_->node(0)->Finalize(absl::Seconds(30));
      },
      [&] { finished[1] = cluster_->node(1)->Finalize(absl::Seconds(30)); },
      [&] { finished[2] = cluster_->node(2)->Finalize(absl::Seconds(30)); },
  });
  EXPECT_FALSE(sigbus);
  EXPECT_THAT(mismatch, ::testing::IsEmpty());
  for (int n = 0; n < kNodes; ++n) EXPECT_TRUE(finished[n].ok()) << n << ": " << finished[n];
  EXPECT_EQ(lost_.load(), 0u);
  // Shut down by Finalize: a second one is refused, Shutdown returns the first's result.
  EXPECT_TRUE(absl::IsFailedPrecondition(cluster_->node(1)->Finalize(absl::Seconds(1))));
  EXPECT_TRUE(cluster_->node(1)->Shutdown().ok());
}

// Node 2, the home, leaves alone. Copies others hold stay readable (the home reclaimed the
// Modified one before it left); a page nobody held is unavailable (SIGBUS, reported lost); a
// Sync, which needs the home, fails at once naming the reason.
TEST_P(Leave, ShutdownAloneLeavesThePeersAWorkingClusterWithoutTheLeaversPages) {
  RegionOptions ro;
  ro.name = "leave-alone";
  ro.size = 8 * kPage;
  ro.home = 2;
  absl::StatusOr<std::vector<std::unique_ptr<Region>>> regions = cluster_->MapAll(ro);
  ASSERT_TRUE(regions.ok()) << regions.status();
  FillPattern(At(*(*regions)[1], 0), kPage, 7, 0);  // node 1 holds page 0 Modified
  ASSERT_TRUE((*regions)[2]->Unmap().ok());          // the home reclaims it, then persists
  (*regions)[2].reset();
  ASSERT_TRUE(cluster_->StopNode(2).ok());
  // The goodbye reaches nodes 0 and 1 through the engine thread; a Sync shows when it has.
  absl::Status sync;
  for (int i = 0; i < 200; ++i) {
    sync = (*regions)[0]->Sync();
    if (absl::StrContains(sync.message(), "has left the cluster")) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(absl::IsUnavailable(sync)) << sync;
  EXPECT_THAT(std::string(sync.message()), HasSubstr("has left the cluster"));
  std::optional<std::string> bad;
  EXPECT_FALSE(RaisesSigbus([&] { bad = CheckPattern(At(*(*regions)[1], 0), kPage, 7, 0); }));
  EXPECT_FALSE(bad.has_value()) << *bad;
  EXPECT_EQ(lost_.load(), 0u);
  EXPECT_TRUE(RaisesSigbus([&] { (void)*static_cast<volatile uint8_t*>(At(*(*regions)[0], 5)); }));
  EXPECT_EQ(lost_.load(), 1u);
  absl::StatusOr<Stats> stats = cluster_->node(0)->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->peers_down, 0u) << "a node that left is not counted as failed";
}

INSTANTIATE_TEST_SUITE_P(AllTransports, Leave,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         [](const ::testing::TestParamInfo<TransportKind>& i) {
                           return i.param == TransportKind::kLoopback ? "Loopback" : "Tcp";
                         });

}  // namespace
}  // namespace dsm::testing
