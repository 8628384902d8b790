#include "lock/lock_table.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lock/test_util.h"
#include "protocol/validation.h"

namespace dsm::lock {
namespace {

using testing::AcquireMsg;
using testing::RecordingPort;
using testing::SimpleMsg;
constexpr LockMode kS = LockMode::kShared;
constexpr LockMode kX = LockMode::kExclusive;

const char* CodeName(LockReplyCode c) {
  switch (c) {
    case LockReplyCode::kGranted: return "granted";
    case LockReplyCode::kQueued: return "queued";
    case LockReplyCode::kBusy: return "busy";
    case LockReplyCode::kBadRequest: return "bad";
    case LockReplyCode::kNoSuchRegion: return "noregion";
    case LockReplyCode::kNotArbiter: return "notarbiter";
    case LockReplyCode::kShuttingDown: return "shutdown";
  }
  return "?";
}

class LockTableTest : public ::testing::Test {
 protected:
  LockTableTest() : table_(Config(), &port_) {}
  static LockTable::Config Config() {
    LockTable::Config c;
    c.self = 0;
    c.region = 1;
    c.region_size = 1 << 20;
    c.release_grace = absl::Seconds(1);
    // The arbiter path; the one-message hand-off is tested in lock_handoff_test.cc.
    c.direct_handoff = false;
    return c;
  }

  // Sends one message to the table and returns its replies as "node/id code[ died]; ...".
  std::string Do(const Message& m) {
    table_.OnMessage(m, now_);
    return Replies();
  }
  std::string Acq(NodeId n, uint64_t id, uint64_t off, uint64_t len, LockMode mode) {
    return Do(AcquireMsg(n, id, off, len, mode));
  }
  std::string Try(NodeId n, uint64_t id, uint64_t off, uint64_t len, LockMode mode) {
    return Do(AcquireMsg(n, id, off, len, mode, /*try_lock=*/true));
  }
  std::string Rel(NodeId n, uint64_t id) { return Do(SimpleMsg(MsgType::kLockRelease, n, id)); }
  std::string Cancel(NodeId n, uint64_t id) {
    return Do(SimpleMsg(MsgType::kLockCancel, n, id));
  }
  std::string Replies() {
    std::vector<std::string> parts;
    for (const Message& m : port_.Take()) {
      EXPECT_EQ(m.type, MsgType::kLockReply);
      EXPECT_EQ(m.region, 1u);
      EXPECT_TRUE(CheckMessage(m, 64).ok()) << CheckMessage(m, 64);
      parts.push_back(absl::StrCat(m.dst, "/", m.req_id, " ", CodeName(LockReplyCodeOf(m.arg)),
                                   LockReplyDied(m.arg) ? " died" : ""));
    }
    EXPECT_TRUE(table_.CheckInvariants().ok()) << table_.CheckInvariants();
    return absl::StrJoin(parts, "; ");
  }

  RecordingPort port_;
  LockTable table_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST_F(LockTableTest, OverlappingExclusiveRangesExclude) {
  EXPECT_EQ(Acq(1, 1, 0, 100, kX), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 99, 10, kX), "2/1 queued");
  EXPECT_EQ(Acq(3, 1, 50, 1, kS), "3/1 queued");
  EXPECT_EQ(table_.num_held(), 1u);
  EXPECT_EQ(Rel(1, 1), "2/1 granted; 3/1 granted");  // [99,109) and [50,51) do not overlap
}

TEST_F(LockTableTest, SharedHoldersCoexist) {
  EXPECT_EQ(Acq(1, 1, 0, 100, kS), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 50, 100, kS), "2/1 granted");
  EXPECT_EQ(Acq(3, 1, 0, 1000, kS), "3/1 granted");
  EXPECT_EQ(table_.num_held(), 3u);
  EXPECT_EQ(Acq(4, 1, 120, 1, kX), "4/1 queued");
  EXPECT_EQ(Rel(2, 1), "");  // node 3 still covers byte 120
  EXPECT_EQ(Rel(3, 1), "4/1 granted");
}

TEST_F(LockTableTest, NonOverlappingExclusiveCoexist) {
  EXPECT_EQ(Acq(1, 1, 0, 100, kX), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 100, 100, kX), "2/1 granted");  // half-open: adjacent is not overlapping
  EXPECT_EQ(Acq(3, 1, 200, 1, kX), "3/1 granted");
  EXPECT_EQ(Acq(1, 2, 300, 5, kX), "1/2 granted");  // same node, another lock
}

