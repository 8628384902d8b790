// LockService: the node layer's wiring of the lock and barrier logic (lib/lock) into the
// engine, as the integration note in lock/lock_client.h asks. The Engine owns one.
//
// What it holds: one LockClient, one BarrierClient and one BarrierArbiter for the node, and
// one LockTable per region whose lock arbiter (the home of page 0) is this node, created when
// the first lock message for the region arrives and dropped (waiters told kShuttingDown) when
// the region is unmapped here.
//
// Threads. Everything except the application entry points runs on the engine thread, inside
// the engine's event loop: OnMessage, OnPeerDown, OnTick, OnRegionUnmapped, Shutdown. The
// application entry points (RequestLock, ReleaseLock, BarrierAsync) may be called from any
// thread, including the engine thread itself from inside a lock or barrier callback:
//  - from another thread they queue the call for the engine thread (an inbox drained by a
//    task posted to the event loop). RequestLock and BarrierAsync return at once. ReleaseLock
//    of a lock this node holds at another node's arbiter not known down returns at once too: the grant
//    was recorded in `held_` (under mu_) before the application saw its handle, so the
//    release is decided on the calling thread and its kLockRelease is queued behind every
//    earlier call of this node (a later Lock's kLockAcquire cannot overtake it). Any other
//    ReleaseLock (a pending request, a lost or unknown id, the arbiter known down) waits for
//    the engine's answer, which never waits on the network (bounded by peer_timeout + 5 s
//    against a wedged engine);
//  - on the engine thread they run at once.
// Callbacks always run on the engine thread, except after Shutdown, when there is none: then
// the entry points fail at once (kUnavailable) on the calling thread.
//
// Never blocking: no lock or barrier operation ever waits on the engine thread. A request that
// cannot be granted now is queued at its arbiter and answered later by a message; the fault
// path shares the thread and keeps running.
//
// Messages. The lock logic's Send()s are queued and delivered after the call that produced
// them returns (its ports must not re-enter it); a message to this node (the region's arbiter
// or the barrier's arbiter is local) is handed to the local dispatcher instead of the
// transport. A precise timer on the event loop fires at the earliest deadline of any lock
// request, barrier or grace period.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dsm/lock.h"
#include "dsm/options.h"
#include "lock/barrier.h"
#include "lock/lock_client.h"
#include "lock/lock_table.h"
#include "region/mapped_region.h"
#include "transport/event_loop.h"
#include "protocol/message.h"

namespace dsm {

class LockService final : lock::LockTablePort, lock::LockClientPort, lock::BarrierPort {
 public:
  // `send` hands a message to the transport (the engine's SendMessage: sets src, drops
  // messages to down peers). `find` looks a region up among those mapped on this node
  // (nullptr if not mapped). Both are called on the engine thread only.
  using SendFn = std::function<void(Message&&)>;
  using FindFn = std::function<MappedRegion*(RegionId)>;
  // Call on any thread before the loop runs, or on the engine thread.
  LockService(const Options& options, EventLoop* loop, SendFn send, FindFn find);
  ~LockService();
  LockService(const LockService&) = delete;
  LockService& operator=(const LockService&) = delete;

  // Whether `type` is one of the lock and barrier messages (40..49) this service handles.
  static bool Handles(MsgType type);

  // ---- engine thread ----
  // A validated lock or barrier message from a peer (not from a peer declared down).
  void OnMessage(Message&& m);
  // The engine declared `peer` down.
  void OnPeerDown(NodeId peer);
  // Periodic housekeeping (the engine's tick); the precise timer does the real work.
  void OnTick(absl::Time now);
  // Arbiters that owe this node an answer to a lock request for longer than `timeout`.
  void CollectOverdue(absl::Time now, absl::Duration timeout, std::vector<NodeId>* peers) const {
    client_.CollectOverdue(now, timeout, peers);
  }
  // Region `region` is being unmapped on this node (call before the MappedRegion goes): this
  // node's requests in it fail and its held locks are released at the arbiter; at the arbiter
  // the region's table is dropped (waiters get kShuttingDown).
  void OnRegionUnmapped(RegionId region);
  // Node shutdown: everything pending fails, held locks are released at their arbiters, then
  // the application entry points fail at once. Call before the transport shuts down.
  void Shutdown();

