// TcpTransport: a full mesh of TCP connections driven by io_uring on the node's EventLoop.
//
//   Options o; o.node_id = 1; o.peers = {"127.0.0.1:7000", "127.0.0.1:7001"};
//   auto t = CreateTcpTransport(o);        // usually through CreateTransport(o)
//   t.value()->Start(loop, &handler);      // listens on peers[1] (or o.listen)
//   ... loop->Poll() on this thread ...
//
// Mesh: node i dials every j < i and accepts from every j > i (one connection per pair).
// Failed dials are retried with backoff (10 ms doubling to 500 ms) until connect_timeout; a
// lower-id peer declared down is dialed again every kProbeInterval, so a restarted process
// with that id is found (the restarted node itself dials the lower ids).
// Admission: on a cluster with a key (admission/admission.h), the dialer and the acceptor
// first run the admission handshake; the acceptor sends nothing but a nonce until the dialer
// has proven the key, and a connection that fails it is closed and counted
// (admission_failures).
// Hello: then (at once without a key) the dialer sends kHello (src = its id, arg = its cluster
// size, req_id = its incarnation); the acceptor checks it (a higher id, the admitted one,
// the same cluster size, PeerTable::CheckJoin) and answers with its own Hello, or with a
// refusal Hello (page = Refusal, region = the refuser's cluster size or the incarnation it
// knows) followed by a FIN. The dialer checks the answer the same way (the node it dialed,
// CheckJoin). A refusal is logged on both sides with its reason: a cluster-size mismatch or a
// stale incarnation ends the connect attempt at once (the peer is reported down with that
// reason); a duplicate id is retried until the connect deadline (the old process may be
// dying) and reported with that reason then.
//
// Bounds: connections that have not finished admission and Hello are limited per source
// address (admission::PerSourceSlots) and in total (admission::TotalSlots); further ones are
// closed at once and counted (connections_refused). Each gets kHandshakeLimit (at most
// peer_timeout) to finish. Refusals and failed admissions are logged at most once per source
// per 10 s, with a count. A peer whose output queue stays above kSendQueueLimit with the
// kernel accepting none of it for kSendStallLimit (at most peer_timeout) has stopped reading:
// it is disconnected (send_queue_cutoffs); a queue that moves is never cut.
//
// Peer state lives in a PeerTable (peer_table.h): connecting -> up -> down, or connecting ->
// down after connect_timeout; down is final for that incarnation, and a newer incarnation of
// the id comes up again (a rejoin). Messages to a connecting peer are queued and sent in order
// once it is up; to a down peer they are dropped. A frame that fails validation, a src that
// does not match the connection, EOF or a socket error closes the connection, logs a warning
// and reports the peer down once.
//
// Shutdown(deadline): stops Handler calls and Sends, flushes queued output and half-closes
// every connection (peers see EOF and report this node down), waits until the deadline for
// the peers to close their side, then closes and cancels every ring operation and drives the
// loop until each one completed, so the transport can then be destroyed. The destructor does
// Shutdown(now). Ring operations hold their connection alive until their final completion.
//
// Threading: as Transport (transport.h): every call, the destructor, and all Handler calls on
// the loop's thread (or after that thread stopped polling: Shutdown drives the loop itself).
// The EventLoop must outlive the transport. counters() from any thread.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <vector>

#include "transport/admission/admission.h"
#include "transport/admission/limits.h"
#include "transport/tcp/tcp_connection.h"
#include "transport/transport.h"

namespace dsm {

absl::StatusOr<std::unique_ptr<Transport>> CreateTcpTransport(const Options& options);

class TcpTransport final : public Transport, private TcpConnection::Owner {
 public:
  TcpTransport(const Options& options, std::vector<HostPort> peers, HostPort listen,
               std::shared_ptr<const admission::ClusterAuth> auth);

  static constexpr absl::Duration kHandshakeLimit = absl::Seconds(5);
  static constexpr size_t kSendQueueLimit = size_t{64} << 20;
  static constexpr absl::Duration kSendStallLimit = absl::Seconds(2);
  static constexpr absl::Duration kProbeInterval = absl::Seconds(1);
  // How long Start() waits for its address while it is still in use (at most connect_timeout).
  static constexpr absl::Duration kBindRetryLimit = absl::Seconds(2);
  ~TcpTransport() override;

