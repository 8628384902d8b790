// The engine's lifetime on one node: Shutdown from two threads at once, Shutdown and engine
// calls from the engine thread itself (a barrier callback), and RunOnEngine closures that
// outlive the caller who gave up waiting for them. Run it under ASan too: a closure that
// captured its caller's frame shows up as a stack-use-after-return.
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/timeouts.h"
#include "gtest/gtest.h"
#include "node/engine.h"
#include "node/lock_service.h"

#if defined(__SANITIZE_ADDRESS__)
// Stack frames of returned functions stay poisoned, so a late write into one is reported.
extern "C" const char* __asan_default_options() { return "detect_stack_use_after_return=1"; }
#endif

namespace dsm {
namespace {

Options OneNode(absl::Duration peer_timeout = absl::Milliseconds(3000)) {
  static std::atomic<int> seq{0};
  Options o;
  o.node_id = 0;
  o.peers = {"local:0"};
  o.transport = TransportKind::kLoopback;
  o.loopback_hub = absl::StrCat("engine-lifetime-", seq.fetch_add(1));
  o.peer_timeout = peer_timeout;
  o.connect_timeout = absl::Milliseconds(5000);
  return o;
}

#define START_ENGINE(var, options)                                                      \
  absl::StatusOr<std::shared_ptr<Engine>> var##_or = Engine::Start(options);            \
  if (absl::IsPermissionDenied(var##_or.status())) {                                    \
    GTEST_SKIP() << "userfaultfd not permitted here: " << var##_or.status();            \
  }                                                                                     \
  ASSERT_TRUE(var##_or.ok()) << var##_or.status();                                      \
  std::shared_ptr<Engine> var = std::move(*var##_or)

RegionOptions Region(const std::string& name) {
  RegionOptions r;
  r.name = name;
  r.size = 64 * kPageSize;
  return r;
}

// Runs `fn` on the engine thread (inside a one-member barrier's callback) and waits for it.
void OnEngineThread(Engine& e, std::function<void()> fn) {
  absl::Notification ran;
  e.locks().BarrierAsync("on-engine", {0}, absl::Now() + absl::Seconds(10),
                         [&ran, fn = std::move(fn)](absl::Status) {
                           fn();
                           ran.Notify();
                         });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(20)));
}

TEST(EngineLifetime, TwoThreadsShutdownAtOnce) {
  for (int round = 0; round < 5; ++round) {
    START_ENGINE(e, OneNode());
    // Mapped regions make Shutdown unmap first, which widens the window between the two.
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(e->MapRegion(Region(absl::StrCat("r", i))).ok());
    }
    std::atomic<bool> go{false};
    absl::Status result[2];
    absl::Status after[2];  // an engine call once Shutdown returned: must be refused
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        while (!go.load()) std::this_thread::yield();
        result[t] = e->Shutdown();
        after[t] = e->GetStats().status();
      });
    }
    go.store(true);
    for (auto& t : threads) t.join();
    for (int t = 0; t < 2; ++t) {
      EXPECT_TRUE(result[t].ok()) << "round " << round << " thread " << t << ": " << result[t];
      // Neither returned before the node was stopped.
      EXPECT_TRUE(absl::IsFailedPrecondition(after[t])) << "round " << round << ": " << after[t];
    }
    EXPECT_TRUE(e->Shutdown().ok());  // a later call gets the recorded result
  }
}

TEST(EngineLifetime, ShutdownFromACallbackOnTheEngineThreadIsRefused) {
  START_ENGINE(e, OneNode());
  absl::StatusOr<MappedRegion*> r = e->MapRegion(Region("cb"));
  ASSERT_TRUE(r.ok()) << r.status();
  const RegionId id = (*r)->id();
  Engine* raw = e.get();  // the callback must not hold the last reference
  bool on_engine = false;
  absl::Status shutdown, stats, sync, unmap;
  absl::StatusOr<MappedRegion*> map = absl::UnknownError("not run");
  OnEngineThread(*e, [&] {
    on_engine = raw->OnEngineThread();
    shutdown = raw->Shutdown();
    stats = raw->GetStats().status();
    sync = raw->SyncRegion(id);
    unmap = raw->UnmapRegion(id);
    map = raw->MapRegion(Region("cb2"));
  });
  EXPECT_TRUE(on_engine);
  EXPECT_TRUE(absl::IsFailedPrecondition(shutdown)) << shutdown;
  EXPECT_TRUE(absl::IsFailedPrecondition(stats)) << stats;
  EXPECT_TRUE(absl::IsFailedPrecondition(sync)) << sync;
  EXPECT_TRUE(absl::IsFailedPrecondition(unmap)) << unmap;
  EXPECT_TRUE(absl::IsFailedPrecondition(map.status())) << map.status();
  // The refused calls changed nothing: the node still works and shuts down normally.
  EXPECT_TRUE(e->SyncRegion(id).ok());
  EXPECT_TRUE(e->GetStats().ok());
  EXPECT_TRUE(e->Shutdown().ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(e->GetStats().status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(e->MapRegion(Region("late")).status()));
}

// Each helper returns before the engine runs what it posted: its frame is gone by then.
absl::Status StatsWhileStalled(Engine& e) { return e.GetStats().status(); }
absl::Status MapWhileStalled(Engine& e) { return e.MapRegion(Region("late-map")).status(); }

TEST(EngineLifetime, ClosuresOutliveCallersWhoGaveUp) {
  START_ENGINE(e, OneNode(absl::Milliseconds(100)));
  const absl::Duration limit = absl::Milliseconds(100) + kEngineSlack;
  // A closure that stalls the engine past the limit (as fdatasync can): its caller gives up,
  // it finishes later and writes its result into state the caller no longer waits on.
  std::atomic<bool> stall_started{false}, stall_finished{false}, dropped_ran{false};
  absl::Status stall_result, stats_result, map_result, dropped_result;
  std::thread staller([&] {
    stall_result = e->RunOnEngine<int>([&stall_started, &stall_finished, limit] {
                      stall_started.store(true);
                      absl::SleepFor(limit + absl::Milliseconds(500));
                      stall_finished.store(true);
                      return absl::StatusOr<int>(7);
                    }).status();
  });
  while (!stall_started.load()) std::this_thread::yield();
  // Posted behind the stall: their callers give up before they start, so they never run.
  std::thread stats_caller([&] { stats_result = StatsWhileStalled(*e); });
  std::thread map_caller([&] { map_result = MapWhileStalled(*e); });
  std::thread dropped_caller([&] {
    dropped_result = e->RunOnEngine([&dropped_ran] {
      dropped_ran.store(true);
      return absl::OkStatus();
    });
  });
  staller.join();
  stats_caller.join();
  map_caller.join();
  dropped_caller.join();
  EXPECT_TRUE(absl::IsDeadlineExceeded(stall_result)) << stall_result;
  EXPECT_TRUE(absl::IsDeadlineExceeded(stats_result)) << stats_result;
  EXPECT_TRUE(absl::IsDeadlineExceeded(map_result)) << map_result;
  EXPECT_TRUE(absl::IsDeadlineExceeded(dropped_result)) << dropped_result;
  // The engine comes back; everything posted before this call has been dealt with by then.
  absl::StatusOr<Stats> stats = e->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_TRUE(stall_finished.load());
  EXPECT_FALSE(dropped_ran.load());
  // The abandoned map never happened: the name is free.
  EXPECT_TRUE(e->MapRegion(Region("late-map")).ok());
  EXPECT_TRUE(e->Shutdown().ok());
}

}  // namespace
}  // namespace dsm
