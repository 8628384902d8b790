// PeerTable: every transition of the peer state machine and its invariants (peer_table.h).
#include "transport/peer_table.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsm {
namespace {

using ::testing::HasSubstr;

const absl::Time kT0 = absl::FromUnixSeconds(1000);

Message To(NodeId dst, uint64_t page) {
  Message m;
  m.type = MsgType::kGetS;
  m.dst = dst;
  m.page = page;
  return m;
}

class PeerTableTest : public ::testing::Test {
 protected:
  // Node 1 of 3, incarnation 500.
  PeerTable t_{1, 3, 500, kT0};
};

TEST_F(PeerTableTest, StartsConnectingButSelfIsUp) {
  EXPECT_EQ(t_.state(0), PeerState::kConnecting);
  EXPECT_EQ(t_.state(2), PeerState::kConnecting);
  EXPECT_EQ(t_.state(1), PeerState::kUp);
  EXPECT_EQ(t_.peer(1).incarnation, 500u);
  EXPECT_TRUE(t_.IsUp(1));
  EXPECT_FALSE(t_.IsUp(0));
  EXPECT_FALSE(t_.IsUp(3)) << "outside the cluster";
  EXPECT_FALSE(t_.Down(1, absl::UnavailableError("x"))) << "self is never down";
  EXPECT_FALSE(t_.Leave(1, absl::UnavailableError("x")));
}

TEST_F(PeerTableTest, ConnectingQueuesThenUpFlushesInOrder) {
  for (uint64_t i = 0; i < 3; ++i) {
    Message m = To(0, i);
    EXPECT_FALSE(t_.Route(m)) << "queued, not sent";
  }
  EXPECT_EQ(t_.peer(0).counters.queued, 3u);
  EXPECT_EQ(t_.CheckJoin(0, 77).refusal, Refusal::kNone);
  PeerTable::UpResult up = t_.Up(0, 77);
  EXPECT_FALSE(up.owed_down.has_value());
  EXPECT_FALSE(up.rejoin);
  ASSERT_EQ(up.pending.size(), 3u);
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(up.pending[i].page, i);
  EXPECT_TRUE(t_.peer(0).pending.empty()) << "pending only while connecting";
  EXPECT_EQ(t_.state(0), PeerState::kUp);
  EXPECT_EQ(t_.peer(0).incarnation, 77u);
  Message m = To(0, 9);
  EXPECT_TRUE(t_.Route(m)) << "an up peer: send now";
  EXPECT_EQ(t_.peer(0).counters.ups, 1u);
}

TEST_F(PeerTableTest, ConnectDeadlineExpiresOnlyConnectingPeers) {
  t_.Up(2, 9);
  EXPECT_TRUE(t_.ExpiredConnecting(kT0 - absl::Seconds(1)).empty());
  EXPECT_EQ(t_.ExpiredConnecting(kT0), std::vector<NodeId>{0});
  t_.SetConnectDeadline(kT0 + absl::Seconds(5));
  EXPECT_TRUE(t_.ExpiredConnecting(kT0).empty());
  EXPECT_EQ(t_.ExpiredConnecting(kT0 + absl::Seconds(5)), std::vector<NodeId>{0});
}

TEST_F(PeerTableTest, ConnectingToDownDropsTheQueueAndOwesOneReport) {
  Message m = To(0, 1);
  t_.Route(m);
  EXPECT_TRUE(t_.Down(0, absl::DeadlineExceededError("did not connect")));
  EXPECT_EQ(t_.state(0), PeerState::kDown);
  EXPECT_TRUE(t_.peer(0).pending.empty());
  EXPECT_EQ(t_.ExpiredConnecting(absl::InfiniteFuture()), std::vector<NodeId>{2})
      << "a down peer has no connect deadline";
  std::optional<absl::Status> r = t_.TakeDownReport(0);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(absl::IsDeadlineExceeded(*r));
  EXPECT_FALSE(t_.TakeDownReport(0).has_value()) << "reported once";
  EXPECT_FALSE(t_.Down(0, absl::UnavailableError("again"))) << "already down";
  EXPECT_FALSE(t_.TakeDownReport(0).has_value());
  Message late = To(0, 2);
  EXPECT_FALSE(t_.Route(late));
  EXPECT_EQ(t_.peer(0).counters.dropped, 1u);
  // Never seen (incarnation 0): any incarnation may still come.
  EXPECT_EQ(t_.CheckJoin(0, 1).refusal, Refusal::kNone);
}

TEST_F(PeerTableTest, UpToDownToNewerIncarnationIsARejoin) {
  t_.Up(0, 100);
  EXPECT_TRUE(t_.Down(0, absl::UnavailableError("connection closed")));
  ASSERT_TRUE(t_.TakeDownReport(0).has_value());
  EXPECT_EQ(t_.peer(0).incarnation, 100u) << "the down incarnation is remembered";
  PeerTable::Verdict same = t_.CheckJoin(0, 100);
  EXPECT_EQ(same.refusal, Refusal::kStaleIncarnation);
  EXPECT_EQ(same.detail, 100u);
  EXPECT_THAT(same.why.message(), HasSubstr("incarnation 100"));
  EXPECT_EQ(t_.CheckJoin(0, 99).refusal, Refusal::kStaleIncarnation);
  EXPECT_EQ(t_.CheckJoin(0, 101).refusal, Refusal::kNone);
  PeerTable::UpResult up = t_.Up(0, 101);
  EXPECT_TRUE(up.rejoin);
  EXPECT_EQ(up.previous, 100u);
  EXPECT_FALSE(up.owed_down.has_value()) << "already reported";
  EXPECT_EQ(t_.state(0), PeerState::kUp);
  EXPECT_EQ(t_.peer(0).counters.rejoins, 1u);
  EXPECT_EQ(t_.peer(0).counters.ups, 2u);
  EXPECT_EQ(t_.peer(0).counters.downs, 1u);
}

TEST_F(PeerTableTest, ADownNotYetReportedIsHandedToTheRejoinFirst) {
  t_.Up(0, 100);
  EXPECT_TRUE(t_.Down(0, absl::UnavailableError("gone")));  // report Posted, not yet made
  PeerTable::UpResult up = t_.Up(0, 200);
  ASSERT_TRUE(up.owed_down.has_value()) << "the old incarnation's down comes before the up";
  EXPECT_THAT(up.owed_down->message(), HasSubstr("gone"));
  EXPECT_FALSE(t_.TakeDownReport(0).has_value()) << "the Posted report finds nothing owed";
}

TEST_F(PeerTableTest, UpRefusesAnotherIncarnationAsDuplicateAndTheSameAsSecond) {
  t_.Up(2, 300);
  PeerTable::Verdict dup = t_.CheckJoin(2, 301);
  EXPECT_EQ(dup.refusal, Refusal::kDuplicateId);
  EXPECT_EQ(dup.detail, 300u);
  EXPECT_TRUE(absl::IsAlreadyExists(dup.why));
  EXPECT_THAT(dup.why.message(), HasSubstr("duplicate node id"));
  PeerTable::Verdict older = t_.CheckJoin(2, 299);
  EXPECT_EQ(older.refusal, Refusal::kDuplicateId) << "one live incarnation per id";
  EXPECT_EQ(t_.CheckJoin(2, 300).refusal, Refusal::kSecondConnection);
  t_.NoteRefused(2);
  EXPECT_EQ(t_.peer(2).counters.refused, 1u);
  EXPECT_EQ(t_.Totals().refused, 1u);
}

TEST_F(PeerTableTest, UpToLeftToNewerIncarnation) {
  EXPECT_FALSE(t_.Leave(0, absl::OkStatus())) << "only an up peer leaves";
  t_.Up(0, 40);
  EXPECT_TRUE(t_.Leave(0, absl::UnavailableError("node 0 left")));
  EXPECT_EQ(t_.state(0), PeerState::kLeft);
  EXPECT_FALSE(t_.Down(0, absl::UnavailableError("eof after goodbye"))) << "left is final";
  ASSERT_TRUE(t_.TakeDownReport(0).has_value());
  Message m = To(0, 1);
  EXPECT_FALSE(t_.Route(m));
  EXPECT_EQ(t_.peer(0).counters.dropped, 1u);
  EXPECT_EQ(t_.CheckJoin(0, 40).refusal, Refusal::kStaleIncarnation);
  EXPECT_THAT(t_.CheckJoin(0, 40).why.message(), HasSubstr("left"));
  EXPECT_EQ(t_.CheckJoin(0, 41).refusal, Refusal::kNone);
  EXPECT_TRUE(t_.Up(0, 41).rejoin);
  EXPECT_EQ(t_.state(0), PeerState::kUp);
}

TEST_F(PeerTableTest, IncarnationNeverDecreasesAcrossRepeatedRestarts) {
  Incarnation last = 0;
  for (Incarnation i : {10u, 20u, 35u, 36u}) {
    ASSERT_EQ(t_.CheckJoin(0, i).refusal, Refusal::kNone) << i;
    t_.Up(0, i);
    ASSERT_TRUE(t_.Down(0, absl::UnavailableError("killed")));
    ASSERT_TRUE(t_.TakeDownReport(0).has_value());
    EXPECT_GT(t_.peer(0).incarnation, last);
    last = t_.peer(0).incarnation;
    EXPECT_EQ(t_.CheckJoin(0, i).refusal, Refusal::kStaleIncarnation);
  }
  EXPECT_EQ(t_.peer(0).counters.rejoins, 3u);
}

TEST_F(PeerTableTest, ClearPendingDropsEveryQueue) {
  Message a = To(0, 1), b = To(2, 1);
  t_.Route(a);
  t_.Route(b);
  t_.ClearPending();
  EXPECT_TRUE(t_.peer(0).pending.empty());
  EXPECT_TRUE(t_.peer(2).pending.empty());
  EXPECT_TRUE(t_.Up(0, 5).pending.empty());
}

TEST(Incarnation, FreshOnesAreNonZeroDistinctAndDoNotGoBack) {
  std::set<Incarnation> seen;
  Incarnation prev = 0;
  for (int i = 0; i < 1000; ++i) {
    const Incarnation n = NewIncarnation();
    EXPECT_NE(n, 0u);
    // The clock part (high bits) never goes back; two in one microsecond differ only below.
    EXPECT_GE(n >> 12, prev >> 12);
    prev = n;
    seen.insert(n);
  }
  EXPECT_GT(seen.size(), 900u) << "random low bits tell same-microsecond starts apart";
  const Incarnation a = NewIncarnation();
  absl::SleepFor(absl::Milliseconds(2));
  EXPECT_GT(NewIncarnation(), a) << "a later start is a larger number";
}

TEST(RefusalStatus, NamesTheReasonAndBothValues) {
  absl::Status size = RefusalStatus(Refusal::kClusterSize, 0, 2, 9, 3, 4);
  EXPECT_TRUE(absl::IsFailedPrecondition(size));
  EXPECT_THAT(size.message(), HasSubstr("cluster size mismatch: node 0 has 3"));
  EXPECT_THAT(size.message(), HasSubstr("this node (2) has 4"));
  absl::Status dup = RefusalStatus(Refusal::kDuplicateId, 0, 2, 9, 8, 4);
  EXPECT_TRUE(absl::IsAlreadyExists(dup));
  EXPECT_THAT(dup.message(), HasSubstr("duplicate node id"));
  EXPECT_THAT(dup.message(), HasSubstr("incarnation 8"));
  EXPECT_THAT(dup.message(), HasSubstr("incarnation 9"));
  absl::Status stale = RefusalStatus(Refusal::kStaleIncarnation, 0, 2, 9, 9, 4);
  EXPECT_THAT(stale.message(), HasSubstr("stale incarnation"));
  EXPECT_THAT(RefusalStatus(Refusal::kSecondConnection, 0, 2, 9, 9, 4).message(),
              HasSubstr("second connection"));
  EXPECT_TRUE(RefusalStatus(Refusal::kNone, 0, 2, 9, 0, 4).ok());
  for (uint8_t r = 0; r <= kMaxRefusal; ++r) {
    EXPECT_STRNE(RefusalName(static_cast<Refusal>(r)), "unknown refusal");
  }
  for (PeerState s : {PeerState::kConnecting, PeerState::kUp, PeerState::kDown, PeerState::kLeft}) {
    EXPECT_STRNE(PeerStateName(s), "?");
  }
}

}  // namespace
}  // namespace dsm
