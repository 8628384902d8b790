// Helpers shared by the lock tests: a port that records messages, and message builders.
#pragma once

#include <deque>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "lock/barrier.h"
#include "lock/lock_client.h"
#include "lock/lock_table.h"
#include "protocol/lock_fields.h"

namespace dsm::lock::testing {

class RecordingPort : public LockTablePort, public LockClientPort, public BarrierPort {
 public:
  virtual ~RecordingPort() = default;
  void Send(Message&& m) override { sent.push_back(std::move(m)); }
  std::vector<Message> Take() {
    std::vector<Message> out(std::make_move_iterator(sent.begin()),
                             std::make_move_iterator(sent.end()));
    sent.clear();
    return out;
  }
  std::deque<Message> sent;
};

inline Message AcquireMsg(NodeId node, uint64_t id, uint64_t offset, uint64_t len,
                          LockMode mode, bool try_lock = false, RegionId region = 1) {
  Message m;
  m.type = MsgType::kLockAcquire;
  m.src = node;
  m.region = region;
  m.page = offset;
  m.req_id = id;
  m.arg = PackAcquireArg(len, mode, try_lock);
  return m;
}

inline Message SimpleMsg(MsgType type, NodeId node, uint64_t id, RegionId region = 1) {
  Message m;
  m.type = type;
  m.src = node;
  m.region = region;
  m.req_id = id;
  return m;
}

}  // namespace dsm::lock::testing

namespace dsm::lock::testing {

// In-flight messages between simulated nodes: FIFO per (src, dst) pair, any order across
// pairs (like one TCP connection per pair).
class Network {
 public:
  void Push(Message m) { queues_[{m.src, m.dst}].push_back(std::move(m)); }
  bool empty() const {
    for (const auto& [k, q] : queues_) {
      if (!q.empty()) return false;
    }
    return true;
  }
  // Pops the head of a non-empty queue chosen by `pick` (an index among non-empty queues).
  template <typename Pick>
  bool PopAny(Pick&& pick, Message* out) {
    std::vector<std::deque<Message>*> live;
    for (auto& [k, q] : queues_) {
      if (!q.empty()) live.push_back(&q);
    }
    if (live.empty()) return false;
    auto* q = live[pick(live.size())];
    *out = std::move(q->front());
    q->pop_front();
    return true;
  }
  // Pops the head of the (src, dst) queue; nullopt if it is empty.
  std::optional<Message> PopFrom(NodeId src, NodeId dst) {
    auto it = queues_.find({src, dst});
    if (it == queues_.end() || it->second.empty()) return std::nullopt;
    Message m = std::move(it->second.front());
    it->second.pop_front();
    return m;
  }
  // Keeps a prefix of each queue from `node`, of a length chosen by `pick(k)` in 0..k.
  template <typename Pick>
  void TruncateFrom(NodeId node, Pick&& pick) {
    for (auto& [k, q] : queues_) {
      if (k.first == node) q.resize(pick(q.size()));
    }
  }
  // Drops every message from or to `node`.
  void Sever(NodeId node) {
    for (auto& [k, q] : queues_) {
      if (k.first == node || k.second == node) q.clear();
    }
  }

 private:
  std::map<std::pair<NodeId, NodeId>, std::deque<Message>> queues_;
};

// A port that stamps the sender and queues into a Network.
class NetPort : public LockTablePort, public LockClientPort, public BarrierPort {
 public:
  NetPort(Network* net, NodeId self) : net_(net), self_(self) {}
  virtual ~NetPort() = default;
  void Send(Message&& m) override {
    m.src = self_;
    net_->Push(std::move(m));
  }

 private:
  Network* net_;
  NodeId self_;
};

}  // namespace dsm::lock::testing
