#include "transport/tcp/tcp_transport.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "transport/wire.h"

namespace dsm {
namespace {

sockaddr_in ToSockaddr(const HostPort& hp) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(hp.port);
  a.sin_addr.s_addr = htonl(hp.ipv4);
  return a;
}

std::string AddrString(const HostPort& hp) {
  in_addr a{};
  a.s_addr = htonl(hp.ipv4);
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return absl::StrCat(buf, ":", hp.port);
}

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

constexpr absl::Duration kMaxBackoff = absl::Milliseconds(500);
// After Shutdown closed everything: how long to drive the loop for the cancellations.
constexpr absl::Duration kDrainLimit = absl::Seconds(5);

}  // namespace

// The listening socket and its accept operation. Like a connection, the accept in flight
// holds the listener alive until its final completion.
class TcpTransport::Listener final : public EventLoop::Op,
                                     public std::enable_shared_from_this<Listener> {
 public:
  Listener(EventLoop* loop, TcpTransport* owner, int fd) : loop_(loop), owner_(owner), fd_(fd) {}
  ~Listener() {
    if (fd_ >= 0) close(fd_);
  }
  void Arm() {
    hold_ = shared_from_this();
    inflight_ = true;
    io_uring_sqe* sqe = loop_->Prepare(this);
    io_uring_prep_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC);
  }
  void OnComplete(int res, uint32_t /*flags*/) override {
    std::shared_ptr<Listener> keep = std::move(hold_);
    inflight_ = false;
    if (owner_ == nullptr) {
      if (res >= 0) close(res);
      if (fd_ >= 0) close(fd_);
      fd_ = -1;
      return;
    }
    if (res >= 0) {
      owner_->OnAccept(res);
    } else if (res != -EINTR && res != -EAGAIN && res != -ECONNABORTED) {
      // Out of fds or memory: retry later rather than spin.
      DSM_LOG(ERROR) << "tcp: accept: " << std::strerror(-res);
      std::weak_ptr<Listener> weak = keep;
      owner_->loop_->RunAfter(absl::Milliseconds(100), [weak] {
        if (auto l = weak.lock(); l != nullptr && l->owner_ != nullptr && !l->inflight_) l->Arm();
      });
      return;
    }
    if (owner_ != nullptr) Arm();
  }
  void Close() {
    owner_ = nullptr;
    if (fd_ < 0) return;
    if (inflight_) {
      shutdown(fd_, SHUT_RDWR);  // wakes the accept; the fd is closed at its completion
      io_uring_sqe* sqe = loop_->Prepare(nullptr);
      io_uring_prep_cancel(sqe, this, 0);
    } else {
      close(fd_);
      fd_ = -1;
    }
  }
  bool finished() const { return !inflight_; }

 private:
  EventLoop* const loop_;
  TcpTransport* owner_;
  int fd_;
  bool inflight_ = false;
  std::shared_ptr<Listener> hold_;
};

absl::StatusOr<std::unique_ptr<Transport>> CreateTcpTransport(const Options& options) {
  if (absl::Status s = ValidateTransportOptions(options); !s.ok()) return s;
  std::vector<HostPort> addrs;
  for (const std::string& p : options.peers) addrs.push_back(*ParseHostPort(p));
  HostPort listen = options.listen.empty() ? addrs[options.node_id]
                                           : *ParseHostPort(options.listen);
  auto auth = admission::ResolveAdmission(options);
  if (!auth.ok()) return auth.status();
  return std::unique_ptr<Transport>(
      new TcpTransport(options, std::move(addrs), listen, std::move(*auth)));
}

TcpTransport::TcpTransport(const Options& options, std::vector<HostPort> peers, HostPort listen,
                           std::shared_ptr<const admission::ClusterAuth> auth)
    : options_(options),
      cluster_size_(peers.size()),
      self_(options.node_id),
      addrs_(std::move(peers)),
      listen_addr_(listen),
      auth_(std::move(auth)),
      table_(self_, cluster_size_, NewIncarnation(), absl::InfiniteFuture()),
      links_(cluster_size_) {
  for (const HostPort& hp : addrs_) peer_ipv4_.push_back(hp.ipv4);
}

TcpTransport::~TcpTransport() { Shutdown(absl::Now()); }

