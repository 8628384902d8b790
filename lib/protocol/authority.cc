#include "protocol/authority.h"

#include <bit>

#include "absl/strings/str_cat.h"
#include "common/node_set.h"

namespace dsm {

// One line per type: the table reads as one.
// clang-format off
SenderRule SenderRuleOf(MsgType type) {
  switch (type) {
    case MsgType::kHello: return SenderRule::kNobody;
    case MsgType::kRegionOpen: return SenderRule::kAnyMember;
    case MsgType::kRegionOpenReply: return SenderRule::kAwaitedByOp;
    case MsgType::kGetS: return SenderRule::kAnyMember;
    case MsgType::kGetM: return SenderRule::kAnyMember;
    case MsgType::kPut: return SenderRule::kRecordedHolder;
    case MsgType::kSyncReq: return SenderRule::kAnyMember;
    case MsgType::kGetSRun: return SenderRule::kAnyMember;
    case MsgType::kData: return SenderRule::kPageHome;
    case MsgType::kGrant: return SenderRule::kPageHome;
    case MsgType::kNack: return SenderRule::kPageHome;
    case MsgType::kSyncAck: return SenderRule::kAwaitedByOp;
    case MsgType::kDataRun: return SenderRule::kPageHome;
    case MsgType::kInv: return SenderRule::kPageHome;
    case MsgType::kRecall: return SenderRule::kPageHome;
    case MsgType::kInvAck: return SenderRule::kAwaitedAck;
    case MsgType::kRecallAck: return SenderRule::kAwaitedAck;
    // Release and cancel name a lock of the sender's own: the arbiter's table keys locks by
    // (node, lock id), so no node can release or withdraw another's.
    case MsgType::kLockAcquire: return SenderRule::kAnyMember;
    case MsgType::kLockReply: return SenderRule::kLockArbiter;
    case MsgType::kLockRelease: return SenderRule::kAnyMember;
    case MsgType::kLockCancel: return SenderRule::kAnyMember;
    // The hint names a lock the receiver asked the sender for; kLockPassed, like a release,
    // names the sender's own lock (and the arbiter checks the successor against its hint).
    case MsgType::kLockSuccessor: return SenderRule::kLockArbiter;
    case MsgType::kLockHandoff: return SenderRule::kNamedPredecessor;
    case MsgType::kLockPassed: return SenderRule::kAnyMember;
    case MsgType::kBarrierEnter: return SenderRule::kToBarrierArbiter;
    case MsgType::kBarrierReply: return SenderRule::kBarrierArbiter;
    case MsgType::kBarrierCancel: return SenderRule::kToBarrierArbiter;
    case MsgType::kGoodbye: return SenderRule::kAboutItself;
    case MsgType::kStatsRequest: return SenderRule::kAnyMember;
    case MsgType::kStatsReply: return SenderRule::kAboutItself;
    case MsgType::kHeartbeat: return SenderRule::kAboutItself;
  }
  return SenderRule::kUndeclared;
}

const char* SenderRuleName(SenderRule rule) {
  switch (rule) {
    case SenderRule::kNobody: return "never dispatched (handshake only)";
    case SenderRule::kAnyMember: return "any member";
    case SenderRule::kPageHome: return "only the page's home";
    case SenderRule::kAwaitedByOp: return "only a node the region operation waits for";
    case SenderRule::kRecordedHolder: return "only to the home; write-backs from a holder";
    case SenderRule::kAwaitedAck: return "only to the home, from a node it waits for";
    case SenderRule::kLockArbiter: return "only the region's lock arbiter";
    case SenderRule::kNamedPredecessor: return "only the predecessor the arbiter named";
    case SenderRule::kToBarrierArbiter: return "only to the barrier group's arbiter";
    case SenderRule::kBarrierArbiter: return "only the barrier's arbiter";
    case SenderRule::kAboutItself: return "any member, about itself";
    case SenderRule::kUndeclared: return "undeclared message type";
  }
  return "unknown rule";
}
// clang-format on

namespace {

absl::Status Denied(const Message& m, SenderRule rule, absl::string_view why) {
  return absl::PermissionDeniedError(absl::StrCat("authority: ", MsgTypeName(m.type), " from node ",
                                                  m.src, " breaks rule '", SenderRuleName(rule),
                                                  "': ", why, "; ", DebugString(m)));
}

// kRecordedHolder: every page the kPut carries (a kDropClean carries none but names one).
absl::Status CheckHolder(const Message& m, const AuthorityFacts& facts) {
  constexpr SenderRule kRule = SenderRule::kRecordedHolder;
  const bool drop = m.arg == static_cast<uint64_t>(PutKind::kDropClean);
  const uint64_t pages = drop ? 1 : m.payload.size() / kPageSize;
  const NodeId self = facts.self();
  for (uint64_t i = 0; i < pages; ++i) {
    const std::optional<NodeId> home = facts.HomeOf(m.region, m.page + i);
    if (!home.has_value()) {
      // Region not mapped here (or its first page outside it): nothing here to change.
      if (i == 0) return absl::OkStatus();
      return Denied(m, kRule,
                    absl::StrCat("the run reaches page ", m.page + i, ", outside the region"));
    }
    if (*home != self) {
      return Denied(m, kRule, absl::StrCat("page ", m.page + i, " is homed at node ", *home));
    }
    // A clean drop carries no data and can only remove its sender's own copy: it is judged
    // by where it goes, not by the record (a node may drop a copy the home forgot when it
    // declared the node down).
    if (!drop && !facts.RecordsHolder(m.region, m.page + i, m.src)) {
      return Denied(
          m, kRule,
          absl::StrCat("the home records no copy of page ", m.page + i, " at the sender"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckAuthority(const Message& m, const AuthorityFacts& facts) {
  if (m.src == facts.self()) return absl::OkStatus();
  const SenderRule rule = SenderRuleOf(m.type);
  switch (rule) {
    case SenderRule::kAnyMember:
    case SenderRule::kAboutItself:
      return absl::OkStatus();
    case SenderRule::kNobody:
      return Denied(m, rule, "a handshake message after the handshake");
    case SenderRule::kUndeclared:
      return Denied(m, rule, "no rule for this type");
    case SenderRule::kPageHome: {
      const std::optional<NodeId> home = facts.HomeOf(m.region, m.page);
      if (!home.has_value() || *home == m.src) return absl::OkStatus();
      return Denied(m, rule, absl::StrCat("page ", m.page, " is homed at node ", *home));
    }
    case SenderRule::kAwaitedByOp: {
      const std::optional<uint64_t> waits = facts.OpAwaits(m.req_id);
      if (!waits.has_value() || InNodeSet(*waits, m.src)) return absl::OkStatus();
      return Denied(m, rule, absl::StrCat("operation ", m.req_id, " did not ask the sender"));
    }
    case SenderRule::kRecordedHolder:
      return CheckHolder(m, facts);
    case SenderRule::kAwaitedAck: {
      const std::optional<NodeId> home = facts.HomeOf(m.region, m.page);
      if (!home.has_value()) return absl::OkStatus();
      if (*home != facts.self()) {
        return Denied(m, rule, absl::StrCat("page ", m.page, " is homed at node ", *home));
      }
      if (facts.AwaitsAck(m.region, m.page, m.src, m.type)) return absl::OkStatus();
      return Denied(m, rule,
                    absl::StrCat("no transaction on page ", m.page,
                                 " waits for this answer from the sender"));
    }
    case SenderRule::kLockArbiter: {
      if (const std::optional<NodeId> asked = facts.LockArbiterOf(m.req_id)) {
        if (*asked == m.src) return absl::OkStatus();
        return Denied(m, rule, absl::StrCat("lock ", m.req_id, " was asked of node ", *asked));
      }
      const std::optional<NodeId> arbiter = facts.HomeOf(m.region, 0);
      if (!arbiter.has_value() || *arbiter == m.src) return absl::OkStatus();
      return Denied(m, rule, absl::StrCat("the region's locks are arbitrated by node ", *arbiter));
    }
    case SenderRule::kNamedPredecessor: {
      const std::optional<NodeId> named = facts.LockPredecessorOf(m.req_id);
      if (!named.has_value() || *named == m.src) return absl::OkStatus();
      return Denied(m, rule,
                    absl::StrCat("the arbiter named node ", *named, " as lock ", m.req_id,
                                 "'s predecessor"));
    }
    case SenderRule::kToBarrierArbiter: {
      // Validation guarantees a non-zero mask.
      const NodeId arbiter = static_cast<NodeId>(std::countr_zero(m.arg));
      if (arbiter == facts.self()) return absl::OkStatus();
      return Denied(m, rule, absl::StrCat("the group's arbiter is node ", arbiter));
    }
    case SenderRule::kBarrierArbiter: {
      const std::optional<NodeId> asked = facts.BarrierArbiterOf(m.req_id);
      if (!asked.has_value() || *asked == m.src) return absl::OkStatus();
      return Denied(m, rule, absl::StrCat("barrier request ", m.req_id, " waits at node ", *asked));
    }
  }
  return Denied(m, rule, "unknown rule");
}

}  // namespace dsm
