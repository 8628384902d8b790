// The Transport contract, checked on every backend: all-pairs delivery, per-pair FIFO under
// load, self-sends through the loop, peers that leave or never come, and (TCP) hostile bytes.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "transport/transport_test_util.h"
#include "transport/wire.h"

namespace dsm::testing {
namespace {

class TransportTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  std::unique_ptr<TestCluster> MakeCluster(
      size_t n, std::vector<NodeId> start = {},
      std::chrono::milliseconds connect_timeout = std::chrono::seconds(20)) {
    auto c = TestCluster::Create(GetParam(), n, std::move(start), connect_timeout);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
};

TEST_P(TransportTest, AllPairsExchangeMessages) {
  auto c = MakeCluster(3);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->WaitAllUp()) << "peers did not come up";
  for (NodeId i = 0; i < 3; ++i) {
    for (NodeId j = 0; j < 3; ++j) {
      if (i != j) {
        EXPECT_TRUE(c->node(i).transport().IsUp(j));
      }
      c->node(i).Send(MakeMsg(MsgType::kData, j, 0, kPageSize));
    }
  }
  for (NodeId j = 0; j < 3; ++j) {
    Recorder& r = c->node(j).rec();
    ASSERT_TRUE(r.WaitMessages(3)) << "node " << j << " got " << r.message_count();
    auto msgs = r.messages();
    std::set<NodeId> from;
    for (const auto& m : msgs) {
      EXPECT_EQ(m.type, MsgType::kData);
      EXPECT_EQ(m.dst, j);
      EXPECT_EQ(m.payload_size, kPageSize);
      EXPECT_TRUE(m.payload_ok);
      EXPECT_EQ(m.arg, 1u);
      EXPECT_EQ(m.region, 9u);
      from.insert(m.src);
    }
    EXPECT_EQ(from, (std::set<NodeId>{0, 1, 2}));
    EXPECT_EQ(r.up_count().size(), 2u);
    EXPECT_TRUE(r.down().empty());
    EXPECT_EQ(c->node(j).transport().counters().bad_messages, 0u);
  }
}

// Per-pair FIFO: every node streams to every other node; page numbers are sequence numbers.
TEST_P(TransportTest, PerPairOrderHoldsUnderLoad) {
  constexpr uint64_t kPerPair = 10000;  // 60k messages in all, a quarter with 4 KiB payloads
  auto c = MakeCluster(3);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->WaitAllUp());
  for (NodeId i = 0; i < 3; ++i) c->node(i).rec().set_store(false);
  for (uint64_t base = 0; base < kPerPair; base += 500) {
    for (NodeId i = 0; i < 3; ++i) {
      c->node(i).Run([&, i] {
        for (uint64_t s = base; s < base + 500; ++s) {
          for (NodeId j = 0; j < 3; ++j) {
            if (j == i) continue;
            const bool big = s % 4 == 0;
            c->node(i).transport().Send(
                MakeMsg(big ? MsgType::kData : MsgType::kGetS, j, s, big ? kPageSize : 0));
          }
        }
      });
    }
  }
  for (NodeId j = 0; j < 3; ++j) {
    Recorder& r = c->node(j).rec();
    ASSERT_TRUE(r.WaitMessages(2 * kPerPair)) << "node " << j << " got " << r.message_count();
    EXPECT_EQ(r.order_violations(), 0) << "node " << j;
    auto ctr = c->node(j).transport().counters();
    EXPECT_EQ(ctr.messages_received, 2 * kPerPair);
    EXPECT_EQ(ctr.messages_sent, 2 * kPerPair);
    EXPECT_EQ(ctr.bytes_sent, ctr.bytes_received);
    EXPECT_EQ(ctr.bad_messages, 0u);
  }
}

TEST_P(TransportTest, SelfSendGoesThroughTheLoop) {
  auto c = MakeCluster(3);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->WaitAllUp());
  for (uint64_t s = 0; s < 100; ++s) c->node(1).Send(MakeMsg(MsgType::kGetM, 1, s));
  Recorder& r = c->node(1).rec();
  ASSERT_TRUE(r.WaitMessages(100));
  EXPECT_FALSE(r.reentrant_delivery()) << "a handler ran inside Send()";
  EXPECT_EQ(r.order_violations(), 0);
  for (const auto& m : r.messages()) {
    EXPECT_EQ(m.src, 1u);
    EXPECT_EQ(m.dst, 1u);
  }
}

