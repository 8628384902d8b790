// Randomized protocol tests: thousands of seeds, each a random interleaving of application
// accesses, fault deliveries and message deliveries on 2-4 nodes and 1-3 pages (few pages to
// force contention), with every invariant of sim.h checked after every step, then a drain
// phase that must leave no thread blocked and no message in flight.
#include <chrono>
#include <cstdio>
#include <random>

#include "common/log.h"
#include "gtest/gtest.h"
#include "sim.h"

namespace dsm::coherence::sim {
namespace {

enum class HomeMode { kFirst, kLast, kInterleaved };

HomeFn MakeHome(HomeMode mode, int nodes) {
  switch (mode) {
    case HomeMode::kFirst:
      return [](PageIndex) -> NodeId { return 0; };
    case HomeMode::kLast:
      return [nodes](PageIndex) -> NodeId { return static_cast<NodeId>(nodes - 1); };
    case HomeMode::kInterleaved:
      break;
  }
  return [nodes](PageIndex p) -> NodeId { return static_cast<NodeId>(p % nodes); };
}

struct RunSpec {
  int seeds;
  int steps;
  bool maintenance;  // Release / WriteBackAll actions
  bool kill;         // one node goes down mid-run
};

uint64_t ProtocolErrors(Sim& sim, int nodes) {
  uint64_t e = 0;
  for (int n = 0; n < nodes; ++n) {
    e += sim.cache(n).counters().protocol_errors + sim.directory(n).counters().protocol_errors;
  }
  return e;
}

// Runs spec.seeds seeds starting at `first_seed`; the seed picks the shape of the cluster.
void RunSeeds(uint64_t first_seed, const RunSpec& spec) {
  // Lost pages are expected in the peer-down runs; keep the output to real errors.
  SetLogThreshold(LogSeverity::kError);
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t total_steps = 0, lost = 0, failed_threads = 0, done_threads = 0;
  for (uint64_t seed = first_seed; seed < first_seed + spec.seeds; ++seed) {
    const int nodes = 2 + static_cast<int>(seed % 3);
    const int pages = 1 + static_cast<int>((seed / 3) % 3);
    const HomeMode mode = static_cast<HomeMode>((seed / 9) % 3);
    std::mt19937_64 rng(seed);
    Sim sim(nodes, pages, MakeHome(mode, nodes));
    const int kill_at = spec.kill ? spec.steps / 4 + static_cast<int>(rng() % (spec.steps / 2))
                                  : -1;
    for (int i = 0; i < spec.steps && sim.ok(); ++i) {
      if (i == kill_at) sim.Kill(static_cast<NodeId>(rng() % nodes));
      sim.Step(rng, /*allow_new=*/true, spec.maintenance);
    }
    if (sim.ok()) sim.Settle(&rng);
    const std::string where = "seed " + std::to_string(seed) + " (" + std::to_string(nodes) +
                              " nodes, " + std::to_string(pages) + " pages, home mode " +
                              std::to_string(static_cast<int>(mode)) + ")";
    ASSERT_TRUE(sim.ok()) << where << ": " << sim.error();
    ASSERT_TRUE(sim.AllThreadsFinished()) << where << ": a thread is still blocked (hang)";
    ASSERT_EQ(sim.InFlight(), 0u) << where;
    ASSERT_EQ(ProtocolErrors(sim, nodes), 0u) << where << ": a 'cannot happen' path ran";
    total_steps += sim.steps();
    for (int t = 0; t < sim.num_threads(); ++t) {
      const auto st = sim.thread(t).state;
      if (st == Sim::ThreadState::kDone) ++done_threads;
      if (st == Sim::ThreadState::kFailed) ++failed_threads;
    }
    for (int n = 0; n < nodes; ++n) lost += sim.directory(n).counters().lost_pages;
    if (!spec.kill) {
      ASSERT_EQ(failed_threads, 0u) << where << ": failure without a peer down";
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d seeds, %llu steps, %llu accesses done, %llu failed, %llu pages lost, %.2f s\n",
              spec.seeds, static_cast<unsigned long long>(total_steps),
              static_cast<unsigned long long>(done_threads),
              static_cast<unsigned long long>(failed_threads),
              static_cast<unsigned long long>(lost), secs);
}

TEST(RandomProtocol, AccessesOnly) { RunSeeds(1, {3000, 2000, false, false}); }

TEST(RandomProtocol, WithReleaseAndWriteBack) { RunSeeds(100001, {3000, 2000, true, false}); }

TEST(RandomProtocol, PeerDownNeverHangsSurvivors) {
  RunSeeds(200001, {2000, 2000, true, true});
}

}  // namespace
}  // namespace dsm::coherence::sim
