// The message authority table, rule by rule: for every rule of protocol/authority.h a message
// its rightful sender sends (accepted) and the same message from a node that may not send it
// (rejected), judged against a receiver whose knowledge is written out in FakeFacts. The
// cluster tests (tests/node/authority_cluster_test.cc) inject the forgeries into real nodes.
#include "protocol/authority.h"

#include <set>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"
#include "protocol/lock_fields.h"
#include "protocol/validation.h"

namespace dsm {
namespace {

constexpr NodeId kSelf = 1;
constexpr RegionId kRegion = 7;
constexpr RegionId kUnmapped = 8;
constexpr uint64_t kPages = 16;

// This node (1) maps kRegion (16 pages, interleaved over 4 nodes: page p is homed at p % 4).
class FakeFacts final : public AuthorityFacts {
 public:
  NodeId self() const override { return kSelf; }
  std::optional<NodeId> HomeOf(RegionId region, PageIndex page) const override {
    if (region != kRegion || page >= kPages) return std::nullopt;
    return static_cast<NodeId>(page % 4);
  }
  bool RecordsHolder(RegionId region, PageIndex page, NodeId node) const override {
    return region == kRegion && holders.contains({page, node});
  }
  bool AwaitsAck(RegionId region, PageIndex page, NodeId node, MsgType ack) const override {
    return region == kRegion && acks.contains({page, node, static_cast<int>(ack)});
  }
  std::optional<uint64_t> OpAwaits(uint64_t req_id) const override {
    auto it = ops.find(req_id);
    if (it == ops.end()) return std::nullopt;
    return it->second;
  }
  std::optional<NodeId> LockArbiterOf(uint64_t lock_id) const override {
    auto it = locks.find(lock_id);
    if (it == locks.end()) return std::nullopt;
    return it->second;
  }
  std::optional<NodeId> LockPredecessorOf(uint64_t lock_id) const override {
    auto it = predecessors.find(lock_id);
    if (it == predecessors.end()) return std::nullopt;
    return it->second;
  }
  std::optional<NodeId> BarrierArbiterOf(uint64_t req_id) const override {
    auto it = barriers.find(req_id);
    if (it == barriers.end()) return std::nullopt;
    return it->second;
  }

