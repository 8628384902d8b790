// Leases and blame with three engines over loopback in one process.
//
// Blame when a third node stalls: Node 2 holds
// pages homed at node 0 Modified; its engine thread is then blocked (a slow node: no answer,
// no heartbeat) while one or three reader threads of node 1 wait on home 0 for those pages.
// The home, not the readers, must give up on node 2: it answers each reader (the page is lost:
// only node 2 had it, so the read raises SIGBUS) before any reader's own timer could blame the
// home. Each scenario runs 100 times on a fresh cluster and counts every wrong "down"
// declaration (a healthy node declared down by anyone); the count must be 0.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/node_set.h"
#include "gtest/gtest.h"
#include "node/engine.h"
#include "node/node_test_util.h"

namespace dsm {
namespace {

constexpr int kNodes = 3;
constexpr NodeId kHome = 0, kReaderNode = 1, kSlow = 2;
constexpr int kRuns = 100;

Options Make(NodeId id, const std::string& hub) {
  Options o;
  o.node_id = id;
  o.peers = {"local:0", "local:1", "local:2"};
  o.transport = TransportKind::kLoopback;
  o.loopback_hub = hub;
  o.peer_timeout = absl::Milliseconds(1000);  // holder limit; requester = 1000 + 1200 + 400
  o.lease_duration = absl::Milliseconds(800);
  o.connect_timeout = absl::Seconds(20);
  o.poll_spin = absl::ZeroDuration();
  return o;
}

struct Outcome {
  int false_blame = 0;     // a healthy node declared down by some node
  int reads_lost = 0;      // reader threads whose read raised SIGBUS
  int reads_granted = 0;
  std::string detail;
};

// One cluster, one stall. `readers` threads of node 1 read pages 1..readers.
Outcome RunOnce(int run, int readers) {
  Outcome out;
  static std::atomic<int> seq{0};
  const std::string hub = absl::StrCat("blame-", getpid(), "-", seq.fetch_add(1));
  std::vector<std::shared_ptr<Engine>> e(kNodes);
  {
    std::vector<std::thread> starters;
    std::vector<absl::Status> started(kNodes);
    for (int i = 0; i < kNodes; ++i) {
      starters.emplace_back([&, i] {
        auto s = Engine::Start(Make(static_cast<NodeId>(i), hub));
        started[i] = s.status();
        if (s.ok()) e[i] = *s;
      });
    }
    for (auto& t : starters) t.join();
    for (int i = 0; i < kNodes; ++i) {
      if (!started[i].ok()) {
        out.detail = absl::StrCat("node ", i, " did not start: ", started[i].ToString());
        return out;
      }
    }
  }
  RegionOptions ro;
  ro.name = "blame";
  ro.size = 8 * kPageSize;
  ro.home = kHome;
  std::vector<MappedRegion*> r(kNodes);
  for (int i = 0; i < kNodes; ++i) {  // the home first: the others open it there
    absl::StatusOr<MappedRegion*> m = e[i]->MapRegion(ro);
    if (!m.ok()) {
      out.detail = absl::StrCat("node ", i, " map: ", m.status().ToString());
      return out;
    }
    r[i] = *m;
  }
  auto word = [&](int node, int page) {
    return reinterpret_cast<uint64_t*>(static_cast<uint8_t*>(r[node]->data()) +
                                       page * kPageSize);
  };
  // Node 2 takes pages 1..readers Modified.
  for (int p = 1; p <= readers; ++p) __atomic_store_n(word(kSlow, p), 100 + p, __ATOMIC_RELEASE);

  // Node 2's engine stops: it neither answers nor sends heartbeats.
  absl::Notification stalled, release;
  std::thread staller([&] {
    (void)e[kSlow]->RunOnEngine([&] {
      stalled.Notify();
      release.WaitForNotification();
      return absl::OkStatus();
    });
  });
  stalled.WaitForNotification();
  // Vary where in the heartbeat and tick cycles the reads start.
  absl::SleepFor(absl::Milliseconds(run % 10 * 13));

  std::atomic<int> lost{0}, granted{0};
  std::vector<std::thread> threads;
  for (int p = 1; p <= readers; ++p) {
    threads.emplace_back([&, p] {
      uint64_t v = 0;
      const uint64_t* w = word(kReaderNode, p);
      if (testing::RaisesSigbus([&] { v = __atomic_load_n(w, __ATOMIC_ACQUIRE); })) {
        ++lost;
      } else {
        ++granted;
        (void)v;
      }
    });
  }
  for (auto& t : threads) t.join();
  out.reads_lost = lost.load();
  out.reads_granted = granted.load();

  for (NodeId i : {kHome, kReaderNode}) {
    absl::StatusOr<uint64_t> down = e[i]->PeersDeclaredDown();
    if (!down.ok()) {
      out.detail = absl::StrCat("node ", i, ": ", down.status().ToString());
      ++out.false_blame;
      continue;
    }
    const uint64_t healthy_down = *down & (NodeBit(kHome) | NodeBit(kReaderNode));
    if (healthy_down != 0) {
      ++out.false_blame;
      absl::StrAppend(&out.detail, "node ", i, " declared healthy nodes down (mask ",
                      healthy_down, "); ");
    }
  }
  release.Notify();
  staller.join();
  for (int i = kNodes - 1; i >= 0; --i) (void)e[i]->Shutdown();
  return out;
}

void RunMany(int readers) {
  int false_blame = 0, lost = 0, granted = 0;
  for (int run = 0; run < kRuns; ++run) {
    Outcome o = RunOnce(run, readers);
    ASSERT_EQ(o.false_blame, 0) << "run " << run << ": " << o.detail;
    ASSERT_TRUE(o.detail.empty()) << "run " << run << ": " << o.detail;
    false_blame += o.false_blame;
    lost += o.reads_lost;
    granted += o.reads_granted;
  }
  std::printf("%d runs, %d reader(s): false blame %d, reads lost %d, granted %d\n", kRuns,
              readers, false_blame, lost, granted);
  EXPECT_EQ(false_blame, 0);
  // Only node 2 had the pages: each read ends with the page reported lost, never a value.
  EXPECT_EQ(lost, kRuns * readers);
}

// Nodes with nothing to say to each other stay alive through heartbeats alone, and an idle
// peer that goes silent is detected (within a bounded wait that ends in a failure).
TEST(Leases, AnIdlePeerThatGoesSilentIsDetectedAndIdleHealthyPeersAreNot) {
  static std::atomic<int> seq{0};
  const std::string hub = absl::StrCat("idle-", getpid(), "-", seq.fetch_add(1));
  std::vector<std::shared_ptr<Engine>> e(kNodes);
  std::vector<std::thread> starters;
  std::vector<absl::Status> started(kNodes);
  for (int i = 0; i < kNodes; ++i) {
    starters.emplace_back([&, i] {
      auto s = Engine::Start(Make(static_cast<NodeId>(i), hub));
      started[i] = s.status();
      if (s.ok()) e[i] = *s;
    });
  }
  for (auto& t : starters) t.join();
  for (int i = 0; i < kNodes; ++i) ASSERT_TRUE(started[i].ok()) << started[i];
  // Idle for three leases: no region, no request, only heartbeats.
  const Stats before = e[0]->GetStats().value();
  absl::SleepFor(3 * absl::Milliseconds(800));
  const Stats after = e[0]->GetStats().value();
  EXPECT_GT(after.messages_sent, before.messages_sent) << "no heartbeat while idle";
  for (int i = 0; i < kNodes; ++i) {
    EXPECT_EQ(e[i]->PeersDeclaredDown().value(), 0u) << "node " << i << " blamed an idle peer";
  }
  absl::Notification stalled, release;
  std::thread staller([&] {
    (void)e[kSlow]->RunOnEngine([&] {
      stalled.Notify();
      release.WaitForNotification();
      return absl::OkStatus();
    });
  });
  stalled.WaitForNotification();
  const absl::Time limit = absl::Now() + absl::Seconds(20);
  uint64_t down0 = 0, down1 = 0;
  while (absl::Now() < limit) {
    down0 = e[kHome]->PeersDeclaredDown().value_or(0);
    down1 = e[kReaderNode]->PeersDeclaredDown().value_or(0);
    if (InNodeSet(down0, kSlow) && InNodeSet(down1, kSlow)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(down0, NodeBit(kSlow)) << "node 0 missed the silent idle peer or blamed another";
  EXPECT_EQ(down1, NodeBit(kSlow)) << "node 1 missed the silent idle peer or blamed another";
  release.Notify();
  staller.join();
  // Node 2 ran again: it heard nothing for longer than a lease, so it fenced itself for both.
  EXPECT_EQ(e[kSlow]->PeersDeclaredDown().value_or(0), NodeBit(kHome) | NodeBit(kReaderNode));
  for (int i = kNodes - 1; i >= 0; --i) (void)e[i]->Shutdown();
}

TEST(Leases, AShortLeaseIsRefusedAtStart) {
  Options o = Make(0, "short-lease");
  o.peers = {"local:0"};
  o.lease_duration = absl::Milliseconds(100);
  absl::StatusOr<std::shared_ptr<Engine>> e = Engine::Start(o);
  ASSERT_FALSE(e.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(e.status())) << e.status();
  EXPECT_NE(e.status().message().find("lease_duration"), std::string::npos) << e.status();
}

TEST(Blame, OneReaderNeverBlamesTheHomeForAStalledOwner) { RunMany(1); }
TEST(Blame, ThreeReadersNeverBlameTheHomeForAStalledOwner) { RunMany(3); }

}  // namespace
}  // namespace dsm
