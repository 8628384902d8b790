// PeerLeases: this node's lease with each peer, as pure bookkeeping (times are passed in; no
// clock reads, no I/O). The engine feeds it every message sent and received and asks it, on
// each tick, to which peers a heartbeat is due and which leases have expired. The timeout
// hierarchy it applies is LivenessTimes (common/timeouts.h).
//
// Thread safety: not thread-safe; one engine thread owns it.
//
// Invariants (per peer):
//  - A peer is tracked from OnPeerUp until OnPeerDown; an untracked peer gets no heartbeat,
//    never expires, and is not renewed by a message.
//  - received(peer) is the time of the last message from the peer, whatever its type: any
//    message proves it was alive when it sent it, so any message renews the lease.
//  - The lease of a tracked peer has expired once now - received(peer) >= fence; it stays
//    expired until OnPeerDown (the engine declares the peer down at once).
//  - ReassignAt(peer) = received(peer) + reassign: the earliest time the home side may treat
//    the peer's copies as gone. It is frozen by OnPeerDown (no message counts afterwards).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "common/timeouts.h"
#include "protocol/message.h"

namespace dsm::coherence {

class PeerLeases {
 public:
  PeerLeases(NodeId self, const LivenessTimes& times);

  void OnPeerUp(NodeId peer, absl::Time now);
  void OnPeerDown(NodeId peer);
  // Every message sent to / received from a peer (on the fault path: a store each).
  void OnSent(NodeId peer, absl::Time now) {
    if (peer < kMaxNodes) sent_[peer] = now;
  }
  void OnReceived(NodeId peer, absl::Time now) {
    if (peer < kMaxNodes && (tracked_ & (uint64_t{1} << peer)) != 0) received_[peer] = now;
  }

  // Whether the lease of a tracked `peer` had expired at `now` (a message arriving after a
  // stall of this node is judged by this before it renews anything).
  bool Expired(NodeId peer, absl::Time now) const;

  // Appends the tracked peers that need a heartbeat (nothing sent to them for `heartbeat`)
  // and those whose lease has expired (nothing heard for `fence`), each in id order.
  void Check(absl::Time now, std::vector<NodeId>* heartbeat_due,
             std::vector<NodeId>* expired) const;

  // The earliest time the copies `peer` holds may be treated as gone (see above).
  absl::Time ReassignAt(NodeId peer) const;

  const LivenessTimes& times() const { return times_; }

 private:
  NodeId self_;
  LivenessTimes times_;
  uint64_t tracked_ = 0;
  std::array<absl::Time, kMaxNodes> sent_{};
  std::array<absl::Time, kMaxNodes> received_{};
};

}  // namespace dsm::coherence