absl::Status TcpTransport::Start(EventLoop* loop, Handler* handler) {
  if (started_) return absl::FailedPreconditionError("tcp transport: started twice");
  if (loop == nullptr || handler == nullptr) {
    return absl::InvalidArgumentError("tcp transport: null loop or handler");
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const sockaddr_in addr = ToSockaddr(listen_addr_);
  // A process restarted right after this node id's previous one was killed may find the
  // address still held for a moment: the kernel closes the old listener only when it has torn
  // down the old io_uring, after the process is reaped. Wait for that, bounded; a second
  // process that really runs with this id still fails, after the bound.
  const absl::Time bind_until = absl::Now() + std::min(kBindRetryLimit, options_.connect_timeout);
  int bound = bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  while (bound != 0 && errno == EADDRINUSE && absl::Now() < bind_until) {
    absl::SleepFor(absl::Milliseconds(10));
    bound = bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  }
  if (bound != 0) {
    const int err = errno;
    close(fd);
    // The usual cause: another process already runs as this node id.
    return absl::ErrnoToStatus(
        err, absl::StrCat("bind ", AddrString(listen_addr_), " (node ", self_, "'s address",
                          err == EADDRINUSE ? "; is another process running as node " : "",
                          err == EADDRINUSE ? absl::StrCat(self_, "?") : std::string(), ")"));
  }
  if (listen(fd, 128) != 0) {
    const int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("listen ", AddrString(listen_addr_)));
  }
  loop_ = loop;
  handler_ = handler;
  started_ = true;
  alive_ = std::make_shared<Alive>(Alive{this});
  listener_ = std::make_shared<Listener>(loop, this, fd);
  listener_->Arm();
  const absl::Duration timeout = options_.connect_timeout;
  connect_deadline_ = absl::Now() + timeout;
  table_.SetConnectDeadline(connect_deadline_);
  if (cluster_size_ > 1) deadline_timer_ = loop_->RunAfter(timeout, [this] { OnConnectDeadline(); });
  for (NodeId j = 0; j < self_; ++j) Dial(j);
  return absl::OkStatus();
}

std::shared_ptr<TcpConnection> TcpTransport::Adopt(int fd) {
  SetNoDelay(fd);
  // Frames are cut with the widest cluster size: until Hello, the peer's may differ from ours
  // and is refused with that reason (OnHello); after it, DecodeMessage checks our own.
  auto c = TcpConnection::Create(loop_, this, fd, kMaxNodes);
  Prune();
  conns_.push_back(c);
  return c;
}

void TcpTransport::Prune() {
  conns_.erase(std::remove_if(conns_.begin(), conns_.end(),
                              [](const std::shared_ptr<TcpConnection>& c) {
                                return c->finished();
                              }),
               conns_.end());
}

void TcpTransport::Dial(NodeId peer) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    DSM_LOG(ERROR) << "tcp node " << self_ << ": socket: " << std::strerror(errno);
    ScheduleRedial(peer);
    return;
  }
  auto c = Adopt(fd);
  c->outbound = true;
  c->peer = peer;
  c->peer_known = true;
  links_[peer].conn = c;
  c->StartConnect(ToSockaddr(addrs_[peer]));
}

void TcpTransport::ScheduleRedial(NodeId peer) {
  Link& l = links_[peer];
  if (stopping_ || l.redial_timer != 0 || l.conn != nullptr) return;
  absl::Duration delay;
  switch (table_.state(peer)) {
    case PeerState::kConnecting:
      if (absl::Now() + l.backoff >= connect_deadline_) return;  // the deadline timer decides
      delay = l.backoff;
      l.backoff = std::min(2 * l.backoff, kMaxBackoff);
      break;
    case PeerState::kDown:
    case PeerState::kLeft:
      // Looking for a restarted process with that id; only the dialer of the pair probes.
      if (peer >= self_) return;
      delay = kProbeInterval;
      break;
    case PeerState::kUp:
      return;
  }
  l.redial_timer = loop_->RunAfter(delay, [this, peer] {
    links_[peer].redial_timer = 0;
    if (!stopping_ && !table_.IsUp(peer) && links_[peer].conn == nullptr) Dial(peer);
  });
}

