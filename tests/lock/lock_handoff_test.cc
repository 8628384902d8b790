// The one-message hand-off (lock/lock_table.h, lock/lock_client.h): an arbiter (LockTable at
// node 0) and LockClients at nodes 0..3 over a Network that the tests drive message by
// message, so each crossing the protocol allows is played out in a chosen order.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lock/lock_client.h"
#include "lock/lock_table.h"
#include "lock/test_util.h"
#include "protocol/validation.h"

namespace dsm::lock {
namespace {

using testing::Network;
using testing::NetPort;
constexpr LockMode kS = LockMode::kShared;
constexpr LockMode kX = LockMode::kExclusive;
constexpr NodeId kNodes = 4;

class HandoffTest : public ::testing::Test {
 protected:
  HandoffTest() {
    for (NodeId i = 0; i < kNodes; ++i) {
      ports_.push_back(std::make_unique<NetPort>(&net_, i));
      clients_.push_back(std::make_unique<LockClient>(LockClient::Config{i}, ports_[i].get()));
    }
    LockTable::Config c;
    c.self = 0;
    c.region = 1;
    c.region_size = 1000;
    c.release_grace = absl::Seconds(1);
    table_ = std::make_unique<LockTable>(c, ports_[0].get());
  }

  // Node `n` asks for [off, off + len); returns a slot whose outcome lands in outcome_[slot].
  size_t Lock(NodeId n, uint64_t off, uint64_t len, LockMode mode = kX,
              absl::Time deadline = absl::InfiniteFuture()) {
    const size_t slot = outcome_.size();
    outcome_.emplace_back();
    ids_.push_back(0);
    nodes_.push_back(n);
    ids_[slot] = clients_[n]->Acquire(
        1, 0, 1000, LockRequest{off, len, mode, false, deadline}, now_,
        [this, slot](absl::StatusOr<LockHandle> h) {
          ASSERT_FALSE(outcome_[slot].has_value()) << "callback ran twice";
          outcome_[slot] = std::move(h);
        });
    return slot;
  }
  absl::Status Unlock(size_t slot) { return clients_[nodes_[slot]]->Release(ids_[slot]); }
  bool Held(size_t slot) { return outcome_[slot].has_value() && outcome_[slot]->ok(); }
  bool Pending(size_t slot) { return !outcome_[slot].has_value(); }

  // Delivers the head of the (src, dst) queue, which must be of `type` (per-pair FIFO);
  // false if that queue is empty.
  bool Step(NodeId src, NodeId dst, MsgType type) {
    std::optional<Message> m = net_.PopFrom(src, dst);
    if (!m.has_value()) return false;
    EXPECT_EQ(m->type, type) << DebugString(*m);
    EXPECT_TRUE(CheckMessage(*m, kNodes).ok()) << CheckMessage(*m, kNodes);
    Dispatch(*m);
    return true;
  }
  void Dispatch(const Message& m) {
    if (m.type == MsgType::kLockReply || m.type == MsgType::kLockSuccessor ||
        m.type == MsgType::kLockHandoff) {
      clients_[m.dst]->OnMessage(m, now_);
    } else {
      ASSERT_EQ(m.dst, 0u);
      table_->OnMessage(m, now_);
    }
    ASSERT_TRUE(table_->CheckInvariants().ok()) << table_->CheckInvariants();
  }
  // Delivers everything, in pair order, until the network is empty.
  void DeliverAll() {
    Message m;
    while (net_.PopAny([](size_t) { return 0; }, &m)) Dispatch(m);
  }
  // Node `n` is declared down everywhere at now_.
  void Down(NodeId n) {
    net_.Sever(n);
    table_->OnNodeDown(n, now_);
    for (NodeId i = 0; i < kNodes; ++i) {
      if (i != n) clients_[i]->OnPeerDown(n);
    }
  }
  void Advance(absl::Duration d) {
    now_ += d;
    table_->OnTick(now_);
    for (auto& c : clients_) c->OnTick(now_);
  }
  bool TableHolds(NodeId n, uint64_t id) {
    for (const auto& l : table_->Dump()) {
      if (l.node == n && l.id == id) return l.held;
    }
    return false;
  }

