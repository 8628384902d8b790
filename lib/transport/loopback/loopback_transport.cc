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
        absl::StrCat("loopback hub '", name, "' has cluster size ", hub->cluster_size,
                     " but this node's peers list has ", cluster_size, " entries"));
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
      peers_(options.peers.size()) {}

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
  {
    absl::MutexLock l(&(*hub)->mu);
    auto& nodes = (*hub)->nodes_;
    if (nodes[self_] != nullptr) {
      return absl::AlreadyExistsError(absl::StrCat("loopback hub '", options_.loopback_hub,
                                                   "' already has a node ", self_));
    }
    nodes[self_] = endpoint_;
    for (NodeId j = 0; j < nodes.size(); ++j) {
      if (j == self_ || nodes[j] == nullptr) continue;
      const NodeId me = self_;
      PostTo(nodes[j], [me](LoopbackTransport* t) { t->OnUp(me); });
      PostTo(endpoint_, [j](LoopbackTransport* t) { t->OnUp(j); });
    }
  }
  hub_ = std::move(*hub);
  started_ = true;
  peers_[self_].state = PeerState::kUp;
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
  Peer& p = peers_[m.dst];
  if (p.state == PeerState::kDown) return;
  std::vector<uint8_t> frame;
  EncodeMessage(m, frame);
  if (p.state == PeerState::kWaiting) {
    p.pending.push_back(std::move(frame));
    return;
  }
  Deliver(m.dst, std::move(frame));
}

void LoopbackTransport::Deliver(NodeId dst, std::vector<uint8_t>&& frame) {
  messages_sent_.fetch_add(1, std::memory_order_relaxed);
  bytes_sent_.fetch_add(frame.size(), std::memory_order_relaxed);
  const NodeId from = self_;
  absl::MutexLock l(&hub_->mu);
  const std::shared_ptr<Endpoint>& ep = hub_->nodes_[dst];
  // Not registered: it shut down and its OnPeerDown is already on its way to us.
  if (ep == nullptr) return;
  PostTo(ep, [from, frame = std::move(frame)](LoopbackTransport* t) mutable {
    t->OnBytes(from, std::move(frame));
  });
}

void LoopbackTransport::OnBytes(NodeId from, std::vector<uint8_t>&& frame) {
  if (peers_[from].state != PeerState::kUp) return;  // declared down here: drop
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

void LoopbackTransport::OnUp(NodeId peer) {
  Peer& p = peers_[peer];
  if (p.state == PeerState::kDown) {
    // Declared down here before it appeared: down is final, so tell it we are gone for it.
    const NodeId me = self_;
    absl::MutexLock l(&hub_->mu);
    if (hub_->nodes_[peer] != nullptr) {
      PostTo(hub_->nodes_[peer], [me](LoopbackTransport* t) {
        t->OnDown(me, absl::UnavailableError(absl::StrCat("node ", me, " declared us down")));
      });
    }
    return;
  }
  if (p.state == PeerState::kUp) return;
  p.state = PeerState::kUp;
  // What was queued goes first, before anything the handler sends from OnPeerUp.
  std::deque<std::vector<uint8_t>> pending;
  pending.swap(p.pending);
  for (auto& frame : pending) Deliver(peer, std::move(frame));
  handler_->OnPeerUp(peer);
}

void LoopbackTransport::OnDown(NodeId peer, const absl::Status& why) {
  MarkDown(peer, why, /*tell_peer=*/false, /*notify_now=*/true);
}

void LoopbackTransport::MarkDown(NodeId peer, const absl::Status& why, bool tell_peer,
                                 bool notify_now) {
  Peer& p = peers_[peer];
  if (p.state == PeerState::kDown) return;
  p.state = PeerState::kDown;
  p.pending.clear();
  if (tell_peer) {
    const NodeId me = self_;
    absl::MutexLock l(&hub_->mu);
    if (hub_->nodes_[peer] != nullptr) {
      PostTo(hub_->nodes_[peer], [me](LoopbackTransport* t) {
        t->OnDown(me, absl::UnavailableError(absl::StrCat("node ", me, " closed the connection")));
      });
    }
  }
  if (notify_now) {
    handler_->OnPeerDown(peer, why);
  } else {
    PostTo(endpoint_, [peer, why](LoopbackTransport* t) { t->handler_->OnPeerDown(peer, why); });
  }
}

bool LoopbackTransport::IsUp(NodeId peer) const {
  return peer < cluster_size_ && peers_[peer].state == PeerState::kUp;
}

void LoopbackTransport::Disconnect(NodeId peer, const absl::Status& why) {
  if (!started_ || shut_down_ || peer >= cluster_size_ || peer == self_) return;
  // Sends stop now; the handler hears of it from the loop, never re-entrantly.
  MarkDown(peer, why, /*tell_peer=*/true, /*notify_now=*/false);
}

void LoopbackTransport::OnConnectTimeout() {
  connect_timer_ = 0;
  for (NodeId j = 0; j < cluster_size_; ++j) {
    if (peers_[j].state != PeerState::kWaiting) continue;
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
    for (auto& ep : hub_->nodes_) {
      if (ep == nullptr) continue;
      PostTo(ep, [me](LoopbackTransport* t) {
        t->OnDown(me, absl::UnavailableError(absl::StrCat("node ", me, " shut down")));
      });
    }
  }
  endpoint_->owner = nullptr;  // tasks still queued for this node become no-ops
  for (Peer& p : peers_) p.pending.clear();
}

Transport::Counters LoopbackTransport::counters() const {
  Counters c;
  c.messages_sent = messages_sent_.load(std::memory_order_relaxed);
  c.messages_received = messages_received_.load(std::memory_order_relaxed);
  c.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
  c.bytes_received = bytes_received_.load(std::memory_order_relaxed);
  c.bad_messages = bad_messages_.load(std::memory_order_relaxed);
  return c;
}

}  // namespace dsm