  std::set<std::pair<PageIndex, NodeId>> holders;
  std::set<std::tuple<PageIndex, NodeId, int>> acks;
  absl::flat_hash_map<uint64_t, uint64_t> ops;
  absl::flat_hash_map<uint64_t, NodeId> locks;
  absl::flat_hash_map<uint64_t, NodeId> barriers;
  absl::flat_hash_map<uint64_t, NodeId> predecessors;
};

Message Msg(MsgType type, NodeId src, PageIndex page = 0, uint64_t req_id = 1, uint64_t arg = 0,
            RegionId region = kRegion) {
  Message m;
  m.type = type;
  m.src = src;
  m.dst = kSelf;
  m.region = region;
  m.page = page;
  m.req_id = req_id;
  m.arg = arg;
  return m;
}

bool Allowed(const Message& m, const FakeFacts& f) { return CheckAuthority(m, f).ok(); }

TEST(Authority, EveryDeclaredTypeHasARule) {
  // A type the validation table declares (any type a peer can get through the decoder) must
  // have a rule; the switch in SenderRuleOf makes this a compile error, this checks the
  // other direction too: no rule for a type the decoder rejects.
  for (int t = 0; t < 256; ++t) {
    MessageFields f;
    f.type = static_cast<uint8_t>(t);
    const bool declared = FindViolation(f, 4) != Violation::kUnknownType;
    const SenderRule rule = SenderRuleOf(static_cast<MsgType>(t));
    EXPECT_EQ(declared, rule != SenderRule::kUndeclared) << "type " << t;
  }
}

TEST(Authority, MessagesFromSelfAreNeverJudged) {
  FakeFacts f;
  EXPECT_TRUE(Allowed(Msg(MsgType::kInv, kSelf, /*page=*/2), f));  // page 2's home is 2
  EXPECT_TRUE(Allowed(Msg(MsgType::kHello, kSelf), f));
}

TEST(Authority, HelloIsNeverDispatched) {
  FakeFacts f;
  const absl::Status s = CheckAuthority(Msg(MsgType::kHello, 2), f);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
}

TEST(Authority, RequestsFromAnyMember) {
  FakeFacts f;
  for (MsgType t : {MsgType::kRegionOpen, MsgType::kGetS, MsgType::kGetM, MsgType::kGetSRun,
                    MsgType::kSyncReq, MsgType::kLockAcquire, MsgType::kLockRelease,
                    MsgType::kLockCancel, MsgType::kLockPassed, MsgType::kStatsRequest}) {
    EXPECT_EQ(SenderRuleOf(t), SenderRule::kAnyMember) << MsgTypeName(t);
    for (NodeId src : {0u, 2u, 3u}) EXPECT_TRUE(Allowed(Msg(t, src, 1), f)) << MsgTypeName(t);
  }
}

TEST(Authority, GoodbyeFromAnyMemberAboutItself) {
  // Its only subject is its sender (the receiver records m.src as ready or left).
  FakeFacts f;
  EXPECT_EQ(SenderRuleOf(MsgType::kGoodbye), SenderRule::kAboutItself);
  EXPECT_EQ(SenderRuleOf(MsgType::kStatsReply), SenderRule::kAboutItself);
  for (NodeId src : {0u, 2u, 3u}) {
    EXPECT_TRUE(Allowed(
        Msg(MsgType::kGoodbye, src, 0, 0, static_cast<uint64_t>(GoodbyeKind::kLeaving), 0), f));
  }
}

TEST(Authority, InvAndRecallOnlyFromThePagesHome) {
  FakeFacts f;
  for (MsgType t : {MsgType::kInv, MsgType::kRecall}) {
    EXPECT_TRUE(Allowed(Msg(t, 2, /*page=*/6), f)) << MsgTypeName(t);  // 6 % 4 == 2
    const absl::Status s = CheckAuthority(Msg(t, 3, /*page=*/6), f);
    EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
    EXPECT_NE(s.message().find("homed at node 2"), std::string::npos) << s;
  }
}

TEST(Authority, GrantsAndRefusalsOnlyFromThePagesHome) {
  FakeFacts f;
  for (MsgType t : {MsgType::kData, MsgType::kGrant, MsgType::kNack, MsgType::kDataRun}) {
    EXPECT_TRUE(Allowed(Msg(t, 3, /*page=*/7), f)) << MsgTypeName(t);
    EXPECT_FALSE(Allowed(Msg(t, 0, /*page=*/7), f)) << MsgTypeName(t);
    EXPECT_FALSE(Allowed(Msg(t, 2, /*page=*/7), f)) << MsgTypeName(t);
  }
}

TEST(Authority, PageRulesDoNotJudgeRegionsNotMappedHere) {
  // A late answer for a region unmapped since: dispatch drops it; nothing here to protect.
  FakeFacts f;
  EXPECT_TRUE(Allowed(Msg(MsgType::kInv, 3, 6, 1, 0, kUnmapped), f));
  EXPECT_TRUE(Allowed(Msg(MsgType::kData, 3, 6, 1, 1, kUnmapped), f));
  EXPECT_TRUE(Allowed(Msg(MsgType::kInvAck, 3, 5, 1, 0, kUnmapped), f));
  EXPECT_TRUE(Allowed(Msg(MsgType::kPut, 3, 5, 1, 1, kUnmapped), f));
}

TEST(Authority, RegionOpsAnswersOnlyFromANodeAsked) {
  FakeFacts f;
  f.ops[5] = (uint64_t{1} << 0) | (uint64_t{1} << 2);  // op 5 waits for nodes 0 and 2
  for (MsgType t : {MsgType::kRegionOpenReply, MsgType::kSyncAck}) {
    EXPECT_TRUE(Allowed(Msg(t, 2, 0, /*req_id=*/5), f));
    EXPECT_FALSE(Allowed(Msg(t, 3, 0, /*req_id=*/5), f));
    // An operation finished (timed out) already: a late answer is not judged.
    EXPECT_TRUE(Allowed(Msg(t, 3, 0, /*req_id=*/6), f));
  }
}

TEST(Authority, WritebacksOnlyToTheHomeFromARecordedHolder) {
  FakeFacts f;
  f.holders = {{1, 2}, {5, 2}, {9, 3}};  // pages 1, 5, 9 are homed here (p % 4 == 1)
  const uint64_t drop = static_cast<uint64_t>(PutKind::kDropClean);
  const uint64_t wb = static_cast<uint64_t>(PutKind::kWritebackDrop);
  // A clean drop removes only its sender's copy: any member, but only to the home (page 2 is
  // node 2's). A node may drop a copy the home forgot when it declared the node down.
  EXPECT_TRUE(Allowed(Msg(MsgType::kPut, 2, 1, 0, drop), f));
  EXPECT_TRUE(Allowed(Msg(MsgType::kPut, 3, 1, 0, drop), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kPut, 3, 2, 0, drop), f));

