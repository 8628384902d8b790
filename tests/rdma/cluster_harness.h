// A few transports in one process, each with its own EventLoop, all driven from the test
// thread (Pump polls every loop in turn). Used with the fake verbs and with a real device.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "transport/event_loop.h"
#include "protocol/message.h"
#include "transport/transport.h"

namespace dsm::rdma::testing {

// `n` distinct free TCP ports on 127.0.0.1 as "127.0.0.1:port".
inline std::vector<std::string> FreeLoopbackAddresses(size_t n) {
  std::vector<int> fds;
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    out.push_back("127.0.0.1:" + std::to_string(ntohs(a.sin_port)));
    fds.push_back(fd);
  }
  for (int fd : fds) close(fd);
  return out;
}

struct Recorder final : Transport::Handler {
  void OnMessage(Message&& m) override { messages.push_back(std::move(m)); }
  void OnPeerUp(NodeId peer, Incarnation incarnation) override {
    up[peer]++;
    incarnations[peer] = incarnation;
  }
  void OnPeerDown(NodeId peer, const absl::Status& why) override {
    down_count[peer]++;
    down[peer] = why;
  }
  std::vector<Message> messages;
  std::map<NodeId, int> up;
  std::map<NodeId, Incarnation> incarnations;  // reported with the last OnPeerUp
  std::map<NodeId, int> down_count;
  std::map<NodeId, absl::Status> down;
};

struct TestNode {
  std::unique_ptr<EventLoop> loop;
  std::unique_ptr<Transport> transport;
  Recorder rec;
  bool polled = true;  // false: the test holds this node's engine thread still
  ~TestNode() { transport.reset(); }
};

// Polls every node whose `polled` is set until `pred` holds or `timeout` passes.
inline bool PumpUntil(std::vector<std::unique_ptr<TestNode>>& nodes,
                      const std::function<bool()>& pred,
                      absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time until = absl::Now() + timeout;
  while (!pred()) {
    if (absl::Now() > until) return false;
    for (auto& n : nodes) {
      if (n && n->polled && n->transport) n->loop->Poll(absl::ZeroDuration(), absl::ZeroDuration());
    }
  }
  return true;
}

inline void Pump(std::vector<std::unique_ptr<TestNode>>& nodes, absl::Duration d) {
  PumpUntil(nodes, [] { return false; }, d);
}

// A message with a recognisable payload: byte i = (seq + i) % 255 + 1 (never 0: region names
// may not hold NUL).
inline Message TestMessage(NodeId dst, uint64_t seq, size_t payload) {
  Message m;
  // kGetS: no payload; kRegionOpen: 1..255 bytes (inline); kDataRun: whole pages (staged).
  m.type = payload == 0 ? MsgType::kGetS
           : payload < kPageSize ? MsgType::kRegionOpen
                                 : MsgType::kDataRun;
  m.dst = dst;
  m.region = 7;
  m.page = seq;
  m.req_id = seq;
  m.arg = m.type == MsgType::kDataRun ? payload / kPageSize : 0;  // pages asked for = sent
  m.payload.resize(payload);
  for (size_t i = 0; i < payload; ++i) m.payload[i] = static_cast<uint8_t>((seq + i) % 255 + 1);
  return m;
}

inline bool PayloadIntact(const Message& m) {
  for (size_t i = 0; i < m.payload.size(); ++i) {
    if (m.payload[i] != static_cast<uint8_t>((m.req_id + i) % 255 + 1)) return false;
  }
  return true;
}

}  // namespace dsm::rdma::testing
