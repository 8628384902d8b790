// Region identity and failing fast, across nodes in one process (loopback and TCP):
//  - two nodes that map one name with a different size, home, home_policy or backing never
//    both succeed: the later map fails with InvalidArgument naming the field and both values;
//  - a call whose answer must come from a node known down fails at once with Unavailable
//    naming that node, never by running into its (deliberately long) timeout.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "dsm/node.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "node/node_test_util.h"

namespace dsm::testing {
namespace {

using ::testing::HasSubstr;

// Far above anything a passing test waits: a call that waits for a timeout instead of
// failing at once ends in DeadlineExceeded, which the tests reject.
const absl::Duration kLongTimeout = absl::Seconds(30);
constexpr std::chrono::seconds kWatchdog{240};

std::string TempFile() {
  std::string path = absl::StrCat(::testing::TempDir(), "dsm-identity-XXXXXX");
  int fd = mkstemp(path.data());
  if (fd >= 0) close(fd);
  return path;
}

std::string Name(const ::testing::TestParamInfo<TransportKind>& info) {
  return info.param == TransportKind::kTcp ? "Tcp" : "Loopback";
}

class RegionIdentityTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override { Start(kLongTimeout); }

  void Start(absl::Duration connect_timeout) {
    cluster_.reset();
    absl::StatusOr<std::unique_ptr<LocalCluster>> c =
        LocalCluster::Start(GetParam(), 3, [connect_timeout](Options& o) {
          o.connect_timeout = connect_timeout;
          o.peer_timeout = kLongTimeout;
          o.wait_for_cluster = true;  // every connection up: silence is the only cause
        });
    if (!c.ok() && absl::IsPermissionDenied(c.status()) && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
  }

  // Node 0 maps `reference`; node 1 then maps `other`, which differs in one field: the map
  // fails naming `field`, this node's value (`mine`) and node 0's (`theirs`). Node 1 then
  // maps `reference` successfully and sees node 0's writes (nothing of the refused map stays).
  void ExpectRefused(const RegionOptions& reference, const RegionOptions& other,
                     const std::string& field, const std::string& mine,
                     const std::string& theirs) {
    SCOPED_TRACE(field);
    absl::StatusOr<std::unique_ptr<Region>> r0 = cluster_->node(0)->MapRegion(reference);
    ASSERT_TRUE(r0.ok()) << r0.status();
    absl::StatusOr<std::unique_ptr<Region>> r1 = cluster_->node(1)->MapRegion(other);
    ASSERT_FALSE(r1.ok()) << "node 1 mapped '" << other.name << "' with another " << field;
    EXPECT_TRUE(absl::IsInvalidArgument(r1.status())) << r1.status();
    const std::string want = absl::StrCat("region '", reference.name, "': ", field,
                                          " differs: this node ", mine, ", node 0 ", theirs);
    EXPECT_THAT(std::string(r1.status().message()), HasSubstr(want));

    absl::StatusOr<std::unique_ptr<Region>> again = cluster_->node(1)->MapRegion(reference);
    ASSERT_TRUE(again.ok()) << again.status();
    static_cast<volatile uint64_t*>((*r0)->data())[0] = 0x1d;
    EXPECT_EQ(static_cast<volatile uint64_t*>((*again)->data())[0], 0x1du);
    EXPECT_TRUE((*again)->Unmap().ok());
    EXPECT_TRUE((*r0)->Unmap().ok());
  }

  std::unique_ptr<LocalCluster> cluster_;
};

TEST_P(RegionIdentityTest, ADifferentSizeIsRefusedNamingBothSizes) {
  Watchdog w("ADifferentSizeIsRefusedNamingBothSizes", kWatchdog);
  RegionOptions ref{.name = "sized", .size = 4 * kPage, .home = 0};
  RegionOptions other = ref;
  other.size = 5 * kPage;
  ExpectRefused(ref, other, "size", absl::StrCat(5 * kPage, " bytes"),
                absl::StrCat(4 * kPage, " bytes"));
}

TEST_P(RegionIdentityTest, ADifferentHomeIsRefusedEvenWhenEachNodeThinksItIsTheHome) {
  Watchdog w("ADifferentHomeIsRefusedEvenWhenEachNodeThinksItIsTheHome", kWatchdog);
  // Node 1 thinks it is the home itself: it contacts no home, yet node 0 (a witness of its
  // map) holds the region with another home.
  RegionOptions ref{.name = "homed", .size = 4 * kPage, .home = 0};
  RegionOptions other = ref;
  other.home = 1;
  ExpectRefused(ref, other, "home", "node 1", "node 0");
  // Node 1 names a third node as the home: refused the same way.
  RegionOptions third = ref;
  third.name = "homed-third";
  RegionOptions third_other = third;
  third_other.home = 2;
  ExpectRefused(third, third_other, "home", "node 2", "node 0");
}

TEST_P(RegionIdentityTest, ADifferentHomePolicyIsRefused) {
  Watchdog w("ADifferentHomePolicyIsRefused", kWatchdog);
  RegionOptions ref{.name = "policy", .size = 6 * kPage, .home = 0};
  RegionOptions other = ref;
  other.home_policy = HomePolicy::kInterleaved;
  ExpectRefused(ref, other, "home_policy", "kInterleaved", "kFixed");

  // And the other way round: a two-page interleaved region has its homes at nodes 0 and 1,
  // which map it together; node 2 then asks for it with a fixed home.
  RegionOptions inter{.name = "policy-2", .size = 2 * kPage, .home = 0,
                      .home_policy = HomePolicy::kInterleaved};
  absl::StatusOr<std::unique_ptr<Region>> r[2] = {absl::UnknownError("not run"),
                                                  absl::UnknownError("not run")};
  RunParallel({[&] { r[0] = cluster_->node(0)->MapRegion(inter); },
               [&] { r[1] = cluster_->node(1)->MapRegion(inter); }});
  ASSERT_TRUE(r[0].ok()) << r[0].status();
  ASSERT_TRUE(r[1].ok()) << r[1].status();
  RegionOptions fixed = inter;
  fixed.home_policy = HomePolicy::kFixed;
  absl::StatusOr<std::unique_ptr<Region>> r2 = cluster_->node(2)->MapRegion(fixed);
  ASSERT_FALSE(r2.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(r2.status())) << r2.status();
  EXPECT_THAT(std::string(r2.status().message()),
              HasSubstr("region 'policy-2': home_policy differs: this node kFixed, node "));
  EXPECT_THAT(std::string(r2.status().message()), HasSubstr(" kInterleaved"));
  for (auto& one : r) EXPECT_TRUE((*one)->Unmap().ok());
}

TEST_P(RegionIdentityTest, ADifferentBackingIsRefused) {
  Watchdog w("ADifferentBackingIsRefused", kWatchdog);
  const std::string path = TempFile();
  RegionOptions ref{.name = "backed", .size = 4 * kPage, .home = 0, .file_path = path};
  RegionOptions other = ref;
  other.file_path.clear();
  ExpectRefused(ref, other, "backing", "anonymous", "file");
  // A file-backed opener against an anonymous home.
  RegionOptions anon{.name = "backed-2", .size = 4 * kPage, .home = 0};
  RegionOptions filed = anon;
  filed.file_path = path;
  ExpectRefused(anon, filed, "backing", "file", "anonymous");
  std::remove(path.c_str());
}

// The home refuses too: when the home maps last, its own map fails against a node that
// mapped first with another identity (the first map stands).
TEST_P(RegionIdentityTest, TheHomeMappingLastIsRefusedByAWitness) {
  Watchdog w("TheHomeMappingLastIsRefusedByAWitness", kWatchdog);
  RegionOptions at_one{.name = "late-home", .size = 4 * kPage, .home = 1};
  absl::StatusOr<std::unique_ptr<Region>> r1 = cluster_->node(1)->MapRegion(at_one);
  ASSERT_TRUE(r1.ok()) << r1.status();
  RegionOptions at_zero = at_one;
  at_zero.home = 0;
  absl::StatusOr<std::unique_ptr<Region>> r0 = cluster_->node(0)->MapRegion(at_zero);
  ASSERT_FALSE(r0.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(r0.status())) << r0.status();
  EXPECT_THAT(std::string(r0.status().message()),
              HasSubstr("region 'late-home': home differs: this node node 0, node 1 node 1"));
  EXPECT_TRUE((*r1)->Unmap().ok());
}

// Two nodes that each believe they are the home map at the same time: never both succeed.
TEST_P(RegionIdentityTest, ConcurrentMapsThatDisagreeNeverBothSucceed) {
  Watchdog w("ConcurrentMapsThatDisagreeNeverBothSucceed", kWatchdog);
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE(round);
    const std::string name = absl::StrCat("race-", round);
    absl::StatusOr<std::unique_ptr<Region>> r[2] = {absl::UnknownError("not run"),
                                                    absl::UnknownError("not run")};
    RunParallel({[&] { r[0] = cluster_->node(0)->MapRegion({.name = name, .size = kPage, .home = 0}); },
                 [&] { r[1] = cluster_->node(1)->MapRegion({.name = name, .size = kPage, .home = 1}); }});
    ASSERT_FALSE(r[0].ok() && r[1].ok()) << "both nodes mapped '" << name << "' as its home";
    for (auto& one : r) {
      if (!one.ok()) {
        EXPECT_TRUE(absl::IsInvalidArgument(one.status())) << one.status();
        EXPECT_THAT(std::string(one.status().message()), HasSubstr("home differs"));
      } else {
        EXPECT_TRUE((*one)->Unmap().ok());
      }
    }
  }
}

// The same options on every node always map, file-backed (every node states it) or
// interleaved, all nodes mapping at once.
TEST_P(RegionIdentityTest, TheSameOptionsMapEverywhere) {
  Watchdog w("TheSameOptionsMapEverywhere", kWatchdog);
  const std::string path = TempFile();
  for (const RegionOptions& ro :
       {RegionOptions{.name = "same-fixed", .size = 3 * kPage, .home = 2, .file_path = path},
        RegionOptions{.name = "same-inter", .size = 7 * kPage, .home = 1,
                      .home_policy = HomePolicy::kInterleaved}}) {
    SCOPED_TRACE(ro.name);
    absl::StatusOr<std::vector<std::unique_ptr<Region>>> all = cluster_->MapAll(ro);
    ASSERT_TRUE(all.ok()) << all.status();
    static_cast<volatile uint64_t*>((*all)[0]->data())[kPage / 8] = 42;
    EXPECT_EQ(static_cast<volatile uint64_t*>((*all)[1]->data())[kPage / 8], 42u);
    EXPECT_EQ(static_cast<volatile uint64_t*>((*all)[2]->data())[kPage / 8], 42u);
    for (auto& r : *all) EXPECT_TRUE(r->Unmap().ok());
  }
  std::remove(path.c_str());
}

// A witness that stays silent (its engine busy) does not fail the map: once the homes have
// confirmed, the map stands at its deadline. A silent home would fail it (DeadlineExceeded).
TEST_P(RegionIdentityTest, ASilentWitnessDoesNotFailTheMap) {
  Watchdog w("ASilentWitnessDoesNotFailTheMap", kWatchdog);
  Start(absl::Seconds(3));
  if (!cluster_) return;
  std::atomic<bool> stalled{false};
  std::atomic<bool> release{false};
  // Node 2's engine thread runs this callback and so answers nothing until it returns.
  cluster_->node(2)->BarrierAsync("stall", {2}, absl::InfiniteFuture(), [&](absl::Status) {
    stalled = true;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!release && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  while (!stalled) std::this_thread::yield();
  w.Step("node 0 maps while node 2 is silent");
  RegionOptions ro{.name = "quiet", .size = kPage, .home = 0};
  absl::StatusOr<std::unique_ptr<Region>> r0 = cluster_->node(0)->MapRegion(ro);
  EXPECT_TRUE(r0.ok()) << r0.status();
  w.Step("a region homed at the silent node cannot be mapped");
  RegionOptions at_two{.name = "quiet-2", .size = kPage, .home = 2};
  absl::StatusOr<std::unique_ptr<Region>> r1 = cluster_->node(1)->MapRegion(at_two);
  EXPECT_TRUE(absl::IsDeadlineExceeded(r1.status())) << r1.status();
  EXPECT_THAT(std::string(r1.status().message()), HasSubstr("node 2"));
  release = true;
  w.Step("node 2 maps the region once it runs again");
  absl::StatusOr<std::unique_ptr<Region>> r2 = cluster_->node(2)->MapRegion(ro);
  ASSERT_TRUE(r2.ok()) << r2.status();
  if (r0.ok()) {
    static_cast<volatile uint64_t*>((*r0)->data())[0] = 5;
    EXPECT_EQ(static_cast<volatile uint64_t*>((*r2)->data())[0], 5u);
    EXPECT_TRUE((*r0)->Unmap().ok());
  }
  EXPECT_TRUE((*r2)->Unmap().ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, RegionIdentityTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp), Name);

// ---- failing fast ----------------------------------------------------------------------------

class FailFastTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<LocalCluster>> c =
        LocalCluster::Start(GetParam(), 3, [this](Options& o) {
          o.connect_timeout = kLongTimeout;
          o.peer_timeout = kLongTimeout;
          const NodeId id = o.node_id;
          o.on_pages_lost = [this, id](const std::string& region, uint64_t first, uint64_t n) {
            std::lock_guard<std::mutex> l(mu_);
            lost_.push_back({id, region, first, n});
          };
        });
    if (!c.ok() && absl::IsPermissionDenied(c.status()) && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
  }

  // Node 2 leaves (its regions first, as the API requires); returns once nodes 0 and 1 know
  // it is gone: a map that needs node 2 then failed with Unavailable on each (the first such
  // call may still have been sent before the news, and ended when it came).
  void StopNodeTwo(std::vector<std::unique_ptr<Region>*> its_regions) {
    for (auto* r : its_regions) {
      (void)(*r)->Unmap();
      r->reset();
    }
    ASSERT_TRUE(cluster_->StopNode(2).ok());
    for (int n : {0, 1}) {
      absl::StatusOr<std::unique_ptr<Region>> probe = cluster_->node(n)->MapRegion(
          {.name = absl::StrCat("probe-", n), .size = kPage, .home = 2});
      ASSERT_FALSE(probe.ok());
      ExpectUnavailableNamingNodeTwo(probe.status(), "the first MapRegion homed at node 2");
    }
  }

  static void ExpectUnavailableNamingNodeTwo(const absl::Status& s, const std::string& call) {
    EXPECT_TRUE(absl::IsUnavailable(s)) << call << ": " << s;
    EXPECT_FALSE(absl::IsDeadlineExceeded(s)) << call << " waited for a timeout: " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("node 2")) << call;
  }

  struct Lost {
    NodeId node;
    std::string region;
    uint64_t first, count;
  };
  std::mutex mu_;
  std::vector<Lost> lost_;
  std::unique_ptr<LocalCluster> cluster_;
};

TEST_P(FailFastTest, CallsThatNeedADownHomeFailAtOnceNamingIt) {
  Watchdog w("CallsThatNeedADownHomeFailAtOnceNamingIt", kWatchdog);
  auto map_all = [&](const RegionOptions& ro) {
    absl::StatusOr<std::vector<std::unique_ptr<Region>>> r = cluster_->MapAll(ro);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : std::vector<std::unique_ptr<Region>>{};
  };
  constexpr int kPages = 16;
  w.Step("map a region homed at node 2 and an interleaved one");
  std::vector<std::unique_ptr<Region>> fixed =
      map_all({.name = "at-two", .size = kPages * kPage, .home = 2});
  std::vector<std::unique_ptr<Region>> inter = map_all(
      {.name = "spread", .size = kPages * kPage, .home_policy = HomePolicy::kInterleaved});
  ASSERT_EQ(fixed.size(), 3u);
  ASSERT_EQ(inter.size(), 3u);
  volatile uint8_t* page0 = static_cast<uint8_t*>(fixed[0]->data());
  page0[0] = 1;  // node 0 holds page 0 Modified
  static_cast<volatile uint8_t*>(inter[0]->data())[0] = 2;

  w.Step("node 2 leaves");
  StopNodeTwo({&fixed[2], &inter[2]});

  w.Step("Sync needs node 2");
  ExpectUnavailableNamingNodeTwo(fixed[0]->Sync(), "Sync of a region homed at node 2");
  ExpectUnavailableNamingNodeTwo(inter[1]->Sync(), "Sync of an interleaved region");

  w.Step("MapRegion of a region homed at node 2");
  absl::StatusOr<std::unique_ptr<Region>> late =
      cluster_->node(1)->MapRegion({.name = "late", .size = kPage, .home = 2});
  ASSERT_FALSE(late.ok());
  ExpectUnavailableNamingNodeTwo(late.status(), "MapRegion homed at node 2");
  absl::StatusOr<std::unique_ptr<Region>> late_inter = cluster_->node(0)->MapRegion(
      {.name = "late-spread", .size = 4 * kPage, .home_policy = HomePolicy::kInterleaved});
  ASSERT_FALSE(late_inter.ok());
  ExpectUnavailableNamingNodeTwo(late_inter.status(), "MapRegion interleaved over node 2");

  w.Step("MapRegion that does not need node 2 still works (node 2 is no witness)");
  absl::StatusOr<std::vector<std::unique_ptr<Region>>> alive =
      cluster_->MapAll({.name = "alive", .size = 2 * kPage, .home = 0});
  ASSERT_TRUE(alive.ok()) << alive.status();
  static_cast<volatile uint64_t*>((*alive)[1]->data())[0] = 9;
  EXPECT_EQ(static_cast<volatile uint64_t*>((*alive)[0]->data())[0], 9u);

  w.Step("a fault on a page homed at node 2 raises SIGBUS at once and is reported lost");
  volatile uint8_t* never = static_cast<uint8_t*>(fixed[1]->data()) + 5 * kPage;
  EXPECT_TRUE(RaisesSigbus([&] { (void)*never; }));
  {
    std::lock_guard<std::mutex> l(mu_);
    bool seen = false;
    for (const Lost& x : lost_) {
      seen |= x.node == 1 && x.region == "at-two" && x.first <= 5 && 5 < x.first + x.count;
    }
    EXPECT_TRUE(seen) << "on_pages_lost did not report page 5 of at-two at node 1";
  }

  w.Step("Unmap needs node 2 to persist: Unavailable naming it, and the region is gone");
  ExpectUnavailableNamingNodeTwo(fixed[0]->Unmap(), "Unmap of a region homed at node 2");
  ExpectUnavailableNamingNodeTwo(inter[0]->Unmap(), "Unmap of an interleaved region");
  fixed[1].reset();
  inter[1].reset();
  for (auto& r : *alive) {
    if (r) {
      EXPECT_TRUE(r->Unmap().ok());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, FailFastTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp), Name);

}  // namespace
}  // namespace dsm::testing
