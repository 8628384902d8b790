#include "lock/barrier.h"

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "lock/test_util.h"
#include "protocol/validation.h"

namespace dsm::lock {
namespace {

using testing::Network;
using testing::NetPort;

class BarrierCluster {
 public:
  explicit BarrierCluster(size_t n) : n_(n) {
    for (NodeId i = 0; i < n; ++i) {
      ports_.push_back(std::make_unique<NetPort>(&net_, i));
      clients_.push_back(std::make_unique<BarrierClient>(BarrierClient::Config{i}, ports_[i].get()));
      arbiters_.push_back(
          std::make_unique<BarrierArbiter>(BarrierArbiter::Config{i}, ports_[i].get()));
    }
  }

  // Enters on `node`; the result lands in the returned slot.
  size_t Enter(NodeId node, const std::string& name, std::vector<NodeId> members,
               absl::Time deadline = absl::InfiniteFuture()) {
    const size_t slot = results_.size();
    results_.emplace_back();
    absl::StatusOr<uint64_t> mask = MemberMask(members, n_, node);
    if (!mask.ok()) {
      results_[slot] = mask.status();
      return slot;
    }
    clients_[node]->Enter(name, *mask, deadline, now_,
                          [this, slot](absl::Status s) { results_[slot] = std::move(s); });
    return slot;
  }
  // Delivers every queued message (random order across pairs).
  void Run(uint64_t seed = 1) {
    std::mt19937_64 rng(seed);
    Message m;
    while (net_.PopAny([&](size_t k) { return rng() % k; }, &m)) Deliver(m);
  }
  // Delivers only messages addressed to `dst` (others stay queued, in order).
  void Deliver(const Message& m) {
    if (down_[m.dst]) return;
    if (m.type == MsgType::kBarrierReply) {
      clients_[m.dst]->OnMessage(m);
    } else {
      EXPECT_TRUE(CheckMessage(m, n_).ok()) << CheckMessage(m, n_);
      arbiters_[m.dst]->OnMessage(m);
    }
  }
  void Down(NodeId n) {
    down_[n] = true;
    net_.Sever(n);
    for (NodeId i = 0; i < n_; ++i) {
      if (down_[i]) continue;
      clients_[i]->OnPeerDown(n);
      arbiters_[i]->OnNodeDown(n);
    }
  }
  const std::optional<absl::Status>& result(size_t slot) const { return results_[slot]; }
  absl::StatusCode code(size_t slot) const {
    EXPECT_TRUE(results_[slot].has_value()) << "slot " << slot << " still waiting";
    return results_[slot] ? results_[slot]->code() : absl::StatusCode::kUnknown;
  }

