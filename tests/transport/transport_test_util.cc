#include "transport/transport_test_util.h"

#include <unistd.h>

#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace dsm::testing {

std::vector<uint8_t> Pattern(uint64_t page, size_t n) {
  std::vector<uint8_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(page + i);
  return p;
}

Message MakeMsg(MsgType type, NodeId dst, uint64_t page, size_t payload) {
  Message m;
  m.type = type;
  m.dst = dst;
  m.page = page;
  m.region = 9;
  m.req_id = page * 3;
  if (type == MsgType::kData || type == MsgType::kGrant) m.arg = 1;
  m.payload = Pattern(page, payload);
  return m;
}

void Recorder::OnMessage(Message&& m) {
  if (in_send_.load()) reentrant_.store(true);
  bool ok = true;
  for (size_t i = 0; i < m.payload.size(); ++i) {
    if (m.payload[i] != static_cast<uint8_t>(m.page + i)) {
      ok = false;
      break;
    }
  }
  absl::MutexLock l(&mu_);
  ++count_;
  if (m.page != kUnordered) {
    uint64_t& next = next_seq_[m.src];
    if (m.page != next) ++order_violations_;
    next = m.page + 1;
  }
  if (store_.load()) {
    messages_.push_back(Received{m.type, m.src, m.dst, m.region, m.page, m.req_id, m.arg,
                                 m.payload.size(), ok});
  } else if (!ok) {
    ++order_violations_;
  }
}

void Recorder::OnPeerUp(NodeId peer, Incarnation incarnation) {
  if (in_send_.load()) reentrant_.store(true);
  absl::MutexLock l(&mu_);
  ++up_[peer];
  events_.push_back({true, peer, incarnation, absl::OkStatus()});
}

void Recorder::OnPeerDown(NodeId peer, const absl::Status& why) {
  if (in_send_.load()) reentrant_.store(true);
  absl::MutexLock l(&mu_);
  // Twice means: two downs with no up of a new incarnation between them.
  bool last_was_down = false;
  for (const PeerEvent& e : events_) {
    if (e.peer == peer) last_was_down = !e.up;
  }
  events_.push_back({false, peer, 0, why});
  if (last_was_down) {
    down_[peer] = absl::InternalError("OnPeerDown reported twice");
    return;
  }
  down_[peer] = why;
}

std::vector<Recorder::PeerEvent> Recorder::peer_events() const {
  absl::MutexLock l(&mu_);
  return events_;
}

Incarnation Recorder::incarnation(NodeId peer) const {
  absl::MutexLock l(&mu_);
  Incarnation last = 0;
  for (const PeerEvent& e : events_) {
    if (e.peer == peer && e.up) last = e.incarnation;
  }
  return last;
}

void Recorder::ForgetPeer(NodeId peer) {
  absl::MutexLock l(&mu_);
  up_.erase(peer);
  down_.erase(peer);
}

bool Recorder::WaitUntil(const std::function<bool(const Recorder&)>& pred,
                         absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (!pred(*this)) {
    if (absl::Now() > until) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

bool Recorder::WaitUp(NodeId peer, absl::Duration timeout) {
  return WaitUntil([peer](const Recorder& r) { return r.up_count().count(peer) != 0; }, timeout);
}
bool Recorder::WaitDown(NodeId peer, absl::Duration timeout) {
  return WaitUntil([peer](const Recorder& r) { return r.down().count(peer) != 0; }, timeout);
}
bool Recorder::WaitMessages(size_t n, absl::Duration timeout) {
  return WaitUntil([n](const Recorder& r) { return r.message_count() >= n; }, timeout);
}

std::vector<Recorder::Received> Recorder::messages() const {
  absl::MutexLock l(&mu_);
  return messages_;
}
size_t Recorder::message_count() const {
  absl::MutexLock l(&mu_);
  return count_;
}
std::map<NodeId, absl::Status> Recorder::down() const {
  absl::MutexLock l(&mu_);
  return down_;
}
std::map<NodeId, int> Recorder::up_count() const {
  absl::MutexLock l(&mu_);
  return up_;
}
int Recorder::order_violations() const {
  absl::MutexLock l(&mu_);
  return order_violations_;
}
bool Recorder::reentrant_delivery() const { return reentrant_.load(); }

TestNode::~TestNode() { Stop(); }

absl::Status TestNode::Init(const Options& o, bool inject_faults) {
  options = o;
  auto loop = EventLoop::Create();
  if (!loop.ok()) return loop.status();
  loop_ = std::move(*loop);
  auto t = CreateTransport(o);
  if (!t.ok()) return t.status();
  transport_ = std::move(*t);
  if (inject_faults) {
    auto f = std::make_unique<FaultInjectionTransport>(std::move(transport_));
    faults_ = f.get();
    transport_ = std::move(f);
  }
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      loop_->Poll(absl::Microseconds(spin_us.load()), absl::Milliseconds(5));
    }
  });
  return absl::OkStatus();
}

