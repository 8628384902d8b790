// Message authority on real nodes: a loopback cluster of two dsm::Nodes (0 and 1) and a forger
// (node 2, a bare transport driven by the test) that sends well-formed messages it may not
// send. Each forgery must be dropped, counted in Stats::authority_violations, and cost the
// forger its connection, while the victim's pages, locks and barriers are left exactly as
// they were. The rule table itself is tested in tests/protocol/authority_test.cc.
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "coherence/types.h"
#include "dsm/node.h"
#include "dsm/region.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "protocol/lock_fields.h"
#include "region/mapped_region.h"
#include "transport/transport_test_util.h"

namespace dsm {
namespace {

using testing::TestNode;

constexpr NodeId kForger = 2;
constexpr size_t kPages = 8;

class AuthorityCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> seq{0};
    const std::string hub = absl::StrCat("authority-", getpid(), "-", seq.fetch_add(1));
    std::vector<std::string> peers = {"local:0", "local:1", "local:2"};
    Options base;
    base.peers = peers;
    base.transport = TransportKind::kLoopback;
    base.loopback_hub = hub;
    // MapRegion waits this long for the forger, which never answers its identity check.
    base.connect_timeout = absl::Seconds(4);
    base.peer_timeout = absl::Seconds(5);
    // The forger is a bare transport that sends no heartbeats: a long lease keeps it a member
    // (whose forgeries are judged) for the whole test instead of a peer declared down.
    base.lease_duration = absl::Minutes(10);

    Options f = base;
    f.node_id = kForger;
    ASSERT_TRUE(forger_.Init(f).ok());
    ASSERT_TRUE(forger_.Start().ok());

    std::vector<absl::StatusOr<std::unique_ptr<Node>>> made;
    for (int i = 0; i < 2; ++i) made.emplace_back(absl::UnknownError("not run"));
    testing::RunParallel({[&] {
                            Options o = base;
                            o.node_id = 0;
                            made[0] = Node::Create(o);
                          },
                          [&] {
                            Options o = base;
                            o.node_id = 1;
                            made[1] = Node::Create(o);
                          }});
    for (auto& m : made) {
      ASSERT_TRUE(m.ok()) << m.status();
      nodes_.push_back(std::move(*m));
    }
    ASSERT_TRUE(forger_.rec().WaitUp(0));
    ASSERT_TRUE(forger_.rec().WaitUp(1));

    RegionOptions ro;
    ro.name = "authority";
    ro.size = kPages * kPageSize;
    ro.home = 0;
    region_id_ = RegionIdFromName(ro.name);
    std::vector<absl::StatusOr<std::unique_ptr<Region>>> mapped;
    for (int i = 0; i < 2; ++i) mapped.emplace_back(absl::UnknownError("not run"));
    testing::RunParallel({[&] { mapped[0] = nodes_[0]->MapRegion(ro); },
                          [&] { mapped[1] = nodes_[1]->MapRegion(ro); }});
    for (auto& m : mapped) {
      ASSERT_TRUE(m.ok()) << m.status();
      regions_.push_back(std::move(*m));
    }
  }

  void TearDown() override {
    regions_.clear();
    for (auto& n : nodes_) (void)n->Shutdown();
    forger_.Shutdown(absl::Milliseconds(100));
    forger_.Stop();
  }

  uint8_t* Page(int node, PageIndex p) {
    return static_cast<uint8_t*>(regions_[static_cast<size_t>(node)]->data()) + p * kPageSize;
  }
  Stats StatsOf(int node) {
    absl::StatusOr<Stats> s = nodes_[static_cast<size_t>(node)]->GetStats();
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : Stats{};
  }
  Message Forged(MsgType type, NodeId dst, PageIndex page, uint64_t req_id, uint64_t arg) {
    Message m;
    m.type = type;
    m.dst = dst;
    m.region = region_id_;
    m.page = page;
    m.req_id = req_id;
    m.arg = arg;
    return m;
  }
  // The victim cut the forger off: the forger sees it down and the victim counted it.
  void ExpectCutOff(int victim, uint64_t violations = 1) {
    EXPECT_TRUE(forger_.rec().WaitDown(static_cast<NodeId>(victim)))
        << "node " << victim << " kept the forger's connection";
    EXPECT_EQ(StatsOf(victim).authority_violations, violations);
  }
  // For a forgery aimed at state the victim sets up on another thread (a map request): until
  // that state exists the message is not judged (it is dropped as a late answer), so it is
  // sent again until the victim cuts the forger off, for at most 20 s.
  void SendUntilCutOff(int victim, const Message& m) {
    const absl::Time until = absl::Now() + absl::Seconds(20);
    do {
      forger_.Send(m);
    } while (!forger_.rec().WaitDown(static_cast<NodeId>(victim), absl::Milliseconds(20)) &&
             absl::Now() < until);
  }
  size_t ForgerReceived(MsgType type) {
    size_t n = 0;
    for (const auto& m : forger_.rec().messages()) n += m.type == type ? 1 : 0;
    return n;
  }

