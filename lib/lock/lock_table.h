// LockTable: the arbiter of one region's byte-range locks. It runs at the arbiter node (the
// home of the region's page 0), consumes kLockAcquire / kLockRelease / kLockCancel and answers
// with kLockReply through LockTablePort. Pure logic: no I/O, no clock (time comes in as `now`).
//
// A lock is [start, end) of the region in mode shared or exclusive, owned by (node, lock id).
// Two locks conflict when their ranges overlap and at least one is exclusive; a lock never
// conflicts with itself and is never merged with another lock of the same node.
//
// Thread safety: not thread-safe; one engine thread owns it.
//
// Invariants (after every public call returns):
//  - Exclusion: no two held locks conflict.
//  - FIFO fairness: every request has a sequence number (arrival order). A waiting request
//    conflicts with some held lock or with some waiting request of a lower sequence number;
//    i.e. no waiting request is grantable (a request that could be granted has been). And no
//    held lock conflicts with a waiting request of a lower sequence number: a request is
//    overtaken only by requests it does not conflict with, so an exclusive request is not
//    starved by later shared ones.
//  - Granting never makes another request grantable (the "conflicts with" relation is the same
//    for holders and earlier waiters), so only removing a lock or a waiter [a, b) can, and only
//    for waiters overlapping [a, b): those are re-examined in sequence order.
//  - Each (node, id) is at most once in the table, held or waiting. Each request gets exactly
//    one final reply (kGranted, kBusy, kBadRequest, kShuttingDown) unless its node withdraws it
//    (kLockCancel / kLockRelease) or is declared down; at most one kQueued precedes it.
//  - A node declared down at time t: its waiting requests are dropped at t; its held locks stay
//    held until t + release_grace (in OnTick), then are released as if it had unlocked them.
//    Requests arriving from a down node are ignored.
//  - Dead marks: the bytes of every exclusive lock released by a node's death are marked.
//    A grant whose range overlaps a mark carries previous_holder_died; an exclusive grant
//    clears the marks in its range (its holder was told and is the one to repair), unless it
//    is withdrawn unseen (kLockCancel of a held lock: the grant crossed the requester's
//    deadline), which puts back the marks it cleared. Shared locks of a dead node leave no
//    mark: a shared holder cannot have written.
//
// One-message hand-off (Config::direct_handoff). When an exclusive waiter W conflicts with
// exactly one lock, a held exclusive lock H, and with no earlier waiter, the table names W to
// H (kLockSuccessor: W's node and id, and whether W's range carries a dead mark) and H's node
// to W (a kQueued reply naming the predecessor). H's release then goes as kLockHandoff to W's
// node (the grant, one message) and as kLockPassed naming W to the arbiter, which records W
// holding without a reply. Invariants, in addition to the above:
//  - Hint: H has at most one successor and W at most one predecessor, each naming the other;
//    while both stay (H held, W waiting), W conflicts with H alone and with no earlier waiter.
//    (A waiter's blocker set only shrinks: a later request is never granted over it.) So when
//    H goes, W is grantable, and its dead-mark flag is the one sent in the hint (only H's
//    death or H's withdrawal could add a mark in W's range; a dead node's kLockPassed is never
//    applied, and a withdrawn H sent no kLockHandoff, so W is granted by reply then).
//  - A named successor W dropped because its node died may have held the lock already: H
//    may have released, its kLockHandoff delivered and its kLockPassed still on the way. So
//    W's range is marked at once (conservatively: the arbiter cannot tell whether H released
//    before W died), and every later grant of those bytes, including one to a waiter that
//    was behind W only and is granted as W goes, is told.
//  - kLockPassed is applied as a hand-off only if it names H's current successor; otherwise
//    (W withdrew, or the hint was never sent) it is a plain release and W, if waiting, is
//    granted by kLockReply as before. Shared locks, and waiters behind more than one lock or
//    an earlier waiter, always take the arbiter path.
//  - A lock recorded as handed over by node P (`via`) is granted again by kLockReply when P's
//    grace time ends after P was declared down: P may have died between its two messages, so
//    W's node may never have seen the kLockHandoff. A duplicate grant is dropped by id there.
//
// Races (each a named test in tests/lock/lock_handoff_test.cc):
//  - W cancels before the hand-off: the kLockCancel arrives first (the kLockPassed is a plain
//    release) or after (it releases the lock W was recorded holding); W's node drops the
//    hand-off of an id it withdrew.
//  - H releases before the hint arrives: a plain kLockRelease; the arbiter grants W; H's node
//    ignores the late hint (an id it no longer knows).
//  - H dies after its kLockHandoff only: H's lock goes at the end of its grace time and W is
//    granted then (duplicate, dropped). After its kLockPassed only: W is re-granted then.
//  - W dies holding by hand-off before H's kLockPassed arrives: W was still waiting here;
//    dropping it marks its range (above), and the kLockPassed that names the dropped W is a
//    plain release.
//  - The hand-off reaches W's node before the naming: the lock client keeps it until the
//    naming arrives (then grants if it names the sender, else counts it forged).
//
// Cost: acquire, release and cancel are O(log n + k), n locks in the table and k locks or
// waiters overlapping the range (IntervalIndex). A node's death scans the table once.
// Memory: about 150 bytes per held or waiting lock, nothing per byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "lock/interval_index.h"
#include "protocol/lock_fields.h"
#include "protocol/message.h"