void TestNode::Run(const std::function<void()>& fn) {
  absl::Notification done;
  loop_->Post([&] {
    fn();
    done.Notify();
  });
  done.WaitForNotification();
}

absl::Status TestNode::Start() {
  absl::Status s;
  Run([&] { s = transport_->Start(loop_.get(), &rec_); });
  return s;
}

void TestNode::Send(Message m) {
  Run([&] {
    rec_.set_in_send(true);
    transport_->Send(std::move(m));
    rec_.set_in_send(false);
  });
}

void TestNode::Shutdown(absl::Duration grace) {
  Run([&] { transport_->Shutdown(absl::Now() + grace); });
}

void TestNode::Stop() {
  if (!thread_.joinable()) return;
  stop_.store(true);
  loop_->Wakeup();
  thread_.join();
  // The loop thread is gone: this thread owns the transport now.
  transport_.reset();
}

absl::StatusOr<std::unique_ptr<TestCluster>> TestCluster::Create(
    TransportKind kind, size_t n, std::vector<NodeId> start,
    std::chrono::milliseconds connect_timeout, bool inject_faults,
    std::chrono::milliseconds peer_timeout, const std::string& cluster_key) {
  static std::atomic<int> hub_seq{0};
  if (start.empty()) {
    for (NodeId i = 0; i < n; ++i) start.push_back(i);
  }
  std::mt19937 rng(std::random_device{}());
  absl::Status last;
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto c = std::unique_ptr<TestCluster>(new TestCluster());
    const uint16_t base = static_cast<uint16_t>(20000 + rng() % 12000);
    const std::string hub = absl::StrCat("hub-", getpid(), "-", hub_seq.fetch_add(1));
    for (NodeId i = 0; i < n; ++i) {
      c->ports_.push_back(static_cast<uint16_t>(base + i));
      c->peers_.push_back(absl::StrCat("127.0.0.1:", base + i));
    }
    bool retry = false;
    for (NodeId i = 0; i < n; ++i) c->nodes_.push_back(std::make_unique<TestNode>());
    c->base_.peers = c->peers_;
    c->base_.transport = kind;
    c->base_.loopback_hub = hub;
    c->base_.connect_timeout = absl::FromChrono(connect_timeout);
    c->base_.peer_timeout = absl::FromChrono(peer_timeout);
    c->base_.cluster_key = cluster_key;
    c->inject_faults_ = inject_faults;
    for (NodeId i : start) {
      Options o = c->base_;
      o.node_id = i;
      absl::Status s = c->nodes_[i]->Init(o, inject_faults);
      if (s.ok()) s = c->nodes_[i]->Start();
      if (!s.ok()) {
        last = s;
        retry = absl::StrContains(s.message(), "bind");
        if (!retry) return s;
        break;
      }
      c->started_.push_back(i);
    }
    if (!retry) return c;
  }
  return last;
}

absl::Status TestCluster::StartNode(NodeId i) {
  Options o = base_;
  o.node_id = i;
  absl::Status s = nodes_[i]->Init(o, inject_faults_);
  if (s.ok()) s = nodes_[i]->Start();
  if (s.ok()) started_.push_back(i);
  return s;
}

absl::Status TestCluster::RestartNode(NodeId i) {
  nodes_[i]->Shutdown(absl::Milliseconds(200));
  nodes_[i]->Stop();
  nodes_[i] = std::make_unique<TestNode>();
  Options o = base_;
  o.node_id = i;
  absl::Status s = nodes_[i]->Init(o, inject_faults_);
  if (s.ok()) s = nodes_[i]->Start();
  return s;
}

bool TestCluster::WaitAllUp(absl::Duration timeout) {
  for (NodeId i : started_) {
    for (NodeId j : started_) {
      if (i != j && !nodes_[i]->rec().WaitUp(j, timeout)) return false;
    }
  }
  return true;
}

TestCluster::~TestCluster() {
  for (NodeId i : started_) nodes_[i]->Shutdown(absl::Milliseconds(200));
  for (auto& n : nodes_) n->Stop();
}

}  // namespace dsm::testing
