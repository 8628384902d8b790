// PeerTable: what one node knows about every other node of its cluster, written once for every
// transport (tcp/, loopback/, rdma/). A transport keeps only its raw connect/send/receive and
// asks the table whether a peer may come up, where a message goes, and what to report.
//
//   PeerTable t(/*self=*/1, /*cluster_size=*/3, NewIncarnation(), absl::Now() + timeout);
//   if (auto v = t.CheckJoin(0, hello_incarnation); v.refusal != Refusal::kNone) ... refuse
//   PeerTable::UpResult up = t.Up(0, hello_incarnation);  // report up.owed_down first, then
//   ... send up.pending in order, then Handler::OnPeerUp(0, hello_incarnation)
//   if (t.Down(0, why)) ... report t.TakeDownReport(0) now or from a Posted task
//
// Incarnations: every node start picks a new 64-bit incarnation (NewIncarnation: realtime
// microseconds in the high bits, random low bits), carried in its Hello. A node that restarts
// with the same id therefore comes back with a larger number than the one its peers declared
// down, and is told apart from the old process (which may still run, cut off) and from a second
// process started with the same id.
//
// State machine of one peer (self is always kUp with its own incarnation):
//
//   kConnecting --Up(i)--> kUp(i) --Down--> kDown(i) --Up(j), j > i--> kUp(j) ...
//   kConnecting --Down (connect deadline, refusal)--> kDown(0: never seen)
//   kUp(i) --Leave--> kLeft(i) --Up(j), j > i--> kUp(j)
//
// Invariants:
//  - A peer's incarnation never decreases; kUp(j) after kDown(i) or kLeft(i) requires j > i
//    (CheckJoin says kStaleIncarnation otherwise). kDown(0) accepts any incarnation.
//  - While kUp(i), another incarnation of the same id is refused (kDuplicateId) and the same
//    one again is a second connection (kSecondConnection): one live incarnation per id.
//  - `pending` is non-empty only in kConnecting: messages sent before the peer came up are
//    flushed in order, before anything sent from OnPeerUp; Down drops them, and messages to a
//    kDown or kLeft peer are dropped.
//  - Every incarnation reported up is reported down exactly once (a Down owes one report,
//    TakeDownReport hands it out once), and that report comes before the next incarnation's
//    up: Up() returns a report still owed, to be made first.
//
// Threading: not thread-safe; a transport uses its table on its loop thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "protocol/message.h"

namespace dsm {

// One run of a node process. 0 is never an incarnation (it means "not known").
using Incarnation = uint64_t;

// A fresh incarnation: larger than any this host handed out before (realtime clock,
// microseconds, in the high 52 bits) with 12 random low bits to tell apart two processes
// started in the same microsecond. Never 0.
Incarnation NewIncarnation();

enum class PeerState : uint8_t { kConnecting, kUp, kDown, kLeft };
const char* PeerStateName(PeerState s);

// Why a node refuses another's Hello. Carried in a refusal Hello (wire: `page`), so the
// refused side can say why too.
enum class Refusal : uint8_t {
  kNone = 0,
  kClusterSize = 1,        // the peer lists have different lengths (detail: the refuser's)
  kDuplicateId = 2,        // another incarnation of that id is up (detail: that incarnation)
  kStaleIncarnation = 3,   // that incarnation, or a later one, was declared down or left
  kSecondConnection = 4,   // that same incarnation is already up
};
inline constexpr uint8_t kMaxRefusal = 4;
const char* RefusalName(Refusal r);

// The refusal as a status, worded from the side of the node that was refused: it names the
// refusing node, `self` (the refused id) and both values. `detail` is the refusal Hello's:
// cluster size (kClusterSize) or the incarnation the refuser knows (the others).
absl::Status RefusalStatus(Refusal r, NodeId refuser, NodeId self, Incarnation self_incarnation,
                           uint64_t detail, size_t cluster_size);

class PeerTable {
 public:
  // Per-peer counters (the transport's Counters sum them).
  struct Counters {
    uint64_t ups = 0;          // incarnations that came up (rejoins included)
    uint64_t downs = 0;        // Down() transitions
    uint64_t rejoins = 0;      // ups after a kDown or kLeft
    uint64_t refused = 0;      // Hellos of this peer that this node refused
    uint64_t queued = 0;       // messages queued while kConnecting
    uint64_t dropped = 0;      // messages dropped because the peer was kDown or kLeft
  };