TEST_P(TransportTest, MessagesSentBeforePeersAreUpAreDeliveredInOrder) {
  auto c = MakeCluster(3, {0});  // node 0 alone at first
  ASSERT_NE(c, nullptr);
  for (uint64_t s = 0; s < 50; ++s) c->node(0).Send(MakeMsg(MsgType::kGetS, 2, s));
  Options o = c->node(0).options;
  o.node_id = 2;
  ASSERT_TRUE(c->node(2).Init(o).ok());
  ASSERT_TRUE(c->node(2).Start().ok());
  ASSERT_TRUE(c->node(2).rec().WaitMessages(50));
  EXPECT_EQ(c->node(2).rec().order_violations(), 0);
  c->node(2).Shutdown(absl::Milliseconds(200));
}

TEST_P(TransportTest, PeerThatShutsDownIsReportedDown) {
  auto c = MakeCluster(3);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->WaitAllUp());
  c->node(2).Shutdown(absl::Seconds(1));
  for (NodeId i : {0u, 1u}) {
    ASSERT_TRUE(c->node(i).rec().WaitDown(2)) << "node " << i << " never saw node 2 go down";
    EXPECT_FALSE(c->node(i).transport().IsUp(2));
    // Sending to a down peer is dropped, never blocks.
    for (int k = 0; k < 100; ++k) c->node(i).Send(MakeMsg(MsgType::kData, 2, k, kPageSize));
  }
  EXPECT_TRUE(c->node(2).rec().down().empty()) << "no Handler call after Shutdown";
  // The others still talk.
  c->node(0).Send(MakeMsg(MsgType::kInv, 1, 0));
  ASSERT_TRUE(c->node(1).rec().WaitMessages(1));
  EXPECT_EQ(c->node(0).rec().down().size(), 1u);
}

TEST_P(TransportTest, DisconnectReportsBothSides) {
  auto c = MakeCluster(2);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->WaitAllUp());
  c->node(1).Run([&] {
    c->node(1).rec().set_in_send(true);
    c->node(1).transport().Disconnect(0, absl::AbortedError("test"));
    c->node(1).rec().set_in_send(false);
  });
  ASSERT_TRUE(c->node(1).rec().WaitDown(0));
  EXPECT_EQ(c->node(1).rec().down()[0].code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(c->node(1).rec().reentrant_delivery());
  ASSERT_TRUE(c->node(0).rec().WaitDown(1));
}

// A peer that never appears is declared down after connect_timeout, whether this node dials
// it (missing node 0) or waits for it to dial (missing node 2). The two live nodes must meet
// each other within the same connect_timeout, also on a loaded machine: 2 s, not less.
TEST_P(TransportTest, PeerThatNeverAppearsIsDownAfterConnectTimeout) {
  for (NodeId missing : {0u, 2u}) {
    SCOPED_TRACE(missing);
    std::vector<NodeId> start;
    for (NodeId i = 0; i < 3; ++i) {
      if (i != missing) start.push_back(i);
    }
    auto c = MakeCluster(3, start, std::chrono::seconds(2));
    ASSERT_NE(c, nullptr);
    c->node(start[0]).Send(MakeMsg(MsgType::kGetS, missing, 0));  // queued, then dropped
    for (NodeId i : start) {
      ASSERT_TRUE(c->node(i).rec().WaitDown(missing)) << "node " << i;
      EXPECT_EQ(c->node(i).rec().down()[missing].code(), absl::StatusCode::kDeadlineExceeded);
    }
    ASSERT_TRUE(c->node(start[0]).rec().WaitUp(start[1]));
    c->node(start[0]).Send(MakeMsg(MsgType::kGetS, missing, 1));  // dropped, no hang
    c->node(start[0]).Send(MakeMsg(MsgType::kGetS, start[1], 0));
    ASSERT_TRUE(c->node(start[1]).rec().WaitMessages(1));
  }
}