  Network net_;
  std::vector<std::unique_ptr<NetPort>> ports_;
  std::vector<std::unique_ptr<LockClient>> clients_;
  std::unique_ptr<LockTable> table_;
  std::vector<std::optional<absl::StatusOr<LockHandle>>> outcome_;
  std::vector<uint64_t> ids_;
  std::vector<NodeId> nodes_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

// H (node 1) holds; W (node 2) queues behind it alone: the arbiter names W to H and H to W,
// and H's release reaches W as one message.
TEST_F(HandoffTest, ReleaseGrantsTheNamedSuccessorInOneMessage) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Held(h));
  const size_t w = Lock(2, 0, 64);
  ASSERT_TRUE(Step(2, 0, MsgType::kLockAcquire));
  ASSERT_TRUE(Step(0, 1, MsgType::kLockSuccessor));
  ASSERT_TRUE(Step(0, 2, MsgType::kLockReply));  // kQueued naming node 1
  EXPECT_EQ(clients_[2]->predecessor_of(ids_[w]), std::optional<NodeId>(1));
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  EXPECT_TRUE(Held(w));  // before the arbiter heard anything
  EXPECT_FALSE(TableHolds(2, ids_[w]));
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));
  EXPECT_TRUE(TableHolds(2, ids_[w]));
  EXPECT_TRUE(net_.empty()) << "the arbiter replied to a hand-off";
  EXPECT_EQ(table_->counters().handoffs, 1u);
  EXPECT_EQ(clients_[2]->counters().handoffs_received, 1u);
  ASSERT_TRUE(Unlock(w).ok());
  DeliverAll();
  EXPECT_EQ(table_->num_held() + table_->num_waiting(), 0u);
}

TEST_F(HandoffTest, SuccessorCancelsBeforeTheHandoffCancelArrivesFirst) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64, kX, now_ + absl::Milliseconds(10));
  DeliverAll();  // hint at node 1, naming at node 2
  Advance(absl::Milliseconds(20));  // W times out: kLockCancel in flight
  ASSERT_EQ(outcome_[w]->status().code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(Unlock(h).ok());       // H still names W: hand-off + passed
  ASSERT_TRUE(Step(2, 0, MsgType::kLockCancel));
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));  // an id node 2 withdrew: dropped
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));   // W is gone: a plain release
  EXPECT_EQ(clients_[2]->counters().stray_handoffs, 1u);
  EXPECT_EQ(table_->counters().handoffs_refused, 1u);
  EXPECT_TRUE(net_.empty());
  EXPECT_EQ(table_->num_held() + table_->num_waiting(), 0u);
}

TEST_F(HandoffTest, SuccessorCancelsBeforeTheHandoffPassedArrivesFirst) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64, kX, now_ + absl::Milliseconds(10));
  DeliverAll();
  Advance(absl::Milliseconds(20));
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));  // W recorded holding...
  EXPECT_TRUE(TableHolds(2, ids_[w]));
  ASSERT_TRUE(Step(2, 0, MsgType::kLockCancel));  // ...and released by its cancel
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  EXPECT_FALSE(Held(w));
  EXPECT_TRUE(net_.empty());
  EXPECT_EQ(table_->num_held() + table_->num_waiting(), 0u);
}

TEST_F(HandoffTest, HolderReleasesBeforeTheHintArrives) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  ASSERT_TRUE(Step(2, 0, MsgType::kLockAcquire));  // hint to node 1 now in flight
  ASSERT_TRUE(Unlock(h).ok());                     // a plain release: no successor known
  ASSERT_TRUE(Step(0, 1, MsgType::kLockSuccessor));  // late: ignored
  EXPECT_EQ(clients_[1]->counters().hints, 0u);
  ASSERT_TRUE(Step(1, 0, MsgType::kLockRelease));  // the arbiter grants W as it always did
  ASSERT_TRUE(Step(0, 2, MsgType::kLockReply));    // kQueued naming node 1
  ASSERT_TRUE(Step(0, 2, MsgType::kLockReply));    // kGranted
  EXPECT_TRUE(Held(w));
  EXPECT_EQ(clients_[1]->counters().handoffs_sent, 0u);
  EXPECT_TRUE(net_.empty());
}

// The hand-off overtakes the arbiter's naming (different pairs): node 2 keeps it until the
// naming says node 1 was the predecessor.
TEST_F(HandoffTest, HandoffBeforeTheNamingIsKeptUntilTheNaming) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  ASSERT_TRUE(Step(2, 0, MsgType::kLockAcquire));
  ASSERT_TRUE(Step(0, 1, MsgType::kLockSuccessor));
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  EXPECT_TRUE(Pending(w));
  ASSERT_TRUE(Step(0, 2, MsgType::kLockReply));
  EXPECT_TRUE(Held(w));
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));
  EXPECT_TRUE(TableHolds(2, ids_[w]));
  EXPECT_TRUE(net_.empty());
}

