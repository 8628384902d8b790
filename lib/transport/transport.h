// Transport: moves Messages between the nodes of a cluster. One folder per backend:
// tcp/ (io_uring sockets), loopback/ (in-process, really encodes and decodes bytes), rdma/.
//
// Threading rules: Start(), Send(), Close() and Shutdown() run on the owning node's engine
// thread (the thread that drives the EventLoop); the Handler is called on that thread too.
// Nothing here blocks: sends are queued and flushed by ring operations.
//
// Ordering: messages from one node to another arrive in the order they were sent (per-pair
// FIFO), or not at all (the peer is then reported down). The coherence protocol relies on it.
//
// Failure: a peer whose connection breaks, who sends a message that fails validation, or who
// cannot be reached within the connect timeout is reported once through OnPeerDown(); later
// Send()s to it are dropped. A node never crashes on bad input.
//
// Incarnations and rejoin (peer_table.h): each transport instance is one incarnation of its
// node. Down is final for an incarnation, not for a node id: a peer restarted with the same id
// (a newer incarnation) comes up again, reported by OnPeerUp with its new incarnation, always
// after the OnPeerDown of the old one. Stale incarnations, a second process with an id that is
// up, and a cluster-size mismatch are refused, with the reason logged on both sides (tcp, and
// loopback through its hub; rdma refuses a rejoin, see rdma_transport.h).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dsm/options.h"
#include "transport/event_loop.h"
#include "transport/peer_table.h"
#include "protocol/message.h"

namespace dsm {

class Transport {
 public:
  class Handler {
   public:
    virtual void OnMessage(Message&& m) = 0;       // m.src is validated
    // Connected and Hello exchanged with `incarnation` of `peer`. After an OnPeerDown for
    // `peer`, this is a rejoin: a newer incarnation (a restarted process) that holds nothing.
    virtual void OnPeerUp(NodeId peer, Incarnation incarnation) = 0;
    // The incarnation last reported up (or the connect attempt) is gone, for good.
    virtual void OnPeerDown(NodeId peer, const absl::Status& why) = 0;

   protected:
    ~Handler() = default;
  };

  virtual ~Transport() = default;

  // Begins listening and connecting; returns once listening. Peers come up later
  // (OnPeerUp) or are reported down after Options::connect_timeout.
  virtual absl::Status Start(EventLoop* loop, Handler* handler) = 0;

  // Queues `m` for `m.dst` (m.src is set by the transport). A message to this node itself is
  // delivered through the loop (never re-entrantly from Send).
  virtual void Send(Message&& m) = 0;

  virtual bool IsUp(NodeId peer) const = 0;

  // This node's incarnation (fixed for the transport's life).
  virtual Incarnation incarnation() const = 0;

  // Closes the connection to `peer` (reported through OnPeerDown with `why`, from a task
  // Posted to the loop, never re-entrantly). Later Send()s to `peer` are dropped at once.
  virtual void Disconnect(NodeId peer, const absl::Status& why) = 0;

  // `peer` said goodbye (it is leaving in order): the end of its connection that follows is
  // expected and is not logged as a failure. It is still reported through OnPeerDown. A
  // backend that logs nothing when a connection ends need not override this.
  virtual void ExpectClose(NodeId /*peer*/) {}

  // Flushes what is queued (bounded by `deadline`), then closes everything. No Handler call
  // is made from Shutdown() or after it. A backend may drive the loop itself (nested Poll())
  // until its ring operations have completed; afterwards nothing on the loop refers to the
  // transport, which may then be destroyed (the destructor does Shutdown(now) if needed).
  // The EventLoop must outlive the transport.
  virtual void Shutdown(absl::Time deadline) = 0;

  // Counters for Stats.
  struct Counters {
    uint64_t messages_sent = 0, messages_received = 0, bytes_sent = 0, bytes_received = 0,
             bad_messages = 0;
    // Connections closed because the peer failed the admission handshake (wrong or no key,
    // a replayed handshake, garbage, silence past the handshake bound).
    uint64_t admission_failures = 0;
    // Connections refused before admission because the source address or the node had too
    // many connections still in their handshake.
    uint64_t connections_refused = 0;
    // Peers disconnected because they stopped reading while too much was queued for them.
    uint64_t send_queue_cutoffs = 0;
    // Peers that came back with a new incarnation after being declared down.
    uint64_t rejoins = 0;
    // Hellos this node refused (stale incarnation, duplicate id, cluster size, second
    // connection).
    uint64_t hellos_refused = 0;
  };
  virtual Counters counters() const = 0;
};

// Builds the transport chosen in `options.transport` after ValidateTransportOptions().
absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(const Options& options);

// What every backend needs: 1..kMaxNodes peers, node_id in range, connect_timeout >= 0; for
// kTcp and kRdma every peer and a non-empty `listen` must parse with ParseHostPort. Errors
// are InvalidArgument and name the field ("Options.peers[2]: ...").
absl::Status ValidateTransportOptions(const Options& options);

// "a.b.c.d:port" (numeric IPv4) or "name:port" (resolved with getaddrinfo to its first IPv4
// address, once); port 1..65535. Host byte order.
struct HostPort {
  uint32_t ipv4 = 0;
  uint16_t port = 0;
};
absl::StatusOr<HostPort> ParseHostPort(absl::string_view s);

}  // namespace dsm