  size_t n_;
  Network net_;
  std::vector<std::unique_ptr<NetPort>> ports_;
  std::vector<std::unique_ptr<BarrierClient>> clients_;
  std::vector<std::unique_ptr<BarrierArbiter>> arbiters_;
  std::vector<std::optional<absl::Status>> results_;
  bool down_[64] = {};
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST(Barrier, AllNodesReleasedOnlyWhenEveryoneEntered) {
  BarrierCluster c(3);
  const size_t a = c.Enter(0, "b", {});
  const size_t b = c.Enter(2, "b", {});
  c.Run();
  EXPECT_FALSE(c.result(a).has_value());
  EXPECT_FALSE(c.result(b).has_value());
  const size_t d = c.Enter(1, "b", {});
  c.Run();
  EXPECT_EQ(c.code(a), absl::StatusCode::kOk);
  EXPECT_EQ(c.code(b), absl::StatusCode::kOk);
  EXPECT_EQ(c.code(d), absl::StatusCode::kOk);
  EXPECT_EQ(c.arbiters_[0]->generation("b", 0b111), 1u);
}

TEST(Barrier, GenerationsDoNotMix) {
  BarrierCluster c(2);
  const size_t a0 = c.Enter(0, "g", {});
  const size_t b0 = c.Enter(1, "g", {});
  // Deliver both enters; the arbiter (node 0) releases generation 0.
  Message m;
  std::vector<Message> to_node1;
  while (c.net_.PopAny([](size_t) { return 0; }, &m)) {
    if (m.dst == 1) {
      to_node1.push_back(m);  // hold node 1's release back
    } else {
      c.Deliver(m);
    }
  }
  EXPECT_EQ(c.code(a0), absl::StatusCode::kOk);
  EXPECT_FALSE(c.result(b0).has_value());
  // Node 0 races ahead into generation 1: it must wait for node 1 to enter generation 1,
  // not be satisfied by node 1's earlier arrival.
  const size_t a1 = c.Enter(0, "g", {});
  c.Run();
  EXPECT_FALSE(c.result(a1).has_value());
  for (const Message& x : to_node1) c.Deliver(x);
  EXPECT_EQ(c.code(b0), absl::StatusCode::kOk);
  EXPECT_FALSE(c.result(a1).has_value());
  const size_t b1 = c.Enter(1, "g", {});
  c.Run();
  EXPECT_EQ(c.code(a1), absl::StatusCode::kOk);
  EXPECT_EQ(c.code(b1), absl::StatusCode::kOk);
}

TEST(Barrier, NamedGroupsAreIndependentAndMembershipIsChecked) {
  BarrierCluster c(4);
  const size_t x1 = c.Enter(1, "x", {1, 3});  // arbiter: node 1
  const size_t y0 = c.Enter(0, "y", {});
  const size_t x3 = c.Enter(3, "x", {3, 1});
  c.Run();
  EXPECT_EQ(c.code(x1), absl::StatusCode::kOk);
  EXPECT_EQ(c.code(x3), absl::StatusCode::kOk);
  EXPECT_FALSE(c.result(y0).has_value());
  EXPECT_EQ(c.arbiters_[1]->generation("x", 0b1010), 1u);
  // Same name, other members: another group.
  const size_t x2 = c.Enter(2, "x", {2, 3});
  c.Run();
  EXPECT_FALSE(c.result(x2).has_value());
  // Not a member / out of range / empty name / entering twice.
  EXPECT_EQ(c.code(c.Enter(0, "x", {1, 3})), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.code(c.Enter(0, "x", {0, 9})), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.code(c.Enter(0, "", {})), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.code(c.Enter(0, "y", {})), absl::StatusCode::kFailedPrecondition);
}

TEST(Barrier, NodeDownFailsTheBarrierForEveryone) {
  BarrierCluster c(3);
  const size_t a = c.Enter(0, "b", {});
  const size_t b = c.Enter(1, "b", {});
  c.Run();
  c.Down(2);
  c.Run();
  EXPECT_EQ(c.code(a), absl::StatusCode::kUnavailable);
  EXPECT_EQ(c.code(b), absl::StatusCode::kUnavailable);
  // Never again: later enters fail at once.
  EXPECT_EQ(c.code(c.Enter(1, "b", {})), absl::StatusCode::kUnavailable);
  // Groups without node 2 still work.
  const size_t p = c.Enter(0, "pair", {0, 1});
  const size_t q = c.Enter(1, "pair", {0, 1});
  c.Run();
  EXPECT_EQ(c.code(p), absl::StatusCode::kOk);
  EXPECT_EQ(c.code(q), absl::StatusCode::kOk);
}

TEST(Barrier, NodeDownSeenOnlyByTheArbiterStillFailsEveryone) {
  BarrierCluster c(3);
  const size_t a = c.Enter(0, "b", {});
  const size_t b = c.Enter(1, "b", {});
  c.Run();
  c.arbiters_[0]->OnNodeDown(2);  // node 1 has not noticed yet
  c.Run();
  EXPECT_EQ(c.code(a), absl::StatusCode::kUnavailable);
  EXPECT_EQ(c.code(b), absl::StatusCode::kUnavailable);
  EXPECT_NE(c.result(b)->message().find("node 2"), std::string::npos) << *c.result(b);
}

TEST(Barrier, MemberDownSeenOnlyByTheClientFailsLocally) {
  BarrierCluster c(3);
  const size_t b = c.Enter(1, "b", {});
  c.Run();
  c.clients_[1]->OnPeerDown(2);  // the arbiter (node 0) has not noticed yet
  EXPECT_EQ(c.code(b), absl::StatusCode::kUnavailable);
}

TEST(Barrier, ArbiterDownFailsWaiters) {
  BarrierCluster c(3);
  const size_t b = c.Enter(1, "b", {});
  const size_t d = c.Enter(2, "b", {});
  c.Run();
  c.Down(0);
  EXPECT_EQ(c.code(b), absl::StatusCode::kUnavailable);
  EXPECT_EQ(c.code(d), absl::StatusCode::kUnavailable);
}

TEST(Barrier, DeadlineAbortsTheGenerationForEveryoneAndGenerationsResync) {
  BarrierCluster c(3);
  const size_t a = c.Enter(0, "b", {});
  const size_t b = c.Enter(1, "b", {}, c.now_ + absl::Seconds(1));
  c.Run();
  EXPECT_EQ(c.clients_[1]->NextDeadline(), c.now_ + absl::Seconds(1));
  c.clients_[1]->OnTick(c.now_ + absl::Seconds(1));
  // The canceller waits for the arbiter to say who was missing.
  EXPECT_FALSE(c.result(b).has_value());
  EXPECT_EQ(c.clients_[1]->NextDeadline(), c.now_ + absl::Seconds(2));  // + cancel_grace
  c.Run();
  EXPECT_EQ(c.code(b), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(c.result(b)->message(),
            "barrier 'b' generation 0: deadline passed; not entered: node 2 (entered: nodes 0, 1)");
  EXPECT_EQ(c.code(a), absl::StatusCode::kAborted);
  EXPECT_NE(c.result(a)->message().find("not entered: node 2 (entered: nodes 0, 1)"),
            absl::string_view::npos)
      << *c.result(a);
  // Node 2 arrives late for the abandoned generation: it fails too.
  const size_t late = c.Enter(2, "b", {});
  c.Run();
  EXPECT_EQ(c.code(late), absl::StatusCode::kAborted);
  // Everyone is now at generation 1 and the next barrier works.
  std::vector<size_t> slots;
  for (NodeId n = 0; n < 3; ++n) slots.push_back(c.Enter(n, "b", {}));
  c.Run();
  for (size_t s : slots) EXPECT_EQ(c.code(s), absl::StatusCode::kOk);
}

TEST(Barrier, DeadlineAfterReleaseIsHarmless) {
  BarrierCluster c(2);
  const size_t a = c.Enter(0, "b", {}, c.now_ + absl::Seconds(1));
  const size_t b = c.Enter(1, "b", {});
  // Deliver only the enters to the arbiter; node 0's release stays in flight.
  Message m;
  std::vector<Message> replies;
  while (c.net_.PopAny([](size_t) { return 0; }, &m)) {
    if (m.type == MsgType::kBarrierReply) {
      replies.push_back(m);
    } else {
      c.Deliver(m);
    }
  }
  c.clients_[0]->OnTick(c.now_ + absl::Seconds(2));
  EXPECT_FALSE(c.result(a).has_value());  // cancelling: the release is on its way
  for (const Message& x : replies) c.Deliver(x);
  c.Run();
  // Every member had entered: the release answers the late canceller too.
  EXPECT_EQ(c.code(a), absl::StatusCode::kOk);
  EXPECT_EQ(c.code(b), absl::StatusCode::kOk);  // node 0 had arrived: releasing 1 was right
  const size_t a1 = c.Enter(0, "b", {});
  const size_t b1 = c.Enter(1, "b", {});
  c.Run();
  EXPECT_EQ(c.code(a1), absl::StatusCode::kOk);
  EXPECT_EQ(c.code(b1), absl::StatusCode::kOk);
}

TEST(Barrier, SilentArbiterEndsTheCancelAfterTheGrace) {
  BarrierCluster c(3);
  const size_t b = c.Enter(1, "b", {}, c.now_ + absl::Seconds(1));
  c.Run();
  c.clients_[1]->OnTick(c.now_ + absl::Seconds(1));  // sends the cancel; nobody delivers it
  EXPECT_FALSE(c.result(b).has_value());
  c.clients_[1]->OnTick(c.now_ + absl::Milliseconds(1999));
  EXPECT_FALSE(c.result(b).has_value());
  c.clients_[1]->OnTick(c.now_ + absl::Seconds(2));
  EXPECT_EQ(c.code(b), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(c.result(b)->message().find("the arbiter (node 0) did not say"),
            absl::string_view::npos)
      << *c.result(b);
  // Once the arbiter has the cancel, generation 0 is abandoned: the others' attempts at it
  // fail, and then everyone meets at generation 1.
  c.Run();
  const size_t late0 = c.Enter(0, "b", {});
  const size_t late2 = c.Enter(2, "b", {});
  c.Run();
  EXPECT_EQ(c.code(late0), absl::StatusCode::kAborted);
  EXPECT_EQ(c.code(late2), absl::StatusCode::kAborted);
  std::vector<size_t> slots;
  for (NodeId n = 0; n < 3; ++n) slots.push_back(c.Enter(n, "b", {}));
  c.Run();
  for (size_t s : slots) EXPECT_EQ(c.code(s), absl::StatusCode::kOk);
}

TEST(Barrier, NodeListNamesEveryMember) {
  EXPECT_EQ(NodeList(0b1), "node 0");
  EXPECT_EQ(NodeList(0b100101), "nodes 0, 2, 5");
  EXPECT_EQ(NodeList(uint64_t{1} << 63), "node 63");
}

TEST(Barrier, ShutdownFailsWaiters) {
  BarrierCluster c(2);
  const size_t b = c.Enter(1, "b", {});
  c.Run();
  c.arbiters_[0]->FailAll();
  c.Run();
  EXPECT_EQ(c.code(b), absl::StatusCode::kUnavailable);
  const size_t a = c.Enter(0, "b", {});
  c.clients_[0]->FailAll(absl::CancelledError("shutdown"));
  EXPECT_EQ(c.code(a), absl::StatusCode::kCancelled);
}

TEST(Barrier, RandomizedRoundsNeverMixOrHang) {
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    std::mt19937_64 rng(seed);
    const size_t n = 2 + rng() % 4;
    BarrierCluster c(n);
    std::vector<int> round(n, 0);  // rounds each node completed
    std::vector<std::optional<size_t>> slot(n);
    for (int step = 0; step < 400; ++step) {
      const NodeId node = rng() % n;
      if (!slot[node]) {
        slot[node] = c.Enter(node, "r", {});
      }
      Message m;
      if (c.net_.PopAny([&](size_t k) { return rng() % k; }, &m)) c.Deliver(m);
      for (NodeId i = 0; i < n; ++i) {
        if (slot[i] && c.result(*slot[i])) {
          ASSERT_TRUE(c.result(*slot[i])->ok()) << *c.result(*slot[i]);
          ++round[i];
          slot[i].reset();
          // Nobody can be two rounds ahead of anybody.
          for (NodeId j = 0; j < n; ++j) ASSERT_LE(round[i] - round[j], 1) << seed;
        }
      }
    }
  }
}

}  // namespace
}  // namespace dsm::lock
