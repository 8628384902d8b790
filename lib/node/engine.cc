#include "node/engine.h"

#include <poll.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/node_set.h"
#include "common/payload_pool.h"
#include "common/status_macros.h"
#include "common/timeouts.h"
#include "node/lock_service.h"

namespace dsm {
namespace {

constexpr absl::Duration kTickPeriod = absl::Milliseconds(50);
constexpr absl::Duration kRegionOpenRetry = absl::Milliseconds(20);

absl::Status CodeToStatus(ErrorCode code, absl::string_view what) {
  switch (code) {
    case ErrorCode::kOk: return absl::OkStatus();
    case ErrorCode::kNoSuchRegion: return absl::NotFoundError(absl::StrCat(what, ": no such region at the home"));
    case ErrorCode::kSizeMismatch: return absl::InvalidArgumentError(absl::StrCat(what, ": the home maps this region with another size"));
    case ErrorCode::kPageLost: return absl::DataLossError(absl::StrCat(what, ": pages lost"));
    case ErrorCode::kIoError: return absl::InternalError(absl::StrCat(what, ": I/O error at the home"));
    case ErrorCode::kShuttingDown: return absl::UnavailableError(absl::StrCat(what, ": the home is shutting down"));
    case ErrorCode::kNotHome: return absl::FailedPreconditionError(absl::StrCat(what, ": not the home"));
  }
  return absl::InternalError(absl::StrCat(what, ": unknown error code"));
}

ErrorCode StatusToCode(const absl::Status& s) {
  if (s.ok()) return ErrorCode::kOk;
  return ErrorCode::kIoError;
}

}  // namespace

// An application thread waiting for answers from a set of peers. Fields other than `done`
// are written on the engine thread only, and read by the waiting thread after `done`.
struct Engine::Waiter {
  std::string what;             // for error messages
  uint64_t req_id = 0;
  uint64_t pending_mask = 0;    // peers that still owe an answer
  absl::Time deadline;
  absl::Status status;          // first error
  absl::Notification done;
  // Region open: retried while the home has not mapped the region yet.
  RegionId region = 0;
  std::string region_name;
  uint64_t region_size = 0;

