// Helpers shared by the lock tests: a port that records messages, and message builders.
#pragma once

#include <deque>
#include <vector>

#include "lock/barrier.h"
#include "lock/lock_client.h"
#include "lock/lock_table.h"
#include "lock/protocol.h"

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
