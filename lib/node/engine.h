// Engine: the heart of a node. One thread drives one EventLoop that waits on everything the
// node reacts to: userfaultfd events of every mapped region, messages from the transport,
// requests posted by application threads, and timers. Page faults are served on this thread
// without a hand-off; the coherence state machines (Cache, Directory) run here and nowhere
// else, so they need no locks.
//
// The engine is the thread, the loop and dispatch: it routes faults and messages to the
// regions (RegionTable), the region operations (RegionLifecycle: map, sync, unmap) and the
// lock service, and turns peer events and time into their calls. The protocol's decisions
// (who may be served, what to answer when not) live in lib/coherence.
//
// Threads. Application threads call the public methods (MapRegion, SyncRegion, UnmapRegion,
// GetStats, Shutdown); each posts a closure to the engine thread (RunOnEngine) and waits with
// a deadline, so no application thread waits forever. A closure owns everything it touches
// (captures by value and shared state, never the caller's frame): the caller may have stopped
// waiting when it runs. Called on the engine thread itself (from a lock or barrier callback)
// these methods are refused with FailedPrecondition: the engine cannot wait for itself.
//
// Lifetime (Shutdown): running -> stopping -> stopped. The first Shutdown moves to stopping,
// unmaps every region, releases its locks, says goodbye (kGoodbye kLeaving) to every peer not
// gone, closes the transport, joins the thread and records its result (stopped). A concurrent
// Shutdown waits (bounded) for the first and returns its result; a later one returns it at
// once. Once stopping (or finalizing), MapRegion is refused; once stopped, every application
// method is refused. The last reference to the Engine must not be dropped on the engine thread.
//
// Finalize (collective, node.h) runs before that Shutdown: (1) every region is flushed (this
// node's copies given back, every home persists), (2) kGoodbye kFinalizeReady to every peer,
// then wait until every peer has sent its own (or left) -- until then this node keeps serving
// the pages homed here --, (3) Shutdown with final unmaps (only this node persists: nobody
// else holds a copy, and other homes may already be gone).
//
// Failure handling (engine_liveness.cc; the timeout hierarchy is LivenessTimes in
// common/timeouts.h): a peer is declared down when its connection breaks, when it sends an
// invalid message or one it may not send (node/authority_gate.h), when its lease expires (nothing heard from it for lease_duration; every
// node sends heartbeats to its peers when idle), or when it owes an answer for too long (a home
// owing one to a requester: `requester`; a holder owing an ack to a home: `holder`). Declaring
// a peer down fences this node for it at once: requests to it fail and copies of pages homed
// there are poisoned (SIGBUS, reported lost). The directory stops serving the peer at once but
// forgets its copies (losing the pages it held Modified) only at ReassignAt, when the peer has
// fenced itself too. A down peer comes back only as a new incarnation (a restarted process,
// transport.h): OnPeerUp forgets the old incarnation's copies at once, clears its bits, and
// the directories serve it again, from no copies.
//
// Leaving: a peer that sent kGoodbye kLeaving has left (logged at INFO): it is handled as down
// (its copies forgotten -- it held none --, requests to it answered locally with kPeerLeft),
// but the end of its connection is expected (Transport::ExpectClose) and not reported again.
//
// Invariants (engine thread): left_mask_ is a subset of down_mask_ and of ready_mask_; a bit
// is cleared only when that peer rejoins as a new incarnation (OnPeerUp after OnPeerDown: a
// restarted process, which holds nothing and has neither left nor finalized); the node's own
// bit is in none of them.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "coherence/liveness.h"
#include "common/log.h"
#include "dsm/node.h"
#include "dsm/options.h"
#include "dsm/stats.h"
#include "fault/userfaultfd.h"
#include "node/region_lifecycle.h"
#include "node/region_table.h"
#include "region/eviction.h"
#include "region/mapped_region.h"
#include "transport/event_loop.h"
#include "transport/spin_policy.h"
#include "transport/transport.h"

namespace dsm {

class AuthorityGate;  // node/authority_gate.h
class LockService;    // node/lock_service.h
class StatsGathers;   // node/engine_stats.cc

class Engine final : public Transport::Handler, public RegionHost {
 public:
  static absl::StatusOr<std::shared_ptr<Engine>> Start(const Options& options);
  ~Engine();

  NodeId id() const { return options_.node_id; }
  size_t cluster_size() const { return options_.peers.size(); }

