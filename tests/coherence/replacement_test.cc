// The memory budget's policy (coherence::Replacer) driven through the protocol simulator: the
// same Replacer the engine runs, with the simulated kernel checking every mapping change.
#include <cstdio>
#include <random>
#include <vector>

#include "coherence/replacement.h"
#include "common/log.h"
#include "gtest/gtest.h"
#include "sim.h"
#include "test_util.h"

namespace dsm::coherence {
namespace {

using test::HomeAt;

using sim::Sim;

// Runs one access on node n to completion (the system settles in channel order).
void Complete(Sim& sim, NodeId n, PageIndex p, bool write) {
  const int t = sim.Access(n, p, write);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  ASSERT_EQ(sim.thread(t).state, Sim::ThreadState::kDone) << "page " << p;
}

TEST(Replacer, StaysWithinBudgetAtEveryStepOfAScan) {
  constexpr int kPages = 64;
  Sim sim(2, kPages, HomeAt(0));
  sim.SetBudget(1, 8);
  for (int round = 0; round < 3; ++round) {
    for (PageIndex p = 0; p < kPages; ++p) {
      const int t = sim.Access(1, p, round == 1);
      // Step by step: the mapping never holds more than the budget.
      for (int i = 0; i < 1000 && sim.thread(t).state != Sim::ThreadState::kDone; ++i) {
        if (!sim.DeliverFault(1) && !sim.Deliver(1, 0) && !sim.Deliver(0, 1)) sim.RunAll();
        ASSERT_LE(sim.MappedRemote(1), 8u) << "round " << round << " page " << p;
        ASSERT_TRUE(sim.Check()) << sim.error();
      }
      ASSERT_EQ(sim.thread(t).state, Sim::ThreadState::kDone);
    }
  }
  ASSERT_TRUE(sim.Settle()) << sim.error();
  const Replacer::Counters& c = sim.replacer(1)->counters();
  EXPECT_GE(c.evictions, 3u * kPages - 8);
  EXPECT_GT(c.eviction_writebacks, 0u);
  // Batches: 8/8 = 1 page of slack, so at least one release per batch; never more than asked.
  EXPECT_GT(c.eviction_batches, 0u);
  EXPECT_EQ(c.over_budget, 0u);
  // Every written page reached the home: its storage holds the last write.
  for (PageIndex p = 0; p < kPages; ++p) {
    if (sim.mapped(1, p) == PageState::kInvalid) {
      EXPECT_EQ(sim.home_value(p), sim.last_write(p));
    }
  }
}

TEST(Replacer, DirtyVictimsAreWrittenBackBeforeAnyoneElseReads) {
  Sim sim(3, 16, HomeAt(0));
  sim.SetBudget(1, 4);
  for (PageIndex p = 0; p < 16; ++p) Complete(sim, 1, p, /*write=*/true);
  EXPECT_LE(sim.MappedRemote(1), 4u);
  EXPECT_GE(sim.replacer(1)->counters().eviction_writebacks, 12u);
  // Node 2 reads every page: it sees node 1's writes, whether evicted or still held M.
  for (PageIndex p = 0; p < 16; ++p) {
    const int t = sim.Access(2, p, false);
    ASSERT_TRUE(sim.Settle()) << sim.error();
    EXPECT_EQ(sim.thread(t).value, sim.last_write(p)) << "page " << p;
  }
  EXPECT_TRUE(sim.ok()) << sim.error();
}

TEST(Replacer, PagesHomedHereDoNotCount) {
  Sim sim(2, 8, [](PageIndex p) -> NodeId { return p % 2; });
  sim.SetBudget(1, 2);
  for (PageIndex p = 0; p < 8; ++p) Complete(sim, 1, p, false);
  // Pages 1, 3, 5, 7 are homed at node 1: all stay mapped; of the others at most 2.
  for (PageIndex p = 1; p < 8; p += 2) EXPECT_NE(sim.mapped(1, p), PageState::kInvalid);
  EXPECT_LE(sim.MappedRemote(1), 2u);
  EXPECT_EQ(sim.replacer(1)->resident(), sim.MappedRemote(1));
}

TEST(Replacer, PendingPageIsNeverAVictim) {
  Sim sim(2, 4, HomeAt(0));
  sim.SetBudget(1, 1);
  Complete(sim, 1, 0, false);                 // page 0 S
  const int up = sim.Access(1, 0, true);      // upgrade fault: GetM in flight
  ASSERT_TRUE(sim.DeliverFault(1));
  ASSERT_TRUE(sim.cache(1).pending(0));
  const int rd = sim.Access(1, 1, false);     // a miss while over budget
  ASSERT_TRUE(sim.DeliverFault(1));
  EXPECT_EQ(sim.mapped(1, 0), PageState::kShared) << "the pending page was released";
  EXPECT_GT(sim.replacer(1)->counters().over_budget, 0u);
  EXPECT_TRUE(sim.ok()) << sim.error();
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(up).state, Sim::ThreadState::kDone);
  EXPECT_EQ(sim.thread(rd).state, Sim::ThreadState::kDone);
  // Nothing pending any more: the tick's Enforce brings the node back within its budget.
  sim.Enforce(1);
  EXPECT_LE(sim.MappedRemote(1), 1u);
  EXPECT_TRUE(sim.ok()) << sim.error();
}

TEST(Replacer, VictimRunsAreProtectedOnceAndSendsFollowTheUnmaps) {
  Sim sim(2, 40, HomeAt(0));
  sim.SetBudget(1, 32, /*sample_writes=*/false);
  for (PageIndex p = 0; p < 32; ++p) Complete(sim, 1, p, true);
  const Sim::PortCalls before = sim.port_calls(1);
  Complete(sim, 1, 32, false);  // over budget: the hand clears 32 bits, then takes a run
  const Sim::PortCalls& after = sim.port_calls(1);
  const uint64_t released = sim.replacer(1)->counters().evictions;
  // 32 resident + 1 reserved, down to 32 - 32/8 = 28.
  EXPECT_EQ(released, 5u);
  EXPECT_EQ(after.protect - before.protect, 1) << "one write-protect for the run of 5";
  EXPECT_EQ(after.protected_pages - before.protected_pages, 5);
  EXPECT_EQ(after.batches - before.batches, 1);
  EXPECT_EQ(after.batched_sends - before.batched_sends, 5);  // 5 Puts held until the unmaps
  EXPECT_TRUE(sim.ok()) << sim.error();
}

// A hot page written between scans of cold pages: write sampling keeps it resident; without it
// CLOCK evicts it once per revolution (a write-back and a refetch each time).
TEST(Replacer, WriteSamplingKeepsAHotDirtyPage) {
  uint64_t hot_refetches[2] = {0, 0};
  uint64_t sample_faults = 0;
  for (int sampling = 0; sampling < 2; ++sampling) {
    constexpr PageIndex kHot = 0;
    Sim sim(2, 65, HomeAt(0));
    sim.SetBudget(1, 16, sampling == 1);
    for (int i = 0; i < 400; ++i) {
      const uint64_t before = sim.cache(1).counters().write_faults;
      Complete(sim, 1, kHot, true);
      hot_refetches[sampling] += sim.cache(1).counters().write_faults - before;
      Complete(sim, 1, 1 + static_cast<PageIndex>(i % 64), false);
    }
    if (sampling == 1) sample_faults = sim.replacer(1)->counters().sample_faults;
    EXPECT_TRUE(sim.ok()) << sim.error();
  }
  std::printf("hot page refetched %llu times without write sampling, %llu with (%llu sampling "
              "faults)\n",
              static_cast<unsigned long long>(hot_refetches[0]),
              static_cast<unsigned long long>(hot_refetches[1]),
              static_cast<unsigned long long>(sample_faults));
  EXPECT_LT(hot_refetches[1] * 4, hot_refetches[0]);
  // The first install, and a rare second revolution inside one Enforce (every page
  // referenced: the hand clears them all, then takes the first it meets again).
  EXPECT_LE(hot_refetches[1], 4u);
}

// Randomized: every node under a budget of 1-3 pages with 2-7 pages in play, random accesses,
// releases, write-backs, and (in the second test) a node going down. Every step checks the
// protocol invariants plus the replacer's accounting and that each Enforce did all it could.
void RunBudgetSeeds(uint64_t first_seed, int seeds, bool kill) {
  SetLogThreshold(LogSeverity::kError);
  uint64_t evictions = 0, writebacks = 0, samples = 0;
  for (uint64_t seed = first_seed; seed < first_seed + seeds; ++seed) {
    const int nodes = 2 + static_cast<int>(seed % 3);
    const int pages = 2 + static_cast<int>((seed / 3) % 6);
    std::mt19937_64 rng(seed);
    const bool interleaved = (seed / 12) % 2 == 1;
    Sim sim(nodes, pages,
            interleaved ? HomeFn([nodes](PageIndex p) { return static_cast<NodeId>(p % nodes); })
                        : HomeAt(0));
    for (int n = 0; n < nodes; ++n) {
      sim.SetBudget(static_cast<NodeId>(n), 1 + rng() % 3, rng() % 4 != 0);
    }
    const int steps = 1500;
    const int kill_at = kill ? steps / 4 + static_cast<int>(rng() % (steps / 2)) : -1;
    for (int i = 0; i < steps && sim.ok(); ++i) {
      if (i == kill_at) sim.Kill(static_cast<NodeId>(rng() % nodes));
      sim.Step(rng, /*allow_new=*/true, /*maintenance=*/true);
    }
    if (sim.ok()) sim.Settle(&rng);
    for (int n = 0; n < nodes; ++n) {
      if (sim.alive(n)) sim.Enforce(static_cast<NodeId>(n));
    }
    if (sim.ok()) sim.Settle(&rng);  // the Puts of that last Enforce
    for (int n = 0; n < nodes; ++n) {
      if (!sim.alive(n)) continue;
      const Replacer* r = sim.replacer(static_cast<NodeId>(n));
      evictions += r->counters().evictions;
      writebacks += r->counters().eviction_writebacks;
      samples += r->counters().sample_faults;
    }
    const std::string where = "seed " + std::to_string(seed);
    ASSERT_TRUE(sim.Check()) << where << ": " << sim.error();
    ASSERT_TRUE(sim.AllThreadsFinished()) << where << ": a thread is still blocked (hang)";
    ASSERT_EQ(sim.InFlight(), 0u) << where;
    if (!kill) {
      for (int n = 0; n < nodes; ++n) {
        ASSERT_LE(sim.MappedRemote(static_cast<NodeId>(n)),
                  sim.replacer(static_cast<NodeId>(n))->budget_pages())
            << where << " node " << n;
      }
    }
  }
  std::printf("%d seeds: %llu evictions, %llu write-backs, %llu sampling faults\n", seeds,
              static_cast<unsigned long long>(evictions),
              static_cast<unsigned long long>(writebacks),
              static_cast<unsigned long long>(samples));
  EXPECT_GT(evictions, 0u);
  EXPECT_GT(writebacks, 0u);
  EXPECT_GT(samples, 0u);
}

TEST(RandomProtocol, WithMemoryBudget) { RunBudgetSeeds(300001, 2000, false); }
TEST(RandomProtocol, WithMemoryBudgetAndPeerDown) { RunBudgetSeeds(400001, 1000, true); }

}  // namespace
}  // namespace dsm::coherence