  absl::Status Start(EventLoop* loop, Handler* handler) override;
  void Send(Message&& m) override;
  bool IsUp(NodeId peer) const override;
  Incarnation incarnation() const override { return table_.self_incarnation(); }
  void Disconnect(NodeId peer, const absl::Status& why) override;
  void ExpectClose(NodeId peer) override;
  void Shutdown(absl::Time deadline) override;
  Counters counters() const override;

  // Treats `fd` (any connected stream socket, e.g. one end of a socketpair) as a connection
  // just accepted by the listener: the fuzzers' way into the receive path. Loop thread,
  // after Start().
  void AcceptForTesting(int fd) { OnAccept(fd); }

 private:
  class Listener;
  struct Alive {  // tasks Posted to the loop run only while `t` is set
    TcpTransport* t;
  };
  // The raw side of one peer; its state is in table_.
  struct Link {
    std::shared_ptr<TcpConnection> conn;  // the dial in progress, or the live connection
    EventLoop::TimerId redial_timer = 0;
    EventLoop::TimerId stall_timer = 0;  // re-checks a queue over kSendQueueLimit
    absl::Duration backoff = absl::Milliseconds(10);
    bool close_expected = false;  // it said goodbye: its connection's end is not a failure
  };

  // TcpConnection::Owner.
  void OnConnected(TcpConnection* c, int res) override;
  void OnFrame(TcpConnection* c, absl::Span<const uint8_t> frame) override;
  void OnFailed(TcpConnection* c, const absl::Status& why, bool bad) override;
  void OnAdmission(TcpConnection* c, const absl::Status& result) override;

  void OnAccept(int fd);
  void Dial(NodeId peer);
  void ScheduleRedial(NodeId peer);
  void OnHello(TcpConnection* c, const Message& hello);
  void SendHello(TcpConnection* c, Refusal refusal = Refusal::kNone, uint64_t detail = 0);
  // Refuses `c`'s Hello: logs `v.why`, sends a refusal Hello and a FIN.
  void RefuseHello(TcpConnection* c, NodeId id, const PeerTable::Verdict& v);
  // The dialer got a refusal Hello from the node it dialed.
  void OnRefused(TcpConnection* c, const Message& hello);
  // Logs a line about `peer`, rate-limited per peer.
  void LogByPeer(NodeId peer, const std::string& what);
  void ArmHandshakeTimer(const std::shared_ptr<TcpConnection>& c);
  // Logs a line about an unauthenticated connection from `source`, rate-limited per source.
  void LogBySource(uint32_t source, const std::string& what);
  void CheckSendQueue(NodeId peer);
  void Reject(TcpConnection* c, const absl::Status& why, bool bad);
  void ConnectionGone(TcpConnection* c, const absl::Status& why);
  void PeerUp(NodeId peer, Incarnation incarnation, TcpConnection* c);
  // Declares `peer` down once; OnPeerDown now (completion context) or Posted (API calls).
  void PeerDown(NodeId peer, const absl::Status& why, bool notify_now);
  void OnConnectDeadline();
  std::shared_ptr<TcpConnection> Adopt(int fd);
  void Prune();
  bool AnyConnection(bool (*pred)(const TcpConnection&)) const;

  const Options options_;
  const size_t cluster_size_;
  const NodeId self_;
  const std::vector<HostPort> addrs_;
  const HostPort listen_addr_;
  const std::shared_ptr<const admission::ClusterAuth> auth_;  // null: no admission
  std::vector<uint32_t> peer_ipv4_;
  admission::RateLimitedLog source_log_{absl::Seconds(10)};
  admission::RateLimitedLog peer_log_{absl::Seconds(10)};
  EventLoop* loop_ = nullptr;
  Handler* handler_ = nullptr;
  PeerTable table_;
  std::vector<Link> links_;
  // Every connection whose ring operations may not have finished (dials, accepted ones
  // waiting for Hello, live ones, closed ones draining).
  std::vector<std::shared_ptr<TcpConnection>> conns_;
  std::shared_ptr<Listener> listener_;
  std::shared_ptr<Alive> alive_;
  absl::Time connect_deadline_;
  EventLoop::TimerId deadline_timer_ = 0;
  bool started_ = false;
  bool stopping_ = false;  // Shutdown began: no Handler calls, Sends dropped
  bool shut_down_ = false;

  std::atomic<uint64_t> messages_sent_{0}, messages_received_{0}, bytes_sent_{0},
      bytes_received_{0}, bad_messages_{0}, admission_failures_{0}, connections_refused_{0},
      send_queue_cutoffs_{0}, rejoins_{0}, hellos_refused_{0};
};

}  // namespace dsm