void TcpTransport::OnConnected(TcpConnection* c, int res) {
  if (res < 0) {
    if (table_.state(c->peer) == PeerState::kConnecting) {  // a probe of a down peer is quiet
      DSM_LOG(INFO) << "tcp node " << self_ << ": connect to node " << c->peer << " at "
                    << AddrString(addrs_[c->peer]) << ": " << std::strerror(-res);
    }
    c->Close();
    ConnectionGone(c, absl::ErrnoToStatus(-res, "connect"));
    return;
  }
  ArmHandshakeTimer(c->shared_from_this());
  if (auth_ != nullptr) {
    c->admission = std::make_unique<admission::Handshake>(
        admission::Handshake::Dialer(auth_, c->peer));
    if (c->admission->failed()) {
      Reject(c, absl::InternalError("admission: RAND_bytes failed"), /*bad=*/false);
      return;
    }
    c->EnqueueRaw(c->admission->output());
    c->admission->output().clear();
  } else {
    SendHello(c);
  }
  c->StartReceiving();
}

void TcpTransport::SendHello(TcpConnection* c, Refusal refusal, uint64_t detail) {
  Message hello;
  hello.type = MsgType::kHello;
  hello.src = self_;
  hello.arg = cluster_size_;
  hello.req_id = table_.self_incarnation();
  hello.page = static_cast<uint64_t>(refusal);
  hello.region = detail;
  c->Enqueue(std::move(hello));
}

void TcpTransport::LogByPeer(NodeId peer, const std::string& what) {
  uint64_t count = 0;
  if (!peer_log_.Note(peer, absl::Now(), &count)) return;
  DSM_LOG(ERROR) << "tcp node " << self_ << ": " << what
                 << (count > 1 ? absl::StrCat(" (", count, " such events about node ", peer,
                                              " since the last line about it)")
                               : std::string());
}

void TcpTransport::ArmHandshakeTimer(const std::shared_ptr<TcpConnection>& c) {
  // A client that connects and never finishes admission and Hello holds a slot and a receive
  // buffer; a dialed address that never answers would hold the dial.
  const absl::Duration limit =
      std::min(kHandshakeLimit, options_.peer_timeout);
  std::weak_ptr<TcpConnection> weak = c;
  loop_->RunAfter(limit, [a = alive_, weak] {
    std::shared_ptr<TcpConnection> conn = weak.lock();
    if (a->t == nullptr || conn == nullptr || conn->closed() || conn->hello_done) return;
    TcpTransport* t = a->t;
    if (!conn->admitted()) {
      t->admission_failures_.fetch_add(1, std::memory_order_relaxed);
      t->Reject(conn.get(), absl::DeadlineExceededError("admission not finished in time"),
                /*bad=*/false);
      return;
    }
    // An inbound client that says nothing is misbehaving; a node we dialed may just be slow.
    t->Reject(conn.get(), absl::DeadlineExceededError("no Hello in time"),
              /*bad=*/!conn->outbound);
  });
}

void TcpTransport::LogBySource(uint32_t source, const std::string& what) {
  uint64_t count = 0;
  if (!source_log_.Note(source, absl::Now(), &count)) return;
  DSM_LOG(WARNING) << "tcp node " << self_ << ": " << what
                   << (count > 1 ? absl::StrCat(" (", count, " such events from ",
                                                admission::Ipv4String(source),
                                                " since the last line about it)")
                                 : std::string());
}

void TcpTransport::OnAccept(int fd) {
  if (stopping_) {
    close(fd);
    return;
  }
  sockaddr_in from{};
  socklen_t from_len = sizeof(from);
  uint32_t source = 0;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&from), &from_len) == 0 &&
      from.sin_family == AF_INET) {
    source = ntohl(from.sin_addr.s_addr);
  }
  // Bound the connections that have not finished admission and Hello (each has a receive
  // buffer), per source address and in total, so one source cannot keep the nodes out.
  size_t anonymous = 0, from_source = 0;
  for (const auto& c : conns_) {
    if (c->closed() || c->outbound || c->hello_done) continue;
    ++anonymous;
    from_source += c->source_ipv4 == source;
  }
  const size_t source_limit = admission::PerSourceSlots(peer_ipv4_, self_, source);
  const size_t total_limit = admission::TotalSlots(cluster_size_);
  if (from_source >= source_limit || anonymous >= total_limit) {
    connections_refused_.fetch_add(1, std::memory_order_relaxed);
    close(fd);
    LogBySource(source, absl::StrCat("refused a connection from ",
                                     admission::Ipv4String(source), ": ", from_source,
                                     " of its connections (limit ", source_limit, ") and ",
                                     anonymous, " in all (limit ", total_limit,
                                     ") are still in their handshake"));
    return;
  }
  auto c = Adopt(fd);
  c->source_ipv4 = source;
  ArmHandshakeTimer(c);
  if (auth_ != nullptr) {
    // Nothing is sent before the dialer has proven the key.
    c->admission = std::make_unique<admission::Handshake>(admission::Handshake::Acceptor(auth_));
  }
  // The acceptor answers the dialer's Hello (OnHello): nothing to send yet.
  c->StartReceiving();
}