  void Fail(const absl::Status& s) {
    if (status.ok()) status = s;
  }
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
    : options_(options), spin_(SpinPolicy::Config{options.poll_spin}) {}

absl::StatusOr<std::shared_ptr<Engine>> Engine::Start(const Options& options) {
  std::shared_ptr<Engine> e(new Engine(options));
  // Options first (CreateTransport validates them): a bad option is reported as such, before
  // any kernel facility is touched.
  DSM_ASSIGN_OR_RETURN(e->transport_, CreateTransport(options));
  DSM_ASSIGN_OR_RETURN(e->uffd_, Userfaultfd::Open());
  e->evictor_ = std::make_unique<Evictor>(options);
  DSM_ASSIGN_OR_RETURN(e->loop_, EventLoop::Create(512));
  e->uffd_op_ = std::make_unique<UffdPollOp>(e.get());
  e->locks_ = std::make_unique<LockService>(
      options, e->loop_.get(), [raw = e.get()](Message&& m) { raw->SendMessage(std::move(m)); },
      [raw = e.get()](RegionId id) { return raw->FindRegion(id); });
  e->ArmUffdPoll();
  absl::Status started = absl::UnknownError("engine did not start");
  absl::Notification ready;
  Engine* raw = e.get();
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
    return started;
  }
  return e;
}

Engine::~Engine() {
  (void)Shutdown();
}

void Engine::Run() {
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

absl::Status Engine::RunOnEngine(absl::AnyInvocable<absl::Status()> fn) {
  if (shut_down_.load()) return absl::FailedPreconditionError("the node is shut down");
  struct Call {
    absl::Status result;
    absl::Notification done;
  };
  auto call = std::make_shared<Call>();
  loop_->Post([call, fn = std::move(fn)]() mutable {
    call->result = fn();
    call->done.Notify();
  });
  absl::Duration limit = options_.peer_timeout + kEngineSlack;
  if (!call->done.WaitForNotificationWithTimeout(limit)) {
    return absl::DeadlineExceededError("the node's engine thread did not answer");
  }
  return call->result;
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
      MappedRegion* region = nullptr;
      for (auto& [id, r] : regions_) {
        if (r->Contains(ev.address)) {
          region = r.get();
          break;
        }
      }
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
  if (ExpectsAnswer(m.type)) spin_.OnSend(absl::Now());
  if (InNodeSet(down_mask_, m.dst)) {
    // The peer is gone. A request would never be answered: answer it ourselves, later (a
    // readahead run with nothing granted: the pages a thread waits for are then requested
    // alone and fail as lost).
    if (m.type == MsgType::kGetS || m.type == MsgType::kGetM || m.type == MsgType::kGetSRun) {
      Message reply{MsgType::kNack, m.dst, options_.node_id, m.region, m.page, m.req_id,
                    static_cast<uint64_t>(ErrorCode::kPageLost), {}};
      if (m.type == MsgType::kGetSRun) {
        reply.type = MsgType::kDataRun;
        reply.arg = m.arg;
      }
      loop_->Post([this, reply = std::move(reply)]() mutable { OnMessage(std::move(reply)); });
    }
    return;
  }
  transport_->Send(std::move(m));
}

MappedRegion* Engine::FindRegion(RegionId id) {
  auto it = regions_.find(id);
  return it == regions_.end() ? nullptr : it->second.get();
}

void Engine::OnMessage(Message&& m) {
  spin_.OnInput(absl::Now(), /*message=*/true);
  Dispatch(m);
  // The handlers copy what they keep: a page run's buffer serves the next run.
  if (!m.payload.empty()) RecyclePayloadBuffer(std::move(m.payload));
}

void Engine::Dispatch(Message& m) {
  if (InNodeSet(down_mask_, m.src) && m.src != options_.node_id) return;
  if (LockService::Handles(m.type)) return locks_->OnMessage(std::move(m));
  switch (m.type) {
    case MsgType::kHello:
      return;
    case MsgType::kRegionOpen:
      return HandleRegionOpen(m);
    case MsgType::kRegionOpenReply:
    case MsgType::kSyncAck:
      return CompleteWaiter(m.req_id, m.src, static_cast<ErrorCode>(m.arg));
    case MsgType::kSyncReq:
      return HandleSyncReq(m);
    default:
      break;
  }
  MappedRegion* r = FindRegion(m.region);
  if (r == nullptr) return ReplyUnknownRegion(m);
  const absl::Time now = absl::Now();
  switch (m.type) {
    case MsgType::kGetSRun:
      if (r->directory() == nullptr || m.page >= r->num_pages() ||
          (closing_.contains(m.region) && m.src != options_.node_id)) {
        // Not ours, or unmapping: refuse the whole run (never a Nack: nothing is lost).
        SendMessage(ReplyTo(m, MsgType::kDataRun, m.arg));
        return;
      }
      r->directory()->OnMessage(m, now);
      return;
    case MsgType::kGetS:
    case MsgType::kGetM:
    case MsgType::kPut:
    case MsgType::kInvAck:
    case MsgType::kRecallAck:
      if (r->directory() == nullptr || r->HomeOf(m.page) != options_.node_id) {
        DSM_LOG(WARNING) << "node " << m.src << " sent " << MsgTypeName(m.type) << " for page "
                         << m.page << " of " << r->name() << " to a node that is not its home";
        if (m.type == MsgType::kGetS || m.type == MsgType::kGetM) {
          SendMessage(ReplyTo(m, MsgType::kNack, static_cast<uint64_t>(ErrorCode::kNotHome)));
        }
        return;
      }
      if (m.page >= r->num_pages()) return;
      if (closing_.contains(m.region) && m.src != options_.node_id &&
          (m.type == MsgType::kGetS || m.type == MsgType::kGetM)) {
        // The home is unmapping: it hands out no new copies (they would die with it).
        SendMessage(ReplyTo(m, MsgType::kNack, static_cast<uint64_t>(ErrorCode::kShuttingDown)));
        return;
      }
      r->directory()->OnMessage(m, now);
      return;
    case MsgType::kData:
    case MsgType::kDataRun:
    case MsgType::kGrant:
    case MsgType::kNack:
    case MsgType::kInv:
    case MsgType::kRecall:
      if (m.page >= r->num_pages()) return;
      r->cache().OnMessage(m, now);
      return;
    default:
      DSM_LOG(WARNING) << "unexpected message " << MsgTypeName(m.type) << " from node " << m.src;
      return;
  }
}

void Engine::ReplyUnknownRegion(const Message& m) {
  Message reply = ReplyTo(m, MsgType::kNack);  // type and arg set below
  switch (m.type) {
    case MsgType::kGetS:
    case MsgType::kGetM:
      reply.type = MsgType::kNack;
      reply.arg = static_cast<uint64_t>(ErrorCode::kNoSuchRegion);
      break;
    case MsgType::kGetSRun:  // nothing granted; the requester asks again page by page
      reply.type = MsgType::kDataRun;
      reply.arg = m.arg;
      break;
    case MsgType::kInv:  // we hold nothing of a region we do not map
      reply.type = MsgType::kInvAck;
      break;
    case MsgType::kRecall:
      reply.type = MsgType::kRecallAck;
      reply.arg = static_cast<uint64_t>(coherence::PageState::kInvalid);
      break;
    default:
      return;  // stale grants, puts and acks for a region gone: nothing to do
  }
  SendMessage(std::move(reply));
}

Message Engine::ReplyTo(const Message& m, MsgType type, uint64_t arg) const {
  return Message{type, options_.node_id, m.src, m.region, m.page, m.req_id, arg, {}};
}

void Engine::HandleRegionOpen(const Message& m) {
  Message reply = ReplyTo(m, MsgType::kRegionOpenReply);
  MappedRegion* r = FindRegion(m.region);
  const std::string name(m.payload.begin(), m.payload.end());
  ErrorCode code = ErrorCode::kOk;
  if (r == nullptr || r->name() != name) {
    code = ErrorCode::kNoSuchRegion;
  } else if (r->size() != m.arg) {
    code = ErrorCode::kSizeMismatch;
  } else if (r->directory() == nullptr) {
    code = ErrorCode::kNotHome;
  }
  reply.arg = static_cast<uint64_t>(code);
  SendMessage(std::move(reply));
}

void Engine::HandleSyncReq(const Message& m) {
  Message reply = ReplyTo(m, MsgType::kSyncAck);
  MappedRegion* r = FindRegion(m.region);
  ErrorCode code = ErrorCode::kNoSuchRegion;
  if (r != nullptr && r->storage() != nullptr) {
    // Blocking file I/O on the engine thread: Sync is rare and the home must not answer
    // before the data is durable. (A later change can move this to io_uring writes.)
    absl::Status s = r->storage()->Persist();
    if (!s.ok()) DSM_LOG(ERROR) << "persisting region " << r->name() << ": " << s;
    code = StatusToCode(s);
  } else if (r != nullptr) {
    code = ErrorCode::kNotHome;
  }
  reply.arg = static_cast<uint64_t>(code);
  SendMessage(std::move(reply));
}

uint64_t Engine::NewWaiter(std::shared_ptr<Waiter> w) {
  w->req_id = next_req_id_++;
  waiters_[w->req_id] = w;
  return w->req_id;
}

void Engine::CompleteWaiter(uint64_t req_id, NodeId from, ErrorCode code) {
  auto it = waiters_.find(req_id);
  if (it == waiters_.end()) return;
  std::shared_ptr<Waiter> w = it->second;
  if (!InNodeSet(w->pending_mask, from)) return;
  if (code == ErrorCode::kNoSuchRegion && w->region_size != 0 && absl::Now() < w->deadline) {
    // The home has not mapped the region yet: ask again shortly.
    MappedRegion* r = FindRegion(w->region);
    if (r != nullptr) {
      After(kRegionOpenRetry, [this, w, from] {
        MappedRegion* again = FindRegion(w->region);
        if (again != nullptr && waiters_.contains(w->req_id)) SendRegionOpen(w, again, from);
      });
      return;
    }
  }
  if (code != ErrorCode::kOk) {
    w->Fail(CodeToStatus(code, absl::StrCat(w->what, " (node ", from, ")")));
  }
  w->pending_mask &= ~NodeBit(from);
  if (w->pending_mask == 0) {
    waiters_.erase(it);
    w->done.Notify();
  }
}

void Engine::SendRegionOpen(std::shared_ptr<Waiter> w, MappedRegion* r, NodeId home) {
  Message m;
  m.type = MsgType::kRegionOpen;
  m.dst = home;
  m.region = r->id();
  m.req_id = w->req_id;
  m.arg = r->size();
  m.payload.assign(r->name().begin(), r->name().end());
  SendMessage(std::move(m));
}

// ---- peers and time ----------------------------------------------------------------------

void Engine::OnPeerUp(NodeId peer) { DSM_LOG(INFO) << "node " << peer << " is up"; }

void Engine::OnPeerDown(NodeId peer, const absl::Status& why) {
  if (peer >= kMaxNodes || peer == options_.node_id || InNodeSet(down_mask_, peer)) return;
  down_mask_ |= NodeBit(peer);
  ++stats_.peers_down;
  DSM_LOG(WARNING) << "node " << peer << " is down: " << why;
  for (auto& [id, r] : regions_) {
    if (r->directory() != nullptr) r->directory()->OnPeerDown(peer);
    r->cache().OnPeerDown(peer);
  }
  locks_->OnPeerDown(peer);
  std::vector<uint64_t> ids;
  for (auto& [id, w] : waiters_) {
    if (InNodeSet(w->pending_mask, peer)) ids.push_back(id);
  }
  for (uint64_t id : ids) {
    auto it = waiters_.find(id);
    it->second->Fail(absl::UnavailableError(
        absl::StrCat(it->second->what, ": node ", peer, " is down: ", why.message())));
    CompleteWaiter(id, peer, ErrorCode::kOk);
  }
}

void Engine::ReportLost(const std::string& region, PageIndex first, uint64_t count) {
  stats_.pages_lost += count;
  if (options_.on_pages_lost) options_.on_pages_lost(region, first, count);
}

void Engine::After(absl::Duration delay, absl::AnyInvocable<void()> fn) {
  loop_->RunAfter(delay, std::move(fn));
}

void Engine::Tick(absl::Time now) {
  // Peers owing protocol answers for too long are declared down.
  std::vector<NodeId> overdue;
  const absl::Duration timeout = options_.peer_timeout;
  for (auto& [id, r] : regions_) {
    r->cache().CollectOverdue(now, timeout, &overdue);
    if (r->directory() != nullptr) r->directory()->CollectOverdue(now, timeout, &overdue);
  }
  locks_->CollectOverdue(now, timeout, &overdue);
  std::sort(overdue.begin(), overdue.end());
  overdue.erase(std::unique(overdue.begin(), overdue.end()), overdue.end());
  for (NodeId peer : overdue) {
    if (peer == options_.node_id) continue;
    transport_->Disconnect(peer, absl::DeadlineExceededError(absl::StrCat(
                                     "no answer within peer_timeout (",
                                     absl::FormatDuration(timeout), ")")));
    // The transport reports it through OnPeerDown; make sure it happened.
    OnPeerDown(peer, absl::DeadlineExceededError("no answer within peer_timeout"));
  }
  evictor_->Maintain();
  // Application threads waiting past their deadline get an error.
  std::vector<uint64_t> expired;
  for (auto& [id, w] : waiters_) {
    if (now >= w->deadline) expired.push_back(id);
  }
  for (uint64_t id : expired) {
    std::shared_ptr<Waiter> w = waiters_[id];
    waiters_.erase(id);
    w->Fail(absl::DeadlineExceededError(absl::StrCat(w->what, ": no answer in time")));
    w->done.Notify();
  }
  locks_->OnTick(now);
}

// ---- application-thread operations -------------------------------------------------------

absl::StatusOr<MappedRegion*> Engine::MapRegion(const RegionOptions& options) {
  auto w = std::make_shared<Waiter>();
  MappedRegion* mapped = nullptr;
  absl::Status s = RunOnEngine([&, w]() -> absl::Status {
    const RegionId id = RegionIdFromName(options.name);
    if (regions_.contains(id)) {
      return absl::AlreadyExistsError(absl::StrCat("region ", options.name, " is already mapped"));
    }
    DSM_ASSIGN_OR_RETURN(std::unique_ptr<MappedRegion> r,
                         MappedRegion::Create(options, options_.node_id, cluster_size(), this));
    mapped = r.get();
    regions_[id] = std::move(r);
    w->what = absl::StrCat("mapping region ", options.name);
    w->region = id;
    w->region_name = options.name;
    w->region_size = mapped->size();
    w->deadline = absl::Now() + options_.connect_timeout;
    std::vector<NodeId> homes = mapped->RemoteHomes();
    if (homes.empty()) {
      w->done.Notify();
      return absl::OkStatus();
    }
    NewWaiter(w);
    for (NodeId h : homes) w->pending_mask |= NodeBit(h);
    for (NodeId h : homes) SendRegionOpen(w, mapped, h);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  // The waiter is the engine's until `done`: on a timeout, do not touch its status.
  const absl::Status status =
      w->done.WaitForNotificationWithTimeout(options_.connect_timeout +
                                             kEngineSlack)
          ? w->status
          : absl::DeadlineExceededError("mapping: the engine did not answer");
  if (!status.ok()) {
    (void)RunOnEngine([this, id = w->region] {
      regions_.erase(id);
      return absl::OkStatus();
    });
    return status;
  }
  return mapped;
}

absl::Status Engine::SyncRegion(RegionId region) {
  auto w = std::make_shared<Waiter>();
  DSM_RETURN_IF_ERROR(RunOnEngine([&, w]() -> absl::Status {
    MappedRegion* r = FindRegion(region);
    if (r == nullptr) return absl::NotFoundError("region is not mapped");
    std::vector<NodeId> written_to;  // counted in the cache's writebacks
    r->cache().WriteBackAll(&written_to);
    w->what = absl::StrCat("syncing region ", r->name());
    w->deadline = absl::Now() + options_.peer_timeout;
    // Every home persists, including homes we wrote nothing to now: they may hold pages we
    // wrote back earlier (evictions) that are not durable yet.
    AskHomesToPersist(r, w);
    return absl::OkStatus();
  }));
  if (!w->done.WaitForNotificationWithTimeout(options_.peer_timeout +
                                              kEngineSlack)) {
    return absl::DeadlineExceededError("sync: the engine did not answer");
  }
  return w->status;
}

absl::Status Engine::UnmapOnEngine(RegionId region, std::shared_ptr<Waiter> w) {
  MappedRegion* r = FindRegion(region);
  if (r == nullptr) return absl::NotFoundError("region is not mapped");
  w->what = absl::StrCat("unmapping region ", r->name());
  w->deadline = absl::Now() + options_.peer_timeout;
  closing_.insert(region);
  // At a home, pages other nodes hold Modified are the only current copies: fetch them back
  // (a read by the home recalls them) before the home's copy is persisted and dropped.
  std::vector<PageIndex> reclaim;
  if (coherence::Directory* dir = r->directory()) {
    for (PageIndex p = 0; p < r->num_pages(); ++p) {
      if (r->HomeOf(p) != options_.node_id) continue;
      coherence::Directory::EntryView e = dir->entry(p);
      if (e.state == coherence::Directory::EntryState::kModified && e.owner != options_.node_id) {
        reclaim.push_back(p);
      }
    }
    const absl::Time now = absl::Now();
    for (PageIndex p : reclaim) r->cache().OnFault(p, /*write=*/false, now);
  }
  FinishUnmap(region, w, std::move(reclaim));
  return absl::OkStatus();
}

void Engine::FinishUnmap(RegionId region, std::shared_ptr<Waiter> w,
                         std::vector<PageIndex> reclaim) {
  MappedRegion* r = FindRegion(region);
  if (r == nullptr) {
    w->Fail(absl::NotFoundError("region vanished while unmapping"));
    w->done.Notify();
    return;
  }
  coherence::Cache& cache = r->cache();
  bool waiting = false;
  for (PageIndex p : reclaim) waiting = waiting || cache.pending(p);
  if (waiting && absl::Now() < w->deadline) {
    After(absl::Milliseconds(1),
          [this, region, w, reclaim = std::move(reclaim)]() mutable {
            FinishUnmap(region, w, std::move(reclaim));
          });
    return;
  }
  // Give every copy back: Modified pages are written back, Shared ones dropped with notice.
  // Released in the region's batch mode, so the unmaps go in runs (one madvise per run, not per
  // page); flushed every kUnmapBatch releases to bound the messages held back.
  constexpr int kUnmapBatch = 1024;
  int in_batch = 0;
  r->BeginBatch();
  for (PageIndex p = 0; p < r->num_pages(); ++p) {
    if (cache.state(p) == coherence::PageState::kInvalid || cache.pending(p)) continue;
    if (cache.Release(p) && ++in_batch == kUnmapBatch) {
      r->EndBatch();
      r->BeginBatch();
      in_batch = 0;
    }
  }
  r->EndBatch();
  // Homes persist what they received (file-backed regions); the mapping goes when they answer.
  AskHomesToPersist(r, w);
}

void Engine::AskHomesToPersist(MappedRegion* r, std::shared_ptr<Waiter> w) {
  std::vector<NodeId> homes = r->RemoteHomes();
  if (r->directory() != nullptr) homes.push_back(options_.node_id);
  NewWaiter(w);
  for (NodeId h : homes) w->pending_mask |= NodeBit(h);
  for (NodeId h : homes) {
    Message m;
    m.type = MsgType::kSyncReq;
    m.dst = h;
    m.region = r->id();
    m.req_id = w->req_id;
    SendMessage(std::move(m));
  }
}

absl::Status Engine::UnmapRegion(RegionId region) {
  auto w = std::make_shared<Waiter>();
  DSM_RETURN_IF_ERROR(RunOnEngine([&, w] { return UnmapOnEngine(region, w); }));
  // w->status belongs to the engine thread until `done` (TSan caught an early read here).
  absl::Status result;
  if (!w->done.WaitForNotificationWithTimeout(options_.peer_timeout +
                                              kEngineSlack)) {
    result = absl::DeadlineExceededError("unmap: the engine did not answer");
  } else {
    result = w->status;
  }
  absl::Status erased = RunOnEngine([this, region] {
    locks_->OnRegionUnmapped(region);
    regions_.erase(region);
    closing_.erase(region);
    return absl::OkStatus();
  });
  return result.ok() ? erased : result;
}

Stats Engine::GetStats() {
  Stats out;
  (void)RunOnEngine([&] {
    out = stats_;
    for (auto& [id, r] : regions_) {
      const coherence::Cache::Counters& c = r->cache().counters();
      out.read_faults += c.read_faults;
      out.write_faults += c.write_faults + c.upgrade_faults;  // stats.h: WP faults count as writes
      out.upgrade_faults += c.upgrade_faults;
      out.coalesced_faults += c.coalesced_faults;
      out.prefetches += c.prefetches;
      out.prefetch_hits += c.prefetch_hits;
      out.prefetch_runs += c.run_requests;
      out.prefetch_refused += c.prefetch_refused;
      out.requests_sent += c.requests_sent;
      out.invalidations_received += c.invalidations;
      out.recalls_received += c.recalls;
      out.writebacks_sent += c.writebacks;
      out.pages_shared += c.shared;
      out.pages_modified += c.modified;
      out.pages_installed += r->pages_installed();
      if (r->directory() != nullptr) {
        out.home_requests_served += r->directory()->counters().requests_served;
      }
    }
    evictor_->AddStats(&out);
    Transport::Counters t = transport_->counters();
    out.messages_sent = t.messages_sent;
    out.messages_received = t.messages_received;
    out.bytes_sent = t.bytes_sent;
    out.bytes_received = t.bytes_received;
    out.bad_messages = t.bad_messages;
    const lock::LockClient::Counters lc = locks_->counters().client;
    out.lock_requests = lc.requests;
    out.locks_granted = lc.granted;
    out.locks_queued = lc.queued;
    out.locks_failed = lc.failed;
    out.locks_lost = lc.lost;
    return absl::OkStatus();
  });
  return out;
}

absl::Status Engine::Shutdown() {
  if (shut_down_.exchange(true)) return absl::OkStatus();
  absl::Status result;
  if (thread_.joinable()) {
    // Unmap what is still mapped (writing dirty pages back), then close the transport.
    std::vector<RegionId> ids;
    shut_down_.store(false);
    (void)RunOnEngine([&] {
      for (auto& [id, r] : regions_) ids.push_back(id);
      return absl::OkStatus();
    });
    for (RegionId id : ids) {
      absl::Status s = UnmapRegion(id);
      if (!s.ok() && result.ok()) result = s;
    }
    (void)RunOnEngine([this] {
      locks_->Shutdown();  // releases go out before the transport closes
      transport_->Shutdown(absl::Now() + absl::Seconds(2));
      return absl::OkStatus();
    });
    shut_down_.store(true);
    stop_.store(true, std::memory_order_release);
    loop_->Wakeup();
    thread_.join();
  }
  regions_.clear();
  return result;
}

}  // namespace dsm