  TestNode forger_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<std::unique_ptr<Region>> regions_;
  RegionId region_id_ = 0;
};

void Fill(uint8_t* p, uint8_t v) { std::memset(p, v, kPageSize); }
// Reads the whole page (volatile: every byte is really read, so the page is faulted in).
bool Holds(const uint8_t* p, uint8_t v) {
  const volatile uint8_t* q = p;
  bool all = true;
  for (size_t i = 0; i < kPageSize; ++i) all &= q[i] == v;
  return all;
}

TEST_F(AuthorityCluster, ForgedInvFromNonHomeIsRejectedAndModifiedPageSurvives) {
  Fill(Page(1, 3), 0x5a);  // node 1 holds page 3 Modified (home: node 0)
  const Stats before = StatsOf(1);
  ASSERT_EQ(before.pages_modified, 1u);

  forger_.Send(Forged(MsgType::kInv, 1, 3, 77, 0));
  ExpectCutOff(1);

  const Stats after = StatsOf(1);
  EXPECT_EQ(after.pages_modified, 1u);
  EXPECT_EQ(after.invalidations_received, before.invalidations_received);
  EXPECT_EQ(ForgerReceived(MsgType::kInvAck), 0u);
  EXPECT_TRUE(Holds(Page(1, 3), 0x5a));
  // The write is the cluster's: the home recalls it intact.
  EXPECT_TRUE(Holds(Page(0, 3), 0x5a));
  EXPECT_EQ(StatsOf(0).authority_violations, 0u);
}

TEST_F(AuthorityCluster, ForgedRecallFromNonHomeIsRejectedAtHolderAndAtHome) {
  Fill(Page(1, 4), 0x11);  // Modified at node 1
  Fill(Page(0, 5), 0x22);  // Modified at the home itself
  const Stats before1 = StatsOf(1);
  const Stats before0 = StatsOf(0);
  ASSERT_EQ(before1.pages_modified, 1u);
  ASSERT_EQ(before0.pages_modified, 1u);

  const uint64_t invalidate = static_cast<uint64_t>(RecallKind::kInvalidate);
  forger_.Send(Forged(MsgType::kRecall, 1, 4, 78, invalidate));
  forger_.Send(Forged(MsgType::kRecall, 0, 5, 79, invalidate));
  ExpectCutOff(1);
  ExpectCutOff(0);

  // No page bytes went to the forger, and neither copy moved.
  EXPECT_EQ(ForgerReceived(MsgType::kRecallAck), 0u);
  const Stats after1 = StatsOf(1);
  const Stats after0 = StatsOf(0);
  EXPECT_EQ(after1.recalls_received, before1.recalls_received);
  EXPECT_EQ(after0.recalls_received, before0.recalls_received);
  EXPECT_EQ(after1.pages_modified, 1u);
  EXPECT_EQ(after0.pages_modified, 1u);
  EXPECT_TRUE(Holds(Page(1, 4), 0x11));
  EXPECT_TRUE(Holds(Page(0, 5), 0x22));
  // Each node reads the other's write.
  EXPECT_TRUE(Holds(Page(0, 4), 0x11));
  EXPECT_TRUE(Holds(Page(1, 5), 0x22));
}