TEST_F(LockTableTest, SameNodeLocksConflictLikeOthers) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kX), "1/1 granted");
  EXPECT_EQ(Acq(1, 2, 5, 10, kS), "1/2 queued");
}

TEST_F(LockTableTest, ExclusiveNotStarvedByStreamOfShared) {
  EXPECT_EQ(Acq(1, 1, 0, 100, kS), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 10, 10, kX), "2/1 queued");
  // A stream of shared requests overlapping the waiting exclusive one: none overtakes it,
  // though each is compatible with the current (shared) holder.
  for (uint64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(Acq(3, 10 + i, 0, 50, kS), absl::StrCat("3/", 10 + i, " queued"));
  }
  // A shared request that does not overlap the waiter is compatible with everything: granted.
  EXPECT_EQ(Acq(4, 1, 60, 10, kS), "4/1 granted");
  EXPECT_EQ(Rel(1, 1), "2/1 granted");
  EXPECT_EQ(Rel(2, 1), "3/10 granted; 3/11 granted; 3/12 granted; 3/13 granted; 3/14 granted");
}

TEST_F(LockTableTest, GrantsInFifoOrder) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kX), "1/1 granted");
  EXPECT_EQ(Acq(4, 1, 0, 10, kX), "4/1 queued");
  EXPECT_EQ(Acq(2, 1, 5, 10, kX), "2/1 queued");
  EXPECT_EQ(Acq(3, 1, 0, 1, kX), "3/1 queued");
  EXPECT_EQ(Rel(1, 1), "4/1 granted");
  EXPECT_EQ(Rel(4, 1), "2/1 granted; 3/1 granted");  // 3 overlaps only 4's range, not 2's
  EXPECT_EQ(Rel(3, 1), "");
  EXPECT_EQ(Rel(2, 1), "");
  EXPECT_EQ(table_.num_held() + table_.num_waiting(), 0u);
}

TEST_F(LockTableTest, WaiterBlockedOnlyByEarlierWaiterIsGrantedInOrder) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kX), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 5, 10, kX), "2/1 queued");   // [5,15) waits for 1
  EXPECT_EQ(Acq(3, 1, 12, 10, kX), "3/1 queued");  // [12,22) waits for 2 only (FIFO)
  EXPECT_EQ(Rel(1, 1), "2/1 granted");
  EXPECT_EQ(Rel(2, 1), "3/1 granted");
}

TEST_F(LockTableTest, TryLockRefusedWithoutQueueing) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kS), "1/1 granted");
  EXPECT_EQ(Try(2, 1, 5, 1, kX), "2/1 busy");
  EXPECT_EQ(table_.num_waiting(), 0u);
  EXPECT_EQ(Try(2, 2, 5, 1, kS), "2/2 granted");
  // A try-lock does not overtake a waiter it conflicts with, even if the holders allow it.
  EXPECT_EQ(Acq(3, 1, 0, 10, kX), "3/1 queued");
  EXPECT_EQ(Try(4, 1, 8, 1, kS), "4/1 busy");
  EXPECT_EQ(Rel(1, 1), "");
  EXPECT_EQ(Rel(2, 2), "3/1 granted");
  EXPECT_EQ(Rel(2, 1), "");  // the refused id was never entered: releasing it is a no-op
}

TEST_F(LockTableTest, CancelOfQueuedRequestUnblocksThoseBehind) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kS), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 0, 20, kX), "2/1 queued");
  EXPECT_EQ(Acq(3, 1, 5, 10, kS), "3/1 queued");   // blocked only by the queued exclusive
  EXPECT_EQ(Acq(4, 1, 15, 5, kS), "4/1 queued");
  EXPECT_EQ(Cancel(2, 1), "3/1 granted; 4/1 granted");
  EXPECT_EQ(Cancel(2, 1), "");  // twice: ignored
  EXPECT_EQ(table_.counters().cancelled, 1u);
}