void TcpTransport::OnAdmission(TcpConnection* c, const absl::Status& result) {
  if (stopping_) return;
  if (!result.ok()) {
    admission_failures_.fetch_add(1, std::memory_order_relaxed);
    if (c->outbound) {
      DSM_LOG(WARNING) << "tcp node " << self_ << ": connection to node " << c->peer << " at "
                       << AddrString(addrs_[c->peer]) << " closed: " << result;
    } else {
      LogBySource(c->source_ipv4, absl::StrCat("closed a connection from ",
                                               admission::Ipv4String(c->source_ipv4), ": ",
                                               result.ToString()));
    }
    ConnectionGone(c, result);
    return;
  }
  if (!c->outbound) {
    // Whether that node may come up is decided at its Hello, which carries its incarnation.
    c->peer = c->admission->peer();
    return;
  }
  SendHello(c);
}

void TcpTransport::OnFrame(TcpConnection* c, absl::Span<const uint8_t> frame) {
  if (stopping_ || c->refused) return;  // draining during Shutdown, or refused
  // Before Hello the peer's cluster size is not known to match: decode within the widest one
  // so that a mismatch is refused with its reason, not as a bad node id.
  auto m = DecodeMessage(frame, c->hello_done ? cluster_size_ : kMaxNodes);
  if (!m.ok()) {
    Reject(c, m.status(), /*bad=*/true);
    return;
  }
  if (!c->hello_done) {
    if (m->type != MsgType::kHello) {
      Reject(c, absl::InvalidArgumentError(absl::StrCat("first message is ", DebugString(*m),
                                                        ", not Hello")),
             /*bad=*/true);
      return;
    }
    OnHello(c, *m);
    return;
  }
  if (m->type == MsgType::kHello && m->src == c->peer && m->page != 0 &&
      m->page <= kMaxRefusal) {
    // The dialer refused our answer (it declared this incarnation down): we are not up for it.
    const absl::Status why =
        RefusalStatus(static_cast<Refusal>(m->page), c->peer, self_, table_.self_incarnation(),
                      m->region, cluster_size_);
    table_.NoteRefusedBy(c->peer, why);
    LogByPeer(c->peer, absl::StrCat("node ", c->peer, " refused this node: ", why.ToString()));
    PeerDown(c->peer, why, /*notify_now=*/true);
    return;
  }
  if (m->type == MsgType::kHello || m->src != c->peer) {
    Reject(c, absl::InvalidArgumentError(absl::StrCat("unexpected ", DebugString(*m))),
           /*bad=*/true);
    return;
  }
  messages_received_.fetch_add(1, std::memory_order_relaxed);
  bytes_received_.fetch_add(frame.size(), std::memory_order_relaxed);
  m->dst = self_;
  handler_->OnMessage(std::move(*m));
}