TEST_P(TransportTest, FaultInjectionDropsDelaysAndCorrupts) {
  auto made = TestCluster::Create(GetParam(), 2, {}, std::chrono::seconds(20), true);
  ASSERT_TRUE(made.ok()) << made.status();
  TestCluster& c = **made;
  ASSERT_TRUE(c.WaitAllUp());
  Recorder& r1 = c.node(1).rec();
  // Dropped: never arrives; the order check of later messages still holds.
  c.node(0).faults().SetDropTo(1, true);
  for (uint64_t s = 100; s < 110; ++s) c.node(0).Send(MakeMsg(MsgType::kGetS, 1, s));
  c.node(0).faults().SetDropTo(1, false);
  EXPECT_EQ(c.node(0).faults().dropped(), 10u);
  // Delayed, with the delay removed half-way: all arrive, in order.
  c.node(0).faults().SetDelayTo(1, absl::Milliseconds(30));
  for (uint64_t s = 0; s < 50; ++s) c.node(0).Send(MakeMsg(MsgType::kGetS, 1, s));
  c.node(0).faults().SetDelayTo(1, absl::ZeroDuration());
  for (uint64_t s = 50; s < 100; ++s) c.node(0).Send(MakeMsg(MsgType::kGetS, 1, s));
  ASSERT_TRUE(r1.WaitMessages(100));
  EXPECT_EQ(r1.order_violations(), 0);
  EXPECT_EQ(r1.message_count(), 100u);
  // Corrupted payload: delivered (framing intact) with a flipped byte.
  c.node(0).faults().CorruptNextTo(1, 1);
  c.node(0).Send(MakeMsg(MsgType::kData, 1, Recorder::kUnordered, kPageSize));
  ASSERT_TRUE(r1.WaitMessages(101));
  EXPECT_FALSE(r1.messages().back().payload_ok);
  // A corrupt frame as seen by node 1: the connection goes, both sides report it.
  c.node(1).faults().FailNextFrom(0);
  c.node(0).Send(MakeMsg(MsgType::kGetS, 1, Recorder::kUnordered));
  ASSERT_TRUE(r1.WaitDown(0));
  ASSERT_TRUE(c.node(0).rec().WaitDown(1));
  EXPECT_EQ(c.node(1).transport().counters().bad_messages, 1u);
}

// A node restarted with the same id (a new transport: a new incarnation) comes up again at
// every peer, after its old incarnation was reported down, and messages flow both ways. Each
// node restarts in turn (a dialer, an acceptor and both for TCP), some more than once.
TEST_P(TransportTest, ARestartedNodeRejoinsWithANewIncarnation) {
  auto c = MakeCluster(3);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->WaitAllUp());
  for (NodeId victim : {1u, 0u, 2u, 1u, 1u}) {
    SCOPED_TRACE(absl::StrCat("restarting node ", victim));
    std::vector<NodeId> others;
    for (NodeId i = 0; i < 3; ++i) {
      if (i != victim) others.push_back(i);
    }
    std::map<NodeId, Incarnation> old;
    for (NodeId i : others) {
      old[i] = c->node(i).rec().incarnation(victim);
      ASSERT_NE(old[i], 0u);
    }
    ASSERT_TRUE(c->RestartNode(victim).ok());
    const Incarnation fresh = c->node(victim).transport().incarnation();
    for (NodeId i : others) {
      ASSERT_TRUE(c->node(i).rec().WaitUntil([&](const Recorder& r) {
        return r.incarnation(victim) == fresh;
      })) << "node " << i << " never saw node " << victim << " rejoin";
      EXPECT_GT(fresh, old[i]);
      EXPECT_TRUE(c->node(i).transport().IsUp(victim));
      // The old incarnation went down exactly once, before the new one came up.
      std::vector<Recorder::PeerEvent> ev = c->node(i).rec().peer_events();
      std::vector<Recorder::PeerEvent> mine;
      for (const auto& e : ev) {
        if (e.peer == victim) mine.push_back(e);
      }
      ASSERT_GE(mine.size(), 3u);
      EXPECT_TRUE(mine[mine.size() - 1].up);
      EXPECT_FALSE(mine[mine.size() - 2].up) << "no down between two ups";
      EXPECT_TRUE(mine[mine.size() - 3].up);
      EXPECT_EQ(mine[mine.size() - 3].incarnation, old[i]);
      EXPECT_NE(c->node(i).rec().down()[victim].code(), absl::StatusCode::kInternal)
          << c->node(i).rec().down()[victim];
      EXPECT_GE(c->node(i).transport().counters().rejoins, 1u);
    }
    for (NodeId i : others) {
      ASSERT_TRUE(c->node(victim).rec().WaitUp(i)) << "the restarted node never saw node " << i;
      const size_t before = c->node(victim).rec().message_count();
      c->node(i).Send(MakeMsg(MsgType::kInv, victim, Recorder::kUnordered));
      ASSERT_TRUE(c->node(victim).rec().WaitMessages(before + 1));
      const size_t back = c->node(i).rec().message_count();
      c->node(victim).Send(MakeMsg(MsgType::kInv, i, Recorder::kUnordered));
      ASSERT_TRUE(c->node(i).rec().WaitMessages(back + 1));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTransports, TransportTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         [](const ::testing::TestParamInfo<TransportKind>& i) {
                           return i.param == TransportKind::kTcp ? "Tcp" : "Loopback";
                         });

}  // namespace
}  // namespace dsm::testing
