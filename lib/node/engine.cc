#include "node/engine.h"

#include <poll.h>

#include <algorithm>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "coherence/refusal.h"
#include "common/log.h"
#include "common/node_set.h"
#include "common/payload_pool.h"
#include "common/status_macros.h"
#include "common/timeouts.h"
#include "node/authority_gate.h"
#include "node/lock_service.h"
#include "node/region_stats.h"

namespace dsm {
namespace {

constexpr absl::Duration kTickPeriod = kLivenessTick;
// The transport's own shutdown (flushing what is queued) is given this long.
constexpr absl::Duration kTransportShutdown = absl::Seconds(2);

absl::Status RefusedWhileStopping() {
  return absl::FailedPreconditionError("the node is shutting down");
}

std::string NodeList(uint64_t mask) {
  std::string out;
  for (NodeId n = 0; n < kMaxNodes; ++n) {
    if (InNodeSet(mask, n)) absl::StrAppend(&out, out.empty() ? "" : ", ", n);
  }
  return out;
}

}  // namespace

// Finalize's wait for the other nodes: written on the engine thread, read by the application
// thread after `done`.
struct Engine::FinalizeWait {
  absl::Status status;
  absl::Notification done;
};

class Engine::UffdPollOp final : public EventLoop::Op {
 public:
  explicit UffdPollOp(Engine* e) : engine_(e) {}
  void OnComplete(int res, uint32_t) override {
    if (res < 0 && res != -ECANCELED) DSM_LOG(ERROR) << "poll on userfaultfd: " << strerror(-res);
    if (res == -ECANCELED || engine_->stop_.load()) return;
    engine_->OnUffdReadable();
    engine_->evictor_->Enforce();  // room for the pages just requested, before they arrive
    engine_->ArmUffdPoll();
  }