void TcpTransport::OnHello(TcpConnection* c, const Message& hello) {
  const Refusal refusal = static_cast<Refusal>(hello.page);
  if (hello.page > kMaxRefusal) {
    Reject(c, absl::InvalidArgumentError(absl::StrCat("Hello from node ", hello.src,
                                                      " with unknown refusal ", hello.page)),
           /*bad=*/true);
    return;
  }
  if (c->outbound && refusal != Refusal::kNone) return OnRefused(c, hello);
  if (refusal != Refusal::kNone) {
    Reject(c, absl::InvalidArgumentError(absl::StrCat("node ", hello.src,
                                                      " dialed us with a refusal Hello")),
           /*bad=*/true);
    return;
  }
  if (hello.arg != cluster_size_) {
    PeerTable::Verdict v;
    v.refusal = Refusal::kClusterSize;
    v.detail = cluster_size_;
    v.why = absl::FailedPreconditionError(absl::StrCat(
        "cluster size mismatch: node ", hello.src, " has ", hello.arg,
        " nodes in its peer list, this node (", self_, ") has ", cluster_size_));
    if (c->outbound) {
      // Our peer answered (it should have refused): treat it as a refusal of it.
      LogByPeer(c->peer, v.why.ToString());
      c->Close();
      table_.NoteRefusedBy(c->peer, v.why);
      links_[c->peer].conn.reset();
      PeerDown(c->peer, v.why, /*notify_now=*/true);
      return;
    }
    return RefuseHello(c, hello.src < cluster_size_ ? hello.src : self_, v);
  }
  if (hello.src >= cluster_size_) {
    Reject(c, absl::InvalidArgumentError(absl::StrCat("Hello from node ", hello.src,
                                                      " outside the cluster")),
           /*bad=*/true);
    return;
  }
  if (c->outbound) {
    if (hello.src != c->peer) {
      Reject(c, absl::InvalidArgumentError(absl::StrCat("dialed node ", c->peer, " at ",
                                                        AddrString(addrs_[c->peer]),
                                                        " but node ", hello.src, " answered")),
             /*bad=*/true);
      return;
    }
  } else {
    if (hello.src <= self_) {
      Reject(c, absl::InvalidArgumentError(absl::StrCat(
                    "node ", hello.src, " dialed us; only higher node ids dial node ", self_)),
             /*bad=*/true);
      return;
    }
    if (auth_ != nullptr && hello.src != c->peer) {
      Reject(c, absl::InvalidArgumentError(absl::StrCat("node ", c->peer,
                                                        " was admitted but said Hello as node ",
                                                        hello.src)),
             /*bad=*/true);
      return;
    }
  }
  const Incarnation incarnation = hello.req_id;
  PeerTable::Verdict v = table_.CheckJoin(hello.src, incarnation);
  if (v.refusal == Refusal::kNone && !c->outbound && links_[hello.src].conn != nullptr) {
    // Another connection of that id is between its Hello and ours: one per pair.
    v.refusal = Refusal::kSecondConnection;
    v.detail = incarnation;
    v.why = absl::AlreadyExistsError(
        absl::StrCat("second connection from node ", hello.src, " while one is being set up"));
  }
  if (v.refusal != Refusal::kNone) {
    if (c->outbound) {
      // Our own dial reached a process we may not accept (its incarnation was declared down
      // here): nothing was accepted on either side; we say why and close.
      table_.NoteRefused(hello.src);
      hellos_refused_.fetch_add(1, std::memory_order_relaxed);
      LogByPeer(hello.src, absl::StrCat("refusing node ", hello.src, ": ", v.why.ToString()));
      SendHello(c, v.refusal, v.detail);
      c->refused = true;
      c->ShutdownWriteWhenSent();
      c->hello_done = false;
      return;
    }
    return RefuseHello(c, hello.src, v);
  }
  if (!c->outbound) {
    c->peer = hello.src;
    c->peer_known = true;
    SendHello(c);
  }
  c->hello_done = true;
  PeerUp(hello.src, incarnation, c);
}

void TcpTransport::RefuseHello(TcpConnection* c, NodeId id, const PeerTable::Verdict& v) {
  if (id < cluster_size_ && id != self_) table_.NoteRefused(id);
  hellos_refused_.fetch_add(1, std::memory_order_relaxed);
  LogBySource(c->source_ipv4, absl::StrCat("refusing node ", id, " from ",
                                           admission::Ipv4String(c->source_ipv4), ": ",
                                           v.why.ToString()));
  SendHello(c, v.refusal, v.detail);
  c->refused = true;
  c->ShutdownWriteWhenSent();  // the handshake timer closes it if the dialer does not
}

void TcpTransport::OnRefused(TcpConnection* c, const Message& hello) {
  const NodeId peer = c->peer;
  const Refusal refusal = static_cast<Refusal>(hello.page);
  const absl::Status why = RefusalStatus(refusal, hello.src, self_, table_.self_incarnation(),
                                         hello.region, cluster_size_);
  c->Close();
  links_[peer].conn.reset();
  table_.NoteRefusedBy(peer, why);
  const PeerState state = table_.state(peer);
  LogByPeer(peer, absl::StrCat("node ", hello.src, " refused this node: ", why.ToString()));
  if (state == PeerState::kConnecting &&
      (refusal == Refusal::kClusterSize || refusal == Refusal::kStaleIncarnation)) {
    // Retrying cannot help: this process is misconfigured or was declared down there.
    PeerDown(peer, why, /*notify_now=*/true);
    return;
  }
  // A duplicate id (the old process may be on its way out), a second connection, or a probe
  // of a down peer: try again later; the connect deadline reports the last refusal.
  ScheduleRedial(peer);
}

