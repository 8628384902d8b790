// Cluster barriers: BarrierArbiter (at the group's arbiter, the lowest member id) and
// BarrierClient (at every member). A group is (name, member mask); "every node" is the mask of
// all node ids. Pure logic: no I/O, no clock; effects through BarrierPort.
//
// Protocol. A member entering the group's barrier sends kBarrierEnter(generation g); the
// arbiter replies kBarrierReply(kReleased, g) to every member once all of them have entered g,
// and moves the group to g+1. Each member counts its own attempts per group, so both sides
// agree on g: every attempt consumes one generation, whether it succeeded or failed.
//  - A member whose deadline passes sends kBarrierCancel(g) and waits (at most
//    Config::cancel_grace) for the arbiter's answer. If g is still open at the arbiter, g fails
//    for everyone, the canceller included (kAborted, with the mask of the members that had
//    entered, so each can name those that had not), and the group moves to g+1; an enter for
//    an abandoned generation (< current) is answered kAborted without a mask. If g had
//    completed already, the cancel is ignored: the kReleased on its way answers the canceller
//    (OK: every member had entered). The canceller reports kDeadlineExceeded naming the
//    members that had not entered, or, when no answer comes within the grace, saying so.
//  - A member down (the arbiter's OnNodeDown): every waiter of every group containing it gets
//    kNodeDown, and the group is broken for good (nodes do not come back): later enters fail
//    at once. The arbiter down: BarrierClient::OnPeerDown fails the waiters locally; a member
//    down is also failed locally, so no barrier waits on a dead node even if a reply is lost.
//
// Thread safety: not thread-safe; the node's engine thread owns both classes. Send() must not
// re-enter the sender (queue, deliver after the call), and messages to self are delivered
// locally by the node layer.
//
// Invariants (arbiter, per group):
//  - arrived is a subset of members; a generation completes exactly when arrived == members,
//    and then every arrived member gets exactly one kReleased for it.
//  - No member leaves generation g with OK before every member has entered g.
//  - Once broken (a member down), the group never releases again.
// Invariants (client): at most one outstanding barrier per group per node (a cancelling one
// counts); each Enter's callback runs exactly once; a cancelling barrier's deadline is its
// grace's end.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "protocol/lock_fields.h"
#include "protocol/message.h"

namespace dsm::lock {

class BarrierPort {
 public:
  virtual void Send(Message&& m) = 0;

 protected:
  ~BarrierPort() = default;
};

// The member mask for `members` (empty = every node of the cluster). Errors: a node id out of
// range, `self` not a member, more than 64 nodes.
absl::StatusOr<uint64_t> MemberMask(const std::vector<NodeId>& members, size_t cluster_size,
                                    NodeId self);
// The arbiter of a group: its lowest member id. `mask` must be non-zero.
NodeId BarrierArbiterOf(uint64_t mask);
// "node 3" or "nodes 0, 2, 5": the ids in `mask`, for error messages.
std::string NodeList(uint64_t mask);

class BarrierArbiter {
 public:
  struct Config {
    NodeId self = 0;
  };
  BarrierArbiter(Config config, BarrierPort* port);

  // kBarrierEnter, kBarrierCancel (validated by the decoder). Other types are ignored.
  void OnMessage(const Message& m);
  void OnNodeDown(NodeId node);
  // Shutdown: every waiter gets kShuttingDown; state is forgotten.
  void FailAll();

  size_t num_waiting() const;
  // The generation the group is collecting now (0 for an unknown group).
  uint64_t generation(const std::string& name, uint64_t mask) const;

 private:
  struct Group {
    uint64_t generation = 0;
    uint64_t arrived = 0;
    std::vector<std::pair<NodeId, uint64_t>> waiters;  // (node, req_id) in arrival order
    int broken_by = -1;                                 // a down member, or -1
  };
  using Key = std::pair<std::string, uint64_t>;

  void Reply(NodeId to, uint64_t req_id, uint64_t generation, BarrierReplyCode code,
             NodeId down = 0, uint64_t entered = 0);
  // Answers every waiter of the open generation (`entered`: kAborted's mask) and opens the next.
  void FinishGeneration(Group& g, BarrierReplyCode code, NodeId down, uint64_t entered = 0);

  const Config config_;
  BarrierPort* const port_;
  absl::flat_hash_map<Key, Group> groups_;
  uint64_t down_mask_ = 0;
};

class BarrierClient {
 public:
  struct Config {
    NodeId self = 0;
    // How long a member whose deadline passed waits for the arbiter to say who was missing.
    absl::Duration cancel_grace = absl::Seconds(1);
  };
  using Callback = std::function<void(absl::Status)>;
  BarrierClient(Config config, BarrierPort* port);

  // Enters barrier (name, mask); `done` runs exactly once (before Enter returns for errors
  // known at once: bad name, already entered, a member known down, deadline already passed).
  // Returns the request id.
  uint64_t Enter(const std::string& name, uint64_t mask, absl::Time deadline, absl::Time now,
                 Callback done);

  // kBarrierReply. Other types are ignored.
  void OnMessage(const Message& m);
  // Barriers whose arbiter or any member is `peer` fail with kUnavailable.
  void OnPeerDown(NodeId peer);
  void OnTick(absl::Time now);
  absl::Time NextDeadline() const;
  void FailAll(const absl::Status& why);

  size_t num_pending() const { return pending_.size(); }
  // The arbiter pending barrier request `req_id` waits at; nullopt if it is not pending.
  std::optional<NodeId> arbiter_of(uint64_t req_id) const {
    auto it = pending_.find(req_id);
    if (it == pending_.end()) return std::nullopt;
    return it->second.arbiter;
  }

 private:
  using Key = std::pair<std::string, uint64_t>;
  struct Pending {
    Key key;
    uint64_t generation;
    NodeId arbiter;
    absl::Time deadline;  // the caller's, then (cancelling) the grace's end
    Callback done;
    bool cancelling = false;  // the deadline passed and kBarrierCancel went out
  };

  void SendGroup(MsgType type, const Pending& p, uint64_t req_id);
  void Finish(uint64_t req_id, absl::Status status);

  const Config config_;
  BarrierPort* const port_;
  uint64_t next_id_ = 1;
  absl::flat_hash_map<Key, uint64_t> next_generation_;
  absl::flat_hash_map<Key, uint64_t> active_;  // group -> req_id of its pending barrier
  absl::flat_hash_map<uint64_t, Pending> pending_;
  std::set<std::pair<absl::Time, uint64_t>> deadlines_;
  uint64_t down_mask_ = 0;
};

}  // namespace dsm::lock
