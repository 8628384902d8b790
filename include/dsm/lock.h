// dsm/lock.h: cluster-wide byte-range locks on a region, and cluster barriers.
//
//   // Blocking, with a deadline:
//   absl::StatusOr<dsm::LockGuard> g =
//       region->Lock(/*offset=*/0, /*length=*/64, dsm::LockMode::kExclusive,
//                    absl::Now() + absl::Seconds(5));
//   if (!g.ok()) { ...; }                 // DeadlineExceeded, Unavailable, ...
//   if (g->previous_holder_died()) { ... repair bytes [0, 64) ... }
//   counter[0]++;                         // plain stores, protected by the lock
//   g->Unlock();                          // or let the guard go out of scope
//
//   // Asynchronous: returns at once; `done` runs later on the node's engine thread.
//   region->LockAsync(4096, 4096, dsm::LockMode::kShared, absl::InfiniteFuture(),
//                     [](absl::StatusOr<dsm::LockHandle> h) { ... hand *h to a worker ... });
//
//   // Everyone in the cluster (empty member list), or a named group of node ids:
//   absl::Status s = node->Barrier("phase-1", {}, absl::Now() + absl::Seconds(30));
//
// Semantics. A lock covers the bytes [offset, offset + length) of one region and is either
// shared (many holders) or exclusive (one holder). Two locks conflict when their ranges overlap
// and at least one is exclusive. Every lock is its own owner: two locks taken by the same node
// (or the same thread) conflict like locks of different nodes, and a lock is never merged with,
// split by or upgraded into another. Locks are arbitrated by one node per region (the home of
// its page 0), so no two nodes ever hold conflicting locks.
//
// Fairness: requests are served in arrival order at the arbiter. A request is granted only if
// it conflicts with no held lock and with no earlier request still waiting, so an exclusive
// request is never starved by a stream of shared ones.
//
// Memory: what a node wrote while holding a lock is seen by every later holder of a
// conflicting lock (the coherence protocol gives every read the latest write).
//
// Failure: when a holder's node goes down, its locks are released after a bounded grace time
// and waiters are granted in order. If the dead node held a range exclusively, the next grants
// that overlap it report previous_holder_died() (the bytes may be half-written) until an
// exclusive lock covering them is granted (its holder is told, and is expected to repair).
//
// Errors (absl::StatusCode):
//   kDeadlineExceeded   the deadline passed before the grant; the request was withdrawn.
//   kAborted            TryLock: the range is held or awaited in a conflicting mode.
//   kUnavailable        the arbiter's node is down, or this node is shutting down.
//   kInvalidArgument    length 0, or the range is not inside the region.
//   kCancelled          a pending request was withdrawn with Cancel() (async API only).
//   kNotFound           Unlock()/Cancel() of an id that is neither held nor pending.
//   kFailedPrecondition the region is not mapped at its lock arbiter.
// Barrier errors: kUnavailable (a member's node is down: the barrier fails for every member
// and the group can never complete again), kAborted (a member gave up on its deadline, so this
// generation of the barrier failed for everyone), kDeadlineExceeded (this node stopped waiting;
// the others may or may not have been released), kInvalidArgument (bad member list or name).
//
// Thread safety: every method may be called from any application thread. LockAsync and
// BarrierAsync callbacks run on the node's engine thread, which also serves this node's page
// faults: they must not block, must not call the blocking Lock/TryLock/Barrier, and must not
// touch region memory (that would deadlock). They may call LockAsync, BarrierAsync and Unlock.
//
// C++17-clean: included by applications.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsm/options.h"

namespace dsm {

// Wire values (lib/protocol/lock_fields.h): never renumber.
enum class LockMode : uint8_t { kShared = 1, kExclusive = 2 };

const char* LockModeName(LockMode mode);

// A granted lock, as a value. Copyable; holding a LockHandle does not keep the lock (use
// LockGuard for scoped ownership, or pass the handle to Unlock()).
class LockHandle {
 public:
  LockHandle() = default;
  LockHandle(uint64_t id, uint64_t offset, uint64_t length, LockMode mode,
             bool previous_holder_died)
      : id_(id),
        offset_(offset),
        length_(length),
        mode_(mode),
        previous_holder_died_(previous_holder_died) {}

  // Unique on this node for the node's lifetime; 0 only for a default-constructed handle.
  uint64_t id() const { return id_; }
  bool valid() const { return id_ != 0; }
  uint64_t offset() const { return offset_; }
  uint64_t length() const { return length_; }
  LockMode mode() const { return mode_; }
  // Some byte of the range was last held exclusively by a lock whose node died, and no
  // exclusive lock covering it has been granted since: the data may be half-written.
  bool previous_holder_died() const { return previous_holder_died_; }