  Message put = Msg(MsgType::kPut, 2, 5, 0, wb);
  put.payload.assign(kPageSize, 0xab);
  EXPECT_TRUE(Allowed(put, f));
  put.src = 3;
  EXPECT_FALSE(Allowed(put, f));
  put.page = 9;
  EXPECT_TRUE(Allowed(put, f));
  // Not homed here: page 2 is node 2's.
  put.page = 2;
  put.src = 2;
  f.holders.insert({2, 2});
  EXPECT_FALSE(Allowed(put, f));
}

TEST(Authority, WritebackRunsAreJudgedPageByPage) {
  FakeFacts f;
  // Fixed-home regions are where runs happen; here every 4th page is ours, so a run of one
  // page is the longest all-ours run. Two pages: the second is not homed here.
  f.holders = {{1, 2}, {2, 2}};
  Message put = Msg(MsgType::kPut, 2, 1, 0, static_cast<uint64_t>(PutKind::kWritebackKeep));
  put.payload.assign(2 * kPageSize, 0xab);
  const absl::Status s = CheckAuthority(put, f);
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_NE(s.message().find("page 2 is homed at node 2"), std::string::npos) << s;
  // A run reaching past the region's end.
  f.holders = {{13, 2}};
  put.page = 13;
  put.payload.assign(4 * kPageSize, 0xab);
  EXPECT_FALSE(Allowed(put, f));
}

TEST(Authority, AcksOnlyToTheHomeFromANodeItWaitsFor) {
  FakeFacts f;
  f.acks = {{5, 2, static_cast<int>(MsgType::kInvAck)},
            {9, 3, static_cast<int>(MsgType::kRecallAck)}};
  EXPECT_TRUE(Allowed(Msg(MsgType::kInvAck, 2, 5), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kInvAck, 3, 5), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kRecallAck, 2, 5), f));  // an Inv was sent, not a recall
  EXPECT_TRUE(Allowed(Msg(MsgType::kRecallAck, 3, 9), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kRecallAck, 0, 9), f));
  // Not homed here.
  f.acks.insert({6, 2, static_cast<int>(MsgType::kInvAck)});
  EXPECT_FALSE(Allowed(Msg(MsgType::kInvAck, 2, 6), f));
}

TEST(Authority, LockRepliesOnlyFromTheArbiter) {
  FakeFacts f;
  const uint64_t granted = lock::PackLockReply(lock::LockReplyCode::kGranted);
  // Lock 11 was asked of node 0, the arbiter of kRegion (home of page 0).
  f.locks[11] = 0;
  EXPECT_TRUE(Allowed(Msg(MsgType::kLockReply, 0, 0, 11, granted), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kLockReply, 2, 0, 11, granted), f));
  // Naming another region does not help a forger: the lock's own arbiter is what counts.
  EXPECT_FALSE(Allowed(Msg(MsgType::kLockReply, 2, 0, 11, granted, kUnmapped), f));
  // A lock forgotten here (withdrawn): the region's arbiter may still answer late.
  EXPECT_TRUE(Allowed(Msg(MsgType::kLockReply, 0, 0, 12, granted), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kLockReply, 3, 0, 12, granted), f));
}

TEST(Authority, SuccessorHintsOnlyFromTheArbiter) {
  FakeFacts f;
  const uint64_t succ = lock::PackSuccessorArg(3, false);
  f.locks[11] = 0;
  EXPECT_TRUE(Allowed(Msg(MsgType::kLockSuccessor, 0, 5, 11, succ), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kLockSuccessor, 2, 5, 11, succ), f));
}

TEST(Authority, ForgedDirectGrantRejected) {
  FakeFacts f;
  // The arbiter named node 2 as the predecessor of this node's lock 11.
  f.locks[11] = 0;
  f.predecessors[11] = 2;
  EXPECT_TRUE(Allowed(Msg(MsgType::kLockHandoff, 2, 9, 11), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kLockHandoff, 3, 9, 11), f));
  // The arbiter itself is no predecessor either unless named.
  EXPECT_FALSE(Allowed(Msg(MsgType::kLockHandoff, 0, 9, 11), f));
  // No predecessor named yet (the hand-off crossed the naming), or the lock withdrawn: not
  // judged here; the lock client keeps it until the naming, or drops it.
  f.locks[12] = 0;
  EXPECT_TRUE(Allowed(Msg(MsgType::kLockHandoff, 3, 9, 12), f));
  EXPECT_TRUE(Allowed(Msg(MsgType::kLockHandoff, 3, 9, 13), f));
}

TEST(Authority, PassedFromAnyMemberAboutItsOwnLock) {
  FakeFacts f;
  EXPECT_TRUE(Allowed(Msg(MsgType::kLockPassed, 3, 9, 11, 2), f));
}

TEST(Authority, BarrierEntriesOnlyToTheGroupsArbiter) {
  FakeFacts f;
  // Members {1, 2}: node 1 (this node) arbitrates. Members {0, 2}: node 0 does.
  for (MsgType t : {MsgType::kBarrierEnter, MsgType::kBarrierCancel}) {
    EXPECT_TRUE(Allowed(Msg(t, 2, 0, 1, 0b0110, 0), f)) << MsgTypeName(t);
    EXPECT_FALSE(Allowed(Msg(t, 2, 0, 1, 0b0101, 0), f)) << MsgTypeName(t);
  }
}

TEST(Authority, BarrierRepliesOnlyFromTheArbiterAsked) {
  FakeFacts f;
  f.barriers[4] = 0;
  const uint64_t released = lock::PackBarrierReply(lock::BarrierReplyCode::kReleased);
  EXPECT_TRUE(Allowed(Msg(MsgType::kBarrierReply, 0, 0, 4, released, 0), f));
  EXPECT_FALSE(Allowed(Msg(MsgType::kBarrierReply, 2, 0, 4, released, 0), f));
  // No barrier pending under that id (withdrawn at its deadline): a late reply.
  EXPECT_TRUE(Allowed(Msg(MsgType::kBarrierReply, 2, 0, 5, released, 0), f));
}

}  // namespace
}  // namespace dsm
