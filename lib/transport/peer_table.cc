#include "transport/peer_table.h"

#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace dsm {

Incarnation NewIncarnation() {
  static std::random_device rd;
  const uint64_t micros = static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
  const uint64_t low = rd() & 0xfff;
  const Incarnation i = (micros << 12) | low;
  return i == 0 ? 1 : i;
}

const char* PeerStateName(PeerState s) {
  switch (s) {
    case PeerState::kConnecting: return "connecting";
    case PeerState::kUp: return "up";
    case PeerState::kDown: return "down";
    case PeerState::kLeft: return "left";
  }
  return "?";
}

const char* RefusalName(Refusal r) {
  switch (r) {
    case Refusal::kNone: return "none";
    case Refusal::kClusterSize: return "cluster size mismatch";
    case Refusal::kDuplicateId: return "duplicate node id";
    case Refusal::kStaleIncarnation: return "stale incarnation";
    case Refusal::kSecondConnection: return "second connection";
  }
  return "unknown refusal";
}

absl::Status RefusalStatus(Refusal r, NodeId refuser, NodeId self, Incarnation self_incarnation,
                           uint64_t detail, size_t cluster_size) {
  switch (r) {
    case Refusal::kNone:
      return absl::OkStatus();
    case Refusal::kClusterSize:
      return absl::FailedPreconditionError(absl::StrCat(
          "cluster size mismatch: node ", refuser, " has ", detail,
          " nodes in its peer list, this node (", self, ") has ", cluster_size));
    case Refusal::kDuplicateId:
      return absl::AlreadyExistsError(absl::StrCat(
          "duplicate node id: node ", refuser, " already has node ", self,
          " up with incarnation ", detail, "; this process (incarnation ", self_incarnation,
          ") claims the same id"));
    case Refusal::kStaleIncarnation:
      return absl::FailedPreconditionError(absl::StrCat(
          "stale incarnation: node ", refuser, " declared node ", self, " incarnation ", detail,
          " down; this incarnation (", self_incarnation,
          ") is not newer, so it may not come back (a restarted process may)"));
    case Refusal::kSecondConnection:
      return absl::AlreadyExistsError(absl::StrCat("second connection: node ", refuser,
                                                   " already has node ", self, " incarnation ",
                                                   self_incarnation, " up"));
  }
  return absl::InvalidArgumentError(absl::StrCat("node ", refuser, " refused node ", self,
                                                 " with unknown reason ", static_cast<int>(r)));
}

PeerTable::PeerTable(NodeId self, size_t cluster_size, Incarnation self_incarnation,
                     absl::Time connect_deadline)
    : self_(self), self_incarnation_(self_incarnation), peers_(cluster_size) {
  for (Peer& p : peers_) p.connect_deadline = connect_deadline;
  peers_[self].state = PeerState::kUp;
  peers_[self].incarnation = self_incarnation;
  peers_[self].connect_deadline = absl::InfiniteFuture();
}

void PeerTable::SetConnectDeadline(absl::Time deadline) {
  for (Peer& p : peers_) {
    if (p.state == PeerState::kConnecting) p.connect_deadline = deadline;
  }
}

PeerTable::Verdict PeerTable::CheckJoin(NodeId id, Incarnation incarnation) const {
  Verdict v;
  const Peer& p = peers_[id];
  switch (p.state) {
    case PeerState::kConnecting:
      return v;
    case PeerState::kUp:
      v.detail = p.incarnation;
      if (incarnation == p.incarnation) {
        v.refusal = Refusal::kSecondConnection;
        v.why = absl::AlreadyExistsError(absl::StrCat("second connection from node ", id,
                                                      " incarnation ", incarnation,
                                                      ", which is already up"));
      } else {
        v.refusal = Refusal::kDuplicateId;
        v.why = absl::AlreadyExistsError(absl::StrCat(
            "duplicate node id: node ", id, " is up with incarnation ", p.incarnation,
            " and another process claims that id with incarnation ", incarnation));
      }
      return v;
    case PeerState::kDown:
    case PeerState::kLeft:
      if (incarnation > p.incarnation) return v;
      v.refusal = Refusal::kStaleIncarnation;
      v.detail = p.incarnation;
      v.why = absl::FailedPreconditionError(absl::StrCat(
          "stale incarnation: node ", id, " incarnation ", incarnation,
          " wants to connect but incarnation ", p.incarnation,
          p.state == PeerState::kDown ? " was declared down" : " left",
          "; only a newer incarnation may come back"));
      return v;
  }
  return v;
}

PeerTable::UpResult PeerTable::Up(NodeId id, Incarnation incarnation) {
  Peer& p = peers_[id];
  UpResult r;
  r.rejoin = p.state == PeerState::kDown || p.state == PeerState::kLeft;
  r.previous = p.incarnation;
  r.owed_down = std::move(p.owed_down);
  p.owed_down.reset();
  r.pending.swap(p.pending);
  p.state = PeerState::kUp;
  p.incarnation = incarnation;
  p.connect_deadline = absl::InfiniteFuture();
  p.last_refusal = absl::OkStatus();
  ++p.counters.ups;
  if (r.rejoin) ++p.counters.rejoins;
  return r;
}

bool PeerTable::Down(NodeId id, absl::Status why) {
  Peer& p = peers_[id];
  if (id == self_ || p.state == PeerState::kDown || p.state == PeerState::kLeft) return false;
  p.state = PeerState::kDown;
  p.pending.clear();
  p.connect_deadline = absl::InfiniteFuture();
  p.owed_down = std::move(why);
  ++p.counters.downs;
  return true;
}

bool PeerTable::Leave(NodeId id, absl::Status why) {
  Peer& p = peers_[id];
  if (id == self_ || p.state != PeerState::kUp) return false;
  p.state = PeerState::kLeft;
  p.owed_down = std::move(why);
  return true;
}

std::optional<absl::Status> PeerTable::TakeDownReport(NodeId id) {
  std::optional<absl::Status> r = std::move(peers_[id].owed_down);
  peers_[id].owed_down.reset();
  return r;
}

bool PeerTable::Route(Message& m) {
  Peer& p = peers_[m.dst];
  switch (p.state) {
    case PeerState::kUp:
      return true;
    case PeerState::kConnecting:
      ++p.counters.queued;
      p.pending.push_back(std::move(m));
      return false;
    case PeerState::kDown:
    case PeerState::kLeft:
      ++p.counters.dropped;
      return false;
  }
  return false;
}

std::vector<NodeId> PeerTable::ExpiredConnecting(absl::Time now) const {
  std::vector<NodeId> out;
  for (NodeId j = 0; j < peers_.size(); ++j) {
    if (peers_[j].state == PeerState::kConnecting && peers_[j].connect_deadline <= now) {
      out.push_back(j);
    }
  }
  return out;
}

PeerTable::Counters PeerTable::Totals() const {
  Counters t;
  for (const Peer& p : peers_) {
    t.ups += p.counters.ups;
    t.downs += p.counters.downs;
    t.rejoins += p.counters.rejoins;
    t.refused += p.counters.refused;
    t.queued += p.counters.queued;
    t.dropped += p.counters.dropped;
  }
  return t;
}

void PeerTable::ClearPending() {
  for (Peer& p : peers_) p.pending.clear();
}

}  // namespace dsm