Message Handoff(NodeId from, NodeId to, uint64_t id, uint64_t from_id = 99) {
  Message m;
  m.type = MsgType::kLockHandoff;
  m.src = from;
  m.dst = to;
  m.region = 1;
  m.req_id = id;
  m.page = from_id;
  return m;
}

TEST_F(HandoffTest, ForgedDirectGrantIsDroppedAndCounted) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();  // node 2 knows node 1 is W's predecessor
  clients_[2]->OnMessage(Handoff(3, 2, ids_[w]), now_);
  EXPECT_TRUE(Pending(w));
  EXPECT_EQ(clients_[2]->counters().forged_handoffs, 1u);
  // A forged grant kept before the naming is dropped when the naming names another node.
  const size_t w2 = Lock(3, 100, 8);
  DeliverAll();
  const size_t w3 = Lock(2, 100, 8);
  ASSERT_TRUE(Step(2, 0, MsgType::kLockAcquire));
  clients_[2]->OnMessage(Handoff(1, 2, ids_[w3]), now_);  // node 1 is not W3's predecessor
  EXPECT_TRUE(Pending(w3));
  ASSERT_TRUE(Step(0, 3, MsgType::kLockSuccessor));
  ASSERT_TRUE(Step(0, 2, MsgType::kLockReply));  // names node 3
  EXPECT_TRUE(Pending(w3));
  EXPECT_EQ(clients_[2]->counters().forged_handoffs, 2u);
  // The real predecessors still hand over.
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Unlock(w2).ok());
  DeliverAll();
  EXPECT_TRUE(Held(w));
  EXPECT_TRUE(Held(w3));
}

// H dies after its kLockPassed left but before its kLockHandoff did: the arbiter records W
// holding and grants it again by reply when H's grace time ends.
TEST_F(HandoffTest, HolderDiesAfterPassedOnlyArbiterRegrants) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  std::optional<Message> handoff = net_.PopFrom(1, 2);  // lost with H's connection
  ASSERT_TRUE(handoff.has_value());
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));
  Down(1);
  Advance(absl::Milliseconds(500));
  EXPECT_TRUE(Pending(w));
  EXPECT_TRUE(net_.empty());
  Advance(absl::Milliseconds(600));
  ASSERT_TRUE(Step(0, 2, MsgType::kLockReply));
  EXPECT_TRUE(Held(w));
  EXPECT_FALSE(outcome_[w]->value().previous_holder_died());
  EXPECT_EQ(table_->counters().regrants, 1u);
}

// H dies after its kLockHandoff only: W holds at once; the arbiter releases H's lock at the
// end of the grace time and grants W by reply, a duplicate W's node drops by id.
TEST_F(HandoffTest, HolderDiesAfterHandoffOnlySuccessorDropsDuplicateGrant) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  EXPECT_TRUE(Held(w));
  Down(1);  // the kLockPassed is lost
  Advance(absl::Milliseconds(1100));
  ASSERT_TRUE(Step(0, 2, MsgType::kLockReply));  // kGranted (died: H's lock went by death)
  EXPECT_EQ(clients_[2]->counters().stray_replies, 1u);
  EXPECT_TRUE(TableHolds(2, ids_[w]));
  ASSERT_TRUE(Unlock(w).ok());
  DeliverAll();
  EXPECT_EQ(table_->num_held() + table_->num_waiting(), 0u);
}

// The same, but W's node released the lock before the duplicate grant came: the arbiter
// drops W at the release, and the late grant names an id node 2 no longer knows.
TEST_F(HandoffTest, HolderDiesAfterPassedSuccessorReleasedFirst) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));
  ASSERT_TRUE(Unlock(w).ok());
  Down(1);
  DeliverAll();
  Advance(absl::Milliseconds(1100));
  EXPECT_EQ(table_->counters().regrants, 0u);
  EXPECT_TRUE(net_.empty());
  EXPECT_EQ(table_->num_held() + table_->num_waiting(), 0u);
}

