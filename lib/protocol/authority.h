// Message authority: which node may send each message type, as one table (SenderRuleOf in
// authority.cc, one rule per MsgType of message.h). Validation (validation.h) judges a message
// by itself; authority judges it against what the receiver knows: which node is home of a
// page, which copies the home records, which answers it waits for, which node arbitrates a
// lock or a barrier. The node applies it to every message a peer sends, after validation and
// before dispatch; a message that breaks its rule closes the connection to its sender (the
// sender is then down for this node) and is counted in Stats::authority_violations.
//
// A rule never rejects what a correct node can send in a race the protocol allows (a late
// answer to a request that was withdrawn or timed out, a write-back crossing a recall): where
// the receiver holds no state to judge a message by (a region it does not map, an operation
// or a lock it has forgotten), the message is not judged here and dispatch drops or refuses
// it as before. A node trusts itself: messages from this node are never judged.
//
// Example (engine thread):
//   if (absl::Status s = CheckAuthority(m, facts); !s.ok()) disconnect(m.src, s);
//
// Thread safety: pure functions of their arguments; AuthorityFacts is read on the engine
// thread.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "protocol/message.h"

namespace dsm {

// Who may send a message type to this node.
enum class SenderRule : uint8_t {
  // Never dispatched: consumed by the connection's handshake (kHello).
  kNobody,
  // A request any node of the cluster may make (open a region, read or write a page, persist,
  // take or release a lock of its own); the receiver judges its content and refuses what it
  // cannot serve (kNotHome, kNoSuchRegion, kNotArbiter, ...).
  kAnyMember,
  // Only the home of m.page of m.region: its grants, refusals, invalidations and recalls.
  kPageHome,
  // Only a node this node's region operation m.req_id (a map, sync or unmap) still waits for.
  kAwaitedByOp,
  // Only to the home of every page it names; a write-back (data) only from a node that home
  // records as holding the page (a sharer or the owner), or for a page lost there (its record
  // is gone). A clean drop carries no data and removes only its sender's copy.
  kRecordedHolder,
  // Only to the home of m.page, from a node whose answer (this type) the page's transaction
  // waits for: an invalidated sharer, a recalled owner.
  kAwaitedAck,
  // Only the arbiter of m.region's locks (home of page 0); for a lock this node knows, the
  // arbiter it asked.
  kLockArbiter,
  // A direct grant (kLockHandoff) of lock m.req_id: only from the node the lock's arbiter
  // named as its predecessor (the kQueued reply naming a predecessor). Not judged while the
  // lock is unknown here (withdrawn, released) or no predecessor is named yet (the hand-off
  // crossed the naming: the lock client keeps it until the naming arrives and drops it, as
  // forged, if the naming names another node).
  kNamedPredecessor,
  // Only to the arbiter of the barrier group (its lowest member), from a member (the member
  // rule is validation's).
  kToBarrierArbiter,
  // Only the arbiter of the barrier m.req_id this node waits in.
  kBarrierArbiter,
  // Any member, about itself only: the receiver applies it to its sender alone (kGoodbye: the
  // sender finished Finalize's flush, or leaves; kStatsReply: the sender's own counters, kept
  // only in its own slot of a gather that asked it).
  kAboutItself,
  // Not a rule: SenderRuleOf's answer for a value message.h does not declare.
  kUndeclared,
};

// The table: the rule of `type`. A switch without a default over every MsgType, so a type
// added to message.h does not compile (-Werror=switch) until it is given a rule here.
SenderRule SenderRuleOf(MsgType type);
const char* SenderRuleName(SenderRule rule);

// What the receiver knows, as the rules ask it. The node layer implements it over its
// regions, their directories, its region operations and its lock service.
class AuthorityFacts {
 public:
  virtual NodeId self() const = 0;
  // The home of `page` of `region` as mapped here; nullopt if the region is not mapped here
  // or the page is outside it.
  virtual std::optional<NodeId> HomeOf(RegionId region, PageIndex page) const = 0;
  // At the home of `page`: whether its directory records `node` holding it (a sharer or the
  // owner), or the page is lost.
  virtual bool RecordsHolder(RegionId region, PageIndex page, NodeId node) const = 0;
  // At the home of `page`: whether the page's transaction waits for `ack` (kInvAck or
  // kRecallAck) from `node`.
  virtual bool AwaitsAck(RegionId region, PageIndex page, NodeId node, MsgType ack) const = 0;
  // The nodes (bit per id) region operation `req_id` still waits for; nullopt if no such
  // operation is in progress.
  virtual std::optional<uint64_t> OpAwaits(uint64_t req_id) const = 0;
  // The arbiter this node asked for lock `lock_id` (pending or held); nullopt if unknown.
  virtual std::optional<NodeId> LockArbiterOf(uint64_t lock_id) const = 0;
  // The predecessor the arbiter named for lock `lock_id` of this node (in a kQueued reply);
  // nullopt if the lock is unknown or none was named.
  virtual std::optional<NodeId> LockPredecessorOf(uint64_t lock_id) const = 0;
  // The arbiter of barrier request `req_id` this node waits in; nullopt if none.
  virtual std::optional<NodeId> BarrierArbiterOf(uint64_t req_id) const = 0;

 protected:
  ~AuthorityFacts() = default;
};

// OK if m.src may send `m` to this node; PermissionDenied naming the rule and the message
// otherwise. `m` passed validation (CheckMessage).
absl::Status CheckAuthority(const Message& m, const AuthorityFacts& facts);

}  // namespace dsm