TEST_F(LockTableTest, CancelCrossingGrantReleases) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kX), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 0, 10, kX), "2/1 queued");
  EXPECT_EQ(Acq(3, 1, 0, 10, kX), "3/1 queued");
  EXPECT_EQ(Rel(1, 1), "2/1 granted");
  // Node 2's deadline fired before the grant arrived: its cancel releases the granted lock.
  EXPECT_EQ(Cancel(2, 1), "3/1 granted");
}

TEST_F(LockTableTest, HolderDeathReleasesAfterGraceAndNextGrantSaysPreviousHolderDied) {
  EXPECT_EQ(Acq(1, 1, 0, 100, kX), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 50, 100, kX), "2/1 queued");
  EXPECT_EQ(Acq(3, 1, 120, 10, kS), "3/1 queued");  // behind 2 (FIFO), not behind 1
  table_.OnNodeDown(1, now_);
  EXPECT_EQ(Replies(), "");
  EXPECT_EQ(table_.NextDeadline(), now_ + absl::Seconds(1));
  table_.OnTick(now_ + absl::Seconds(1) - absl::Nanoseconds(1));
  EXPECT_EQ(Replies(), "");
  table_.OnTick(now_ + absl::Seconds(1));
  EXPECT_EQ(Replies(), "2/1 granted died");
  EXPECT_EQ(table_.NextDeadline(), absl::InfiniteFuture());
  EXPECT_EQ(table_.counters().released_by_death, 1u);
  // The exclusive grant cleared the mark in [50,150); [0,50) is still marked.
  EXPECT_EQ(Acq(4, 1, 0, 10, kS), "4/1 granted died");
  EXPECT_EQ(Rel(2, 1), "3/1 granted");
  EXPECT_EQ(Acq(4, 2, 60, 10, kS), "4/2 granted");
  // A request arriving from the dead node (late) is ignored.
  EXPECT_EQ(Acq(1, 9, 500, 10, kX), "");
}

TEST_F(LockTableTest, DeathMarkStaysForSharedGrantsUntilAnExclusiveGrant) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kX), "1/1 granted");
  table_.OnNodeDown(1, now_);
  table_.OnTick(now_ + absl::Hours(1));
  EXPECT_EQ(Replies(), "");
  EXPECT_EQ(Acq(2, 1, 5, 1, kS), "2/1 granted died");
  EXPECT_EQ(Acq(3, 1, 0, 1, kS), "3/1 granted died");
  EXPECT_EQ(Rel(2, 1), "");
  EXPECT_EQ(Rel(3, 1), "");
  EXPECT_EQ(Acq(2, 2, 0, 10, kX), "2/2 granted died");
  EXPECT_TRUE(table_.dead_marks().empty());
  EXPECT_EQ(Rel(2, 2), "");
  EXPECT_EQ(Acq(3, 2, 0, 10, kS), "3/2 granted");
}

// A grant that said previous_holder_died but crossed its requester's withdrawal (a deadline)
// was seen by no application: its kLockCancel puts back the marks the grant cleared, so the
// next holder of those bytes is told. A release (the grant was seen) does not.
TEST_F(LockTableTest, ACancelCrossingAToldGrantPutsTheMarkBack) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kX), "1/1 granted");
  table_.OnNodeDown(1, now_);
  table_.OnTick(now_ + absl::Hours(1));
  EXPECT_EQ(Replies(), "");
  EXPECT_EQ(Acq(2, 1, 5, 10, kX), "2/1 granted died");
  EXPECT_FALSE(table_.dead_marks().Overlaps(5, 15));
  EXPECT_EQ(Cancel(2, 1), "");
  EXPECT_TRUE(table_.dead_marks().Overlaps(5, 10));
  EXPECT_FALSE(table_.dead_marks().Overlaps(10, 15));  // only what the grant cleared
  EXPECT_EQ(Acq(3, 1, 6, 1, kX), "3/1 granted died");
  EXPECT_EQ(Rel(3, 1), "");
  EXPECT_EQ(Acq(3, 2, 6, 1, kS), "3/2 granted");
  EXPECT_EQ(Acq(3, 3, 0, 10, kS), "3/3 granted died");
}

