// The real RDMA transport on a real device: the checks the shared transport suite runs
// (every pair comes up, per-pair FIFO with inline and page payloads, a peer that goes away is
// reported down and the others keep working). Skips with the reason when
// ibv_get_device_list finds no device, which is the case on every machine we have.
#include <gtest/gtest.h>
#include <infiniband/verbs.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "rdma/cluster_harness.h"
#include "transport/rdma/rdma_transport.h"

namespace dsm::rdma::testing {
namespace {

int DeviceCount() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list != nullptr) ibv_free_device_list(list);
  return list == nullptr ? 0 : n;
}

class RdmaTransportOnDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) {
      GTEST_SKIP() << "no RDMA device: ibv_get_device_list found none (the kernel has no "
                      "InfiniBand/RoCE support here)";
    }
  }

  void MakeCluster(size_t n) {
    addrs_ = FreeLoopbackAddresses(n);
    for (size_t i = 0; i < n; ++i) {
      auto node = std::make_unique<TestNode>();
      Options o;
      o.node_id = static_cast<NodeId>(i);
      o.peers = addrs_;
      o.transport = TransportKind::kRdma;
      if (const char* d = getenv("DSM_RDMA_DEVICE")) o.rdma_device = d;
      if (const char* g = getenv("DSM_RDMA_GID_INDEX")) o.rdma_gid_index = atoi(g);
      auto loop = EventLoop::Create();
      ASSERT_TRUE(loop.ok()) << loop.status();
      node->loop = std::move(*loop);
      auto t = CreateRdmaTransport(o);
      ASSERT_TRUE(t.ok()) << t.status();
      node->transport = std::move(*t);
      ASSERT_TRUE(node->transport->Start(node->loop.get(), &node->rec).ok());
      nodes_.push_back(std::move(node));
    }
  }

  bool AllUp() {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      for (size_t j = 0; j < nodes_.size(); ++j) {
        if (i != j && !nodes_[i]->transport->IsUp(static_cast<NodeId>(j))) return false;
      }
    }
    return true;
  }

  void TearDown() override {
    for (auto& n : nodes_) {
      if (n->transport) n->transport->Shutdown(absl::Now() + absl::Seconds(1));
    }
    nodes_.clear();
  }

  std::vector<std::string> addrs_;
  std::vector<std::unique_ptr<TestNode>> nodes_;
};

// Runs everywhere: without a device the factory fails cleanly and says why.
TEST(RdmaTransportFactory, WithoutADeviceCreateTransportSaysWhy) {
  if (DeviceCount() != 0) GTEST_SKIP() << "an RDMA device is present";
  Options o;
  o.peers = {"127.0.0.1:1", "127.0.0.1:2"};
  o.transport = TransportKind::kRdma;
  absl::StatusOr<std::unique_ptr<Transport>> t = CreateTransport(o);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(std::string(t.status().message()).find("no RDMA device"), std::string::npos)
      << t.status();
}

TEST_F(RdmaTransportOnDevice, AllPairsComeUp) {
  MakeCluster(3);
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }, absl::Seconds(30)));
}

TEST_F(RdmaTransportOnDevice, PerPairFifoWithPagePayloads) {
  MakeCluster(3);
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }, absl::Seconds(30)));
  const size_t sizes[] = {0, 100, kPageSize, kMaxRunPages * kPageSize};
  constexpr uint64_t kPerPair = 400;
  for (uint64_t seq = 0; seq < kPerPair; ++seq) {
    for (size_t i = 0; i < 3; ++i) {
      for (size_t j = 0; j < 3; ++j) {
        if (i != j) {
          nodes_[i]->transport->Send(TestMessage(static_cast<NodeId>(j), seq, sizes[seq % 4]));
        }
      }
    }
  }
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    for (auto& n : nodes_) {
      if (n->rec.messages.size() < 2 * kPerPair) return false;
    }
    return true;
  }, absl::Seconds(60)));
  for (auto& n : nodes_) {
    std::map<NodeId, uint64_t> next;
    for (const Message& m : n->rec.messages) {
      EXPECT_EQ(m.req_id, next[m.src]++);
      EXPECT_TRUE(PayloadIntact(m));
    }
  }
}

TEST_F(RdmaTransportOnDevice, PeerDownIsReportedAndOthersKeepWorking) {
  MakeCluster(3);
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }, absl::Seconds(30)));
  nodes_[2]->transport->Shutdown(absl::Now() + absl::Seconds(1));
  nodes_[2]->transport.reset();
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    return nodes_[0]->rec.down.count(2) && nodes_[1]->rec.down.count(2);
  }, absl::Seconds(30)));
  nodes_[0]->transport->Send(TestMessage(1, 0, kPageSize));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[1]->rec.messages.size() == 1; }));
  EXPECT_TRUE(PayloadIntact(nodes_[1]->rec.messages[0]));
}

}  // namespace
}  // namespace dsm::rdma::testing