namespace dsm::lock {

class LockTablePort {
 public:
  // A kLockReply to a requester (m.dst). Called synchronously from the table's methods; it
  // must not call back into the table (queue the message; deliver it after the call).
  virtual void Send(Message&& m) = 0;

 protected:
  ~LockTablePort() = default;
};

class LockTable {
 public:
  struct Config {
    NodeId self = 0;
    RegionId region = 0;
    // Requests must lie within [0, region_size); 0 = no bound.
    uint64_t region_size = 0;
    // How long after a node is declared down its locks stay held (Options: lock_release_grace).
    absl::Duration release_grace = absl::Seconds(1);
    // Name successors to holders (the one-message hand-off); false: every grant is a reply.
    bool direct_handoff = true;
  };
  LockTable(Config config, LockTablePort* port);

  // kLockAcquire, kLockRelease, kLockCancel, kLockPassed for this region (already validated by
  // the decoder; checked again here). Other types are ignored.
  void OnMessage(const Message& m, absl::Time now);

  // The node layer declared `node` down at `now`.
  void OnNodeDown(NodeId node, absl::Time now);
  // Releases the locks of nodes whose grace time has passed.
  void OnTick(absl::Time now);
  // When OnTick next has work to do; InfiniteFuture() if never.
  absl::Time NextDeadline() const;

  // The region is being unmapped at the arbiter: every waiting request gets `code`
  // (kShuttingDown), every lock is forgotten.
  void FailAll(LockReplyCode code);

  struct LockInfo {
    NodeId node;
    uint64_t id;
    uint64_t start, end;
    LockMode mode;
    uint64_t seq;
    bool held;
    bool named = false;  // waiting, and named as a holder's successor (its node may hold it)
  };
  // Every lock and waiting request, held first, each group in sequence order (tests, debug).
  std::vector<LockInfo> Dump() const;
  // Checks the invariants above by brute force, O(n^2): for tests.
  absl::Status CheckInvariants() const;

  size_t num_held() const { return held_count_; }
  size_t num_waiting() const { return locks_.size() - held_count_; }
  const RangeSet& dead_marks() const { return dead_; }

  struct Counters {
    uint64_t acquires = 0, granted = 0, queued = 0, busy = 0, bad_requests = 0,
             released = 0, cancelled = 0, released_by_death = 0, dropped_by_death = 0,
             died_flags = 0,
             // Hand-off: successors named, kLockPassed applied as hand-offs / as plain
             // releases, grants repeated because the node that handed over died.
             hints = 0, handoffs = 0, handoffs_refused = 0, regrants = 0,
             // Named successors dropped by their node's death (their range marked: the
             // hand-off may have reached them).
             named_dead = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  struct Lock {
    NodeId node;
    uint64_t id;
    uint64_t start, end;
    LockMode mode;
    bool held;
    uint64_t successor = 0;  // held: the waiter named to this holder (sequence number)
    uint64_t hinted_by = 0;  // waiting: the holder this waiter was named to
    bool via_set = false;    // held: recorded by a hand-off from node `via`
    bool via_died = false;   // the previous_holder_died flag of that hand-off
    NodeId via = 0;
    // held exclusively: the dead marks its grant cleared, put back if the grant is withdrawn
    // unseen (kLockCancel of a held lock); empty unless the grant said previous_holder_died.
    std::vector<std::pair<uint64_t, uint64_t>> cleared;
  };
  using Owner = std::pair<NodeId, uint64_t>;

  void Acquire(const Message& m);
  void Passed(const Message& m);
  // Removes `seq` (unlinking its hint) without re-examining the waiters; returns it.
  Lock Unlink(uint64_t seq, bool by_death);
  void EraseSeq(uint64_t seq, bool by_death);
  // If waiter `seq` may take the one-message hand-off, names it to its one blocker (hint
  // sent) and returns that holder's node. `reply`: also send the waiter the naming.
  std::optional<NodeId> MaybeHint(uint64_t seq, bool reply);
  // Re-grants (kLockReply) the locks `node` handed over, once its grace time ended.
  void Regrant(NodeId node);
  // Whether `l` (sequence `seq`) conflicts with a holder or an earlier waiter.
  bool Blocked(const Lock& l, uint64_t seq) const;
  // `reply` false: recorded without a reply (a hand-off); returns the died flag.
  bool Grant(uint64_t seq, Lock& l, bool reply = true);
  // Re-examines the waiters overlapping [a, b) in sequence order, granting the eligible.
  void GrantWaiters(uint64_t a, uint64_t b);
  void Reply(NodeId node, uint64_t id, LockReplyCode code, bool died = false);
  // A kLockReply with a packed arg (a code, or kQueued naming a predecessor).
  void SendReply(NodeId node, uint64_t id, uint64_t arg);
  IntervalIndex& IndexFor(const Lock& l);

  const Config config_;
  LockTablePort* const port_;
  uint64_t next_seq_ = 1;
  absl::flat_hash_map<uint64_t, Lock> locks_;   // by sequence number
  absl::flat_hash_map<Owner, uint64_t> owners_;  // (node, id) -> sequence number
  size_t held_count_ = 0;
  // Ids in these indexes are sequence numbers.
  IntervalIndex held_shared_, held_excl_, wait_shared_, wait_excl_;
  RangeSet dead_;
  // Nodes declared down, with the time their locks are released (InfinitePast once done).
  absl::flat_hash_map<NodeId, absl::Time> down_;
  Counters counters_;
};

}  // namespace dsm::lock