// The forger takes page 6 Modified from the home, so node 1's read waits on the home's recall
// to the forger, which tells the forger the read's request id. A Data grant forged with that
// id (correct in every field but its sender) is rejected; the forger then answers the recall
// honestly and node 1 reads the home's data.
TEST_F(AuthorityCluster, ForgedDataForAnOutstandingRequestIsRejected) {
  Fill(Page(0, 6), 0x33);  // the home writes page 6
  forger_.Send(Forged(MsgType::kGetM, 0, 6, 5, 0));
  ASSERT_TRUE(forger_.rec().WaitUntil([](const testing::Recorder& r) {
    for (const auto& m : r.messages()) {
      if (m.type == MsgType::kData && m.page == 6) return true;
    }
    return false;
  }));

  std::atomic<bool> read_ok{false};
  std::thread reader([&] { read_ok = Holds(Page(1, 6), 0x33); });
  uint64_t req_id = 0;
  ASSERT_TRUE(forger_.rec().WaitUntil([&](const testing::Recorder& r) {
    for (const auto& m : r.messages()) {
      if (m.type == MsgType::kRecall && m.page == 6) {
        req_id = m.req_id;
        return true;
      }
    }
    return false;
  }));

  Message data = Forged(MsgType::kData, 1, 6, req_id, static_cast<uint64_t>(Grant::kShared));
  data.payload.assign(kPageSize, 0x66);
  forger_.Send(std::move(data));
  ExpectCutOff(1);

  // The honest answer to the recall: the page as granted, given back.
  Message ack = Forged(MsgType::kRecallAck, 0, 6, req_id,
                       static_cast<uint64_t>(coherence::PageState::kInvalid));
  ack.payload.assign(kPageSize, 0x33);
  forger_.Send(std::move(ack));
  reader.join();
  EXPECT_TRUE(read_ok);
  EXPECT_EQ(StatsOf(0).authority_violations, 0u);
}

TEST_F(AuthorityCluster, ForgedGrantFromNodeNotAskedIsRejected) {
  ASSERT_TRUE(Holds(Page(1, 2), 0));  // node 1 holds page 2 Shared
  const Stats before = StatsOf(1);
  ASSERT_EQ(before.pages_shared, 1u);
  forger_.Send(Forged(MsgType::kGrant, 1, 2, 1, static_cast<uint64_t>(Grant::kModified)));
  ExpectCutOff(1);
  const Stats after = StatsOf(1);
  EXPECT_EQ(after.pages_shared, 1u);
  EXPECT_EQ(after.pages_modified, 0u);
}

TEST_F(AuthorityCluster, ForgedWritebackToHomeIsRejectedAndHomeDataIntact) {
  Fill(Page(0, 1), 0x44);
  Message put = Forged(MsgType::kPut, 0, 1, 0, static_cast<uint64_t>(PutKind::kWritebackDrop));
  put.payload.assign(kPageSize, 0x99);
  forger_.Send(std::move(put));
  ExpectCutOff(0);
  EXPECT_TRUE(Holds(Page(0, 1), 0x44));
  EXPECT_TRUE(Holds(Page(1, 1), 0x44));
}

TEST_F(AuthorityCluster, ForgedInvAckToHomeIsRejected) {
  forger_.Send(Forged(MsgType::kInvAck, 0, 1, 3, 0));
  ExpectCutOff(0);
}