 private:
  Engine* engine_;
};

Engine::Engine(const Options& options)
    : options_(options),
      leases_(options.node_id, DeriveLivenessTimes(options.peer_timeout, options.lease_duration)),
      spin_(SpinPolicy::Config{options.poll_spin}) {}

absl::StatusOr<std::shared_ptr<Engine>> Engine::Start(const Options& options) {
  DSM_RETURN_IF_ERROR(ValidateLiveness(options.peer_timeout, options.lease_duration));
  std::shared_ptr<Engine> e(new Engine(options));
  e->ApplyLogOptions();
  // Options first (CreateTransport validates them): a bad option is reported as such, before
  // any kernel facility is touched.
  DSM_ASSIGN_OR_RETURN(e->transport_, CreateTransport(options));
  DSM_ASSIGN_OR_RETURN(e->uffd_, Userfaultfd::Open());
  e->evictor_ = std::make_unique<Evictor>(options);
  DSM_ASSIGN_OR_RETURN(e->loop_, EventLoop::Create(512));
  e->uffd_op_ = std::make_unique<UffdPollOp>(e.get());
  Engine* raw = e.get();
  e->locks_ = std::make_unique<LockService>(
      options, e->loop_.get(), [raw](Message&& m) { raw->SendMessage(std::move(m)); },
      [raw](RegionId id) { return raw->regions_.Find(id); });
  e->lifecycle_ = std::make_unique<RegionLifecycle>(
      e->options_, &e->regions_, raw,
      RegionLifecycle::Hooks{
          [raw](Message&& m) { raw->SendMessage(std::move(m)); },
          [raw](absl::Duration d, absl::AnyInvocable<void()> fn) { raw->After(d, std::move(fn)); },
          [raw](NodeId peer) {
            return peer < kMaxNodes ? raw->down_why_[peer] : absl::OkStatus();
          }});
  e->authority_ = std::make_unique<AuthorityGate>(options.node_id, &e->regions_,
                                                  e->lifecycle_.get(), e->locks_.get());
  e->ArmUffdPoll();
  // The thread does not run yet when this is posted, and Start waits for it without a limit:
  // the references cannot outlive this frame.
  absl::Status started = absl::UnknownError("engine did not start");
  absl::Notification ready;
  e->loop_->Post([raw, &started, &ready] {
    started = raw->transport_->Start(raw->loop_.get(), raw);
    ready.Notify();
  });
  e->thread_ = std::thread([raw] { raw->Run(); });
  ready.WaitForNotification();
  if (!started.ok()) {
    e->stop_.store(true);
    e->loop_->Wakeup();
    e->thread_.join();
    absl::MutexLock l(&e->life_mu_);
    e->life_ = Life::kStopped;
    return started;
  }
  return e;
}

Engine::~Engine() {
  (void)Shutdown();
}

void Engine::Run() {
  engine_thread_.store(std::this_thread::get_id());
  // Counted while it runs: engines in one process do not spin when they outnumber vCPUs.
  LoopThreadRegistration registered;
  while (!stop_.load(std::memory_order_acquire)) {
    absl::Time now = absl::Now();
    // The loop never sleeps past its own timers (RunAfter); the tick bounds the rest.
    loop_->Poll(spin_.SpinFor(now), std::max(absl::ZeroDuration(), next_tick_ - now));
    now = absl::Now();
    if (now >= next_tick_) {
      Tick(now);
      next_tick_ = now + kTickPeriod;
    }
  }
}

absl::Duration Engine::EngineWaitLimit() const {
  return options_.peer_timeout + kEngineSlack;
}

absl::Status Engine::RunOnEngine(absl::AnyInvocable<absl::Status()> fn) {
  return RunOnEngine<std::monostate>(
             [fn = std::move(fn)]() mutable -> absl::StatusOr<std::monostate> {
               absl::Status s = fn();
               if (!s.ok()) return s;
               return std::monostate{};
             })
      .status();
}

// ---- userfaultfd -------------------------------------------------------------------------

void Engine::ArmUffdPoll() {
  io_uring_sqe* sqe = loop_->Prepare(uffd_op_.get());
  io_uring_prep_poll_add(sqe, uffd_->fd(), POLLIN);
}

void Engine::OnUffdReadable() {
  FaultEvent events[64];
  const absl::Time now = absl::Now();
  spin_.OnInput(now, /*message=*/false);
  for (;;) {
    absl::StatusOr<size_t> n = uffd_->ReadEvents(absl::MakeSpan(events));
    if (!n.ok()) {
      DSM_LOG(ERROR) << "reading userfaultfd: " << n.status();
      return;
    }
    if (*n == 0) return;
    for (size_t i = 0; i < *n; ++i) {
      const FaultEvent& ev = events[i];
      MappedRegion* region = regions_.FindByAddress(ev.address);
      if (region == nullptr) {
        // The region is being unmapped; let the thread retry (it will see plain memory or
        // SIGSEGV, never hang).
        (void)uffd_->Wake(reinterpret_cast<void*>(ev.address), kPageSize);
        continue;
      }
      const bool write = ev.write || ev.kind == FaultEvent::Kind::kWriteProtect;
      evictor_->OnFault(region, region->PageOf(ev.address), write, now);
    }
    if (*n < 64) return;
  }
}

// ---- messages ----------------------------------------------------------------------------

// Whether a message's sender waits for an answer (the spin policy's "awaiting" window).
// Answers, acks and releases are not; a type not listed here just does not open a window.
static bool ExpectsAnswer(MsgType t) {
  switch (t) {
    case MsgType::kRegionOpen:
    case MsgType::kGetS:
    case MsgType::kGetSRun:
    case MsgType::kGetM:
    case MsgType::kSyncReq:
    case MsgType::kInv:
    case MsgType::kRecall:
    case MsgType::kLockAcquire:
    case MsgType::kBarrierEnter:
      return true;
    default:
      return false;
  }
}

void Engine::SendMessage(Message&& m) {
  m.src = options_.node_id;
  const absl::Time now = absl::Now();
  if (ExpectsAnswer(m.type)) spin_.OnSend(now);
  leases_.OnSent(m.dst, now);
  if (InNodeSet(down_mask_, m.dst)) {
    // Not fenced yet: the directory waits for its ReassignAt instead of an answer.
    if (InNodeSet(silenced_mask_, m.dst) &&
        (m.type == MsgType::kInv || m.type == MsgType::kRecall)) {
      return;
    }
    // The peer is gone: a request would never be answered. Answer it on the peer's behalf,
    // after the current event (the sender is in the middle of a call).
    const ErrorCode why =
        InNodeSet(left_mask_, m.dst) ? ErrorCode::kPeerLeft : ErrorCode::kPeerDown;
    if (std::optional<Message> reply = coherence::Refusal(m, why)) {
      loop_->Post([this, reply = std::move(*reply)]() mutable { Dispatch(reply); });
    }
    return;
  }
  transport_->Send(std::move(m));
}

void Engine::Refuse(const Message& m, ErrorCode why) {
  if (std::optional<Message> reply = coherence::Refusal(m, why)) SendMessage(std::move(*reply));
}

void Engine::OnMessage(Message&& m) {
  const absl::Time now = absl::Now();
  spin_.OnInput(now, /*message=*/true);
  // A message that arrives after this node heard nothing from its sender for a whole lease
  // (this node was stalled) renews nothing: the sender may have reassigned our copies.
  if (leases_.Expired(m.src, now)) OnLeaseExpired(m.src);
  leases_.OnReceived(m.src, now);
  if (!InNodeSet(down_mask_, m.src) || m.src == options_.node_id) {
    // Only what its sender may send is dispatched; a sender that breaks the authority table
    // is cut off, as for an invalid message. (Answers made here on behalf of a down peer
    // reach Dispatch directly: they come from no peer.)
    if (absl::Status denied = authority_->Check(m); denied.ok()) {
      Dispatch(m);
    } else {
      transport_->Disconnect(m.src, denied);
      OnPeerDown(m.src, denied);
    }
  }
  // The handlers copy what they keep: a page run's buffer serves the next run.
  if (!m.payload.empty()) RecyclePayloadBuffer(std::move(m.payload));
}

void Engine::Dispatch(Message& m) {
  if (LockService::Handles(m.type)) return locks_->OnMessage(std::move(m));
  switch (m.type) {
    case MsgType::kHello:
    case MsgType::kHeartbeat:  // renewed the lease in OnMessage
      return;
    case MsgType::kGoodbye:
      return OnGoodbye(m);
    case MsgType::kRegionOpen:
      return lifecycle_->OnRegionOpen(m);
    case MsgType::kRegionOpenReply:
    case MsgType::kSyncAck:
      return lifecycle_->OnReply(m);
    case MsgType::kSyncReq:
      return lifecycle_->OnSyncReq(m);
    case MsgType::kStatsRequest:
    case MsgType::kStatsReply:
      return OnStatsMessage(m);
    default:
      break;
  }
  MappedRegion* r = regions_.Find(m.region);
  if (r == nullptr) return Refuse(m, ErrorCode::kNoSuchRegion);
  switch (m.type) {
    case MsgType::kGetS:
    case MsgType::kGetM:
    case MsgType::kGetSRun:
    case MsgType::kPut:
    case MsgType::kInvAck:
    case MsgType::kRecallAck:
      if (r->directory() == nullptr) {
        DSM_LOG(WARNING) << "node " << m.src << " sent " << MsgTypeName(m.type) << " for page "
                         << m.page << " of " << r->name() << " to a node that is home of none";
        return Refuse(m, ErrorCode::kNotHome);
      }
      // The Directory checks the page, its home and the closing state itself.
      return r->directory()->OnMessage(m, absl::Now());
    case MsgType::kData:
    case MsgType::kDataRun:
    case MsgType::kGrant:
    case MsgType::kNack:
    case MsgType::kInv:
    case MsgType::kRecall:
      if (m.page >= r->num_pages()) return;
      return r->cache().OnMessage(m, absl::Now());
    default:
      DSM_LOG(WARNING) << "unexpected message " << MsgTypeName(m.type) << " from node " << m.src;
      return;
  }
}

// ---- peers and time ----------------------------------------------------------------------

void Engine::OnPeerUp(NodeId peer, Incarnation incarnation) {
  if (peer >= kMaxNodes || peer == options_.node_id) return;
  const Incarnation previous = incarnations_[peer];
  if (previous != 0 && previous != incarnation && !InNodeSet(down_mask_, peer)) {
    // The transport reports the old incarnation down first; never let its copies survive.
    OnPeerDown(peer, absl::UnavailableError(absl::StrCat("incarnation ", previous,
                                                         " was replaced by ", incarnation)));
  }
  incarnations_[peer] = incarnation;
  if (!InNodeSet(down_mask_, peer)) {
    DSM_LOG(INFO) << "node " << peer << " is up (incarnation " << incarnation << ")";
    leases_.OnPeerUp(peer, absl::Now());
    return;
  }
  // A restarted process with that id: it holds nothing. Its old incarnation's copies were
  // dropped when it went down (the Directory forgot them; pages it held alone stay lost), so
  // the homes here serve it from scratch. Pages homed at the old incarnation stay lost in
  // this node's caches: the new process does not have their data.
  // Copies the old incarnation held here are forgotten now rather than at ReassignAt: the
  // transport refuses the old incarnation, so nothing it holds can reach this node again.
  Reassign(peer, /*now_or_never=*/true);
  down_mask_ &= ~NodeBit(peer);
  left_mask_ &= ~NodeBit(peer);   // the new incarnation has neither left
  ready_mask_ &= ~NodeBit(peer);  // nor finished Finalize's first phase
  down_why_[peer] = absl::OkStatus();
  lifecycle_->OnPeerUp(peer);  // calls that need it are no longer refused at once
  DSM_LOG(INFO) << "node " << peer << " rejoined with incarnation " << incarnation
                << " (incarnation " << previous << " was down)";
  regions_.ForEach([peer](MappedRegion& r) {
    if (r.directory() != nullptr) r.directory()->OnPeerRejoined(peer);
  });
  leases_.OnPeerUp(peer, absl::Now());
}

void Engine::OnPeerDown(NodeId peer, const absl::Status& why) {
  // A peer that left: the end of its connection was expected and is not news.
  if (peer >= kMaxNodes || peer == options_.node_id || InNodeSet(down_mask_, peer)) return;
  ++stats_.peers_down;
  // A refusal (cluster size, duplicate id, stale incarnation) is a configuration error, not a
  // failure of that node: say so.
  const bool refused = absl::IsFailedPrecondition(why) || absl::IsAlreadyExists(why);
  if (refused) {
    DSM_LOG(ERROR) << "node " << peer << " cannot be reached: " << why.message();
  } else {
    DSM_LOG(WARNING) << "node " << peer << " is down: " << why;
  }
  ForgetPeer(peer, absl::Status(why.ok() ? absl::StatusCode::kUnavailable : why.code(),
                                absl::StrCat("node ", peer,
                                             refused ? " cannot be reached: " : " is down: ",
                                             why.message())));
  CheckFinalize();
}

void Engine::ForgetPeer(NodeId peer, const absl::Status& why) {
  down_mask_ |= NodeBit(peer);
  down_why_[peer] = why;
  const absl::Time now = absl::Now();
  ForgetCopies(peer, now);
  locks_->OnPeerDown(peer);
  lifecycle_->OnPeerDown(peer, why);
}

// ---- leaving -------------------------------------------------------------------------------

void Engine::OnGoodbye(const Message& m) {
  const NodeId peer = m.src;
  if (peer == options_.node_id || InNodeSet(down_mask_, peer)) return;
  ready_mask_ |= NodeBit(peer);  // kLeaving implies the peer's writes are at their homes
  if (m.arg == static_cast<uint64_t>(GoodbyeKind::kLeaving)) {
    left_mask_ |= NodeBit(peer);
    transport_->ExpectClose(peer);
    DSM_LOG(INFO) << "node " << peer << " left the cluster";
    ForgetPeer(peer, absl::UnavailableError(absl::StrCat("node ", peer,
                                                         " has left the cluster")));
  }
  CheckFinalize();
}

void Engine::SendGoodbyes(GoodbyeKind kind) {
  for (NodeId peer = 0; peer < cluster_size(); ++peer) {
    if (peer == options_.node_id || InNodeSet(down_mask_, peer)) continue;
    Message m;
    m.type = MsgType::kGoodbye;
    m.dst = peer;
    m.arg = static_cast<uint64_t>(kind);
    SendMessage(std::move(m));
  }
}

uint64_t Engine::FinalizeMissing() const {
  return FirstNodes(cluster_size()) & ~NodeBit(options_.node_id) & ~ready_mask_;
}

void Engine::CheckFinalize() {
  if (finalize_wait_ == nullptr) return;
  const uint64_t missing = FinalizeMissing();
  const uint64_t failed = missing & down_mask_;
  if (failed != 0) {
    finalize_wait_->status = absl::UnavailableError(absl::StrCat(
        "Finalize: node(s) ", NodeList(failed), " failed before they finished Finalize"));
  } else if (missing != 0) {
    return;
  }
  finalize_wait_->done.Notify();
  finalize_wait_.reset();
}

void Engine::ReportLost(const std::string& region, PageIndex first, uint64_t count) {
  stats_.pages_lost += count;
  if (options_.on_pages_lost) options_.on_pages_lost(region, first, count);
}

void Engine::FlushLostSoon(RegionId id) {
  loop_->Post([this, id] {
    if (MappedRegion* r = regions_.Find(id)) r->FlushLost();
  });
}

void Engine::After(absl::Duration delay, absl::AnyInvocable<void()> fn) {
  loop_->RunAfter(delay, std::move(fn));
}

void Engine::Tick(absl::Time now) {
  CheckLeases(now);
  // Peers owing protocol answers for too long are declared down: a home owing a requester
  // gets longer than a holder owing its home (see LivenessTimes), so a home waiting on a slow
  // holder answers before its requesters give up on it.
  std::vector<NodeId> overdue;
  const LivenessTimes& times = leases_.times();
  regions_.ForEach([&](MappedRegion& r) {
    r.cache().CollectOverdue(now, times.requester, &overdue);
    if (r.directory() != nullptr) r.directory()->CollectOverdue(now, times.holder, &overdue);
  });
  const absl::Duration timeout = options_.peer_timeout;
  locks_->CollectOverdue(now, timeout, &overdue);
  std::sort(overdue.begin(), overdue.end());
  overdue.erase(std::unique(overdue.begin(), overdue.end()), overdue.end());
  for (NodeId peer : overdue) {
    // A silenced peer still owes acks until its ReassignAt: it is down already.
    if (peer == options_.node_id || InNodeSet(down_mask_, peer)) continue;
    const absl::Status why = absl::DeadlineExceededError(
        "owes an answer past its timeout (requests to a home: the `requester` limit, "
        "invalidations and recalls: peer_timeout; see docs/ARCHITECTURE.md)");
    transport_->Disconnect(peer, why);
    // The transport reports it through OnPeerDown; make sure it happened.
    OnPeerDown(peer, why);
  }
  evictor_->Maintain();
  lifecycle_->OnTick(now);  // application threads waiting past their deadline get an error
  locks_->OnTick(now);
}

// ---- application-thread operations -------------------------------------------------------

absl::StatusOr<MappedRegion*> Engine::MapRegion(const RegionOptions& options) {
  {
    absl::MutexLock l(&life_mu_);
    if (life_ != Life::kRunning || finalizing_) return RefusedWhileStopping();
  }
  auto op = std::make_shared<RegionOp>();
  DSM_ASSIGN_OR_RETURN(MappedRegion * mapped,
                       RunOnEngine<MappedRegion*>([this, options, op]() {
                         return lifecycle_->StartMap(options, op);
                       }));
  const absl::Status status =
      op->Wait(options_.connect_timeout + kEngineSlack, "mapping");
  if (!status.ok()) {
    (void)RunOnEngine([this, id = mapped->id()] {
      lifecycle_->Remove(id);
      return absl::OkStatus();
    });
    return status;
  }
  return mapped;
}

absl::Status Engine::SyncRegion(RegionId region) {
  auto op = std::make_shared<RegionOp>();
  DSM_RETURN_IF_ERROR(
      RunOnEngine([this, region, op] { return lifecycle_->StartSync(region, op); }));
  return op->Wait(EngineWaitLimit(), "sync");
}

absl::Status Engine::UnmapRegion(RegionId region) {
  return UnmapRegion(region, RegionLifecycle::UnmapScope::kCluster);
}

absl::Status Engine::UnmapRegion(RegionId region, RegionLifecycle::UnmapScope scope) {
  auto op = std::make_shared<RegionOp>();
  DSM_RETURN_IF_ERROR(RunOnEngine(
      [this, region, op, scope] { return lifecycle_->StartUnmap(region, op, scope); }));
  const absl::Status result = op->Wait(EngineWaitLimit(), "unmap");
  absl::Status erased = RunOnEngine([this, region] {
    locks_->OnRegionUnmapped(region);
    lifecycle_->Remove(region);
    return absl::OkStatus();
  });
  return result.ok() ? erased : result;
}

absl::StatusOr<Stats> Engine::GetStats() {
  return RunOnEngine<Stats>([this]() -> absl::StatusOr<Stats> { return CollectStats(); });
}

Stats Engine::CollectStats() {
  Stats out = stats_;
  regions_.ForEach([&out](MappedRegion& r) { out += RegionStats(r); });
  evictor_->AddStats(&out);
  const Transport::Counters t = transport_->counters();
  Stats net;
  net.messages_sent = t.messages_sent;
  net.messages_received = t.messages_received;
  net.bytes_sent = t.bytes_sent;
  net.bytes_received = t.bytes_received;
  net.bad_messages = t.bad_messages;
  net.authority_violations = authority_->violations();
  const lock::LockClient::Counters lc = locks_->counters().client;
  net.lock_requests = lc.requests;
  net.locks_granted = lc.granted;
  net.locks_queued = lc.queued;
  net.locks_failed = lc.failed;
  net.locks_lost = lc.lost;
  net.lock_handoffs = lc.handoffs_received;
  out += net;
  return out;
}

// ---- lifetime ----------------------------------------------------------------------------

absl::Duration Engine::StopBound(size_t regions) const {
  // Each unmap: two engine calls and the unmap itself, each bounded by EngineWaitLimit; then
  // the transport's shutdown inside one more engine call; then the join.
  return static_cast<int64_t>(3 * regions + 2) * EngineWaitLimit() + kTransportShutdown;
}

absl::Status Engine::Shutdown() { return ShutdownImpl(/*final=*/false); }

absl::Status Engine::FlushAll(absl::Time deadline) {
  DSM_ASSIGN_OR_RETURN(
      std::vector<RegionId> ids,
      RunOnEngine<std::vector<RegionId>>(
          [this]() -> absl::StatusOr<std::vector<RegionId>> { return regions_.ids(); }));
  absl::Status result;
  for (RegionId id : ids) {
    auto op = std::make_shared<RegionOp>();
    absl::Status s = RunOnEngine([this, id, op] { return lifecycle_->StartFlush(id, op); });
    if (absl::IsNotFound(s)) continue;  // unmapped meanwhile by an application thread
    if (s.ok()) {
      const absl::Duration left = std::max(absl::ZeroDuration(), deadline - absl::Now());
      s = op->Wait(std::min(EngineWaitLimit(), left), "Finalize: writing back");
    }
    if (!s.ok() && result.ok()) result = s;
  }
  return result;
}

absl::Status Engine::Finalize(absl::Time deadline) {
  if (OnEngineThread()) {
    return absl::FailedPreconditionError(
        "Finalize called on the node's engine thread (inside a callback): it cannot wait for "
        "itself; call it from another thread");
  }
  {
    absl::MutexLock l(&life_mu_);
    if (life_ != Life::kRunning) {
      return absl::FailedPreconditionError("Finalize: the node is shut down or shutting down");
    }
    if (finalizing_) return absl::FailedPreconditionError("Finalize: called twice");
    finalizing_ = true;
  }
  // 1. Every write of this node reaches its home, which persists it.
  absl::Status result = FlushAll(deadline);
  // 2. Tell the others, and wait until each of them has said the same (or left). Meanwhile the
  // engine goes on serving the pages homed here to nodes still finishing their work.
  auto wait = std::make_shared<FinalizeWait>();
  absl::Status announced = RunOnEngine([this, wait] {
    SendGoodbyes(GoodbyeKind::kFinalizeReady);
    finalize_wait_ = wait;
    CheckFinalize();
    return absl::OkStatus();
  });
  if (announced.ok()) {
    if (wait->done.WaitForNotificationWithDeadline(deadline)) {
      if (result.ok()) result = wait->status;
    } else {
      // Stop waiting on the engine thread, where the wait may also have just finished.
      absl::StatusOr<uint64_t> missing =
          RunOnEngine<uint64_t>([this, wait]() -> absl::StatusOr<uint64_t> {
            if (wait->done.HasBeenNotified()) return 0;
            finalize_wait_.reset();
            return FinalizeMissing();
          });
      absl::Status late;
      if (missing.ok() && *missing == 0) {
        late = wait->status;
      } else {
        late = absl::DeadlineExceededError(
            missing.ok() ? absl::StrCat("Finalize: node(s) ", NodeList(*missing),
                                        " did not arrive by the deadline (they did not call "
                                        "Finalize, or had not finished writing back)")
                         : absl::StrCat("Finalize: the other nodes did not arrive by the "
                                        "deadline; ", missing.status().message()));
      }
      if (result.ok()) result = late;
    }
  } else if (result.ok()) {
    result = announced;
  }
  // 3. Leave. Every node has flushed (or the wait failed): unmaps persist here only.
  absl::Status stopped = ShutdownImpl(/*final=*/true);
  return result.ok() ? stopped : result;
}

absl::Status Engine::ShutdownImpl(bool final) {
  if (OnEngineThread()) {
    return absl::FailedPreconditionError(
        "Shutdown called on the node's engine thread (inside a callback): it cannot wait for "
        "itself; call it from another thread");
  }
  {
    absl::MutexLock l(&life_mu_);
    while (life_ == Life::kStopping) {
      // Another thread is shutting the node down: wait for its result, bounded by its bound
      // (which it may extend once it knows how many regions it unmaps).
      const absl::Time deadline = stop_deadline_;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError("another thread's Shutdown did not finish in time");
      }
      life_mu_.AwaitWithDeadline(
          absl::Condition(
              +[](Life* life) { return *life != Life::kStopping; }, &life_),
          deadline);
    }
    if (life_ == Life::kStopped) return stop_result_;
    if (!thread_.joinable()) {  // Start failed before the thread ran: nothing to stop
      life_ = Life::kStopped;
      return stop_result_;
    }
    life_ = Life::kStopping;
    stop_deadline_ = absl::Now() + StopBound(0);
  }
  absl::Status result = Stop(final);
  absl::MutexLock l(&life_mu_);
  life_ = Life::kStopped;
  stop_result_ = result;
  return result;
}

