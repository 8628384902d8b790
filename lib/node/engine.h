// Engine: the heart of a node. One thread drives one EventLoop that waits on everything the
// node reacts to: userfaultfd events of every mapped region, messages from the transport,
// requests posted by application threads, and timers. Page faults are served on this thread
// without a hand-off; the coherence state machines (Cache, Directory) run here and nowhere
// else, so they need no locks.
//
// Application threads call the public methods (MapRegion, SyncRegion, UnmapRegion, GetStats,
// Shutdown); each posts work to the engine thread and waits for the result with a deadline,
// so no application thread waits forever.
//
// Failure handling: a peer is declared down when its connection breaks, when it sends an
// invalid message, or when it owes an answer for longer than Options::peer_timeout. Requests
// to a down home fail (the faulting access raises SIGBUS, the page is reported lost); the
// directory forgets a down node's copies (and loses the pages it held Modified). A down peer
// never comes back in this version.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsm/options.h"
#include "dsm/stats.h"
#include "fault/userfaultfd.h"
#include "region/eviction.h"
#include "region/mapped_region.h"
#include "transport/event_loop.h"
#include "transport/spin_policy.h"
#include "transport/transport.h"

namespace dsm {

class LockService;  // node/lock_service.h

class Engine final : public Transport::Handler, public RegionHost {
 public:
  static absl::StatusOr<std::shared_ptr<Engine>> Start(const Options& options);
  ~Engine();

  NodeId id() const { return options_.node_id; }
  size_t cluster_size() const { return options_.peers.size(); }

  // Application threads. Each is bounded by Options::connect_timeout (MapRegion, Sync) or
  // peer_timeout, and returns an error rather than wait longer.
  absl::StatusOr<MappedRegion*> MapRegion(const RegionOptions& options);
  absl::Status SyncRegion(RegionId region);
  absl::Status UnmapRegion(RegionId region);
  Stats GetStats();
  absl::Status Shutdown();
  // Locks and barriers (any thread; see node/lock_service.h).
  LockService& locks() { return *locks_; }

  // Transport::Handler (engine thread).
  void OnMessage(Message&& m) override;
  void OnPeerUp(NodeId peer) override;
  void OnPeerDown(NodeId peer, const absl::Status& why) override;
  // RegionHost (engine thread).
  void SendMessage(Message&& m) override;
  Userfaultfd& uffd() override { return *uffd_; }
  Evictor* evictor() override { return evictor_.get(); }
  size_t readahead_max_pages() const override { return options_.readahead_max_pages; }
  // 2^40 request ids per mapping, 2^24 mappings per node lifetime before ids could repeat.
  uint64_t TakeRequestIdRange() override { return (++mappings_made_ << 40) | 1; }
  void ReportLost(const std::string& region, PageIndex first, uint64_t count) override;

 private:
  struct Waiter;  // an application thread waiting for replies from peers
  class UffdPollOp;

  explicit Engine(const Options& options);
  void Run();
  // Runs `fn` on the engine thread and waits for it (bounded).
  absl::Status RunOnEngine(absl::AnyInvocable<absl::Status()> fn);

  void ArmUffdPoll();
  void OnUffdReadable();
  void Tick(absl::Time now);
  void After(absl::Duration delay, absl::AnyInvocable<void()> fn);

  MappedRegion* FindRegion(RegionId id);
  void ReplyUnknownRegion(const Message& m);
  // The header of this node's answer to `m` (same region, page and req_id, back to its sender).
  Message ReplyTo(const Message& m, MsgType type, uint64_t arg = 0) const;
  void Dispatch(Message& m);  // OnMessage without the buffer recycling
  void HandleRegionOpen(const Message& m);
  void HandleSyncReq(const Message& m);
  void CompleteWaiter(uint64_t req_id, NodeId from, ErrorCode code);
  void SendRegionOpen(std::shared_ptr<Waiter> w, MappedRegion* r, NodeId home);
  uint64_t NewWaiter(std::shared_ptr<Waiter> w);
  absl::Status UnmapOnEngine(RegionId region, std::shared_ptr<Waiter> w);
  // Waits (polling every millisecond, bounded by the waiter's deadline) until `reclaim` pages
  // are back at this home, then releases every copy and asks the homes to persist.
  void FinishUnmap(RegionId region, std::shared_ptr<Waiter> w, std::vector<PageIndex> reclaim);
  // Sends kSyncReq to every home of `r` (this node included) and registers `w` for the acks.
  void AskHomesToPersist(MappedRegion* r, std::shared_ptr<Waiter> w);

  const Options options_;
  std::unique_ptr<Userfaultfd> uffd_;
  std::unique_ptr<Evictor> evictor_;  // memory budget; outlives regions_
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<UffdPollOp> uffd_op_;
  std::unique_ptr<LockService> locks_;  // uses loop_; destroyed before it
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> shut_down_{false};

  // Engine-thread state.
  absl::flat_hash_map<RegionId, std::unique_ptr<MappedRegion>> regions_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Waiter>> waiters_;
  absl::flat_hash_set<RegionId> closing_;  // being unmapped: no new copies handed out
  uint64_t next_req_id_ = 1;
  uint64_t down_mask_ = 0;  // peers declared down (bit per node id)
  absl::Time next_tick_ = absl::InfinitePast();
  uint64_t mappings_made_ = 0;  // engine thread; see TakeRequestIdRange
  // How long each Poll() may busy-poll (Options::poll_spin is its cap): fed with this node's
  // sends, received messages and faults.
  SpinPolicy spin_;
  Stats stats_;  // the engine's own counters; GetStats() adds the layers' counters
};

}  // namespace dsm
