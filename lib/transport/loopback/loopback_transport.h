// LoopbackTransport: the nodes of one process that name the same Options::loopback_hub talk
// through an in-process hub. Every message is really encoded to bytes (wire.h), carried as
// bytes to the destination's EventLoop through Post(), and decoded and validated there, so
// the codec is exercised exactly as over TCP.
//
//   Options o; o.transport = TransportKind::kLoopback; o.loopback_hub = "test-1";
//   o.peers = {"a", "b", "c"}; o.node_id = 1;   // only the number of peers matters
//   auto t = CreateLoopbackTransport(o);
//
// Peer state lives in a PeerTable (peer_table.h): connecting -> up -> down, or connecting ->
// down (connect_timeout); down is final for that incarnation. A node is up for another once
// both are registered in the hub (each registration is one incarnation); Shutdown() or
// destruction unregisters and every other registered node sees OnPeerDown. A new transport
// with the same id registered later is a newer incarnation and comes up again (a rejoin); one
// registered while the id still is refuses to start (duplicate node id), as does a peers list
// of another length than the hub's (cluster size mismatch). Messages to a connecting peer are
// queued until it comes up (dropped if it is declared down); messages to a down peer are
// dropped.
//
// Threading: as Transport (transport.h). Start/Send/Disconnect/Shutdown and the destructor run
// on the owning loop's thread (or after that thread stopped polling); every Handler call is made
// from a task Posted to the owning loop, never re-entrantly. counters() from any thread.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "transport/transport.h"

namespace dsm {

absl::StatusOr<std::unique_ptr<Transport>> CreateLoopbackTransport(const Options& options);

namespace loopback_internal {
class Hub;
struct Endpoint;
}  // namespace loopback_internal

class LoopbackTransport final : public Transport {
 public:
  explicit LoopbackTransport(const Options& options);
  ~LoopbackTransport() override;

  absl::Status Start(EventLoop* loop, Handler* handler) override;
  void Send(Message&& m) override;
  bool IsUp(NodeId peer) const override;
  Incarnation incarnation() const override { return table_.self_incarnation(); }
  void Disconnect(NodeId peer, const absl::Status& why) override;
  void Shutdown(absl::Time deadline) override;
  Counters counters() const override;

 private:
  friend struct loopback_internal::Endpoint;
  // Called on the loop thread from tasks the hub Posted.
  void OnUp(NodeId peer, Incarnation incarnation);
  // `peer` incarnation `incarnation` is gone for us (ignored if we know a newer one).
  void OnDown(NodeId peer, Incarnation incarnation, const absl::Status& why);
  // `peer` refused our incarnation.
  void OnRefusedBy(NodeId peer, Refusal refusal, uint64_t detail);
  void OnBytes(NodeId from, Incarnation incarnation, std::vector<uint8_t>&& frame);
  // Posts `fn(t)` to `peer`'s loop if it is registered.
  void PostToPeer(NodeId peer, std::function<void(LoopbackTransport*)> fn);
  // Moves one encoded frame to `dst`'s loop (the peer must be up, or be this node).
  void Deliver(NodeId dst, std::vector<uint8_t>&& frame);
  // Declares `peer` down (once): drops its queue, optionally tells it, and calls OnPeerDown
  // now (from loop tasks) or through a Posted task (from the API).
  void MarkDown(NodeId peer, const absl::Status& why, bool tell_peer, bool notify_now);
  void OnConnectTimeout();

  const Options options_;
  const size_t cluster_size_;
  const NodeId self_;
  EventLoop* loop_ = nullptr;
  Handler* handler_ = nullptr;
  std::shared_ptr<loopback_internal::Hub> hub_;
  std::shared_ptr<loopback_internal::Endpoint> endpoint_;
  PeerTable table_;
  EventLoop::TimerId connect_timer_ = 0;
  bool started_ = false;
  bool shut_down_ = false;

  std::atomic<uint64_t> messages_sent_{0}, messages_received_{0}, bytes_sent_{0},
      bytes_received_{0}, bad_messages_{0}, rejoins_{0}, hellos_refused_{0};
};

}  // namespace dsm