  // Application threads. Each is bounded by Options::connect_timeout (MapRegion) or
  // peer_timeout (plus kEngineSlack against a wedged engine), and returns an error rather than
  // wait longer. Refused on the engine thread.
  absl::StatusOr<MappedRegion*> MapRegion(const RegionOptions& options);
  absl::Status SyncRegion(RegionId region);
  absl::Status UnmapRegion(RegionId region);
  // The node's counters; an error if the engine does not answer (or is stopped).
  absl::StatusOr<Stats> GetStats();
  // The peers this node has declared down (bit per node id); for tests and diagnostics.
  absl::StatusOr<uint64_t> PeersDeclaredDown();
  absl::Status Shutdown();
  // Until every peer is connected (the transport's IsUp), or `deadline`: then
  // kDeadlineExceeded naming each missing node and its address (node/cluster_wait.cc).
  absl::Status WaitForCluster(absl::Time deadline);
  // One region's share of GetStats (node/engine_stats.cc).
  absl::StatusOr<Stats> GetRegionStats(RegionId region);
  // Every node's counters (node/engine_stats.cc; see Node::GatherStats).
  absl::StatusOr<ClusterStats> GatherStats(absl::Time deadline);
  // Region::Advise over pages [first, first + n) of `region` (node/engine_stats.cc).
  absl::Status AdviseRegion(RegionId region, PageIndex first, uint64_t n, Advice advice);
  // Leaves the cluster together with every other node; ends shut down (see above, node.h).
  absl::Status Finalize(absl::Time deadline);
  // Locks and barriers (any thread; see node/lock_service.h).
  LockService& locks() { return *locks_; }

  // Runs `fn` on the engine thread and returns its result, waiting at most peer_timeout +
  // kEngineSlack. If the caller stops waiting before `fn` starts, `fn` is dropped unrun; if
  // `fn` is already running, it completes later and its result is discarded. `fn` must own
  // what it uses. Refused on the engine thread and once the engine is stopped.
  template <typename T>
  absl::StatusOr<T> RunOnEngine(absl::AnyInvocable<absl::StatusOr<T>()> fn);
  absl::Status RunOnEngine(absl::AnyInvocable<absl::Status()> fn);
  bool OnEngineThread() const { return std::this_thread::get_id() == engine_thread_.load(); }

  // Transport::Handler (engine thread).
  void OnMessage(Message&& m) override;
  void OnPeerUp(NodeId peer, Incarnation incarnation) override;
  void OnPeerDown(NodeId peer, const absl::Status& why) override;
  // RegionHost (engine thread).
  void SendMessage(Message&& m) override;
  Userfaultfd& uffd() override { return *uffd_; }
  Evictor* evictor() override { return evictor_.get(); }
  size_t readahead_max_pages() const override { return options_.readahead_max_pages; }
  // 2^40 request ids per mapping, 2^24 mappings per node lifetime before ids could repeat.
  uint64_t TakeRequestIdRange() override { return (++mappings_made_ << 40) | 1; }
  void ReportLost(const std::string& region, PageIndex first, uint64_t count) override;
  void FlushLostSoon(RegionId id) override;

 private:
  class UffdPollOp;
  struct FinalizeWait;
  enum class Life { kRunning, kStopping, kStopped };

  explicit Engine(const Options& options);
  void Run();
  // Shutdown; `final`: after Finalize's wait (final unmaps).
  absl::Status ShutdownImpl(bool final);
  // The work of the first Shutdown (application thread, state kStopping).
  absl::Status Stop(bool final);
  absl::Status UnmapRegion(RegionId region, RegionLifecycle::UnmapScope scope);
  // Finalize's first phase: every region flushed; the first error.
  absl::Status FlushAll(absl::Time deadline);
  // How long Stop() may take for `regions` mapped regions (bounds a concurrent Shutdown).
  absl::Duration StopBound(size_t regions) const;
  absl::Duration EngineWaitLimit() const;

  void ArmUffdPoll();
  void OnUffdReadable();
  void Tick(absl::Time now);
  // Liveness (engine_liveness.cc): heartbeats due and expired leases; a peer whose lease
  // expired is declared down; the directories forget a down peer's copies at its ReassignAt.
  void CheckLeases(absl::Time now);
  void OnLeaseExpired(NodeId peer);
  // `peer` is down or left (left_mask_): the caches and directories let go of it.
  void ForgetCopies(NodeId peer, absl::Time now);
  void SilenceThenReassign(NodeId peer, absl::Time now);
  // now_or_never: forget the copies now (rejoin, or ReassignAt already passed); otherwise
  // only once ReassignAt has come.
  void Reassign(NodeId peer, bool now_or_never);
  void After(absl::Duration delay, absl::AnyInvocable<void()> fn);

  // Routes `m` (from a peer not declared down, or answered locally on behalf of one).
  void Dispatch(Message& m);
  // This node's counters (engine thread): GetStats, and the answer to a peer's kStatsRequest.
  Stats CollectStats();
  // kStatsRequest / kStatsReply (engine thread; node/engine_stats.cc).
  void OnStatsMessage(const Message& m);
  // Options::log_level and log_sink (node/engine_stats.cc).
  void ApplyLogOptions();
  // Sends Refusal(m, why), if m's type gets an answer.
  void Refuse(const Message& m, ErrorCode why);

