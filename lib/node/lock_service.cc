#include "node/lock_service.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/node_set.h"
#include "common/timeouts.h"
#include "protocol/lock_fields.h"

namespace dsm {
namespace {

// How long past peer_timeout an application thread waits for the engine to answer an Unlock
// (the engine answers at once; this only guards against a wedged engine).

// How long a barrier whose deadline passed waits for its arbiter to say which members had not
// entered (at most peer_timeout; well below kEngineSlack, the blocking Barrier's own limit).
constexpr absl::Duration kBarrierCancelGrace = absl::Seconds(1);

absl::Status ShutDownError() {
  return absl::UnavailableError("dsm lock: the node is shut down");
}

}  // namespace

LockService::LockService(const Options& options, EventLoop* loop, SendFn send, FindFn find)
    : options_(options),
      self_(options.node_id),
      cluster_size_(options.peers.size()),
      loop_(loop),
      send_(std::move(send)),
      find_(std::move(find)),
      client_(lock::LockClient::Config{options.node_id},
              static_cast<lock::LockClientPort*>(this)),
      barrier_client_(
          lock::BarrierClient::Config{
              options.node_id, std::min(options.peer_timeout, kBarrierCancelGrace)},
          static_cast<lock::BarrierPort*>(this)),
      barrier_arbiter_(lock::BarrierArbiter::Config{options.node_id},
                       static_cast<lock::BarrierPort*>(this)) {
  // The loop runs posted tasks in order on the engine thread: this one runs before any
  // callback can, so OnEngineThread() is right whenever it matters.
  loop_->Post([this] {
    engine_thread_.store(std::this_thread::get_id(), std::memory_order_release);
  });
}

LockService::~LockService() {
  if (timer_ != 0) loop_->CancelTimer(timer_);
}

bool LockService::Handles(MsgType type) { return lock::IsLockMessage(type); }

// ---- engine thread -------------------------------------------------------------------------

void LockService::Send(Message&& m) {
  m.src = self_;
  outbox_.push_back(std::move(m));
}

void LockService::Flush() {
  if (flushing_) return;
  flushing_ = true;
  while (!outbox_.empty()) {
    Message m = std::move(outbox_.front());
    outbox_.pop_front();
    if (m.dst == self_) {
      Dispatch(m);  // as if received; may queue more
    } else {
      send_(std::move(m));
    }
  }
  flushing_ = false;
  ArmTimer();
}

void LockService::Dispatch(const Message& m) {
  const absl::Time now = absl::Now();
  switch (m.type) {
    case MsgType::kLockAcquire:
    case MsgType::kLockRelease:
    case MsgType::kLockCancel:
    case MsgType::kLockPassed:
      return DispatchToTable(m, now);
    case MsgType::kLockReply:
    case MsgType::kLockSuccessor:
    case MsgType::kLockHandoff:
      return client_.OnMessage(m, now);
    case MsgType::kBarrierEnter:
    case MsgType::kBarrierCancel:
      return barrier_arbiter_.OnMessage(m);
    case MsgType::kBarrierReply:
      return barrier_client_.OnMessage(m);
    default:
      return;
  }
}

void LockService::DispatchToTable(const Message& m, absl::Time now) {
  if (lock::LockTable* t = TableFor(m.region)) return t->OnMessage(m, now);
  // Release / cancel / passed of a table gone: nothing held.
  if (m.type != MsgType::kLockAcquire) return;
  const lock::LockReplyCode code = find_(m.region) != nullptr
                                       ? lock::LockReplyCode::kNotArbiter
                                       : lock::LockReplyCode::kNoSuchRegion;
  Message reply;
  reply.type = MsgType::kLockReply;
  reply.dst = m.src;
  reply.region = m.region;
  reply.req_id = m.req_id;
  reply.arg = lock::PackLockReply(code);
  Send(std::move(reply));
}

lock::LockTable* LockService::TableFor(RegionId region) {
  MappedRegion* r = find_(region);
  auto it = tables_.find(region);
  if (r == nullptr || r->HomeOf(0) != self_) {
    // Not (or no longer) ours to arbitrate: a table left over from a mapping that went
    // without OnRegionUnmapped (a failed MapRegion) is dropped here.
    if (it != tables_.end()) {
      it->second->FailAll(lock::LockReplyCode::kShuttingDown);
      tables_.erase(it);
    }
    return nullptr;
  }
  if (it != tables_.end()) return it->second.get();
  lock::LockTable::Config c;
  c.self = self_;
  c.region = region;
  c.region_size = r->size();
  c.release_grace = options_.lock_release_grace;
  auto table = std::make_unique<lock::LockTable>(c, static_cast<lock::LockTablePort*>(this));
  lock::LockTable* raw = table.get();
  tables_[region] = std::move(table);
  return raw;
}

void LockService::OnMessage(Message&& m) {
  if (stopped_) return;
  Dispatch(m);
  Flush();
}

void LockService::OnPeerDown(NodeId peer) {
  if (stopped_) return;
  {
    // From here on, releases of locks held there are decided by the engine (kUnavailable).
    absl::MutexLock l(&mu_);
    down_arbiters_ |= NodeBit(peer);
  }
  const absl::Time now = absl::Now();
  client_.OnPeerDown(peer);
  barrier_client_.OnPeerDown(peer);
  barrier_arbiter_.OnNodeDown(peer);
  for (auto& [id, t] : tables_) t->OnNodeDown(peer, now);
  Flush();
}

void LockService::OnTick(absl::Time now) {
  if (stopped_) return;
  client_.OnTick(now);
  barrier_client_.OnTick(now);
  for (auto& [id, t] : tables_) t->OnTick(now);
  Flush();
}

void LockService::ArmTimer() {
  absl::Time next = absl::InfiniteFuture();
  if (!stopped_) {
    next = std::min(client_.NextDeadline(), barrier_client_.NextDeadline());
    for (auto& [id, t] : tables_) next = std::min(next, t->NextDeadline());
  }
  if (next == timer_at_) return;
  if (timer_ != 0) loop_->CancelTimer(timer_);
  timer_ = 0;
  timer_at_ = next;
  if (next == absl::InfiniteFuture()) return;
  timer_ = loop_->RunAfter(std::max(absl::ZeroDuration(), next - absl::Now()), [this] {
    timer_ = 0;
    timer_at_ = absl::InfiniteFuture();
    OnTimer();
  });
}

void LockService::OnTimer() { OnTick(absl::Now()); }

void LockService::OnRegionUnmapped(RegionId region) {
  if (stopped_) return;
  {
    // The client forgets these locks now: a later release of one is the engine's to answer.
    absl::MutexLock l(&mu_);
    absl::erase_if(held_, [region](const auto& e) { return e.second.region == region; });
  }
  // This node's requests first: their releases reach the local table, if any, while it exists.
  client_.ForgetRegion(region);
  Flush();
  auto it = tables_.find(region);
  if (it != tables_.end()) {
    it->second->FailAll(lock::LockReplyCode::kShuttingDown);
    // Its replies are queued; the table may go (they do not refer to it).
    tables_.erase(it);
  }
  Flush();
}

void LockService::Shutdown() {
  if (stopped_) return;
  const absl::Status why = absl::UnavailableError("dsm lock: the node is shutting down");
  client_.FailAll(why);
  barrier_client_.FailAll(why);
  barrier_arbiter_.FailAll();
  Flush();  // releases to local tables are delivered before the tables go
  for (auto& [id, t] : tables_) t->FailAll(lock::LockReplyCode::kShuttingDown);
  Flush();
  tables_.clear();
  stopped_ = true;
  ArmTimer();  // cancels
  std::deque<absl::AnyInvocable<void()>> left;
  {
    absl::MutexLock l(&mu_);
    closed_ = true;
    held_.clear();
    left.swap(inbox_);
  }
  for (auto& task : left) task();  // each sees stopped_ and fails
}

LockService::Counters LockService::counters() const {
  Counters c;
  c.client = client_.counters();
  c.tables_alive = tables_.size();
  for (const auto& [id, t] : tables_) {
    const lock::LockTable::Counters& x = t->counters();
    c.tables.acquires += x.acquires;
    c.tables.granted += x.granted;
    c.tables.queued += x.queued;
    c.tables.busy += x.busy;
    c.tables.bad_requests += x.bad_requests;
    c.tables.released += x.released;
    c.tables.cancelled += x.cancelled;
    c.tables.released_by_death += x.released_by_death;
    c.tables.dropped_by_death += x.dropped_by_death;
    c.tables.died_flags += x.died_flags;
    c.tables.hints += x.hints;
    c.tables.handoffs += x.handoffs;
    c.tables.handoffs_refused += x.handoffs_refused;
    c.tables.regrants += x.regrants;
    c.tables.named_dead += x.named_dead;
  }
  return c;
}

// ---- any thread ----------------------------------------------------------------------------

bool LockService::EnqueueLocked(absl::AnyInvocable<void()> fn) {
  const bool post = inbox_.empty();  // else a drain is posted already and takes this one too
  inbox_.push_back(std::move(fn));
  return post;
}

bool LockService::Enqueue(absl::AnyInvocable<void()> fn) {
  bool queued = false;
  bool post = false;
  {
    absl::MutexLock l(&mu_);
    if (!closed_) {
      post = EnqueueLocked(std::move(fn));
      queued = true;
    }
  }
  if (!queued) {
    // Shut down: no engine thread will run it. It sees stopped_ (written before closed_, read
    // after taking mu_) and fails on this thread.
    fn();
    return false;
  }
  if (post) loop_->Post([this] { DrainInbox(); });
  return true;
}

void LockService::DrainInbox() {
  std::deque<absl::AnyInvocable<void()>> tasks;
  {
    absl::MutexLock l(&mu_);
    tasks.swap(inbox_);
  }
  for (auto& task : tasks) task();
}

uint64_t LockService::RequestLock(RegionId region, NodeId arbiter, uint64_t size,
                                  const LockRequest& request, LockCallback done) {
  const uint64_t id = next_lock_id_.fetch_add(1, std::memory_order_relaxed);
  if (request.with_pages) done = FetchPagesOnGrant(region, request, std::move(done));
  auto task = [this, region, arbiter, size, request, id, done = std::move(done)]() mutable {
    if (stopped_) return done(ShutDownError());
    if (find_(region) == nullptr) {
      return done(absl::FailedPreconditionError("dsm lock: the region is not mapped here"));
    }
    if (arbiter == self_) {
      // A local arbiter applies a release at once on the engine thread; Unlock keeps waiting
      // for it, so a release is in the table before Unlock returns (no network to save).
      client_.Acquire(region, arbiter, size, request, absl::Now(), std::move(done), id);
      Flush();
      return;
    }
    // A grant is recorded for ReleaseLock's fast path before the application can see it.
    LockCallback recorded = [this, region, arbiter,
                             done = std::move(done)](absl::StatusOr<LockHandle> r) {
      if (r.ok()) {
        absl::MutexLock l(&mu_);
        held_.insert_or_assign(r->id(), HeldLock{region, arbiter});
      }
      done(std::move(r));
    };
    client_.Acquire(region, arbiter, size, request, absl::Now(), std::move(recorded), id);
    Flush();
  };
  if (OnEngineThread()) {
    task();
  } else {
    Enqueue(std::move(task));
  }
  return id;
}

LockCallback LockService::FetchPagesOnGrant(RegionId region, const LockRequest& request,
                                            LockCallback done) {
  // Only a granted request fetches, so the range is inside the region by then.
  const PageIndex first = request.offset / kPageSize;
  const PageIndex end = (request.offset + request.length + kPageSize - 1) / kPageSize;
  const bool write = request.mode == LockMode::kExclusive;
  return [this, region, first, end, write, done = std::move(done)](absl::StatusOr<LockHandle> r) {
    // A grant runs on the engine thread: the requests leave before the application thread
    // that waits for the grant is woken.
    if (r.ok() && !stopped_) {
      if (MappedRegion* m = find_(region)) {
        (void)m->cache().FetchForLock(first, end - first, write, absl::Now());
      }
    }
    done(std::move(r));
  };
}

absl::Status LockService::ReleaseOnEngine(uint64_t lock_id) {
  {
    absl::MutexLock l(&mu_);
    held_.erase(lock_id);
  }
  absl::Status s = client_.Release(lock_id);
  Flush();
  return s;
}

bool LockService::ReleaseHeldAsync(uint64_t lock_id) {
  bool post = false;
  {
    absl::MutexLock l(&mu_);
    auto it = held_.find(lock_id);
    if (closed_ || it == held_.end() || InNodeSet(down_arbiters_, it->second.arbiter)) {
      return false;
    }
    held_.erase(it);
    // Decided: the lock was held and is released now, as far as this node's application can
    // tell. If the engine learns first that the arbiter went down, or the region's unmap
    // forgot the lock, client_.Release finds it lost or unknown and there is nothing to send.
    post = EnqueueLocked([this, lock_id] {
      if (stopped_) return;  // Shutdown released every held lock already
      (void)client_.Release(lock_id);
      Flush();
    });
  }
  if (post) loop_->Post([this] { DrainInbox(); });
  return true;
}

absl::Status LockService::ReleaseLock(uint64_t lock_id) {
  if (OnEngineThread()) {
    if (stopped_) return ShutDownError();
    return ReleaseOnEngine(lock_id);
  }
  if (ReleaseHeldAsync(lock_id)) return absl::OkStatus();
  struct Call {
    absl::Notification done;
    absl::Status status;
  };
  auto call = std::make_shared<Call>();
  Enqueue([this, call, lock_id] {
    call->status = stopped_ ? ShutDownError() : ReleaseOnEngine(lock_id);
    call->done.Notify();
  });
  if (!call->done.WaitForNotificationWithTimeout(options_.peer_timeout +
                                                 kEngineSlack)) {
    return absl::DeadlineExceededError("dsm unlock: the node's engine thread did not answer");
  }
  return call->status;
}

void LockService::BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                               absl::Time deadline, std::function<void(absl::Status)> done) {
  auto task = [this, name, members, deadline, done = std::move(done)]() mutable {
    if (stopped_) return done(ShutDownError());
    absl::StatusOr<uint64_t> mask = lock::MemberMask(members, cluster_size_, self_);
    if (!mask.ok()) return done(mask.status());
    barrier_client_.Enter(name, *mask, deadline, absl::Now(), std::move(done));
    Flush();
  };
  if (OnEngineThread()) {
    task();
  } else {
    Enqueue(std::move(task));
  }
}

}  // namespace dsm
