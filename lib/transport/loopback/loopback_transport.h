// LoopbackTransport: the nodes of one process that name the same Options::loopback_hub talk
// through an in-process hub. Every message is really encoded to bytes (wire.h), carried as
// bytes to the destination's EventLoop through Post(), and decoded and validated there, so
// the codec is exercised exactly as over TCP.
//
//   Options o; o.transport = TransportKind::kLoopback; o.loopback_hub = "test-1";
//   o.peers = {"a", "b", "c"}; o.node_id = 1;   // only the number of peers matters
//   auto t = CreateLoopbackTransport(o);
//
// Peer state per node: waiting -> up -> down, or waiting -> down (connect_timeout); down is
// final for this transport instance. A node is up for another once both are registered in
// the hub; Shutdown() or destruction unregisters and every other registered node sees
// OnPeerDown. Messages to a waiting peer are queued until it comes up (dropped if it is
// declared down); messages to a down peer are dropped.
//
// Threading: as Transport (transport.h). Start/Send/Disconnect/Shutdown and the destructor run
// on the owning loop's thread (or after that thread stopped polling); every Handler call is made
// from a task Posted to the owning loop, never re-entrantly. counters() from any thread.
#pragma once

#include <atomic>
#include <deque>
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
  void Disconnect(NodeId peer, const absl::Status& why) override;
  void Shutdown(absl::Time deadline) override;
  Counters counters() const override;

 private:
  friend struct loopback_internal::Endpoint;
  enum class PeerState { kWaiting, kUp, kDown };
  struct Peer {
    PeerState state = PeerState::kWaiting;
    std::deque<std::vector<uint8_t>> pending;  // encoded frames queued while waiting
  };

  // Called on the loop thread from tasks the hub Posted.
  void OnUp(NodeId peer);
  void OnDown(NodeId peer, const absl::Status& why);
  void OnBytes(NodeId from, std::vector<uint8_t>&& frame);
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
  std::vector<Peer> peers_;
  EventLoop::TimerId connect_timer_ = 0;
  bool started_ = false;
  bool shut_down_ = false;

  std::atomic<uint64_t> messages_sent_{0}, messages_received_{0}, bytes_sent_{0},
      bytes_received_{0}, bad_messages_{0};
};

}  // namespace dsm
