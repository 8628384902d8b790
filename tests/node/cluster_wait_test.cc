// Node::Create with Options::wait_for_cluster: returns once every peer is connected, waits for
// a node that starts late, and names the nodes still missing when connect_timeout passes.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "dsm/node.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "node/node_test_util.h"

namespace dsm::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ClusterWait : public ::testing::TestWithParam<TransportKind> {
 protected:
  // Options for node `id` of an n-node cluster on this test's ports or hub.
  Options For(NodeId id, int n) {
    if (ports_.empty()) ports_ = PickFreePorts(8);
    Options o;
    o.node_id = id;
    o.transport = GetParam();
    o.loopback_hub = absl::StrCat("cluster-wait-", hub_seq_);
    for (int i = 0; i < n; ++i) o.peers.push_back(absl::StrCat("127.0.0.1:", ports_[i]));
    o.wait_for_cluster = true;
    return o;
  }
  void NextCluster() {
    ports_.clear();
    ++hub_seq_;
  }

 private:
  std::vector<int> ports_;
  static inline int hub_seq_ = 0;
};

TEST_P(ClusterWait, CreateReturnsOnceALateNodeHasConnected) {
  NextCluster();
  const Options o0 = For(0, 2), o1 = For(1, 2);
  absl::StatusOr<std::unique_ptr<Node>> n0 = absl::UnknownError("not run");
  absl::Time n0_returned;
  std::thread t([&] {
    n0 = Node::Create(o0);
    n0_returned = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time n1_started = absl::Now();
  absl::StatusOr<std::unique_ptr<Node>> n1 = Node::Create(o1);
  t.join();
  if (!n0.ok() && absl::IsPermissionDenied(n0.status())) GTEST_SKIP() << n0.status();
  ASSERT_TRUE(n0.ok()) << n0.status();
  ASSERT_TRUE(n1.ok()) << n1.status();
  // Node 0 could not have been connected before node 1 existed: it waited for it.
  EXPECT_GE(n0_returned, n1_started);
  // Both are connected: a barrier of the two passes without any further waiting for peers.
  absl::Status b0;
  std::thread b([&] { b0 = (*n0)->Barrier("after-create", {}, absl::Now() + absl::Seconds(10)); });
  EXPECT_TRUE((*n1)->Barrier("after-create", {}, absl::Now() + absl::Seconds(10)).ok());
  b.join();
  EXPECT_TRUE(b0.ok()) << b0;
}

TEST_P(ClusterWait, MissingNodesAreNamedWhenConnectTimeoutPasses) {
  NextCluster();
  Options o0 = For(0, 3), o1 = For(1, 3);
  // Node 1 waits longer, so node 0's error is not about node 1 giving up first.
  o0.connect_timeout = absl::Seconds(1);
  o1.connect_timeout = absl::Seconds(3);
  const std::string addr2 = For(2, 3).peers[2];
  absl::StatusOr<std::unique_ptr<Node>> n0 = absl::UnknownError("not run");
  std::thread t([&] { n0 = Node::Create(o0); });
  absl::StatusOr<std::unique_ptr<Node>> n1 = Node::Create(o1);
  t.join();
  if (!n1.ok() && absl::IsPermissionDenied(n1.status())) GTEST_SKIP() << n1.status();
  ASSERT_FALSE(n0.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(n0.status())) << n0.status();
  EXPECT_THAT(std::string(n0.status().message()),
              HasSubstr(absl::StrCat("1 of 2 peers not connected: node 2 (", addr2)));
  EXPECT_THAT(std::string(n0.status().message()), Not(HasSubstr("node 1 (")));
  // Node 1 outlived node 0's wait: it names node 2, and node 0 as gone.
  ASSERT_FALSE(n1.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(n1.status())) << n1.status();
  EXPECT_THAT(std::string(n1.status().message()), HasSubstr(absl::StrCat("node 2 (", addr2)));
  EXPECT_THAT(std::string(n1.status().message()), HasSubstr("node 0 (127.0.0.1:"));
}

TEST_P(ClusterWait, WithoutTheOptionCreateDoesNotWait) {
  NextCluster();
  Options o0 = For(0, 2);
  o0.wait_for_cluster = false;
  absl::StatusOr<std::unique_ptr<Node>> n0 = Node::Create(o0);
  if (!n0.ok() && absl::IsPermissionDenied(n0.status())) GTEST_SKIP() << n0.status();
  ASSERT_TRUE(n0.ok()) << n0.status();  // node 1 never starts
  EXPECT_TRUE((*n0)->Shutdown().ok());
}

TEST_P(ClusterWait, OneNodeClusterIsCompleteAtOnce) {
  NextCluster();
  absl::StatusOr<std::unique_ptr<Node>> n0 = Node::Create(For(0, 1));
  if (!n0.ok() && absl::IsPermissionDenied(n0.status())) GTEST_SKIP() << n0.status();
  ASSERT_TRUE(n0.ok()) << n0.status();
}

INSTANTIATE_TEST_SUITE_P(Transports, ClusterWait,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         [](const ::testing::TestParamInfo<TransportKind>& i) {
                           return i.param == TransportKind::kTcp ? "Tcp" : "Loopback";
                         });

}  // namespace
}  // namespace dsm::testing
