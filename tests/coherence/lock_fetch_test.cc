// A lock granted with its pages (Cache::FetchForLock, LockOptions::with_pages): which pages
// it requests and in which mode, which it leaves alone (mapped as needed, pending, lost, at a
// down home), the per-lock cap, the memory budget, that a later access finds the page mapped
// or joins the request in flight, and a randomized run that mixes such fetches with
// accesses, maintenance and a node going down, every invariant checked after every step.
#include <random>
#include <vector>

#include "coherence/cache.h"
#include "common/log.h"
#include "gtest/gtest.h"
#include "sim.h"
#include "test_util.h"

namespace dsm::coherence {
namespace {

using sim::Sim;
using test::HomeAt;
using test::kT0;
using test::Reply;

class RecordingPort final : public CachePort {
 public:
  void Send(Message&& m) override { sent.push_back(std::move(m)); }
  absl::Status Install(PageIndex, const uint8_t*, PageState) override { return absl::OkStatus(); }
  absl::Status SetAccess(PageIndex, PageState) override { return absl::OkStatus(); }
  void ReadPage(PageIndex, uint8_t* out) override { out[0] = 0; }
  absl::Status Drop(PageIndex) override { return absl::OkStatus(); }
  void Fail(PageIndex, ErrorCode) override {}
  void Wake(PageIndex) override {}
  bool ReservePrefetch(PageIndex page) override {
    reserved.push_back(page);
    return room-- > 0;
  }

