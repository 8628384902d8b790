#include "coherence/liveness.h"

#include <bit>

#include "common/node_set.h"

namespace dsm::coherence {

PeerLeases::PeerLeases(NodeId self, const LivenessTimes& times) : self_(self), times_(times) {
  sent_.fill(absl::InfinitePast());
  received_.fill(absl::InfinitePast());
}

void PeerLeases::OnPeerUp(NodeId peer, absl::Time now) {
  if (peer >= kMaxNodes || peer == self_) return;
  tracked_ |= NodeBit(peer);
  // The connection itself is the first proof of life; nothing was sent on it yet.
  received_[peer] = now;
  sent_[peer] = absl::InfinitePast();
}

void PeerLeases::OnPeerDown(NodeId peer) { tracked_ &= ~NodeBit(peer); }

bool PeerLeases::Expired(NodeId peer, absl::Time now) const {
  return InNodeSet(tracked_, peer) && now - received_[peer] >= times_.fence;
}

void PeerLeases::Check(absl::Time now, std::vector<NodeId>* heartbeat_due,
                       std::vector<NodeId>* expired) const {
  for (uint64_t m = tracked_; m != 0; m &= m - 1) {
    const NodeId peer = static_cast<NodeId>(std::countr_zero(m));
    if (now - received_[peer] >= times_.fence) {
      expired->push_back(peer);
    } else if (now - sent_[peer] >= times_.heartbeat) {
      heartbeat_due->push_back(peer);
    }
  }
}

absl::Time PeerLeases::ReassignAt(NodeId peer) const {
  if (peer >= kMaxNodes || received_[peer] == absl::InfinitePast()) return absl::InfinitePast();
  return received_[peer] + times_.reassign;
}

}  // namespace dsm::coherence
