#include "transport/loopback/loopback_transport.h"

#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "transport/wire.h"

namespace dsm {
namespace loopback_internal {

// One registered node. Shared by the hub and by tasks in flight to its loop; `owner` is null
// once the node unregistered, and is read and cleared on the owner loop's thread only.
struct Endpoint {
  EventLoop* loop = nullptr;
  LoopbackTransport* owner = nullptr;
  Incarnation incarnation = 0;  // fixed at registration
};

// The nodes of one hub name. A node is registered (its loop alive) exactly while its entry is
// non-null, so every Post to a registered loop happens under `mu`.
class Hub {
 public:
  explicit Hub(size_t n) : cluster_size(n), nodes_(n) {}
  const size_t cluster_size;
  absl::Mutex mu;
  std::vector<std::shared_ptr<Endpoint>> nodes_ ABSL_GUARDED_BY(mu);
};

namespace {

absl::Mutex registry_mu(absl::kConstInit);
absl::flat_hash_map<std::string, std::weak_ptr<Hub>>& Registry()
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu) {
  static auto* hubs = new absl::flat_hash_map<std::string, std::weak_ptr<Hub>>();
  return *hubs;
}

absl::StatusOr<std::shared_ptr<Hub>> GetHub(const std::string& name, size_t cluster_size) {
  absl::MutexLock l(&registry_mu);
  std::weak_ptr<Hub>& slot = Registry()[name];
  std::shared_ptr<Hub> hub = slot.lock();
  if (hub == nullptr) {
    hub = std::make_shared<Hub>(cluster_size);
    slot = hub;
  } else if (hub->cluster_size != cluster_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster size mismatch: loopback hub '", name, "' has cluster size ",
                     hub->cluster_size, " but this node's peers list has ", cluster_size,
                     " entries"));
  }
  return hub;
}

// Runs `fn(owner)` on `ep`'s loop if the endpoint is still registered when the task runs.
template <typename Fn>
void PostTo(const std::shared_ptr<Endpoint>& ep, Fn fn) {
  ep->loop->Post([ep, fn = std::move(fn)]() mutable {
    if (ep->owner != nullptr) fn(ep->owner);
  });
}

}  // namespace
}  // namespace loopback_internal

using loopback_internal::Endpoint;
using loopback_internal::PostTo;

absl::StatusOr<std::unique_ptr<Transport>> CreateLoopbackTransport(const Options& options) {
  if (options.peers.empty() || options.peers.size() > kMaxNodes ||
      options.node_id >= options.peers.size()) {
    return absl::InvalidArgumentError("loopback transport: bad peers / node_id");
  }
  return std::unique_ptr<Transport>(new LoopbackTransport(options));
}

LoopbackTransport::LoopbackTransport(const Options& options)
    : options_(options),
      cluster_size_(options.peers.size()),
      self_(options.node_id),
      table_(options.node_id, options.peers.size(), NewIncarnation(), absl::InfiniteFuture()) {}

LoopbackTransport::~LoopbackTransport() { Shutdown(absl::Now()); }

absl::Status LoopbackTransport::Start(EventLoop* loop, Handler* handler) {
  if (started_) return absl::FailedPreconditionError("loopback transport: started twice");
  if (loop == nullptr || handler == nullptr) {
    return absl::InvalidArgumentError("loopback transport: null loop or handler");
  }
  auto hub = loopback_internal::GetHub(options_.loopback_hub, cluster_size_);
  if (!hub.ok()) return hub.status();
  loop_ = loop;
  handler_ = handler;
  endpoint_ = std::make_shared<Endpoint>();
  endpoint_->loop = loop;
  endpoint_->owner = this;
  endpoint_->incarnation = table_.self_incarnation();
  table_.SetConnectDeadline(absl::Now() + options_.connect_timeout);
  {
    absl::MutexLock l(&(*hub)->mu);
    auto& nodes = (*hub)->nodes_;
    if (nodes[self_] != nullptr) {
      return absl::AlreadyExistsError(absl::StrCat(
          "duplicate node id: loopback hub '", options_.loopback_hub, "' already has node ",
          self_, " (incarnation ", nodes[self_]->incarnation, ") running"));
    }
    nodes[self_] = endpoint_;
    const NodeId me = self_;
    const Incarnation mine = table_.self_incarnation();
    for (NodeId j = 0; j < nodes.size(); ++j) {
      if (j == self_ || nodes[j] == nullptr) continue;
      const Incarnation theirs = nodes[j]->incarnation;
      PostTo(nodes[j], [me, mine](LoopbackTransport* t) { t->OnUp(me, mine); });
      PostTo(endpoint_, [j, theirs](LoopbackTransport* t) { t->OnUp(j, theirs); });
    }
  }
  hub_ = std::move(*hub);
  started_ = true;
  connect_timer_ = loop_->RunAfter(options_.connect_timeout,
                                   [this] { OnConnectTimeout(); });
  return absl::OkStatus();
}