TEST_F(AuthorityCluster, ForgedLockReplyFromNonArbiterIsRejected) {
  // Node 0 (the arbiter: home of page 0) holds the lock; node 1's request waits for it.
  absl::StatusOr<LockGuard> held =
      regions_[0]->Lock(0, 64, LockMode::kExclusive, absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(held.ok()) << held.status();
  absl::Notification done;
  absl::StatusOr<LockHandle> got = absl::UnknownError("not run");
  const uint64_t id =
      regions_[1]->LockAsync(0, 64, LockMode::kExclusive, absl::Now() + absl::Seconds(30),
                             [&](absl::StatusOr<LockHandle> r) {
                               got = std::move(r);
                               done.Notify();
                             });
  // The engine runs posted work in order: once this answers, node 1 knows the request.
  (void)StatsOf(1);
  forger_.Send(
      Forged(MsgType::kLockReply, 1, 0, id, lock::PackLockReply(lock::LockReplyCode::kGranted)));
  ExpectCutOff(1);
  EXPECT_FALSE(done.HasBeenNotified()) << "a forged grant was delivered";
  ASSERT_TRUE(held->Unlock().ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(regions_[1]->Unlock(*got).ok());
}

TEST_F(AuthorityCluster, ForgedDirectGrantFromANodeNotNamedIsRejected) {
  // Node 0 (the arbiter) holds the lock; node 1's request queues behind it alone, so the
  // arbiter names node 0 as its predecessor: only node 0 may hand the lock over.
  absl::StatusOr<LockGuard> held =
      regions_[0]->Lock(0, 64, LockMode::kExclusive, absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(held.ok()) << held.status();
  const uint64_t queued = StatsOf(1).locks_queued;
  absl::Notification done;
  absl::StatusOr<LockHandle> got = absl::UnknownError("not run");
  const uint64_t id =
      regions_[1]->LockAsync(0, 64, LockMode::kExclusive, absl::Now() + absl::Seconds(30),
                             [&](absl::StatusOr<LockHandle> r) {
                               got = std::move(r);
                               done.Notify();
                             });
  while (StatsOf(1).locks_queued == queued) absl::SleepFor(absl::Milliseconds(1));
  forger_.Send(Forged(MsgType::kLockHandoff, 1, /*releaser's lock id=*/7, id, 0));
  ExpectCutOff(1);
  EXPECT_FALSE(done.HasBeenNotified()) << "a forged direct grant was delivered";
  ASSERT_TRUE(held->Unlock().ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(StatsOf(1).lock_handoffs, 1u);
  EXPECT_TRUE(regions_[1]->Unlock(*got).ok());
}

TEST_F(AuthorityCluster, ForgedBarrierReplyFromNonArbiterIsRejected) {
  // Barrier {0, 1}: node 0 arbitrates. Node 1 waits in it (its first barrier: request 1).
  absl::Notification done;
  absl::Status result = absl::UnknownError("not run");
  nodes_[1]->BarrierAsync("b", {0, 1}, absl::Now() + absl::Seconds(30), [&](absl::Status s) {
    result = s;
    done.Notify();
  });
  (void)StatsOf(1);  // posted after the barrier: once it answers, node 1 waits in it
  Message reply = Forged(MsgType::kBarrierReply, 1, 0, 1,
                         lock::PackBarrierReply(lock::BarrierReplyCode::kReleased));
  reply.region = 0;
  forger_.Send(std::move(reply));
  ExpectCutOff(1);
  EXPECT_FALSE(done.HasBeenNotified()) << "a forged release was delivered";
  ASSERT_TRUE(nodes_[0]->Barrier("b", {0, 1}, absl::Now() + absl::Seconds(20)).ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_TRUE(result.ok()) << result;
}

TEST_F(AuthorityCluster, BarrierEnterToANonArbiterIsRejected) {
  // Members {0, 1, 2}: node 0 arbitrates, not node 1.
  Message enter = Forged(MsgType::kBarrierEnter, 1, 0, 1, 0b111);
  enter.region = 0;
  const std::string name = "g";
  enter.payload.assign(name.begin(), name.end());
  forger_.Send(std::move(enter));
  ExpectCutOff(1);
}

TEST_F(AuthorityCluster, ForgedRegionOpenReplyIsRejected) {
  // Node 1 maps a second region whose home (node 0) has not mapped it yet: its map (node 1's
  // second region operation) waits for node 0's answer.
  RegionOptions ro;
  ro.name = "second";
  ro.size = kPageSize;
  ro.home = 0;
  absl::StatusOr<std::unique_ptr<Region>> mapped1 = absl::UnknownError("not run");
  std::thread mapper([&] { mapped1 = nodes_[1]->MapRegion(ro); });
  Message reply = Forged(MsgType::kRegionOpenReply, 1, 0, 2, 0);
  reply.region = RegionIdFromName(ro.name);
  SendUntilCutOff(1, reply);
  ExpectCutOff(1);
  absl::StatusOr<std::unique_ptr<Region>> mapped0 = nodes_[0]->MapRegion(ro);
  ASSERT_TRUE(mapped0.ok()) << mapped0.status();
  mapper.join();
  ASSERT_TRUE(mapped1.ok()) << mapped1.status();
  mapped1->reset();
  mapped0->reset();
}

}  // namespace
}  // namespace dsm
