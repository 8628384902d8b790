// Region hints (Advise, Prefetch), per-region statistics, the cluster-wide gather and the log
// options, on three nodes in one process (loopback and TCP). Every wait is bounded and ends in
// a failure naming what did not happen; no timing assertions.
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "dsm/node.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "node/node_test_util.h"

namespace dsm::testing {
namespace {

constexpr int kNodes = 3;
constexpr uint64_t kPages = 256;

class HintsStatsTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(absl::StrCat(info->test_suite_name(), ".", info->name()),
                                           std::chrono::seconds(240));
  }
  void Start(const std::function<void(Options&)>& tweak = nullptr) {
    absl::StatusOr<std::unique_ptr<LocalCluster>> c =
        LocalCluster::Start(GetParam(), kNodes, tweak);
    if (!c.ok() && c.status().code() == absl::StatusCode::kPermissionDenied && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
  }
  // Region `name` of kPages pages homed at node 0, mapped everywhere; node 0 fills it.
  std::vector<std::unique_ptr<Region>> Map(const std::string& name) {
    RegionOptions ro;
    ro.name = name;
    ro.size = kPages * kPage;
    ro.home = 0;
    absl::StatusOr<std::vector<std::unique_ptr<Region>>> r = cluster_->MapAll(ro);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    FillPattern((*r)[0]->data(), ro.size, 7, 0);
    return std::move(*r);
  }
  void TearDown() override {
    cluster_.reset();
    watchdog_.reset();
  }
  static Stats RegionStatsOf(Region& r) {
    absl::StatusOr<Stats> s = r.GetStats();
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : Stats();
  }
  // Reads one byte of every page of [first, end).
  static uint64_t Touch(Region& r, uint64_t first, uint64_t end) {
    uint64_t sum = 0;
    for (uint64_t p = first; p < end; ++p) {
      sum += static_cast<volatile uint8_t*>(r.data())[p * kPage];
    }
    return sum;
  }

  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<LocalCluster> cluster_;
};

TEST_P(HintsStatsTest, RegionStatsCountOnlyThatRegionAndSumToTheNodes) {
  ASSERT_NO_FATAL_FAILURE(Start([](Options& o) { o.readahead_max_pages = 0; }));
  auto a = Map("stats-a");
  auto b = Map("stats-b");
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  const absl::StatusOr<Stats> before = cluster_->node(1)->GetStats();
  ASSERT_TRUE(before.ok()) << before.status();
  const Stats home_before = RegionStatsOf(*a[0]);  // the home's own first writes count too
  Touch(*a[1], 0, 10);
  Touch(*b[1], 0, 3);
  const Stats sa = RegionStatsOf(*a[1]);
  const Stats sb = RegionStatsOf(*b[1]);
  EXPECT_EQ(sa.read_faults, 10u);
  EXPECT_EQ(sa.pages_installed, 10u);
  EXPECT_EQ(sa.pages_shared, 10u);
  EXPECT_EQ(sb.read_faults, 3u);
  EXPECT_EQ(sb.pages_installed, 3u);
  // The node's counters are the regions' plus its own (messages, locks): the fault counters
  // of its two regions are all of its faults.
  const absl::StatusOr<Stats> node = cluster_->node(1)->GetStats();
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ(node->read_faults, sa.read_faults + sb.read_faults);
  EXPECT_EQ((*node - *before).read_faults, 13u);
  EXPECT_EQ(sa.messages_sent, 0u);  // per node, not per region
  // The home served them: its share of region a counts the requests. It had written every
  // page (Map fills them), so each read took its own copy in place: write-protected.
  const Stats home_read = RegionStatsOf(*a[0]) - home_before;
  EXPECT_EQ(home_read.home_requests_served, 10u);
  EXPECT_EQ(home_read.home_local_downgrades, 10u);
  EXPECT_EQ(home_read.home_local_invalidations, 0u);
  // A write elsewhere to pages only the home holds takes the home's copy away in place.
  for (uint64_t p = 20; p < 25; ++p) static_cast<volatile uint8_t*>(a[2]->data())[p * kPage] = 1;
  const Stats home_write = RegionStatsOf(*a[0]) - home_before;
  EXPECT_EQ(home_write.home_local_invalidations, 5u);
  EXPECT_EQ(home_write.home_local_downgrades, 10u);
  ASSERT_TRUE(a[1]->Unmap().ok());
  EXPECT_EQ(a[1]->GetStats().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(HintsStatsTest, GatherStatsReturnsEveryNodeAndTheSumAndNamesTheMissing) {
  ASSERT_NO_FATAL_FAILURE(Start([](Options& o) { o.readahead_max_pages = 0; }));
  auto r = Map("gather");
  ASSERT_EQ(r.size(), 3u);
  const Stats home_before = RegionStatsOf(*r[0]);
  Touch(*r[1], 0, 5);
  Touch(*r[2], 0, 7);
  absl::StatusOr<ClusterStats> cs = cluster_->node(0)->GatherStats(absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(cs.ok()) << cs.status();
  EXPECT_TRUE(cs->missing.empty());
  ASSERT_EQ(cs->nodes.size(), 3u);
  EXPECT_EQ(cs->nodes[0].read_faults, 0u);
  EXPECT_EQ(cs->nodes[1].read_faults, 5u);
  EXPECT_EQ(cs->nodes[2].read_faults, 7u);
  EXPECT_EQ(cs->nodes[0].home_requests_served, home_before.home_requests_served + 12);
  EXPECT_EQ(cs->total.read_faults, 12u);
  EXPECT_GT(cs->nodes[1].messages_sent, 0u);  // every field travels, not just the faults
  EXPECT_EQ(cs->total.messages_sent,
            cs->nodes[0].messages_sent + cs->nodes[1].messages_sent + cs->nodes[2].messages_sent);

  // Node 2 leaves: the gather still answers, listing it.
  r[2].reset();
  r[1]->Unmap().IgnoreError();
  ASSERT_TRUE(cluster_->StopNode(2).ok());
  cs = cluster_->node(1)->GatherStats(absl::Now() + absl::Seconds(3));
  ASSERT_TRUE(cs.ok()) << cs.status();
  EXPECT_EQ(cs->missing, std::vector<NodeId>{2});
  EXPECT_EQ(cs->nodes[2].messages_sent, 0u);
  EXPECT_EQ(cs->total.home_requests_served, cs->nodes[0].home_requests_served);
}

TEST_P(HintsStatsTest, RandomAdviceStopsReadaheadAndNormalRestoresIt) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto r = Map("advice-random");
  ASSERT_EQ(r.size(), 3u);
  Region& region = *r[1];
  ASSERT_TRUE(region.Advise(0, 64 * kPage, Advice::kRandom).ok());
  Touch(region, 0, 64);
  Stats s = RegionStatsOf(region);
  EXPECT_EQ(s.prefetches, 0u);
  EXPECT_EQ(s.read_faults, 64u);
  ASSERT_TRUE(region.Advise(64 * kPage, 64 * kPage, Advice::kRandom).ok());
  ASSERT_TRUE(region.Advise(64 * kPage, 64 * kPage, Advice::kNormal).ok());
  Touch(region, 64, 128);
  s = RegionStatsOf(region);
  EXPECT_GT(s.prefetches, 0u);
  EXPECT_LT(s.read_faults, 128u);
  EXPECT_FALSE(CheckPattern(region.data(), 128 * kPage, 7, 0).has_value());
  // Ranges are checked.
  EXPECT_EQ(region.Advise(kPages * kPage, 1, Advice::kRandom).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(region.Prefetch(0, kPages * kPage + 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(region.Advise(kPages * kPage, 0, Advice::kRandom).ok());
}

TEST_P(HintsStatsTest, PrefetchedPagesAreReadWithoutFaults) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto r = Map("advice-willneed");
  ASSERT_EQ(r.size(), 3u);
  Region& region = *r[2];
  ASSERT_TRUE(region.Advise(10 * kPage, 100 * kPage, Advice::kWillNeed).ok());
  // Asynchronous: wait (bounded) until every page is mapped here.
  Stats s;
  for (int i = 0; i < 2000; ++i) {
    s = RegionStatsOf(region);
    if (s.pages_shared == 100) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(s.pages_shared, 100u) << "the prefetched pages did not all arrive";
  EXPECT_EQ(s.prefetches, 100u);
  EXPECT_EQ(s.prefetch_runs, 2u);  // pages 10..63 and 64..109: runs stop at 64-page boundaries
  const uint64_t faults = s.read_faults;
  EXPECT_FALSE(CheckPattern(static_cast<uint8_t*>(region.data()) + 10 * kPage, 100 * kPage, 7,
                            10 * kPage)
                   .has_value());
  EXPECT_EQ(RegionStatsOf(region).read_faults, faults);
  // Prefetch of what is mapped already, or homed here, sends nothing.
  ASSERT_TRUE(region.Prefetch(10 * kPage, 100 * kPage).ok());
  ASSERT_TRUE(r[0]->Prefetch(0, kPages * kPage).ok());
  EXPECT_EQ(RegionStatsOf(region).prefetches, 100u);
  EXPECT_EQ(RegionStatsOf(*r[0]).prefetches, 0u);
}

TEST_P(HintsStatsTest, DontNeedDropsCleanCopiesAndWritesDirtyOnesBack) {
  ASSERT_NO_FATAL_FAILURE(Start([](Options& o) { o.readahead_max_pages = 0; }));
  auto r = Map("advice-dontneed");
  ASSERT_EQ(r.size(), 3u);
  Region& region = *r[1];
  Touch(region, 0, 8);                                        // 8 clean copies
  FillPattern(static_cast<uint8_t*>(region.data()) + 8 * kPage, 4 * kPage, 9, 0);  // 4 dirty
  Stats s = RegionStatsOf(region);
  EXPECT_EQ(s.pages_shared, 8u);
  EXPECT_EQ(s.pages_modified, 4u);
  ASSERT_TRUE(region.Advise(0, 12 * kPage, Advice::kDontNeed).ok());
  s = RegionStatsOf(region);
  EXPECT_EQ(s.pages_shared, 0u);
  EXPECT_EQ(s.pages_modified, 0u);
  EXPECT_EQ(s.writebacks_sent, 4u);
  // The home has the written data.
  EXPECT_FALSE(CheckPattern(static_cast<uint8_t*>(r[0]->data()) + 8 * kPage, 4 * kPage, 9, 0)
                   .has_value());
  // Node 1 reads them again: fetched anew, and correct.
  EXPECT_FALSE(CheckPattern(static_cast<uint8_t*>(region.data()) + 8 * kPage, 4 * kPage, 9, 0)
                   .has_value());
  EXPECT_EQ(RegionStatsOf(region).read_faults, 8u + 4u);
}

TEST_P(HintsStatsTest, LogSinkReceivesTheLinesAtTheChosenLevel) {
  struct Captured {
    absl::Mutex mu;
    std::vector<std::pair<LogLevel, std::string>> lines ABSL_GUARDED_BY(mu);
  };
  auto captured = std::make_shared<Captured>();
  ASSERT_NO_FATAL_FAILURE(Start([captured](Options& o) {
    o.log_level = LogLevel::kInfo;
    o.log_sink = [captured](LogLevel level, const std::string& line) {
      absl::MutexLock l(&captured->mu);
      captured->lines.emplace_back(level, line);
    };
  }));
  auto r = Map("log-sink");  // the nodes come up meanwhile: INFO "node N is up"
  cluster_.reset();          // every sink removed; nothing is called after this
  absl::MutexLock l(&captured->mu);
  bool up = false;
  for (const auto& [level, line] : captured->lines) {
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
    if (level == LogLevel::kInfo && line.find(" is up") != std::string::npos) up = true;
  }
  EXPECT_TRUE(up) << captured->lines.size() << " lines, none an INFO 'is up'";
}

INSTANTIATE_TEST_SUITE_P(Transports, HintsStatsTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         [](const ::testing::TestParamInfo<TransportKind>& i) {
                           return i.param == TransportKind::kTcp ? "Tcp" : "Loopback";
                         });

}  // namespace
}  // namespace dsm::testing
