// The timeout hierarchy (LivenessTimes) run against the real Cache, Directory and PeerLeases
// on the simulator: one node is cut off (no message in or out; it keeps running its own
// timers, as a partitioned process does) while others wait on a healthy home for pages it
// holds. Each node checks its timers every kLivenessTick, at its own phase, as the engine's
// tick does; messages between connected nodes take one simulation step. Checked:
//  - blame: nobody declares the healthy home (or a healthy requester) down, over every phase
//    of the cut relative to the heartbeats and the requests;
//  - fencing order: the cut-off node fences itself before the home forgets its copies, so
//    Sim::Check (every mapped copy is recorded at the home and holds the latest write) holds
//    at every step;
//  - every waiting access ends (granted, or the page reported lost) before any requester
//    timer could fire.
#include <string>
#include <vector>

#include "coherence/liveness.h"
#include "common/node_set.h"
#include "common/timeouts.h"
#include "gtest/gtest.h"
#include "sim.h"
#include "test_util.h"

namespace dsm::coherence::sim {
namespace {

using test::HomeAt;

constexpr absl::Duration kStep = absl::Milliseconds(10);

// The engine's liveness loop for every node of a Sim.
class Driver {
 public:
  Driver(Sim& sim, int nodes, LivenessTimes times)
      : sim_(sim), n_(nodes), times_(times), down_(nodes, 0),
        reassign_at_(nodes, std::vector<absl::Time>(nodes, absl::InfiniteFuture())) {
    for (int i = 0; i < n_; ++i) {
      leases_.emplace_back(static_cast<NodeId>(i), times_);
      for (int p = 0; p < n_; ++p) {
        if (p != i) leases_[i].OnPeerUp(static_cast<NodeId>(p), sim_.now());
      }
    }
  }

  // Node `n` stops receiving and sending from now on (it keeps its own timers).
  void Cut(NodeId n) { cut_ |= NodeBit(n); }
  // Node `n` keeps sending heartbeats but never answers coherence messages.
  void Mute(NodeId n) { mute_ |= NodeBit(n); }

  // One step: time moves on, messages move, faults and threads run, due timers fire.
  void Step() {
    sim_.AdvanceTime(kStep);
    ++step_;
    Quiesce();
    for (int i = 0; i < n_; ++i) {
      if ((step_ + i) % (kLivenessTick / kStep) == 0) Tick(static_cast<NodeId>(i));
    }
    Quiesce();
    sim_.Check();
  }

  // Declarations of the form "a declared b down", for the checks.
  const std::vector<std::pair<NodeId, NodeId>>& declared() const { return declared_; }
  bool fenced_before_reassigned() const { return order_ok_; }

 private:
  bool Linked(NodeId a, NodeId b) const {
    return !InNodeSet(cut_, a) && !InNodeSet(cut_, b) && !InNodeSet(down_[a], b) &&
           !InNodeSet(down_[b], a);
  }

  void Quiesce() {
    for (bool moved = true; moved;) {
      moved = false;
      for (int a = 0; a < n_; ++a) {
        const NodeId src = static_cast<NodeId>(a);
        if (InNodeSet(cut_, src)) continue;
        while (sim_.DeliverFault(src)) moved = true;
        for (int t = 0; t < sim_.num_threads(); ++t) {
          if (sim_.thread(t).node == src && sim_.thread(t).state == Sim::ThreadState::kRunnable) {
            sim_.Run(t);
            moved = true;
          }
        }
        for (int b = 0; b < n_; ++b) {
          const NodeId dst = static_cast<NodeId>(b);
          if (src != dst && (!Linked(src, dst) || InNodeSet(mute_, src))) continue;
          while (!sim_.channel(src, dst).empty()) {
            sim_.Deliver(src, dst);
            if (src != dst) leases_[dst].OnReceived(src, sim_.now());
            moved = true;
          }
        }
      }
    }
  }

  void Tick(NodeId i) {
    const absl::Time now = sim_.now();
    std::vector<NodeId> beat, expired, overdue;
    leases_[i].Check(now, &beat, &expired);
    for (NodeId p : beat) {
      leases_[i].OnSent(p, now);
      if (Linked(i, p)) leases_[p].OnReceived(i, now);
    }
    if (InNodeSet(cut_, i)) {
      // Nothing but its own timers: its requests are not answered, so only leases matter.
      for (NodeId p : expired) Declare(i, p);
      return;
    }
    for (NodeId p : expired) Declare(i, p);
    sim_.cache(i).CollectOverdue(now, times_.requester, &overdue);
    sim_.directory(i).CollectOverdue(now, times_.holder, &overdue);
    for (NodeId p : overdue) Declare(i, p);
    for (int p = 0; p < n_; ++p) {
      if (reassign_at_[i][p] <= now) {
        reassign_at_[i][p] = absl::InfiniteFuture();
        // The peer must have fenced itself for this node by now.
        if (!InNodeSet(down_[p], i)) order_ok_ = false;
        sim_.directory(i).OnPeerDown(static_cast<NodeId>(p), now);
      }
    }
  }

