// FaultInjectionTransport: a Transport decorator for multi-node tests. Wraps any backend and,
// per peer, drops outgoing or incoming messages, delays outgoing ones (per-pair order kept),
// flips a payload byte of outgoing messages, or makes the next incoming message act as a
// corrupt frame (the connection is closed and the peer reported down, as the real transports
// do on a validation error).
//
//   auto inner = CreateTransport(options);
//   auto t = std::make_unique<FaultInjectionTransport>(std::move(*inner));
//   t->SetDropTo(2, true);   // node 2 stops hearing from us (it will time out on us)
//
// Threading: the Transport methods as Transport (loop thread); the fault controls (Set*,
// CorruptNextTo, FailNextFrom) from any thread.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "transport/transport.h"

namespace dsm {

class FaultInjectionTransport final : public Transport, private Transport::Handler {
 public:
  explicit FaultInjectionTransport(std::unique_ptr<Transport> inner);
  ~FaultInjectionTransport() override;

  // Fault controls. Any thread.
  void SetDropTo(NodeId peer, bool drop);
  void SetDropFrom(NodeId peer, bool drop);
  // Outgoing messages to `peer` are held back by `d` (zero: no delay; order is kept either way).
  void SetDelayTo(NodeId peer, absl::Duration d);
  // The next `n` outgoing messages to `peer` that carry a payload get one byte flipped.
  void CorruptNextTo(NodeId peer, int n);
  // The next message received from `peer` is treated as a corrupt frame.
  void FailNextFrom(NodeId peer);
  void ClearFaults();

  absl::Status Start(EventLoop* loop, Transport::Handler* handler) override;
  void Send(Message&& m) override;
  bool IsUp(NodeId peer) const override { return inner_->IsUp(peer); }
  Incarnation incarnation() const override { return inner_->incarnation(); }
  void Disconnect(NodeId peer, const absl::Status& why) override {
    inner_->Disconnect(peer, why);
  }
  void ExpectClose(NodeId peer) override { inner_->ExpectClose(peer); }
  void Shutdown(absl::Time deadline) override;
  // The inner counters, plus injected corrupt frames in bad_messages and dropped messages
  // subtracted from nothing (they were never sent).
  Counters counters() const override;
  uint64_t dropped() const { return dropped_.load(); }
  Transport& inner() { return *inner_; }

 private:
  struct Faults {
    bool drop_to = false, drop_from = false, fail_next_from = false;
    absl::Duration delay = absl::ZeroDuration();
    int corrupt_next = 0;
  };
  // Handler (from the inner transport).
  void OnMessage(Message&& m) override;
  void OnPeerUp(NodeId peer, Incarnation incarnation) override {
    handler_->OnPeerUp(peer, incarnation);
  }
  void OnPeerDown(NodeId peer, const absl::Status& why) override {
    handler_->OnPeerDown(peer, why);
  }
  Faults Get(NodeId peer);
  void ReleaseDue(NodeId peer);

  std::unique_ptr<Transport> inner_;
  EventLoop* loop_ = nullptr;
  Transport::Handler* handler_ = nullptr;
  mutable absl::Mutex mu_;
  std::vector<Faults> faults_ ABSL_GUARDED_BY(mu_);  // by node id, grown on demand
  // Loop thread only: messages held back per peer, with their release time.
  struct Held {
    std::deque<std::pair<absl::Time, Message>> q;
    EventLoop::TimerId timer = 0;
  };
  std::vector<Held> held_;
  std::atomic<uint64_t> dropped_{0}, injected_bad_{0};
};

}  // namespace dsm