void LoopbackTransport::Send(Message&& m) {
  if (!started_ || shut_down_) return;
  m.src = self_;
  if (m.dst >= cluster_size_) {
    DSM_LOG(ERROR) << "loopback: dropping message to node " << m.dst << " outside the cluster";
    return;
  }
  if (absl::Status s = ValidateMessage(m, cluster_size_); !s.ok()) {
    DSM_LOG(ERROR) << "loopback: dropping invalid message " << DebugString(m) << ": " << s;
    return;
  }
  if (!table_.Route(m)) return;  // queued while connecting, or dropped (down)
  std::vector<uint8_t> frame;
  EncodeMessage(m, frame);
  Deliver(m.dst, std::move(frame));
}

void LoopbackTransport::PostToPeer(NodeId peer, std::function<void(LoopbackTransport*)> fn) {
  absl::MutexLock l(&hub_->mu);
  const std::shared_ptr<Endpoint>& ep = hub_->nodes_[peer];
  if (ep != nullptr) PostTo(ep, std::move(fn));
}

void LoopbackTransport::Deliver(NodeId dst, std::vector<uint8_t>&& frame) {
  messages_sent_.fetch_add(1, std::memory_order_relaxed);
  bytes_sent_.fetch_add(frame.size(), std::memory_order_relaxed);
  const NodeId from = self_;
  const Incarnation mine = table_.self_incarnation();
  absl::MutexLock l(&hub_->mu);
  const std::shared_ptr<Endpoint>& ep = hub_->nodes_[dst];
  // Not registered: it shut down and its OnPeerDown is already on its way to us.
  if (ep == nullptr) return;
  PostTo(ep, [from, mine, frame = std::move(frame)](LoopbackTransport* t) mutable {
    t->OnBytes(from, mine, std::move(frame));
  });
}

void LoopbackTransport::OnBytes(NodeId from, Incarnation incarnation,
                                std::vector<uint8_t>&& frame) {
  // Declared down here, or sent by an incarnation that is not the one up here: drop.
  if (!table_.IsUp(from) || table_.peer(from).incarnation != incarnation) return;
  auto m = DecodeMessage(absl::MakeConstSpan(frame), cluster_size_);
  absl::Status bad;
  if (!m.ok()) {
    bad = m.status();
  } else if (m->src != from || m->type == MsgType::kHello) {
    bad = absl::InvalidArgumentError(
        absl::StrCat("unexpected ", DebugString(*m), " from node ", from));
  }
  if (!bad.ok()) {
    bad_messages_.fetch_add(1, std::memory_order_relaxed);
    DSM_LOG(WARNING) << "loopback node " << self_ << ": bad message from node " << from
                     << ", closing: " << bad;
    MarkDown(from, bad, /*tell_peer=*/true, /*notify_now=*/true);
    return;
  }
  messages_received_.fetch_add(1, std::memory_order_relaxed);
  bytes_received_.fetch_add(frame.size(), std::memory_order_relaxed);
  m->dst = self_;
  handler_->OnMessage(std::move(*m));
}

void LoopbackTransport::OnUp(NodeId peer, Incarnation incarnation) {
  const PeerTable::Verdict v = table_.CheckJoin(peer, incarnation);
  if (v.refusal == Refusal::kSecondConnection) return;  // already up with it
  if (v.refusal != Refusal::kNone) {
    table_.NoteRefused(peer);
    hellos_refused_.fetch_add(1, std::memory_order_relaxed);
    DSM_LOG(ERROR) << "loopback node " << self_ << ": refusing node " << peer << ": " << v.why;
    const NodeId me = self_;
    PostToPeer(peer, [me, r = v.refusal, d = v.detail](LoopbackTransport* t) {
      t->OnRefusedBy(me, r, d);
    });
    return;
  }
  PeerTable::UpResult up = table_.Up(peer, incarnation);
  // The old incarnation is finished before the new one is reported.
  if (up.owed_down) handler_->OnPeerDown(peer, *up.owed_down);
  if (up.rejoin) {
    rejoins_.fetch_add(1, std::memory_order_relaxed);
    DSM_LOG(INFO) << "loopback node " << self_ << ": node " << peer
                  << " rejoined with incarnation " << incarnation << " (incarnation "
                  << up.previous << " was declared down)";
  }
  // What was queued goes first, before anything the handler sends from OnPeerUp.
  for (Message& m : up.pending) {
    std::vector<uint8_t> frame;
    EncodeMessage(m, frame);
    Deliver(peer, std::move(frame));
  }
  handler_->OnPeerUp(peer, incarnation);
}

