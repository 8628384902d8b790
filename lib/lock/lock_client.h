// LockClient: the requester side of the lock protocol, one per node (all regions). It sends
// kLockAcquire / kLockRelease / kLockCancel, matches kLockReply by lock id, and delivers each
// request's outcome exactly once to its callback. Pure logic: no I/O, no clock, never blocks.
//
// Thread safety: not thread-safe; the node's engine thread owns it. Callbacks run on that
// thread, synchronously inside the call that decided the outcome (Acquire for an immediate
// error, OnMessage, OnTick, OnPeerDown, Release, FailAll); they may call Acquire and Release.
//
// Invariants:
//  - Lock ids are unique for the node's lifetime (never reused, never 0); the id is the
//    kLockAcquire req_id and the LockHandle id.
//  - A request is pending (sent, maybe kQueued) or held; its callback runs exactly once, when
//    it leaves pending (granted or failed). A held lock has no callback left.
//  - A pending request that is withdrawn (deadline, Release) is told to the arbiter with
//    kLockCancel, which also releases it there if a grant was crossing; a reply for an id this
//    client no longer knows is ignored. So no grant is ever leaked.
//  - Replies and successor hints are accepted only from the request's arbiter.
//
// One-message hand-off (see lock/lock_table.h). A hint (kLockSuccessor) for a lock this node
// asked for, pending or held, names the successor; the lock's Release then sends kLockHandoff
// to the successor's node (the grant) before kLockPassed to the arbiter, instead of
// kLockRelease (a plain release if the successor's node is known down). A late hint (the id
// already released) is ignored. On the receiving side:
//  - A kLockHandoff grants a pending request only if it comes from the predecessor the
//    arbiter named (its kQueued reply naming a predecessor; at most one per request). One
//    that arrives before the naming is kept, per sender, and granted when the naming names
//    its sender; kept ones from any other node are dropped and counted (forged_handoffs), as
//    is one from a node other than the named predecessor.
//  - A grant for an id that is already held or no longer known (the arbiter's repeated grant
//    after the predecessor died, a crossing kLockHandoff) is dropped by id.
//
// ---------------------------------------------------------------------------------------------
// Integration note: what the node layer (lib/node) must do.
//
// Ownership. One LockClient, one BarrierClient and one BarrierArbiter per Node; one LockTable
// per region whose lock arbiter is this node. The arbiter of a region is home(page 0) (for
// HomePolicy::kFixed, RegionOptions::home); the barrier arbiter of a group is the lowest member
// id (BarrierArbiterOf). All of them live on the engine thread.
//
// Ports. Every Send(Message&&) of LockTable/LockClient/BarrierArbiter/BarrierClient must
// not re-enter the sender: queue the message and deliver after the call returns. A message
// whose dst is this node (the region's arbiter is local, or this node is the barrier's
// arbiter) must be delivered locally, as if received (after the current call returns) —
// the transport is not asked to send to self.
//
// Dispatch of received messages (after the decoder checked them, protocol/validation.h):
//   kLockAcquire, kLockRelease, kLockCancel, kLockPassed -> LockTable of m.region
//       .OnMessage(m, now); no table for m.region: reply kLockReply(kNoSuchRegion), or
//       (kNotArbiter) if the region is mapped but arbitrated elsewhere; otherwise, drop.
//   kLockReply, kLockSuccessor, kLockHandoff -> LockClient::OnMessage(m, now)
//   kBarrierEnter, kBarrierCancel           -> BarrierArbiter::OnMessage(m)
//   kBarrierReply                           -> BarrierClient::OnMessage(m, now)
//
// Application calls (from any thread) are posted to the engine thread:
//   RegionLocks::RequestLock(req, done): id = an atomic per-node counter (so the id can be
//       returned at once); post LockClient::Acquire(region, arbiter, region size, req, now,
//       done, id); return id.
//   RegionLocks::ReleaseLock(id): post LockClient::Release(id) and wait for its status (the
//       engine answers at once; it never waits on the network).
//   ClusterBarrier::BarrierAsync(name, members, deadline, done): post
//       BarrierClient::Enter(name, MemberMask(members, cluster size, self), deadline, now,
//       done); a MemberMask error goes straight to `done`.
//
// Time. After every event, arm the engine's timer for the earliest of
//   LockClient::NextDeadline(), BarrierClient::NextDeadline(), every LockTable::NextDeadline();
// when it fires, call their OnTick(now).
//
// Peers. When the node layer declares peer p down (Options::peer_timeout):
//   LockClient::OnPeerDown(p); BarrierClient::OnPeerDown(p); BarrierArbiter::OnNodeDown(p);
//   every LockTable::OnNodeDown(p, now).
// Locks of p are released after LockTable::Config::release_grace (propose
// Options::lock_release_grace, default 1 s, on top of peer_timeout).
//
// Unmap / Shutdown. Region unmapped locally: LockClient::ForgetRegion(region) (pending fail
// kUnavailable, held locks are released at the arbiter); at the arbiter, before destroying the
// region's LockTable: LockTable::FailAll(kShuttingDown). Node shutdown: LockClient::FailAll,
// BarrierClient::FailAll, BarrierArbiter::FailAll.
// ---------------------------------------------------------------------------------------------
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "dsm/lock.h"
#include "protocol/lock_fields.h"
#include "protocol/message.h"

namespace dsm::lock {

class LockClientPort {
 public:
  // kLockAcquire / kLockRelease / kLockCancel to m.dst (the arbiter; may be this node).
  virtual void Send(Message&& m) = 0;