// W dies holding a lock H handed it, and the arbiter hears of W's death before H's
// kLockPassed: W's node held the lock (its application may have half-written the range)
// although the arbiter still had W waiting, so W's range is marked and the next grant is told.
TEST_F(HandoffTest, SuccessorDiesHoldingBeforeThePassedArrivesIsReported) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  ASSERT_TRUE(Held(w));
  std::optional<Message> passed = net_.PopFrom(1, 0);  // still on its way to the arbiter
  ASSERT_TRUE(passed.has_value());
  Down(2);
  table_->OnMessage(*passed, now_);
  ASSERT_TRUE(table_->CheckInvariants().ok()) << table_->CheckInvariants();
  EXPECT_TRUE(table_->dead_marks().Overlaps(0, 64));
  EXPECT_EQ(table_->counters().named_dead, 1u);
  const size_t next = Lock(1, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Held(next));
  EXPECT_TRUE(outcome_[next]->value().previous_holder_died());
  EXPECT_FALSE(table_->dead_marks().Overlaps(0, 64));
}

// The same death, seen by a waiter X that was behind W only (not behind H): dropping W grants
// X at once, before H's kLockPassed could say whether W had the lock, so X is told.
TEST_F(HandoffTest, WaiterBehindADeadSuccessorIsTold) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 32, 64);  // [32, 96): behind H alone, named to it
  DeliverAll();
  const size_t x = Lock(3, 80, 20, kS);  // [80, 100): behind W only
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  ASSERT_TRUE(Held(w));
  std::optional<Message> passed = net_.PopFrom(1, 0);
  ASSERT_TRUE(passed.has_value());
  Down(2);
  ASSERT_TRUE(Step(0, 3, MsgType::kLockReply));
  ASSERT_TRUE(Held(x));
  EXPECT_TRUE(outcome_[x]->value().previous_holder_died());
  table_->OnMessage(*passed, now_);
  ASSERT_TRUE(table_->CheckInvariants().ok()) << table_->CheckInvariants();
}

// A named successor that dies before its holder released leaves the same mark: the arbiter
// cannot tell this death from the one above, so the next grant is told (conservatively).
TEST_F(HandoffTest, SuccessorDiesBeforeTheReleaseIsReportedConservatively) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Pending(w));
  Down(2);
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 0, MsgType::kLockRelease));  // node 1 knows node 2 is down: no hand-off
  const size_t next = Lock(1, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Held(next));
  EXPECT_TRUE(outcome_[next]->value().previous_holder_died());
}

TEST_F(HandoffTest, PassedFromADownNodeIsNotApplied) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  std::optional<Message> passed;
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  passed = net_.PopFrom(1, 0);
  ASSERT_TRUE(passed.has_value());
  table_->OnNodeDown(1, now_);
  table_->OnMessage(*passed, now_);
  EXPECT_FALSE(TableHolds(2, ids_[w]));  // H's lock goes by death, after the grace time
  EXPECT_TRUE(Held(w));
}

// A dead mark in W's range outside H's travels in the hint and reaches W with the grant.
TEST_F(HandoffTest, DeadMarksCarriedWithTheHint) {
  const size_t d = Lock(3, 20, 10);  // node 3 holds [20, 30) and dies holding it
  DeliverAll();
  ASSERT_TRUE(Held(d));
  Down(3);
  Advance(absl::Milliseconds(1100));
  ASSERT_TRUE(table_->dead_marks().Overlaps(20, 30));
  const size_t h = Lock(1, 0, 25);  // clears the mark in [0, 25), told of it
  DeliverAll();
  ASSERT_TRUE(Held(h));
  EXPECT_TRUE(outcome_[h]->value().previous_holder_died());
  const size_t w = Lock(2, 10, 20);  // [10, 30): behind H alone, over the mark left [25, 30)
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  ASSERT_TRUE(Held(w));
  EXPECT_TRUE(outcome_[w]->value().previous_holder_died());
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));
  EXPECT_EQ(table_->counters().handoffs, 1u);
  EXPECT_FALSE(table_->dead_marks().Overlaps(10, 30));
}