TEST_F(LockTableTest, DeadSharedHolderLeavesNoMark) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kS), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 0, 10, kX), "2/1 queued");
  table_.OnNodeDown(1, now_);
  table_.OnTick(now_ + absl::Seconds(5));
  EXPECT_EQ(Replies(), "2/1 granted");
}

TEST_F(LockTableTest, WaitersOfDownNodeAreDroppedAtOnce) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kS), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 0, 10, kX), "2/1 queued");
  EXPECT_EQ(Acq(3, 1, 5, 10, kS), "3/1 queued");
  table_.OnNodeDown(2, now_);
  EXPECT_EQ(Replies(), "3/1 granted");
  EXPECT_EQ(table_.counters().dropped_by_death, 1u);
  table_.OnNodeDown(2, now_ + absl::Seconds(3));  // twice: ignored
  EXPECT_EQ(Replies(), "");
}

TEST_F(LockTableTest, ZeroGraceReleasesImmediately) {
  LockTable::Config c = Config();
  c.release_grace = absl::ZeroDuration();
  LockTable t(c, &port_);
  t.OnMessage(AcquireMsg(1, 1, 0, 10, kX), now_);
  t.OnMessage(AcquireMsg(2, 1, 0, 10, kX), now_);
  port_.Take();
  t.OnNodeDown(1, now_);
  const auto replies = port_.Take();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].dst, 2u);
  EXPECT_EQ(LockReplyCodeOf(replies[0].arg), LockReplyCode::kGranted);
  EXPECT_TRUE(LockReplyDied(replies[0].arg));
}

TEST_F(LockTableTest, BadRequestsAreRefused) {
  EXPECT_EQ(Acq(1, 1, (1 << 20) - 5, 10, kX), "1/1 bad");  // past the region's end
  EXPECT_EQ(Acq(1, 2, 0, 10, kX), "1/2 granted");
  EXPECT_EQ(Acq(1, 2, 100, 10, kX), "1/2 bad");  // id in use
  EXPECT_EQ(Do(AcquireMsg(1, 3, 0, 10, kX, false, /*region=*/7)), "1/3 bad");
  Message m = AcquireMsg(1, 4, 0, 10, kX);
  m.arg = AcquireLen(m.arg);  // mode 0
  EXPECT_EQ(Do(m), "1/4 bad");
  EXPECT_EQ(table_.num_held(), 1u);
}

TEST_F(LockTableTest, FailAllAnswersEveryWaiter) {
  EXPECT_EQ(Acq(1, 1, 0, 10, kX), "1/1 granted");
  EXPECT_EQ(Acq(2, 1, 0, 10, kX), "2/1 queued");
  EXPECT_EQ(Acq(3, 1, 0, 10, kS), "3/1 queued");
  table_.FailAll(LockReplyCode::kShuttingDown);
  EXPECT_EQ(Replies(), "2/1 shutdown; 3/1 shutdown");
  EXPECT_EQ(table_.num_held() + table_.num_waiting(), 0u);
  EXPECT_EQ(Acq(2, 2, 0, 10, kX), "2/2 granted");
}

TEST_F(LockTableTest, ManyDisjointLocksStaySmallAndFast) {
  // 100k disjoint locks, then a release in the middle: only the overlapping waiter is examined.
  for (uint64_t i = 0; i < 100000; ++i) table_.OnMessage(AcquireMsg(1, i + 1, i * 8, 8, kX), now_);
  table_.OnMessage(AcquireMsg(2, 1, 400000, 8, kX), now_);
  EXPECT_EQ(port_.Take().size(), 100001u);
  table_.OnMessage(SimpleMsg(MsgType::kLockRelease, 1, 50001), now_);  // (CheckInvariants
  const auto replies = port_.Take();                                  //  is O(n^2): skipped)
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].dst, 2u);
  EXPECT_EQ(table_.num_held(), 100000u);
}

}  // namespace
}  // namespace dsm::lock