void LoopbackTransport::OnRefusedBy(NodeId peer, Refusal refusal, uint64_t detail) {
  const absl::Status why =
      RefusalStatus(refusal, peer, self_, table_.self_incarnation(), detail, cluster_size_);
  table_.NoteRefusedBy(peer, why);
  DSM_LOG(ERROR) << "loopback node " << self_ << ": node " << peer
                 << " refused this node: " << why;
  MarkDown(peer, why, /*tell_peer=*/false, /*notify_now=*/true);
}

void LoopbackTransport::OnDown(NodeId peer, Incarnation incarnation, const absl::Status& why) {
  // A report about an incarnation older than the one known here (a restarted peer): stale.
  if (table_.peer(peer).incarnation != incarnation) return;
  MarkDown(peer, why, /*tell_peer=*/false, /*notify_now=*/true);
}

void LoopbackTransport::MarkDown(NodeId peer, const absl::Status& why, bool tell_peer,
                                 bool notify_now) {
  const Incarnation theirs = table_.peer(peer).incarnation;
  if (!table_.Down(peer, why)) return;
  if (tell_peer) {
    const NodeId me = self_;
    const Incarnation mine = table_.self_incarnation();
    // Only that incarnation hears it; a later one of the same id is not affected.
    absl::MutexLock l(&hub_->mu);
    const std::shared_ptr<Endpoint>& ep = hub_->nodes_[peer];
    if (ep != nullptr && ep->incarnation == theirs) {
      PostTo(ep, [me, mine](LoopbackTransport* t) {
        t->OnDown(me, mine,
                  absl::UnavailableError(absl::StrCat("node ", me, " closed the connection")));
      });
    }
  }
  if (notify_now) {
    if (auto report = table_.TakeDownReport(peer)) handler_->OnPeerDown(peer, *report);
  } else {
    PostTo(endpoint_, [peer](LoopbackTransport* t) {
      if (auto report = t->table_.TakeDownReport(peer)) t->handler_->OnPeerDown(peer, *report);
    });
  }
}

bool LoopbackTransport::IsUp(NodeId peer) const { return started_ && table_.IsUp(peer); }

void LoopbackTransport::Disconnect(NodeId peer, const absl::Status& why) {
  if (!started_ || shut_down_ || peer >= cluster_size_ || peer == self_) return;
  // Sends stop now; the handler hears of it from the loop, never re-entrantly.
  MarkDown(peer, why, /*tell_peer=*/true, /*notify_now=*/false);
}

void LoopbackTransport::OnConnectTimeout() {
  connect_timer_ = 0;
  for (NodeId j : table_.ExpiredConnecting(absl::InfiniteFuture())) {
    MarkDown(j,
             absl::DeadlineExceededError(absl::StrCat(
                 "node ", j, " did not join loopback hub '", options_.loopback_hub, "' within ",
                 absl::FormatDuration(options_.connect_timeout))),
             /*tell_peer=*/false, /*notify_now=*/true);
  }
}

void LoopbackTransport::Shutdown(absl::Time /*deadline*/) {
  // Nothing to flush: every Send already handed its bytes to the destination's loop.
  if (!started_ || shut_down_) return;
  shut_down_ = true;
  if (connect_timer_ != 0) loop_->CancelTimer(connect_timer_);
  {
    absl::MutexLock l(&hub_->mu);
    hub_->nodes_[self_] = nullptr;
    const NodeId me = self_;
    const Incarnation mine = table_.self_incarnation();
    for (auto& ep : hub_->nodes_) {
      if (ep == nullptr) continue;
      PostTo(ep, [me, mine](LoopbackTransport* t) {
        t->OnDown(me, mine, absl::UnavailableError(absl::StrCat("node ", me, " shut down")));
      });
    }
  }
  endpoint_->owner = nullptr;  // tasks still queued for this node become no-ops
  table_.ClearPending();
}

Transport::Counters LoopbackTransport::counters() const {
  Counters c;
  c.messages_sent = messages_sent_.load(std::memory_order_relaxed);
  c.messages_received = messages_received_.load(std::memory_order_relaxed);
  c.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
  c.bytes_received = bytes_received_.load(std::memory_order_relaxed);
  c.bad_messages = bad_messages_.load(std::memory_order_relaxed);
  c.rejoins = rejoins_.load(std::memory_order_relaxed);
  c.hellos_refused = hellos_refused_.load(std::memory_order_relaxed);
  return c;
}

}  // namespace dsm