  struct Peer {
    PeerState state = PeerState::kConnecting;
    Incarnation incarnation = 0;  // the live one (kUp), the last one known (kDown, kLeft)
    std::deque<Message> pending;  // kConnecting only
    absl::Time connect_deadline = absl::InfiniteFuture();  // kConnecting only
    std::optional<absl::Status> owed_down;  // a Down not yet reported
    absl::Status last_refusal;  // the last refusal this node got from the peer (or OK)
    Counters counters;
  };

  // Every peer but `self` starts kConnecting with `connect_deadline`.
  PeerTable(NodeId self, size_t cluster_size, Incarnation self_incarnation,
            absl::Time connect_deadline);

  // Sets the deadline of every peer still kConnecting (at Start).
  void SetConnectDeadline(absl::Time deadline);

  NodeId self() const { return self_; }
  size_t size() const { return peers_.size(); }
  Incarnation self_incarnation() const { return self_incarnation_; }
  const Peer& peer(NodeId id) const { return peers_[id]; }
  PeerState state(NodeId id) const { return peers_[id].state; }
  bool IsUp(NodeId id) const { return id < peers_.size() && peers_[id].state == PeerState::kUp; }

  // Whether `id` claiming `incarnation` may come up now; kNone, or why not (with the status
  // worded from this node's side, for its log). Does not change the table.
  struct Verdict {
    Refusal refusal = Refusal::kNone;
    uint64_t detail = 0;  // for the refusal Hello
    absl::Status why;
  };
  Verdict CheckJoin(NodeId id, Incarnation incarnation) const;
  // Counts a refusal of `id`'s Hello.
  void NoteRefused(NodeId id) { ++peers_[id].counters.refused; }
  // Remembers the refusal this node got from `id` (for the connect deadline's report).
  void NoteRefusedBy(NodeId id, absl::Status why) { peers_[id].last_refusal = std::move(why); }

  struct UpResult {
    std::optional<absl::Status> owed_down;  // report this OnPeerDown first (old incarnation)
    std::deque<Message> pending;            // then send these, in order
    bool rejoin = false;                    // the peer was kDown or kLeft
    Incarnation previous = 0;               // its incarnation before
  };
  // kConnecting, kDown or kLeft -> kUp(incarnation). Requires CheckJoin(id, incarnation) OK.
  UpResult Up(NodeId id, Incarnation incarnation);

  // kConnecting or kUp -> kDown. False (nothing to report) if it was kDown or kLeft already.
  // Drops the pending queue; one OnPeerDown is owed (TakeDownReport).
  bool Down(NodeId id, absl::Status why);
  // kUp -> kLeft (the peer said goodbye). False if it was not kUp. One report is owed.
  bool Leave(NodeId id, absl::Status why);
  // The OnPeerDown owed for `id`, once; nullopt when none is owed.
  std::optional<absl::Status> TakeDownReport(NodeId id);

  // Where `m` (to m.dst, a peer) goes: kUp -> true, the caller sends it now; kConnecting ->
  // moved into the pending queue (false); kDown / kLeft -> dropped (false).
  bool Route(Message& m);

  // Peers still kConnecting whose deadline is at or before `now`.
  std::vector<NodeId> ExpiredConnecting(absl::Time now) const;

  // Sum over peers.
  Counters Totals() const;
  // Drops every pending queue (shutdown).
  void ClearPending();

 private:
  const NodeId self_;
  const Incarnation self_incarnation_;
  std::vector<Peer> peers_;
};

}  // namespace dsm
