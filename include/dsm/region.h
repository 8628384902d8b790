// dsm/region.h: one shared memory region mapped on this node.
//
//   dsm::RegionOptions ro;
//   ro.name = "grid";
//   ro.size = 1 << 20;
//   ro.home = 0;
//   absl::StatusOr<std::unique_ptr<dsm::Region>> region = node->MapRegion(ro);
//   if (!region.ok()) { ...; }
//   int* p = static_cast<int*>((*region)->data());
//   p[0] = 42;                       // plain stores; the library keeps the nodes coherent
//   absl::Status s = (*region)->Sync();  // this node's dirty pages -> home's file, durably
//
// Coherence guarantee: per page, a single writer or many readers; every read sees the latest
// write. Across nodes, programs observe x86-TSO; an atomic read-modify-write on one word is
// atomic cluster-wide.
//
// Locks (vocabulary and semantics in dsm/lock.h): byte-range locks on this region, shared or
// exclusive, arbitrated by the region's home node (the home of page 0), so no two nodes ever
// hold conflicting locks. Lock() blocks the calling thread; LockAsync() returns at once and its
// callback (the grant or the error) runs on this node's engine thread, the thread that serves
// the page faults: it must not block or touch region memory. Unmapping the region releases
// every lock this node holds in it.
//
//   absl::StatusOr<dsm::LockGuard> g = (*region)->Lock(0, 64, dsm::LockMode::kExclusive);
//   if (g.ok()) { p[0]++; }          // the next holder sees the increment
//
// Ownership: the application owns the Region (a std::unique_ptr from Node::MapRegion);
// destroying it unmaps the region. The memory at data() belongs to the mapping: it is valid
// from MapRegion until Unmap() or the Region's destruction, or the Node's Shutdown, whichever
// comes first. Regions should be unmapped before their Node is destroyed; a Region destroyed
// later is harmless (its unmap found the region gone already). LockGuards and LockHandles do
// not keep the Region alive and stay safe to use after it is gone (dsm/lock.h).
//
// Thread safety: data() memory may be used from any thread. Every method may be called from any
// application thread, concurrently; calls that race with Unmap() fail with an error (or
// complete first) rather than crash, but the memory must no longer be touched. Never call
// Sync(), Unmap() or the blocking lock methods from a LockAsync/BarrierAsync callback (the
// engine thread).
//
// C++17-clean: included by applications.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsm/abi.h"
#include "dsm/lock.h"
#include "dsm/stats.h"

DSM_NAMESPACE_BEGIN

namespace internal {
class ApiAccess;
}  // namespace internal

// Region::Advise: how this node will use a range. Per node and per page; a later Advise over
// the same pages replaces the earlier one.
enum class Advice {
  kNormal,      // the default: sequential read misses start readahead (Options::
                // readahead_max_pages); forgets what readahead learned about refused pages
  kSequential,  // as kNormal; use it to take back kRandom
  kRandom,      // no readahead from faults in the range, and none into it
  kWillNeed,    // as Prefetch() of the range
  kDontNeed,    // give up this node's copies in the range: clean pages are dropped, dirty
                // ones written back to their home first; pages homed here are unaffected
};

class Region {
 public:
  // Unmap(), if not done yet.
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  // The mapping's first byte; nullptr once Unmap() was called.
  void* data() const;
  // In bytes, rounded up to whole 4 KiB pages.
  size_t size() const;
  const std::string& name() const;

  // Writes every page this node holds Modified back to its home (keeping a Shared copy),
  // and has each home that received pages persist them with fdatasync before it returns.
  // Anonymous regions: the write-back happens, there is nothing to persist.
  // kFailedPrecondition after Unmap().
  absl::Status Sync();

  // ---- Hints and statistics ----

  // Advice for [offset, offset + length), rounded out to whole pages (see Advice).
  // kInvalidArgument for a range outside the region; kFailedPrecondition after Unmap().
  // kDontNeed returns once the pages are released (write-backs sent); the others at once.
  absl::Status Advise(uint64_t offset, uint64_t length, Advice advice);
  // Requests read-only copies of the pages of [offset, offset + length) that are homed at
  // another node and not mapped here, in runs of up to 64 pages per message, and returns
  // without waiting for them: a later access finds the page mapped or waits for the request
  // already in flight. Pages another node is writing are not granted (they are fetched when
  // touched); with Options::cache_budget_bytes, only as many as the budget has room for.
  // Errors as Advise().
  absl::Status Prefetch(uint64_t offset, uint64_t length);
  // This region's share of this node's counters (Node::GetStats): its faults, pages
  // installed, readahead, coherence messages as requester and as home, and its resident
  // pages. The transport, lock and eviction counters are per node and stay zero here.
  // kFailedPrecondition after Unmap().
  absl::StatusOr<Stats> GetStats() const;

  // Writes dirty pages back, releases every copy and every lock this node holds in the region
  // and removes the mapping; data() is invalid afterwards. At the home, remote copies are
  // recalled first and the file is synced. Later calls return OK and do nothing.
  absl::Status Unmap();

  // ---- Locks (errors: dsm/lock.h) ----

  // Blocks the calling thread until the lock is granted or fails. The guard releases it.
  absl::StatusOr<LockGuard> Lock(uint64_t offset, uint64_t length, LockMode mode,
                                 absl::Time deadline = absl::InfiniteFuture());
  // As above, with the deadline and LockOptions::with_pages taken from `options`.
  absl::StatusOr<LockGuard> Lock(uint64_t offset, uint64_t length, LockMode mode,
                                 const LockOptions& options);
  // Grants at once if the range is free of conflicting holders and waiters, else kAborted.
  // Waits one round trip to the arbiter; never queues.
  absl::StatusOr<LockGuard> TryLock(uint64_t offset, uint64_t length, LockMode mode);
  absl::StatusOr<LockGuard> TryLock(uint64_t offset, uint64_t length, LockMode mode,
                                    const LockOptions& options);
  // Returns the lock id (never 0) at once; `done` runs exactly once, on the engine thread
  // (see dsm/lock.h), with a handle whose id() is that id, or the error; a request that cannot
  // start fails through `done` too. The caller owns a granted lock: release it with Unlock().
  uint64_t LockAsync(uint64_t offset, uint64_t length, LockMode mode, absl::Time deadline,
                     LockCallback done);
  uint64_t LockAsync(uint64_t offset, uint64_t length, LockMode mode,
                     const LockOptions& options, LockCallback done);
  // Releases a granted lock. Returns at once (the arbiter is told asynchronously).
  // kNotFound if it is not held; kUnavailable if its arbiter went down meanwhile or the node
  // shut down (the lock is gone anyway); kFailedPrecondition after Unmap() (which released it).
  absl::Status Unlock(const LockHandle& handle);
  // Withdraws a pending LockAsync request (its callback gets kCancelled), or releases the lock
  // if it was granted already. kNotFound if the id is neither pending nor held; otherwise as
  // Unlock().
  absl::Status Cancel(uint64_t lock_id);
  // A guard that owns `handle`, a lock of this region granted to LockAsync or given up by
  // LockGuard::Release(): it releases the lock when destroyed. Adopt each lock at most once.
  LockGuard Adopt(const LockHandle& handle);

 private:
  friend class internal::ApiAccess;
  explicit Region(std::shared_ptr<internal::RegionImpl> impl);

  // Shared with nothing that outlives the Region but weakly (LockGuard) or for the length of
  // one call (a blocking Lock's rendezvous).
  const std::shared_ptr<internal::RegionImpl> impl_;
};

DSM_NAMESPACE_END