  // Membership (engine thread).
  void OnGoodbye(const Message& m);
  void SendGoodbyes(GoodbyeKind kind);
  // `peer` left or failed: every layer drops what it keeps about it.
  void ForgetPeer(NodeId peer, const absl::Status& why);
  // Finishes finalize_wait_ if every peer is ready or one failed.
  void CheckFinalize();
  // Peers Finalize still waits for.
  uint64_t FinalizeMissing() const;

  const Options options_;
  std::unique_ptr<Userfaultfd> uffd_;
  std::unique_ptr<Evictor> evictor_;  // memory budget; outlives the regions
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<UffdPollOp> uffd_op_;
  std::unique_ptr<LockService> locks_;  // uses loop_; destroyed before it
  std::thread thread_;
  std::atomic<std::thread::id> engine_thread_{};  // set by Run()
  std::atomic<bool> stop_{false};                 // the loop exits; RunOnEngine is refused

  absl::Mutex life_mu_;
  Life life_ ABSL_GUARDED_BY(life_mu_) = Life::kRunning;
  absl::Status stop_result_ ABSL_GUARDED_BY(life_mu_);
  absl::Time stop_deadline_ ABSL_GUARDED_BY(life_mu_);  // a concurrent Shutdown waits until
  bool finalizing_ ABSL_GUARDED_BY(life_mu_) = false;   // Finalize was called (once)

  // Engine-thread state.
  RegionTable regions_;  // after evictor_: regions go first
  std::unique_ptr<RegionLifecycle> lifecycle_;
  std::unique_ptr<AuthorityGate> authority_;  // who may send what (protocol/authority.h)
  uint64_t down_mask_ = 0;   // peers declared down or left (bit per node id)
  // Peers declared down whose copies the directories have not forgotten yet (before their
  // ReassignAt): invalidations and recalls to them are held back, not answered locally.
  uint64_t silenced_mask_ = 0;
  coherence::PeerLeases leases_;
  uint64_t left_mask_ = 0;   // peers that said goodbye (kLeaving)
  uint64_t ready_mask_ = 0;  // peers done with Finalize's first phase (or left)
  std::shared_ptr<FinalizeWait> finalize_wait_;  // while Finalize waits for the others
  // The incarnation of each peer last reported up (0: none yet).
  std::array<Incarnation, kMaxNodes> incarnations_{};
  // Why each peer in down_mask_ is there, as region operations report it (OK for the others).
  std::array<absl::Status, kMaxNodes> down_why_{};
  absl::Time next_tick_ = absl::InfinitePast();
  uint64_t mappings_made_ = 0;  // engine thread; see TakeRequestIdRange
  // How long each Poll() may busy-poll (Options::poll_spin is its cap): fed with this node's
  // sends, received messages and faults.
  SpinPolicy spin_;
  Stats stats_;  // the engine's own counters; GetStats() adds the layers' counters
  // GatherStats calls in progress, by gather id (engine thread; node/engine_stats.cc).
  std::shared_ptr<StatsGathers> gathers_;
  // Options::log_sink, installed process-wide for as long as this engine lives.
  ScopedLogSink log_sink_;
};

namespace internal {
// One RunOnEngine call, shared by the caller and the closure (either may outlive the other).
template <typename T>
struct EngineCall {
  absl::Mutex mu;
  bool abandoned ABSL_GUARDED_BY(mu) = false;  // the caller stopped waiting before the start
  bool started ABSL_GUARDED_BY(mu) = false;
  std::optional<absl::StatusOr<T>> result;  // written before `done`, read after it
  absl::Notification done;
};
}  // namespace internal

template <typename T>
absl::StatusOr<T> Engine::RunOnEngine(absl::AnyInvocable<absl::StatusOr<T>()> fn) {
  if (OnEngineThread()) {
    return absl::FailedPreconditionError(
        "called on the node's engine thread (inside a callback): the engine cannot wait for "
        "itself");
  }
  if (stop_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError("the node is shut down");
  }
  auto call = std::make_shared<internal::EngineCall<T>>();
  loop_->Post([this, call, fn = std::move(fn)]() mutable {
    {
      absl::MutexLock l(&call->mu);
      if (call->abandoned) return;
      call->started = true;
    }
    // After a stall of this process, leases are judged before the call is served: a call
    // that returns has seen this node fenced for every peer it could not hear from.
    CheckLeases(absl::Now());
    call->result.emplace(fn());
    call->done.Notify();
  });
  if (!call->done.WaitForNotificationWithTimeout(EngineWaitLimit())) {
    absl::MutexLock l(&call->mu);
    if (!call->done.HasBeenNotified()) {
      const bool started = call->started;
      call->abandoned = true;
      return absl::DeadlineExceededError(
          started ? "the node's engine thread did not finish in time (the call completes later)"
                  : "the node's engine thread did not answer (the call was dropped)");
    }
  }
  return std::move(*call->result);
}

}  // namespace dsm