  void Declare(NodeId i, NodeId p) {
    if (p == i || InNodeSet(down_[i], p)) return;
    const bool was_linked = Linked(i, p);
    down_[i] |= NodeBit(p);
    declared_.push_back({i, p});
    leases_[i].OnPeerDown(p);
    sim_.cache(i).FenceHome(p);
    sim_.directory(i).OnPeerSilenced(p, sim_.now());
    reassign_at_[i][p] = std::max(leases_[i].ReassignAt(p), sim_.now());
    // The connection closes: a peer that can still hear it learns at once.
    if (was_linked) Declare(p, i);
  }

  Sim& sim_;
  int n_;
  LivenessTimes times_;
  std::vector<PeerLeases> leases_;
  std::vector<uint64_t> down_;
  std::vector<std::vector<absl::Time>> reassign_at_;
  uint64_t cut_ = 0, mute_ = 0;
  uint64_t step_ = 0;
  bool order_ok_ = true;
  std::vector<std::pair<NodeId, NodeId>> declared_;
};

struct Scenario {
  int readers;          // nodes 1, 3, 4, ... wait on home 0
  bool holder_modified; // the cut-off node 2 holds the pages M (else S, and readers write)
  bool mute;            // node 2 keeps heartbeating but never answers (else cut off)
};

// Runs one scenario with the cut at `cut_step` steps after setup and the accesses
// `access_step` steps after the cut. Returns a description of the first failure, or "".
std::string Run(const Scenario& sc, absl::Duration lease, int cut_step, int access_step) {
  const int nodes = 2 + sc.readers;  // home 0, reader 1, holder 2, readers 3..
  const int pages = 3;
  Sim sim(nodes, pages, HomeAt(0));
  const LivenessTimes times = DeriveLivenessTimes(absl::Seconds(1), lease);
  const NodeId holder = 2;
  std::vector<NodeId> readers = {1};
  for (int r = 1; r < sc.readers; ++r) readers.push_back(static_cast<NodeId>(2 + r));
  // Node 2 takes its copies.
  for (int p = 0; p < pages; ++p) {
    sim.Access(holder, p, sc.holder_modified);
    if (!sim.Settle()) return "setup did not settle";
  }
  Driver d(sim, nodes, times);
  for (int s = 0; s < cut_step; ++s) d.Step();
  if (sc.mute) {
    d.Mute(holder);
  } else {
    d.Cut(holder);
  }
  for (int s = 0; s < access_step; ++s) d.Step();
  std::vector<int> waiting;
  for (size_t r = 0; r < readers.size(); ++r) {
    waiting.push_back(sim.Access(readers[r], r % pages, !sc.holder_modified));
  }
  const absl::Time asked = sim.now();
  bool all_done = false;
  while (!all_done) {
    d.Step();
    all_done = true;
    for (int t : waiting) {
      const auto st = sim.thread(t).state;
      if (st != Sim::ThreadState::kDone && st != Sim::ThreadState::kFailed) all_done = false;
    }
    if (sim.now() - asked > times.requester + absl::Seconds(1)) {
      return "an access still waits past the requester timeout";
    }
  }
  if (!sim.ok()) return "invariant: " + sim.error();
  if (!d.fenced_before_reassigned()) return "a home reassigned copies before their holder fenced";
  for (auto [who, whom] : d.declared()) {
    if (whom != holder && who != holder) {
      return "false blame: node " + std::to_string(who) + " declared node " +
             std::to_string(whom) + " down";
    }
  }
  for (int t : waiting) {
    const auto st = sim.thread(t).state;
    if (sc.holder_modified && st != Sim::ThreadState::kFailed) {
      return "a read of a page only the cut-off node had was granted";
    }
    if (!sc.holder_modified && st != Sim::ThreadState::kDone) {
      return "a write over the cut-off node's Shared copy failed";
    }
  }
  return "";
}

void RunAllPhases(const Scenario& sc) {
  int runs = 0;
  // Cut at every phase of the heartbeat and tick cycles, accesses from at once to past the
  // fence.
  for (absl::Duration lease : {kMinLease, absl::Seconds(2)}) {
    for (int cut = 0; cut < 10; ++cut) {
      for (int access : {0, 1, 5, 20, 50, 79, 80, 81, 120, 200}) {
        SCOPED_TRACE("lease " + absl::FormatDuration(lease) + ", cut at step " +
                     std::to_string(cut) + ", access " + std::to_string(access) +
                     " steps later");
        const std::string failure = Run(sc, lease, cut, access);
        EXPECT_EQ(failure, "");
        ++runs;
      }
    }
  }
  EXPECT_EQ(runs, 200);
}

TEST(Liveness, OneReaderNeverBlamesTheHomeForACutOffOwner) {
  RunAllPhases({.readers = 1, .holder_modified = true, .mute = false});
}
TEST(Liveness, ThreeReadersNeverBlameTheHomeForACutOffOwner) {
  RunAllPhases({.readers = 3, .holder_modified = true, .mute = false});
}
TEST(Liveness, WritersNeverBlameTheHomeForACutOffSharerAndItFencesFirst) {
  RunAllPhases({.readers = 3, .holder_modified = false, .mute = false});
}
TEST(Liveness, AMuteOwnerThatKeepsHeartbeatingIsBlamedByTheHomeAlone) {
  RunAllPhases({.readers = 3, .holder_modified = true, .mute = true});
}
TEST(Liveness, AMuteSharerThatKeepsHeartbeatingIsBlamedByTheHomeAlone) {
  RunAllPhases({.readers = 1, .holder_modified = false, .mute = true});
}

TEST(Liveness, TheHierarchyIsOrdered) {
  for (absl::Duration p : {absl::Milliseconds(100), absl::Seconds(1), absl::Seconds(10)}) {
    for (absl::Duration l : {absl::ZeroDuration(), kMinLease, absl::Seconds(3)}) {
      const LivenessTimes t = DeriveLivenessTimes(p, l);
      const absl::Duration lease = EffectiveLease(p, l);
      EXPECT_GE(lease, kMinLease);
      EXPECT_LT(t.heartbeat + kLivenessTick, t.fence);
      // The holder fences (at `fence` after its last message from the home, which is at
      // most a heartbeat and a tick before the home's last message from it) before the home
      // reassigns, with room for two ticks of lateness.
      EXPECT_GE(t.reassign - (t.fence + t.heartbeat + 2 * kLivenessTick), absl::Milliseconds(200));
      EXPECT_GT(t.requester, t.holder + t.reassign + 2 * kLivenessTick);
      EXPECT_TRUE(ValidateLiveness(p, l).ok());
    }
  }
  EXPECT_FALSE(ValidateLiveness(absl::Seconds(1), absl::Milliseconds(100)).ok());
  EXPECT_FALSE(ValidateLiveness(absl::Seconds(1), -absl::Seconds(1)).ok());
}

TEST(PeerLeases, HeartbeatsOnlyToQuietPeersAndExpiryOnlyForSilentOnes) {
  const LivenessTimes t = DeriveLivenessTimes(absl::Seconds(1), absl::ZeroDuration());
  PeerLeases l(0, t);
  const absl::Time t0 = test::kT0;
  l.OnPeerUp(1, t0);
  l.OnPeerUp(2, t0);
  std::vector<NodeId> beat, expired;
  l.OnSent(1, t0 + t.heartbeat / 2);
  l.Check(t0 + t.heartbeat, &beat, &expired);
  EXPECT_EQ(beat, std::vector<NodeId>{2}) << "traffic to node 1 made its heartbeat unneeded";
  EXPECT_TRUE(expired.empty());
  beat.clear();
  l.OnReceived(1, t0 + t.fence / 2);
  l.Check(t0 + t.fence, &beat, &expired);
  EXPECT_EQ(expired, std::vector<NodeId>{2});
  EXPECT_FALSE(l.Expired(1, t0 + t.fence));
  EXPECT_TRUE(l.Expired(1, t0 + t.fence / 2 + t.fence));
  EXPECT_EQ(l.ReassignAt(1), t0 + t.fence / 2 + t.reassign);
  l.OnPeerDown(1);
  l.OnReceived(1, t0 + 10 * t.fence);  // a late message renews nothing once down
  EXPECT_EQ(l.ReassignAt(1), t0 + t.fence / 2 + t.reassign);
  EXPECT_FALSE(l.Expired(1, t0 + 10 * t.fence));
}

}  // namespace
}  // namespace dsm::coherence::sim