absl::Status Engine::Stop(bool final) {
  absl::Status result;
  // Unmap what is still mapped (writing dirty pages back), then close the transport.
  absl::StatusOr<std::vector<RegionId>> ids =
      RunOnEngine<std::vector<RegionId>>([this]() -> absl::StatusOr<std::vector<RegionId>> {
        return regions_.ids();
      });
  if (!ids.ok()) {
    result = ids.status();
  } else {
    {
      absl::MutexLock l(&life_mu_);
      stop_deadline_ = absl::Now() + StopBound(ids->size());
    }
    for (RegionId id : *ids) {
      absl::Status s = UnmapRegion(id, final ? RegionLifecycle::UnmapScope::kFinal
                                             : RegionLifecycle::UnmapScope::kCluster);
      // Gone already, or being unmapped by an application thread: not a failure of Shutdown.
      if (absl::IsNotFound(s) || absl::IsFailedPrecondition(s)) continue;
      if (!s.ok() && result.ok()) result = s;
    }
  }
  (void)RunOnEngine([this] {
    locks_->Shutdown();  // releases go out before the transport closes
    // After everything else this node sends them (per-pair FIFO): the peers record it as left
    // and expect its connections to close.
    SendGoodbyes(GoodbyeKind::kLeaving);
    transport_->Shutdown(absl::Now() + kTransportShutdown);
    return absl::OkStatus();
  });
  stop_.store(true, std::memory_order_release);
  loop_->Wakeup();
  thread_.join();
  regions_.Clear();
  return result;
}

}  // namespace dsm