 protected:
  ~LockClientPort() = default;
};

// Maps a final kLockReply code to the status the application sees (include/dsm/lock.h).
absl::Status LockReplyStatus(LockReplyCode code, NodeId arbiter);

class LockClient {
 public:
  struct Config {
    NodeId self = 0;
  };
  LockClient(Config config, LockClientPort* port);

  // Starts a request for `request` in `region`, arbitrated by `arbiter`. `id` must be unique
  // and non-zero for this node's lifetime (the node layer takes it from an atomic counter so
  // the application thread can return it at once); 0 asks the client for the next id of its
  // own counter (do not mix the two). `region_size` (0 = unknown) lets range errors fail here.
  // Returns the id. `done` runs exactly once: with the handle when granted, or with the error
  // (kDeadlineExceeded when `request.deadline` passes first, see include/dsm/lock.h). Errors
  // known at once (bad range, deadline already past, arbiter known down, id in use) are
  // delivered before Acquire returns.
  uint64_t Acquire(RegionId region, NodeId arbiter, uint64_t region_size,
                   const LockRequest& request, absl::Time now, LockCallback done,
                   uint64_t id = 0);

  // Releases a held lock (kLockRelease) or withdraws a pending request (kLockCancel; its
  // callback gets kCancelled). kNotFound if `id` is neither; kUnavailable if the lock was held
  // at an arbiter that went down since (the id is forgotten).
  absl::Status Release(uint64_t id);

  // kLockReply, kLockSuccessor, kLockHandoff. Other types are ignored.
  void OnMessage(const Message& m, absl::Time now);

  // Pending requests at `peer` fail with kUnavailable; locks held there become lost (Release
  // answers kUnavailable). Later requests to `peer` fail at once.
  void OnPeerDown(NodeId peer);

  // Pending requests whose deadline is <= now fail with kDeadlineExceeded (kLockCancel sent).
  void OnTick(absl::Time now);
  // Arbiters that have left a request without any answer (not even kQueued, which an arbiter
  // sends at once for a lock it cannot grant) for longer than `timeout`: the node layer
  // declares them down, as for any peer that owes an answer. A request the arbiter queued
  // may wait for the lock as long as its own deadline says.
  void CollectOverdue(absl::Time now, absl::Duration timeout, std::vector<NodeId>* peers) const;
  absl::Time NextDeadline() const;

  // The region was unmapped here: pending requests fail with kUnavailable (kLockCancel sent),
  // held locks are released at the arbiter and forgotten.
  void ForgetRegion(RegionId region);

  // Shutdown: every pending request fails with `why`, held locks are released at the arbiter.
  void FailAll(const absl::Status& why);

  bool is_pending(uint64_t id) const;
  bool is_held(uint64_t id) const;
  // The arbiter lock `id` (pending or held) was asked of; nullopt for an id not known here.
  std::optional<NodeId> arbiter_of(uint64_t id) const {
    auto it = requests_.find(id);
    if (it == requests_.end()) return std::nullopt;
    return it->second.arbiter;
  }
  // The predecessor the arbiter named for lock `id` (pending or held); nullopt if none.
  std::optional<NodeId> predecessor_of(uint64_t id) const {
    auto it = requests_.find(id);
    if (it == requests_.end() || !it->second.pred_named) return std::nullopt;
    return it->second.pred;
  }
  size_t num_pending() const { return num_pending_; }
  size_t num_held() const { return requests_.size() - num_pending_; }

  struct Counters {
    uint64_t requests = 0, granted = 0, queued = 0, failed = 0, deadline_expired = 0,
             cancelled = 0, released = 0, lost = 0, stray_replies = 0,
             // Hand-off: hints taken, hand-offs sent, grants taken by hand-off, hand-offs
             // dropped as duplicates or for ids withdrawn, and from a node not named.
             hints = 0, handoffs_sent = 0, handoffs_received = 0, stray_handoffs = 0,
             forged_handoffs = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  enum class State : uint8_t { kPending, kQueued, kHeld, kLost };
  struct Request {
    RegionId region;
    NodeId arbiter;
    LockRequest request;
    State state;
    LockCallback done;  // empty once delivered
    absl::Time sent;    // when kLockAcquire went out
    // Named by the arbiter: the node whose release hands this lock over.
    bool pred_named = false;
    NodeId pred = 0;
    // kLockHandoffs received before the naming: senders, and their died flags (NodeBit).
    uint64_t early = 0, early_died = 0;
    // Named by the arbiter: the waiter this lock's release hands over to.
    bool has_successor = false;
    bool successor_died = false;
    NodeId successor_node = 0;
    uint64_t successor_id = 0;
  };

  void SendSimple(MsgType type, const Request& r, uint64_t id);
  // Pending `it` is granted (by the arbiter's reply or a hand-off).
  void GrantPending(absl::flat_hash_map<uint64_t, Request>::iterator it, bool died);
  void OnReply(const Message& m);
  void OnSuccessor(const Message& m);
  void OnHandoff(const Message& m);
  // Release of held `r`: the hand-off to the named successor, or kLockRelease.
  void SendRelease(const Request& r, uint64_t id);
  // Removes pending `id` and delivers `status` to its callback.
  void FailPending(uint64_t id, absl::Status status);

  const Config config_;
  LockClientPort* const port_;
  uint64_t next_id_ = 1;
  absl::flat_hash_map<uint64_t, Request> requests_;
  size_t num_pending_ = 0;
  std::set<std::pair<absl::Time, uint64_t>> deadlines_;  // pending with a finite deadline
  uint64_t down_mask_ = 0;                               // peers declared down
  Counters counters_;
};

}  // namespace dsm::lock