 private:
  uint64_t id_ = 0;
  uint64_t offset_ = 0;
  uint64_t length_ = 0;
  LockMode mode_ = LockMode::kShared;
  bool previous_holder_died_ = false;
};

using LockCallback = std::function<void(absl::StatusOr<LockHandle>)>;

class RegionLocks;

// Scoped ownership of a granted lock: releases it when destroyed. Move-only.
class LockGuard {
 public:
  LockGuard() = default;
  LockGuard(RegionLocks* owner, LockHandle handle) : owner_(owner), handle_(handle) {}
  LockGuard(LockGuard&& other) noexcept
      : owner_(std::exchange(other.owner_, nullptr)), handle_(std::exchange(other.handle_, {})) {}
  LockGuard& operator=(LockGuard&& other) noexcept;
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;
  ~LockGuard();

  bool owns_lock() const { return owner_ != nullptr && handle_.valid(); }
  const LockHandle& handle() const { return handle_; }
  bool previous_holder_died() const { return handle_.previous_holder_died(); }

  // Releases the lock now. Later calls (and the destructor) do nothing.
  absl::Status Unlock();
  // Gives up ownership without releasing: the caller must Unlock() the returned handle.
  LockHandle Release();

 private:
  RegionLocks* owner_ = nullptr;
  LockHandle handle_;
};

// One lock request, as the node layer receives it.
struct LockRequest {
  uint64_t offset = 0;
  uint64_t length = 0;
  LockMode mode = LockMode::kExclusive;
  // Refuse at once (kAborted) instead of waiting when the range is not free.
  bool try_lock = false;
  // When to give up waiting (kDeadlineExceeded). InfiniteFuture() waits forever.
  absl::Time deadline = absl::InfiniteFuture();
};

// The lock operations of a Region (dsm::Region derives from it). The node layer implements
// RequestLock and ReleaseLock; everything else is built on them.
class RegionLocks {
 public:
  virtual ~RegionLocks() = default;

  // Blocks the calling thread until the lock is granted or fails.
  absl::StatusOr<LockGuard> Lock(uint64_t offset, uint64_t length, LockMode mode,
                                 absl::Time deadline = absl::InfiniteFuture());
  // Grants at once if the range is free of conflicting holders and waiters, else kAborted.
  // Waits one round trip to the arbiter; never queues.
  absl::StatusOr<LockGuard> TryLock(uint64_t offset, uint64_t length, LockMode mode);
  // Returns the lock id at once; `done` runs exactly once, on the engine thread (see the top
  // of the file), with a handle whose id() is that id, or the error.
  uint64_t LockAsync(uint64_t offset, uint64_t length, LockMode mode, absl::Time deadline,
                     LockCallback done);
  // Releases a granted lock. Returns at once (the arbiter is told asynchronously).
  // kNotFound if it is not held; kUnavailable if its arbiter went down meanwhile (the lock is
  // gone anyway).
  absl::Status Unlock(const LockHandle& handle) { return ReleaseLock(handle.id()); }
  // Withdraws a pending LockAsync request (its callback gets kCancelled), or releases the lock
  // if it was granted already. kNotFound if the id is neither pending nor held.
  absl::Status Cancel(uint64_t lock_id) { return ReleaseLock(lock_id); }

  // Starts `request` and returns its lock id (never 0). `done` runs exactly once on the engine
  // thread, with the handle or the error; a request that cannot start fails through `done`.
  // Never blocks.
  virtual uint64_t RequestLock(const LockRequest& request, LockCallback done) = 0;
  // Releases a held lock or withdraws a pending request (see Unlock and Cancel).
  virtual absl::Status ReleaseLock(uint64_t lock_id) = 0;
};

// Cluster barriers (dsm::Node derives from it).
class ClusterBarrier {
 public:
  virtual ~ClusterBarrier() = default;

  // Blocks until every member has entered barrier `name` (same name, same members), then
  // returns OK on every member. `members` lists node ids; empty means every node of the
  // cluster; the calling node must be one of them. Consecutive barriers of a group are
  // numbered (generations) and never mix: a node that leaves generation g and enters again
  // waits for generation g+1. A node enters a given group at most once at a time.
  absl::Status Barrier(const std::string& name, const std::vector<NodeId>& members,
                       absl::Time deadline = absl::InfiniteFuture());

  // Returns at once; `done` runs exactly once on the engine thread.
  virtual void BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                            absl::Time deadline, std::function<void(absl::Status)> done) = 0;
};

}  // namespace dsm