TEST_F(HandoffTest, SharedLocksTakeTheArbiterPath) {
  // Exclusive holder, shared waiter; then shared holder, exclusive waiter.
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t r = Lock(2, 0, 64, kS);
  DeliverAll();
  EXPECT_EQ(table_->counters().hints, 0u);
  ASSERT_TRUE(Unlock(h).ok());
  DeliverAll();
  ASSERT_TRUE(Held(r));
  const size_t w = Lock(3, 0, 64);
  DeliverAll();
  EXPECT_EQ(table_->counters().hints, 0u);
  ASSERT_TRUE(Unlock(r).ok());
  ASSERT_TRUE(Step(2, 0, MsgType::kLockRelease));
  DeliverAll();
  EXPECT_TRUE(Held(w));
  EXPECT_EQ(table_->counters().handoffs, 0u);
}

// Three nodes in a queue: only the first waiter is named; when it holds, the arbiter names
// the next waiter to it (and tells that waiter its predecessor), so every hand-off is direct.
TEST_F(HandoffTest, MultiWaiterQueueHandsOffInTurn) {
  const size_t a = Lock(1, 0, 64);
  DeliverAll();
  const size_t b = Lock(2, 0, 64);
  DeliverAll();
  const size_t c = Lock(3, 0, 64);
  DeliverAll();
  EXPECT_EQ(table_->counters().hints, 1u);  // C is behind A and B: not named yet
  EXPECT_FALSE(clients_[3]->predecessor_of(ids_[c]).has_value());
  ASSERT_TRUE(Unlock(a).ok());
  ASSERT_TRUE(Step(1, 2, MsgType::kLockHandoff));
  ASSERT_TRUE(Held(b));
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));  // B holds: C is named to it
  EXPECT_EQ(table_->counters().hints, 2u);
  DeliverAll();
  EXPECT_EQ(clients_[3]->predecessor_of(ids_[c]), std::optional<NodeId>(2));
  ASSERT_TRUE(Unlock(b).ok());
  ASSERT_TRUE(Step(2, 3, MsgType::kLockHandoff));
  EXPECT_TRUE(Held(c));
  DeliverAll();
  EXPECT_EQ(table_->counters().handoffs, 2u);
}

// A waiter behind an earlier waiter it conflicts with is not named, even if that waiter
// withdraws (then it is named as its blockers shrink to the holder).
TEST_F(HandoffTest, WaiterNamedOnceItsOtherBlockersGo) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t r = Lock(2, 0, 8, kS, now_ + absl::Milliseconds(10));
  DeliverAll();
  const size_t w = Lock(3, 0, 64);
  DeliverAll();
  EXPECT_EQ(table_->counters().hints, 0u);
  Advance(absl::Milliseconds(20));  // the shared waiter times out
  ASSERT_FALSE(Held(r));
  DeliverAll();
  EXPECT_EQ(table_->counters().hints, 1u);
  EXPECT_EQ(clients_[3]->predecessor_of(ids_[w]), std::optional<NodeId>(1));
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 3, MsgType::kLockHandoff));
  EXPECT_TRUE(Held(w));
}

// The releaser is the arbiter's node (node 0): its kLockPassed is local; the hand-off is the
// one message on the network.
TEST_F(HandoffTest, ReleaserIsTheArbitersNode) {
  const size_t h = Lock(0, 0, 64);
  DeliverAll();
  const size_t w = Lock(2, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(0, 2, MsgType::kLockHandoff));
  EXPECT_TRUE(Held(w));
  ASSERT_TRUE(Step(0, 0, MsgType::kLockPassed));
  EXPECT_TRUE(TableHolds(2, ids_[w]));
  EXPECT_TRUE(net_.empty());
}

// Successor on the arbiter's node, and successor on the releaser's own node.
TEST_F(HandoffTest, SuccessorOnTheArbitersOrTheReleasersNode) {
  const size_t h = Lock(1, 0, 64);
  DeliverAll();
  const size_t w = Lock(0, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(h).ok());
  ASSERT_TRUE(Step(1, 0, MsgType::kLockHandoff));
  EXPECT_TRUE(Held(w));
  ASSERT_TRUE(Step(1, 0, MsgType::kLockPassed));
  const size_t w2 = Lock(0, 0, 64);
  DeliverAll();
  ASSERT_TRUE(Unlock(w).ok());
  ASSERT_TRUE(Step(0, 0, MsgType::kLockHandoff));
  EXPECT_TRUE(Held(w2));
  DeliverAll();
  EXPECT_TRUE(TableHolds(0, ids_[w2]));
  EXPECT_EQ(table_->counters().handoffs, 2u);
}

}  // namespace
}  // namespace dsm::lock