  std::vector<Message> sent;
  std::vector<PageIndex> reserved;
  int room = 1 << 30;
};

// (type, page) of every message sent from index `from` on.
using Sent = std::vector<std::pair<MsgType, PageIndex>>;
Sent SentFrom(const RecordingPort& port, size_t from = 0) {
  Sent out;
  for (size_t i = from; i < port.sent.size(); ++i)
    out.push_back({port.sent[i].type, port.sent[i].page});
  return out;
}

Cache::Config Config(uint64_t pages, HomeFn home = HomeAt(0)) {
  return Cache::Config{/*self=*/1, /*region=*/1, pages, std::move(home), /*readahead=*/0};
}

// Grants the request last sent with `grant` (kShared or kModified).
void GrantLast(Cache& cache, RecordingPort& port, Grant grant) {
  cache.OnMessage(Reply(MsgType::kData, port.sent.back(), static_cast<uint64_t>(grant)), kT0);
}

TEST(LockFetch, AWriteLockAsksForEveryPageNotHeldModified) {
  RecordingPort port;
  Cache cache(Config(16), &port);
  // Page 1 is S here, page 2 M, the rest I.
  cache.OnFault(1, false, kT0);
  GrantLast(cache, port, Grant::kShared);
  cache.OnFault(2, true, kT0);
  GrantLast(cache, port, Grant::kModified);
  ASSERT_EQ(cache.state(1), PageState::kShared);
  ASSERT_EQ(cache.state(2), PageState::kModified);
  const size_t before = port.sent.size();
  EXPECT_EQ(cache.FetchForLock(0, 4, /*write=*/true, kT0), 3u);
  // 0 and 3 from I, 1 an upgrade of the S copy, 2 left alone.
  EXPECT_EQ(SentFrom(port, before),
            (Sent{{MsgType::kGetM, 0}, {MsgType::kGetM, 1}, {MsgType::kGetM, 3}}));
  // Only the pages from I took room in the budget.
  EXPECT_EQ(port.reserved, (std::vector<PageIndex>{0, 3}));
  EXPECT_EQ(cache.counters().lock_fetches, 3u);
  // No fault was counted: nothing faulted yet.
  EXPECT_EQ(cache.counters().write_faults, 1u);
  EXPECT_EQ(cache.counters().upgrade_faults, 0u);
}

TEST(LockFetch, AReadLockAsksOnlyForPagesNotMapped) {
  RecordingPort port;
  Cache cache(Config(8), &port);
  cache.OnFault(1, false, kT0);
  GrantLast(cache, port, Grant::kShared);
  cache.OnFault(2, true, kT0);
  GrantLast(cache, port, Grant::kModified);
  const size_t before = port.sent.size();
  EXPECT_EQ(cache.FetchForLock(0, 4, /*write=*/false, kT0), 2u);
  EXPECT_EQ(SentFrom(port, before), (Sent{{MsgType::kGetS, 0}, {MsgType::kGetS, 3}}));
}

TEST(LockFetch, APageInFlightIsLeftToItsRequestAndAWriteLockUpgradesAPendingRead) {
  RecordingPort port;
  Cache cache(Config(8), &port);
  cache.OnFault(0, false, kT0);  // a reader's GetS in flight
  cache.OnFault(1, true, kT0);   // a writer's GetM in flight
  const size_t before = port.sent.size();
  EXPECT_EQ(cache.FetchForLock(0, 2, /*write=*/true, kT0), 0u);
  EXPECT_EQ(port.sent.size(), before);
  // The GetS, once granted, is followed by a GetM of its own: the lock holder will write.
  cache.OnMessage(Reply(MsgType::kData, port.sent[0], static_cast<uint64_t>(Grant::kShared)), kT0);
  EXPECT_EQ(cache.state(0), PageState::kShared);
  EXPECT_EQ(SentFrom(port, before), (Sent{{MsgType::kGetM, 0}}));
}

TEST(LockFetch, NeverForLostPagesOrPagesHomedAtADownNode) {
  RecordingPort port;
  // Pages 4 and 5 are homed at node 2, page 6 here (node 1), the rest at node 0.
  Cache cache(
      Config(8, [](PageIndex p) -> NodeId { return (p == 4 || p == 5) ? 2
                                                   : p == 6           ? 1
                                                                      : 0; }),
      &port);
  cache.OnFault(3, false, kT0);
  cache.OnMessage(Reply(MsgType::kNack, port.sent.back(), 1), kT0);  // 3 lost
  ASSERT_TRUE(cache.lost(3));
  cache.OnPeerDown(2);
  const size_t before = port.sent.size();
  EXPECT_EQ(cache.FetchForLock(2, 6, /*write=*/true, kT0), 3u);
  // A page homed here is asked of this node's own directory, as a fault would.
  EXPECT_EQ(SentFrom(port, before),
            (Sent{{MsgType::kGetM, 2}, {MsgType::kGetM, 6}, {MsgType::kGetM, 7}}));
  EXPECT_EQ(port.sent.back().dst, 0u);
  EXPECT_EQ(port.sent[port.sent.size() - 2].dst, 1u);
}

TEST(LockFetch, AtMostOneRunOfPagesPerLockAndNeverBeyondTheRegion) {
  RecordingPort port;
  Cache cache(Config(1000), &port);
  EXPECT_EQ(cache.FetchForLock(10, 500, /*write=*/false, kT0), Cache::kMaxLockFetchPages);
  EXPECT_TRUE(cache.pending(10 + Cache::kMaxLockFetchPages - 1));
  EXPECT_FALSE(cache.pending(10 + Cache::kMaxLockFetchPages));
  RecordingPort port2;
  Cache small(Config(4), &port2);
  EXPECT_EQ(small.FetchForLock(2, 10, /*write=*/true, kT0), 2u);
}

TEST(LockFetch, StopsWhereTheBudgetHasNoRoom) {
  RecordingPort port;
  port.room = 2;
  Cache cache(Config(16), &port);
  EXPECT_EQ(cache.FetchForLock(0, 8, /*write=*/true, kT0), 2u);
  EXPECT_TRUE(cache.pending(1));
  EXPECT_FALSE(cache.pending(2));
  // It stops at the first refusal, as readahead does: one more page asked for, no others.
  EXPECT_EQ(port.reserved, (std::vector<PageIndex>{0, 1, 2}));
}

TEST(LockFetch, TheHoldersAccessesFindThePagesMappedOrJoinTheRequest) {
  Sim sim(3, 8, HomeAt(0));
  // Node 2 holds pages 0..3 Modified, so node 1's fetch must revoke them.
  for (PageIndex p = 0; p < 4; ++p) sim.Access(2, p, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  // Node 1 is granted a write lock over pages 0..3 and a read lock over 4..5.
  EXPECT_EQ(sim.cache(1).FetchForLock(0, 4, /*write=*/true, sim.now()), 4u);
  EXPECT_EQ(sim.cache(1).FetchForLock(4, 2, /*write=*/false, sim.now()), 2u);
  // Its thread writes page 0 before any answer came: the fault joins the request.
  const int early = sim.Access(1, 0, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(early).state, Sim::ThreadState::kDone);
  EXPECT_EQ(sim.cache(1).counters().coalesced_faults, 1u);
  // The other pages were mapped as the locks need them: no fault at all.
  for (PageIndex p = 1; p < 4; ++p) {
    EXPECT_EQ(sim.mapped(1, p), PageState::kModified) << p;
    EXPECT_EQ(sim.mapped(2, p), PageState::kInvalid) << p;
    const int t = sim.Access(1, p, true);
    EXPECT_EQ(sim.thread(t).state, Sim::ThreadState::kDone) << p;
    EXPECT_EQ(sim.thread(t).faults, 0) << p;
  }
  for (PageIndex p = 4; p < 6; ++p) {
    EXPECT_EQ(sim.mapped(1, p), PageState::kShared) << p;
    const int t = sim.Access(1, p, false);
    EXPECT_EQ(sim.thread(t).faults, 0) << p;
  }
  EXPECT_EQ(sim.cache(1).counters().lock_fetches, 6u);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

// Randomized: 2-4 nodes, 2-10 pages, random accesses, releases and write-backs, lock fetches
// of random ranges and modes at random nodes, some runs with budgets and some with a node
// going down; every invariant after every step, and no thread or message left at the end.
void RunLockFetchSeeds(uint64_t first_seed, int seeds, bool budget, bool kill) {
  SetLogThreshold(LogSeverity::kError);
  uint64_t fetches = 0;
  for (uint64_t seed = first_seed; seed < first_seed + seeds; ++seed) {
    const int nodes = 2 + static_cast<int>(seed % 3);
    const int pages = 2 + static_cast<int>((seed / 3) % 9);
    std::mt19937_64 rng(seed);
    const bool interleaved = (seed / 27) % 2 == 1;
    Sim sim(nodes, pages,
            interleaved ? HomeFn([nodes](PageIndex p) { return static_cast<NodeId>(p % nodes); })
                        : HomeAt(0));
    if (budget) {
      for (int n = 0; n < nodes; ++n) sim.SetBudget(static_cast<NodeId>(n), 2 + rng() % 4);
    }
    const int steps = 1500;
    const int kill_at = kill ? steps / 4 + static_cast<int>(rng() % (steps / 2)) : -1;
    for (int i = 0; i < steps && sim.ok(); ++i) {
      if (i == kill_at) sim.Kill(static_cast<NodeId>(rng() % nodes));
      if (rng() % 8 == 0) {
        const NodeId n = static_cast<NodeId>(rng() % nodes);
        if (!sim.alive(n)) continue;
        const PageIndex first = rng() % pages;
        const uint64_t len = 1 + rng() % 4;
        sim.cache(n).FetchForLock(first, len, rng() % 2 == 0, sim.now());
        sim.Check();
        continue;
      }
      sim.Step(rng, /*allow_new=*/true, /*maintenance=*/true);
    }
    if (sim.ok()) sim.Settle(&rng);
    if (budget) {
      for (int n = 0; n < nodes; ++n) {
        if (sim.alive(n)) sim.Enforce(static_cast<NodeId>(n));
      }
      if (sim.ok()) sim.Settle(&rng);
    }
    const std::string where = "seed " + std::to_string(seed);
    ASSERT_TRUE(sim.Check()) << where << ": " << sim.error();
    ASSERT_TRUE(sim.AllThreadsFinished()) << where << ": a thread is still blocked (hang)";
    ASSERT_EQ(sim.InFlight(), 0u) << where;
    for (int n = 0; n < nodes; ++n) {
      if (!sim.alive(n)) continue;
      const NodeId id = static_cast<NodeId>(n);
      ASSERT_EQ(
          sim.cache(id).counters().protocol_errors + sim.directory(id).counters().protocol_errors,
          0u)
          << where;
      // A request nothing answers would leave its page pending for good.
      for (int p = 0; p < pages; ++p) {
        ASSERT_FALSE(sim.cache(id).pending(static_cast<PageIndex>(p))) << where << " page " << p;
      }
      fetches += sim.cache(id).counters().lock_fetches;
      if (budget && !kill) {
        ASSERT_LE(sim.MappedRemote(id), sim.replacer(id)->budget_pages()) << where << " node " << n;
      }
    }
  }
  // The runs must have exercised the fetch, not only the accesses around it.
  EXPECT_GT(fetches, static_cast<uint64_t>(seeds) * 10);
}

TEST(RandomProtocol, WithLockFetches) { RunLockFetchSeeds(800001, 1500, false, false); }
TEST(RandomProtocol, WithLockFetchesAndMemoryBudget) {
  RunLockFetchSeeds(900001, 1500, true, false);
}
TEST(RandomProtocol, WithLockFetchesAndPeerDown) { RunLockFetchSeeds(1000001, 1000, true, true); }

}  // namespace
}  // namespace dsm::coherence