void TcpTransport::Reject(TcpConnection* c, const absl::Status& why, bool bad) {
  if (bad) bad_messages_.fetch_add(1, std::memory_order_relaxed);
  if (!c->outbound && !c->hello_done) {
    LogBySource(c->source_ipv4, absl::StrCat("closing a connection from ",
                                             admission::Ipv4String(c->source_ipv4), ": ",
                                             why.ToString()));
  } else {
    DSM_LOG(WARNING) << "tcp node " << self_ << ": closing connection"
                     << (c->peer_known ? absl::StrCat(" to node ", c->peer) : std::string())
                     << ": " << why;
  }
  c->Close();
  ConnectionGone(c, why);
}

void TcpTransport::OnFailed(TcpConnection* c, const absl::Status& why, bool bad) {
  if (stopping_) return;
  if (bad) bad_messages_.fetch_add(1, std::memory_order_relaxed);
  if (!c->outbound && !c->admitted()) {
    // Gone in the middle of admission (an inbound connection that proved nothing).
    admission_failures_.fetch_add(1, std::memory_order_relaxed);
    LogBySource(c->source_ipv4, absl::StrCat("connection from ",
                                             admission::Ipv4String(c->source_ipv4),
                                             " closed during admission: ", why.ToString()));
  } else if (!c->outbound && !c->hello_done) {
    if (bad) {
      LogBySource(c->source_ipv4, absl::StrCat("connection from ",
                                               admission::Ipv4String(c->source_ipv4),
                                               " closed: ", why.ToString()));
    }
  } else if (c->outbound && !c->admitted()) {
    // The node we dialed closed while we were proving the key: it says nothing to a dialer
    // that has not proven it, so name what can differ. The connect deadline reports it.
    const absl::Status refused = absl::PermissionDeniedError(absl::StrCat(
        "node ", c->peer, " closed the connection during admission: the cluster key or the "
        "peer list (", cluster_size_, " entries here) differs from node ", c->peer,
        "'s, or it has too many connections in their handshake"));
    table_.NoteRefusedBy(c->peer, refused);
    LogByPeer(c->peer, refused.ToString());
  } else if (bad || (c->hello_done && !(c->peer_known && links_[c->peer].close_expected))) {
    DSM_LOG(WARNING) << "tcp node " << self_ << ": connection"
                     << (c->peer_known ? absl::StrCat(" to node ", c->peer) : std::string())
                     << " closed: " << why;
  }
  ConnectionGone(c, why);
}

void TcpTransport::ConnectionGone(TcpConnection* c, const absl::Status& why) {
  if (stopping_ || !c->peer_known) return;
  Link& l = links_[c->peer];
  if (l.conn.get() != c) return;
  if (c->hello_done) {
    PeerDown(c->peer, why, /*notify_now=*/true);
  } else {
    // A dial that failed before Hello: try again until the connect deadline (or, for a peer
    // declared down, look for a restarted process later).
    l.conn.reset();
    ScheduleRedial(c->peer);
  }
}

void TcpTransport::PeerUp(NodeId peer, Incarnation incarnation, TcpConnection* c) {
  Link& l = links_[peer];
  l.conn = c->shared_from_this();
  if (l.redial_timer != 0) loop_->CancelTimer(l.redial_timer);
  l.redial_timer = 0;
  l.backoff = absl::Milliseconds(10);
  l.close_expected = false;  // a new incarnation has said no goodbye
  PeerTable::UpResult up = table_.Up(peer, incarnation);
  // The old incarnation is finished before the new one is reported.
  if (up.owed_down) handler_->OnPeerDown(peer, *up.owed_down);
  if (up.rejoin) {
    rejoins_.fetch_add(1, std::memory_order_relaxed);
    DSM_LOG(INFO) << "tcp node " << self_ << ": node " << peer << " rejoined with incarnation "
                  << incarnation << " (incarnation " << up.previous << " was declared down)";
  }
  // What was queued goes first, before anything the handler sends from OnPeerUp.
  for (Message& m : up.pending) {
    messages_sent_.fetch_add(1, std::memory_order_relaxed);
    bytes_sent_.fetch_add(kWireHeaderSize + m.payload.size(), std::memory_order_relaxed);
    c->Enqueue(std::move(m));
  }
  handler_->OnPeerUp(peer, incarnation);
}

