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
//    clears the marks in its range (its holder was told and is the one to repair). Shared
//    locks of a dead node leave no mark: a shared holder cannot have written.
//
// Cost: acquire, release and cancel are O(log n + k), n locks in the table and k locks or
// waiters overlapping the range (IntervalIndex). A node's death scans the table once.
// Memory: about 150 bytes per held or waiting lock, nothing per byte.
#pragma once

#include <cstdint>
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
  };
  LockTable(Config config, LockTablePort* port);

  // kLockAcquire, kLockRelease, kLockCancel for this region (already validated by the decoder;
  // checked again here). Other types are ignored.
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
             died_flags = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  struct Lock {
    NodeId node;
    uint64_t id;
    uint64_t start, end;
    LockMode mode;
    bool held;
  };
  using Owner = std::pair<NodeId, uint64_t>;

  void Acquire(const Message& m);
  void Remove(NodeId node, uint64_t id, bool by_death);
  void EraseSeq(uint64_t seq, bool by_death);
  // Whether `l` (sequence `seq`) conflicts with a holder or an earlier waiter.
  bool Blocked(const Lock& l, uint64_t seq) const;
  void Grant(uint64_t seq, Lock& l);
  // Re-examines the waiters overlapping [a, b) in sequence order, granting the eligible.
  void GrantWaiters(uint64_t a, uint64_t b);
  void Reply(NodeId node, uint64_t id, LockReplyCode code, bool died = false);
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
