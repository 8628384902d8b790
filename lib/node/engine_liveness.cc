// The engine's liveness: heartbeats, leases, fencing and the delayed reassignment of a down
// peer's copies. The bookkeeping is coherence::PeerLeases; the hierarchy of timeouts it
// applies, and why it is ordered so, is LivenessTimes (common/timeouts.h).
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/node_set.h"
#include "node/engine.h"

namespace dsm {

void Engine::CheckLeases(absl::Time now) {
  std::vector<NodeId> heartbeat_due, expired;
  leases_.Check(now, &heartbeat_due, &expired);
  for (NodeId peer : heartbeat_due) {
    Message beat;
    beat.type = MsgType::kHeartbeat;
    beat.dst = peer;
    SendMessage(std::move(beat));
  }
  for (NodeId peer : expired) OnLeaseExpired(peer);
}

void Engine::OnLeaseExpired(NodeId peer) {
  if (InNodeSet(down_mask_, peer)) return;
  const absl::Status why = absl::UnavailableError(absl::StrCat(
      "lease expired: nothing heard from node ", peer, " for ",
      absl::FormatDuration(leases_.times().fence), "; this node fenced itself for it"));
  OnPeerDown(peer, why);
  // Closed after the current event: this may run inside the transport's receive path (a
  // message judged by an expired lease), where the connection must not go away under it.
  loop_->Post([this, peer, why] { transport_->Disconnect(peer, why); });
}

// A peer that left in order gave back every copy it held and, as a home, no page of it can
// change any more: copies of its pages stay readable and nothing waits. A failed peer may
// still be running: this node fences itself for it, and its copies are reassigned only once
// its own lease with this node has run out.
void Engine::ForgetCopies(NodeId peer, absl::Time now) {
  leases_.OnPeerDown(peer);
  if (InNodeSet(left_mask_, peer)) {
    regions_.ForEach([peer, now](MappedRegion& r) {
      r.cache().OnPeerDown(peer);
      if (r.directory() != nullptr) r.directory()->OnPeerDown(peer, now);
    });
    return;
  }
  regions_.ForEach([peer](MappedRegion& r) { r.cache().FenceHome(peer); });
  SilenceThenReassign(peer, now);
}

// The peer is down here, but until ReassignAt it may still be using copies of pages homed here
// (its own lease with this node has not run out): stop serving it now, forget its copies then.
void Engine::SilenceThenReassign(NodeId peer, absl::Time now) {
  silenced_mask_ |= NodeBit(peer);
  regions_.ForEach([peer, now](MappedRegion& r) {
    if (r.directory() != nullptr) r.directory()->OnPeerSilenced(peer, now);
  });
  const absl::Time at = leases_.ReassignAt(peer);
  if (at <= now) return Reassign(peer, /*now_or_never=*/true);
  DSM_LOG(INFO) << "copies held by node " << peer << " are reassigned in "
                << absl::FormatDuration(at - now) << " (once its lease has run out there)";
  After(at - now, [this, peer] { Reassign(peer, /*now_or_never=*/false); });
}

void Engine::Reassign(NodeId peer, bool now_or_never) {
  if (!InNodeSet(silenced_mask_, peer)) return;
  const absl::Time now = absl::Now();
  // A timer from an earlier down of this peer (before a rejoin and a new down) must not cut
  // the newer wait short: before ReassignAt, wait again.
  if (!now_or_never && now < leases_.ReassignAt(peer)) {
    After(leases_.ReassignAt(peer) - now, [this, peer] { Reassign(peer, false); });
    return;
  }
  silenced_mask_ &= ~NodeBit(peer);
  regions_.ForEach([peer, now](MappedRegion& r) {
    if (r.directory() != nullptr) r.directory()->OnPeerDown(peer, now);
  });
}

absl::StatusOr<uint64_t> Engine::PeersDeclaredDown() {
  return RunOnEngine<uint64_t>([this]() -> absl::StatusOr<uint64_t> { return down_mask_; });
}

}  // namespace dsm