void TcpTransport::PeerDown(NodeId peer, const absl::Status& why, bool notify_now) {
  Link& l = links_[peer];
  // After its goodbye the peer has left (not failed); either way that incarnation is over.
  if (!(l.close_expected ? table_.Leave(peer, why) : table_.Down(peer, why))) return;
  if (l.redial_timer != 0) loop_->CancelTimer(l.redial_timer);
  l.redial_timer = 0;
  if (l.stall_timer != 0) loop_->CancelTimer(l.stall_timer);
  l.stall_timer = 0;
  if (l.conn != nullptr) l.conn->Close();
  l.conn.reset();
  if (notify_now) {
    if (auto report = table_.TakeDownReport(peer)) handler_->OnPeerDown(peer, *report);
  } else {
    loop_->Post([a = alive_, peer] {
      if (a->t == nullptr) return;
      if (auto report = a->t->table_.TakeDownReport(peer)) {
        a->t->handler_->OnPeerDown(peer, *report);
      }
    });
  }
  ScheduleRedial(peer);  // a dialer looks for a restarted process with that id
}

void TcpTransport::OnConnectDeadline() {
  deadline_timer_ = 0;
  for (NodeId j : table_.ExpiredConnecting(absl::InfiniteFuture())) {
    const absl::Status& refused = table_.peer(j).last_refusal;
    absl::Status why =
        refused.ok()
            ? absl::DeadlineExceededError(absl::StrCat(
                  "node ", j, " at ", AddrString(addrs_[j]), " did not connect within ",
                  absl::FormatDuration(options_.connect_timeout)))
            : absl::Status(refused.code(),
                           absl::StrCat("node ", j, " refused this node until the connect "
                                        "deadline: ",
                                        refused.message()));
    if (!refused.ok()) DSM_LOG(ERROR) << "tcp node " << self_ << ": " << why.message();
    PeerDown(j, why, /*notify_now=*/true);
  }
}

void TcpTransport::Send(Message&& m) {
  if (!started_ || stopping_) return;
  m.src = self_;
  if (m.dst >= cluster_size_) {
    DSM_LOG(ERROR) << "tcp: dropping message to node " << m.dst << " outside the cluster";
    return;
  }
  if (absl::Status s = ValidateMessage(m, cluster_size_); !s.ok()) {
    DSM_LOG(ERROR) << "tcp: dropping invalid message " << DebugString(m) << ": " << s;
    return;
  }
  if (m.dst == self_) {
    messages_sent_.fetch_add(1, std::memory_order_relaxed);
    loop_->Post([a = alive_, m = std::move(m)]() mutable {
      if (a->t == nullptr) return;
      a->t->messages_received_.fetch_add(1, std::memory_order_relaxed);
      a->t->handler_->OnMessage(std::move(m));
    });
    return;
  }
  const NodeId dst = m.dst;
  if (!table_.Route(m)) return;  // queued while connecting, or dropped (down)
  Link& l = links_[dst];
  messages_sent_.fetch_add(1, std::memory_order_relaxed);
  bytes_sent_.fetch_add(kWireHeaderSize + m.payload.size(), std::memory_order_relaxed);
  l.conn->Enqueue(std::move(m));
  if (l.conn->queued_bytes() > kSendQueueLimit) CheckSendQueue(dst);
}

void TcpTransport::CheckSendQueue(NodeId peer) {
  Link& p = links_[peer];
  if (!table_.IsUp(peer) || p.conn == nullptr) return;
  const absl::Duration limit =
      std::min(kSendStallLimit, options_.peer_timeout);
  const size_t queued = p.conn->queued_bytes();
  const absl::Duration stalled = p.conn->StalledOver(kSendQueueLimit);
  if (queued <= kSendQueueLimit) return;
  if (stalled >= limit) {
    send_queue_cutoffs_.fetch_add(1, std::memory_order_relaxed);
    PeerDown(peer,
             absl::ResourceExhaustedError(absl::StrCat(
                 "node ", peer, " stopped reading: ", queued, " bytes queued for it (limit ",
                 kSendQueueLimit, "), none taken for ", absl::FormatDuration(stalled))),
             /*notify_now=*/false);
    return;
  }
  if (p.stall_timer != 0) return;
  p.stall_timer = loop_->RunAfter(limit - stalled + absl::Milliseconds(1), [this, peer] {
    links_[peer].stall_timer = 0;
    if (!stopping_) CheckSendQueue(peer);
  });
}

