// Helpers for the transport tests: a node (EventLoop + its own polling thread + a Transport +
// a recording Handler) and a cluster of them in one process, over loopback or TCP on
// 127.0.0.1 (ports chosen at random in 20000..32767, below the ephemeral range, retried when
// a bind fails).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/fault_injection_transport.h"
#include "transport/transport.h"

namespace dsm::testing {

// Records what a Transport reports. Called on the node's loop thread; read from the test.
class Recorder final : public Transport::Handler {
 public:
  struct Received {
    MsgType type;
    NodeId src, dst;
    uint64_t region, page, req_id, arg;
    size_t payload_size;
    bool payload_ok;  // every byte == uint8_t(page + index)
  };
  void OnMessage(Message&& m) override;
  void OnPeerUp(NodeId peer, Incarnation incarnation) override;
  void OnPeerDown(NodeId peer, const absl::Status& why) override;

  // Every OnPeerUp / OnPeerDown in order.
  struct PeerEvent {
    bool up;
    NodeId peer;
    Incarnation incarnation;  // up only
    absl::Status why;         // down only
  };
  std::vector<PeerEvent> peer_events() const;
  // The incarnation of `peer` last reported up (0: none).
  Incarnation incarnation(NodeId peer) const;
  // Forgets what was reported about `peer` (a test that waits for the next up or down).
  void ForgetPeer(NodeId peer);

  // Bounded waits: false when `timeout` passed first.
  bool WaitUntil(const std::function<bool(const Recorder&)>& pred,
                 absl::Duration timeout = absl::Seconds(20));
  bool WaitUp(NodeId peer, absl::Duration timeout = absl::Seconds(20));
  bool WaitDown(NodeId peer, absl::Duration timeout = absl::Seconds(20));
  bool WaitMessages(size_t n, absl::Duration timeout = absl::Seconds(60));

  // Snapshots (take the lock).
  std::vector<Received> messages() const;
  size_t message_count() const;
  std::map<NodeId, absl::Status> down() const;
  std::map<NodeId, int> up_count() const;
  int order_violations() const;
  bool reentrant_delivery() const;
  void set_in_send(bool v) { in_send_.store(v); }

  // Messages with page == kUnordered are not order-checked and not stored.
  static constexpr uint64_t kUnordered = ~uint64_t{0};
  void set_store(bool v) { store_.store(v); }

 private:
  mutable absl::Mutex mu_;
  std::vector<Received> messages_ ABSL_GUARDED_BY(mu_);
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<NodeId, uint64_t> next_seq_ ABSL_GUARDED_BY(mu_);
  int order_violations_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<NodeId, int> up_ ABSL_GUARDED_BY(mu_);
  std::map<NodeId, absl::Status> down_ ABSL_GUARDED_BY(mu_);
  std::vector<PeerEvent> events_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> in_send_{false};
  std::atomic<bool> reentrant_{false};
  std::atomic<bool> store_{true};
};

// A payload whose bytes Recorder checks.
std::vector<uint8_t> Pattern(uint64_t page, size_t n);

class TestNode {
 public:
  TestNode() = default;
  ~TestNode();
  // Creates the loop, the transport (wrapped in a FaultInjectionTransport when
  // `inject_faults`) and the polling thread.
  absl::Status Init(const Options& o, bool inject_faults = false);
  FaultInjectionTransport& faults() { return *faults_; }
  // Runs `fn` on the loop thread and waits for it.
  void Run(const std::function<void()>& fn);
  absl::Status Start();
  void Send(Message m);                 // on the loop thread
  void Shutdown(absl::Duration grace);  // on the loop thread
  void Stop();                          // stops the thread (Shutdown first)
  Transport& transport() { return *transport_; }
  Recorder& rec() { return rec_; }
  EventLoop& loop() { return *loop_; }
  Options options;
  // Poll parameters of the loop thread.
  std::atomic<int64_t> spin_us{50};

 private:
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Transport> transport_;
  FaultInjectionTransport* faults_ = nullptr;
  Recorder rec_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

// n nodes with the same peers list; nodes listed in `start` are Init'ed and Started.
class TestCluster {
 public:
  static absl::StatusOr<std::unique_ptr<TestCluster>> Create(
      TransportKind kind, size_t n, std::vector<NodeId> start = {},
      std::chrono::milliseconds connect_timeout = std::chrono::seconds(20),
      bool inject_faults = false,
      std::chrono::milliseconds peer_timeout = std::chrono::seconds(10),
      const std::string& cluster_key = "");
  TestNode& node(NodeId i) { return *nodes_[i]; }
  // Inits and starts node `i` (not in `start`) with the cluster's options.
  absl::Status StartNode(NodeId i);
  // Shuts node `i` down (its peers see it down) and starts a new transport with the same id:
  // a restarted process, with a new incarnation.
  absl::Status RestartNode(NodeId i);
  const std::vector<std::string>& peers() const { return peers_; }
  uint16_t port(NodeId i) const { return ports_[i]; }
  // Every started node sees every other started node up.
  bool WaitAllUp(absl::Duration timeout = absl::Seconds(20));
  ~TestCluster();

 private:
  std::vector<std::unique_ptr<TestNode>> nodes_;
  std::vector<std::string> peers_;
  std::vector<uint16_t> ports_;
  std::vector<NodeId> started_;
  Options base_;  // the options every node gets, but node_id
  bool inject_faults_ = false;
};

Message MakeMsg(MsgType type, NodeId dst, uint64_t page, size_t payload = 0);

}  // namespace dsm::testing
