// dsm/lock.h: cluster-wide byte-range locks on a region, and cluster barriers.
//
//   // Blocking, with a deadline:
//   absl::StatusOr<dsm::LockGuard> g =
//       region->Lock(/*offset=*/0, /*length=*/64, dsm::LockMode::kExclusive,
//                    absl::Now() + absl::Seconds(5));
//   if (!g.ok()) { ...; }                 // DeadlineExceeded, Unavailable, ...
//   if (g->previous_holder_died()) { ... repair bytes [0, 64) ... }
//   counter[0]++;                         // plain stores, protected by the lock
//   g->Unlock().IgnoreError();            // or let the guard go out of scope
//
//   // Asynchronous: returns at once; `done` runs later on the node's engine thread.
//   uint64_t id = region->LockAsync(
//       4096, 4096, dsm::LockMode::kShared, absl::InfiniteFuture(),
//       [](absl::StatusOr<dsm::LockHandle> h) { ... hand *h to a worker ... });
//   absl::Status c = region->Cancel(id);  // changed our mind: done gets kCancelled (or the
//                                         // lock, if granted already, is released)
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
// The operations are methods of dsm::Region (locks) and dsm::Node (barriers); their contracts
// are written there. This header holds the vocabulary: modes, handles and guards.
//
// Ownership: a held lock belongs to the node, not to a thread or an object. A LockGuard
// releases it when destroyed; a LockHandle is only a description (Region::Unlock releases it).
// Unmapping a region releases every lock this node holds in it, and Node::Shutdown releases
// every lock of the node; a guard or handle that outlives its region, or its node, stays safe
// to use (see LockGuard).
//
// Errors (absl::StatusCode):
//   kDeadlineExceeded   the deadline passed before the grant; the request was withdrawn.
//   kAborted            TryLock: the range is held or awaited in a conflicting mode.
//   kUnavailable        the arbiter's node is down, or this node is shutting down.
//   kInvalidArgument    length 0, or the range is not inside the region.
//   kCancelled          a pending request was withdrawn with Cancel() (async API only).
//   kNotFound           Unlock()/Cancel() of an id that is neither held nor pending.
//   kFailedPrecondition the region is not mapped here or at its lock arbiter; or (Unlock,
//                       Cancel) this node unmapped the region, which released its locks.
// Barrier errors: kUnavailable (a member's node is down: the barrier fails for every member
// and the group can never complete again), kAborted (a member gave up on its deadline, so this
// generation of the barrier failed for everyone; the message names the members that had not
// entered), kDeadlineExceeded (this node's deadline passed: the generation fails for every
// member, and the message names the members that had not entered, e.g. "not entered: nodes
// 2, 3 (entered: nodes 0, 1)"), kInvalidArgument (bad member list or name; names starting
// with "dsm." are the library's). A node whose deadline passes asks the arbiter who was
// missing: its Barrier returns up to one round trip (at most 1 s, and at most peer_timeout)
// after the deadline, and returns OK instead if every member had entered after all.
//
// Thread safety: the lock and barrier methods of Region and Node may be called from any
// application thread, concurrently. LockAsync and BarrierAsync callbacks run on the node's
// engine thread, which also serves this node's page faults: they must not block, must not call
// the blocking Lock/TryLock/Barrier, and must not touch region memory (that would deadlock).
// They may call LockAsync, BarrierAsync, Unlock and Cancel.
//
// C++17-clean: included by applications.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsm/abi.h"
#include "dsm/options.h"

DSM_NAMESPACE_BEGIN

class Region;
namespace internal {
class RegionImpl;
}  // namespace internal

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

// Scoped ownership of a granted lock: releases it when destroyed, when Unlock() is called, or
// when another guard is move-assigned into it. Move-only; a moved-from guard owns nothing.
// Region::Lock and Region::TryLock return one; Region::Adopt makes one for a LockAsync grant.
//
// The guard refers to its region weakly: it does not keep the Region alive, and it may outlive
// it. If the region was unmapped (Region::Unmap, or the Region destroyed) before the guard lets
// go, the unmap has released the lock already: Unlock() returns kFailedPrecondition and changes
// nothing, and the destructor does nothing. After Node::Shutdown, Unlock() returns kUnavailable
// (the shutdown released the lock).
//
// Thread safety: a guard is a value like std::unique_ptr: one thread at a time may use a given
// guard; different guards may be used concurrently from any threads.
class LockGuard {
 public:
  LockGuard() = default;
  LockGuard(LockGuard&& other) noexcept;
  // Releases the lock this guard holds (if any), then takes over `other`'s. Self-move keeps
  // the lock.
  LockGuard& operator=(LockGuard&& other) noexcept;
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;
  ~LockGuard();

  // Whether this guard still has a lock to let go of: true from the grant until Unlock(),
  // Release() or a move away. (It says nothing about whether an Unmap of the region or the
  // node's shutdown released the lock meanwhile.)
  bool owns_lock() const { return handle_.valid(); }
  // The lock's description; a default (invalid) handle once the guard owns nothing.
  const LockHandle& handle() const { return handle_; }
  bool previous_holder_died() const { return handle_.previous_holder_died(); }

  // Releases the lock now (see Region::Unlock for the errors, and above for a region that is
  // gone). OK if the guard owns nothing. Afterwards the guard owns nothing, whatever the result.
  absl::Status Unlock();
  // Gives up ownership without releasing: the caller must Region::Unlock() the returned
  // handle. Returns an invalid handle if the guard owns nothing.
  LockHandle Release();

 private:
  friend class Region;
  LockGuard(std::weak_ptr<internal::RegionImpl> region, LockHandle handle);

  std::weak_ptr<internal::RegionImpl> region_;  // empty or expired: nothing to tell
  LockHandle handle_;
};

// What a lock request asks for beyond its range and mode (the Region::Lock, TryLock and
// LockAsync overloads that take it).
struct LockOptions {
  // When to give up waiting (kDeadlineExceeded); InfiniteFuture() waits forever. TryLock
  // never waits and ignores it.
  absl::Time deadline = absl::InfiniteFuture();
  // Grant the lock together with the pages of its range: when the grant reaches this node,
  // its engine at once asks for every page of [offset, offset + length) that is not mapped
  // here as the lock needs it -- writable for an exclusive lock, readable for a shared one --
  // before the application thread even wakes up, so its first access to the range finds the
  // page mapped or joins the request already in flight instead of taking a fault and a
  // request of its own. At most 64 pages per lock, within Options::cache_budget_bytes; the
  // requests are ordinary coherence requests (other nodes' copies are revoked as for a fault),
  // so a page the holder never touches is moved for nothing. Lock() still returns at the
  // grant, not when the pages have arrived, and a page that cannot be fetched fails as a
  // fault on it would.
  bool with_pages = false;
};

// One lock request as the library's lock layer receives it (Region::Lock, TryLock and
// LockAsync build it). Applications do not need it.
struct LockRequest {
  uint64_t offset = 0;
  uint64_t length = 0;
  LockMode mode = LockMode::kExclusive;
  // Refuse at once (kAborted) instead of waiting when the range is not free.
  bool try_lock = false;
  // When to give up waiting (kDeadlineExceeded). InfiniteFuture() waits forever.
  absl::Time deadline = absl::InfiniteFuture();
  // LockOptions::with_pages.
  bool with_pages = false;
};

DSM_NAMESPACE_END