bool TcpTransport::IsUp(NodeId peer) const {
  return started_ && table_.IsUp(peer);
}

void TcpTransport::ExpectClose(NodeId peer) {
  if (peer < cluster_size_) links_[peer].close_expected = true;
}

void TcpTransport::Disconnect(NodeId peer, const absl::Status& why) {
  if (!started_ || stopping_ || peer >= cluster_size_ || peer == self_) return;
  PeerDown(peer, why, /*notify_now=*/false);
}

bool TcpTransport::AnyConnection(bool (*pred)(const TcpConnection&)) const {
  for (const auto& c : conns_) {
    if (pred(*c)) return true;
  }
  return false;
}

void TcpTransport::Shutdown(absl::Time deadline) {
  if (!started_ || shut_down_) return;
  stopping_ = true;
  alive_->t = nullptr;  // Posted tasks (self-sends, OnPeerDown) become no-ops
  if (deadline_timer_ != 0) loop_->CancelTimer(deadline_timer_);
  deadline_timer_ = 0;
  for (Link& p : links_) {
    if (p.redial_timer != 0) loop_->CancelTimer(p.redial_timer);
    p.redial_timer = 0;
    if (p.stall_timer != 0) loop_->CancelTimer(p.stall_timer);
    p.stall_timer = 0;
  }
  table_.ClearPending();
  listener_->Close();
  auto poll_until = [this](absl::Time until, bool (*busy)(const TcpConnection&)) {
    while (AnyConnection(busy)) {
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration()) return;
      loop_->Poll(absl::ZeroDuration(), std::min(left, absl::Milliseconds(10)));
    }
  };
  // 1. Flush what the live connections still have queued.
  poll_until(deadline, [](const TcpConnection& c) {
    return !c.closed() && c.hello_done && c.queued_bytes() > 0;
  });
  // 2. Half-close: the peers see EOF after our last byte and close their side.
  for (const auto& c : conns_) {
    if (!c->closed() && c->hello_done) {
      c->ShutdownWrite();
    } else {
      c->Close();
    }
  }
  poll_until(deadline, [](const TcpConnection& c) { return !c.closed(); });
  // 3. Close everything and wait for every ring operation's final completion.
  for (const auto& c : conns_) c->Detach();
  for (Link& p : links_) p.conn.reset();
  const absl::Time drain_until = absl::Now() + kDrainLimit;
  while ((!listener_->finished() || AnyConnection([](const TcpConnection& c) {
            return !c.finished();
          })) &&
         absl::Now() < drain_until) {
    loop_->Poll(absl::ZeroDuration(), absl::Milliseconds(10));
  }
  Prune();
  if (!conns_.empty() || !listener_->finished()) {
    // They keep themselves alive until their completions; the memory stays valid.
    DSM_LOG(ERROR) << "tcp node " << self_ << ": " << conns_.size()
                   << " connection(s) still had ring operations after shutdown";
  }
  conns_.clear();
  listener_.reset();
  shut_down_ = true;
}

Transport::Counters TcpTransport::counters() const {
  Counters c;
  c.messages_sent = messages_sent_.load(std::memory_order_relaxed);
  c.messages_received = messages_received_.load(std::memory_order_relaxed);
  c.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
  c.bytes_received = bytes_received_.load(std::memory_order_relaxed);
  c.bad_messages = bad_messages_.load(std::memory_order_relaxed);
  c.admission_failures = admission_failures_.load(std::memory_order_relaxed);
  c.connections_refused = connections_refused_.load(std::memory_order_relaxed);
  c.send_queue_cutoffs = send_queue_cutoffs_.load(std::memory_order_relaxed);
  c.rejoins = rejoins_.load(std::memory_order_relaxed);
  c.hellos_refused = hellos_refused_.load(std::memory_order_relaxed);
  return c;
}

}  // namespace dsm
