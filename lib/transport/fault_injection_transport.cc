#include "transport/fault_injection_transport.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace dsm {

FaultInjectionTransport::FaultInjectionTransport(std::unique_ptr<Transport> inner)
    : inner_(std::move(inner)), held_(kMaxNodes) {
  absl::MutexLock l(&mu_);
  faults_.resize(kMaxNodes);
}

FaultInjectionTransport::~FaultInjectionTransport() {
  for (Held& h : held_) {
    if (h.timer != 0 && loop_ != nullptr) loop_->CancelTimer(h.timer);
  }
  inner_.reset();
}

void FaultInjectionTransport::SetDropTo(NodeId peer, bool drop) {
  absl::MutexLock l(&mu_);
  if (peer < kMaxNodes) faults_[peer].drop_to = drop;
}
void FaultInjectionTransport::SetDropFrom(NodeId peer, bool drop) {
  absl::MutexLock l(&mu_);
  if (peer < kMaxNodes) faults_[peer].drop_from = drop;
}
void FaultInjectionTransport::SetDelayTo(NodeId peer, absl::Duration d) {
  absl::MutexLock l(&mu_);
  if (peer < kMaxNodes) faults_[peer].delay = std::max(d, absl::ZeroDuration());
}
void FaultInjectionTransport::CorruptNextTo(NodeId peer, int n) {
  absl::MutexLock l(&mu_);
  if (peer < kMaxNodes) faults_[peer].corrupt_next = n;
}
void FaultInjectionTransport::FailNextFrom(NodeId peer) {
  absl::MutexLock l(&mu_);
  if (peer < kMaxNodes) faults_[peer].fail_next_from = true;
}
void FaultInjectionTransport::ClearFaults() {
  absl::MutexLock l(&mu_);
  faults_.assign(kMaxNodes, Faults{});
}

FaultInjectionTransport::Faults FaultInjectionTransport::Get(NodeId peer) {
  absl::MutexLock l(&mu_);
  return faults_[peer];
}

absl::Status FaultInjectionTransport::Start(EventLoop* loop, Transport::Handler* handler) {
  loop_ = loop;
  handler_ = handler;
  return inner_->Start(loop, this);
}

void FaultInjectionTransport::Send(Message&& m) {
  const NodeId dst = m.dst;
  if (dst >= kMaxNodes) {
    inner_->Send(std::move(m));  // the inner transport rejects it
    return;
  }
  bool drop = false;
  absl::Duration delay;
  {
    absl::MutexLock l(&mu_);
    Faults& f = faults_[dst];
    drop = f.drop_to;
    delay = f.delay;
    if (!drop && f.corrupt_next > 0 && !m.payload.empty()) {
      --f.corrupt_next;
      m.payload[m.payload.size() / 2] ^= 0x5a;
    }
  }
  if (drop) {
    dropped_.fetch_add(1);
    return;
  }
  Held& h = held_[dst];
  if ((delay <= absl::ZeroDuration() && h.q.empty()) || loop_ == nullptr) {
    inner_->Send(std::move(m));
    return;
  }
  // Behind whatever is already held, so per-pair order survives a shorter delay.
  absl::Time at = absl::Now() + delay;
  if (!h.q.empty()) at = std::max(at, h.q.back().first);
  h.q.emplace_back(at, std::move(m));
  if (h.timer == 0) {
    h.timer = loop_->RunAfter(h.q.front().first - absl::Now(), [this, dst] { ReleaseDue(dst); });
  }
}

void FaultInjectionTransport::ReleaseDue(NodeId peer) {
  Held& h = held_[peer];
  h.timer = 0;
  const absl::Time now = absl::Now();
  while (!h.q.empty() && h.q.front().first <= now) {
    inner_->Send(std::move(h.q.front().second));
    h.q.pop_front();
  }
  if (!h.q.empty()) {
    h.timer = loop_->RunAfter(h.q.front().first - now, [this, peer] { ReleaseDue(peer); });
  }
}

void FaultInjectionTransport::OnMessage(Message&& m) {
  const NodeId src = m.src;
  bool drop = false, fail = false;
  {
    absl::MutexLock l(&mu_);
    Faults& f = faults_[src];
    drop = f.drop_from;
    fail = f.fail_next_from;
    f.fail_next_from = false;
  }
  if (fail) {
    injected_bad_.fetch_add(1);
    inner_->Disconnect(src, absl::DataLossError("fault injection: corrupt frame"));
    return;
  }
  if (drop) {
    dropped_.fetch_add(1);
    return;
  }
  handler_->OnMessage(std::move(m));
}

void FaultInjectionTransport::Shutdown(absl::Time deadline) {
  // Held messages go out now: Shutdown flushes what is queued.
  for (NodeId p = 0; p < held_.size(); ++p) {
    Held& h = held_[p];
    if (h.timer != 0) loop_->CancelTimer(h.timer);
    h.timer = 0;
    while (!h.q.empty()) {
      inner_->Send(std::move(h.q.front().second));
      h.q.pop_front();
    }
  }
  inner_->Shutdown(deadline);
}

Transport::Counters FaultInjectionTransport::counters() const {
  Counters c = inner_->counters();
  c.bad_messages += injected_bad_.load();
  return c;
}

}  // namespace dsm