  // ---- any thread ----
  // RegionLocks::RequestLock for region `region` (`size` bytes, arbitrated by `arbiter`).
  uint64_t RequestLock(RegionId region, NodeId arbiter, uint64_t size, const LockRequest& request,
                       LockCallback done);
  // RegionLocks::ReleaseLock.
  absl::Status ReleaseLock(uint64_t lock_id);
  // ClusterBarrier::BarrierAsync.
  void BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                    absl::Time deadline, std::function<void(absl::Status)> done);

  struct Counters {
    lock::LockClient::Counters client;
    lock::LockTable::Counters tables;  // summed over the tables alive now
    size_t tables_alive = 0;
  };
  // Engine thread (tests and stats).
  Counters counters() const;
  // Message authority (protocol/authority.h), engine thread: the arbiter this node asked for
  // lock `lock_id`, and the arbiter pending barrier request `req_id` waits at; nullopt if
  // neither is known here.
  std::optional<NodeId> LockArbiterOf(uint64_t lock_id) const {
    return client_.arbiter_of(lock_id);
  }
  std::optional<NodeId> LockPredecessorOf(uint64_t lock_id) const {
    return client_.predecessor_of(lock_id);
  }
  std::optional<NodeId> BarrierArbiterOf(uint64_t req_id) const {
    return barrier_client_.arbiter_of(req_id);
  }

 private:
  // lock::*Port: queue for Flush().
  void Send(Message&& m) override;

  bool OnEngineThread() const {
    return std::this_thread::get_id() == engine_thread_.load(std::memory_order_acquire);
  }
  // Queues `fn` for the engine thread; false once the service is shut down.
  bool Enqueue(absl::AnyInvocable<void()> fn);
  // Queues `fn` (the service is not closed); whether the caller must post a drain after
  // releasing mu_.
  bool EnqueueLocked(absl::AnyInvocable<void()> fn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ReleaseLock's fast path: true (and the release queued) if `lock_id` is in held_ at an
  // arbiter not known down.
  bool ReleaseHeldAsync(uint64_t lock_id);
  // `done`, preceded on a grant by the requests for the range's pages (LockOptions::
  // with_pages): they leave on the engine thread before the application learns of the grant.
  LockCallback FetchPagesOnGrant(RegionId region, const LockRequest& request, LockCallback done);
  // The engine's Release of `lock_id` (any state), keeping held_ in step.
  absl::Status ReleaseOnEngine(uint64_t lock_id);
  void DrainInbox();
  // Delivers a message addressed to this node (after validation) to the right component.
  void Dispatch(const Message& m);
  void DispatchToTable(const Message& m, absl::Time now);
  // The table of `region` if this node arbitrates it (created on first use); else nullptr.
  lock::LockTable* TableFor(RegionId region);
  // Sends / locally delivers everything queued, then re-arms the timer. Re-entrant calls
  // return at once (the outer call drains what they queued).
  void Flush();
  void ArmTimer();
  void OnTimer();

  const Options options_;
  const NodeId self_;
  const size_t cluster_size_;
  EventLoop* const loop_;
  const SendFn send_;
  const FindFn find_;
  std::atomic<std::thread::id> engine_thread_{};
  std::atomic<uint64_t> next_lock_id_{1};

  // Application calls waiting for the engine thread.
  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> inbox_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Locks granted to this node by another node's arbiter and not yet released, as the
  // application threads may know them: an entry is added on the engine thread before the grant's callback runs, and
  // removed by whichever comes first of the application's release (any thread) and the
  // engine forgetting the lock (region unmapped, shutdown). An id absent here is decided by
  // the engine (LockClient is the authority; this is a subset of its held locks).
  struct HeldLock {
    RegionId region;
    NodeId arbiter;
  };
  absl::flat_hash_map<uint64_t, HeldLock> held_ ABSL_GUARDED_BY(mu_);
  uint64_t down_arbiters_ ABSL_GUARDED_BY(mu_) = 0;  // peers declared down (NodeBit)

  // Engine-thread state.
  lock::LockClient client_;
  lock::BarrierClient barrier_client_;
  lock::BarrierArbiter barrier_arbiter_;
  absl::flat_hash_map<RegionId, std::unique_ptr<lock::LockTable>> tables_;
  std::deque<Message> outbox_;
  bool flushing_ = false;
  bool stopped_ = false;
  absl::Time timer_at_ = absl::InfiniteFuture();
  EventLoop::TimerId timer_ = 0;
};

}  // namespace dsm
