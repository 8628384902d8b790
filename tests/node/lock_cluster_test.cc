// Byte-range locks and barriers across three dsm nodes: in one process (loopback transport and
// TCP on 127.0.0.1) and as three processes (node_worker over TCP, on loopback and across network
// namespaces), including a holder killed with SIGKILL in the middle of its hold.
//
// No timing assertions: every wait is bounded and fails with a message naming what did not
// happen; a watchdog aborts an in-process test that hangs, naming its step.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "dsm/node.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "node/netns_cluster.h"
#include "node/node_test_util.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr int kNodes = 3;
constexpr absl::Duration kLockWait = absl::Seconds(60);

uint64_t Iters(uint64_t def) {
  const char* e = std::getenv("DSM_TEST_ITERS");
  return e != nullptr ? std::strtoull(e, nullptr, 10) : def;
}

volatile uint64_t* Word(Region* r, uint64_t off) {
  return reinterpret_cast<volatile uint64_t*>(static_cast<uint8_t*>(r->data()) + off);
}

// ---- nodes in one process -----------------------------------------------------------------

class LockClusterTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(
        absl::StrCat(info->test_suite_name(), ".", info->name()), std::chrono::seconds(240));
    Step("starting the cluster");
    absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(GetParam(), kNodes);
    if (!c.ok() && c.status().code() == absl::StatusCode::kPermissionDenied && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
  }

  void TearDown() override {
    Step("tearing down");
    // Non-homes unmap first (home is node 0 in every test here).
    for (int i = static_cast<int>(regions_.size()) - 1; i >= 0; --i) {
      if (regions_[static_cast<size_t>(i)]) {
        absl::Status s = regions_[static_cast<size_t>(i)]->Unmap();
        EXPECT_TRUE(s.ok()) << "Unmap at node " << i << ": " << s;
      }
    }
    regions_.clear();
    cluster_.reset();
    watchdog_.reset();
  }

  void Step(std::string what) {
    if (watchdog_) watchdog_->Step(std::move(what));
  }

  // Maps `name` on every node, home 0.
  void Map(const std::string& name, uint64_t pages) {
    Step("mapping " + name);
    absl::StatusOr<std::vector<std::unique_ptr<Region>>> r =
        cluster_->MapAll({.name = name, .size = pages * kPage, .home = 0});
    ASSERT_TRUE(r.ok()) << r.status();
    regions_ = std::move(*r);
  }
  Region* region(int i) { return regions_[static_cast<size_t>(i)].get(); }
  Node* node(int i) { return cluster_->node(i); }

  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<LocalCluster> cluster_;
  std::vector<std::unique_ptr<Region>> regions_;
};

TEST_P(LockClusterTest, OverlappingExclusiveRangesSerializeAPlainCounter) {
  ASSERT_NO_FATAL_FAILURE(Map("excl", 4));
  // Node i locks [8i, 8i + 64): all three ranges overlap on [16, 64), which holds the counter.
  // The counter is read and written with plain loads and stores: only the lock protects it.
  constexpr uint64_t kCounter = 40;
  constexpr int kThreadsPerNode = 2;
  const uint64_t iters = Iters(20000) / 40;  // 500 per thread by default
  Step("6 threads on 3 nodes increment under the lock");
  std::vector<std::function<void()>> fns;
  std::atomic<int> failures{0};
  for (int n = 0; n < kNodes; ++n) {
    for (int t = 0; t < kThreadsPerNode; ++t) {
      fns.push_back([&, n, t] {
        Region* r = region(n);
        for (uint64_t i = 0; i < iters; ++i) {
          absl::StatusOr<LockGuard> g = r->Lock(8 * static_cast<uint64_t>(n), 64,
                                                LockMode::kExclusive, absl::Now() + kLockWait);
          if (!g.ok()) {
            ADD_FAILURE() << "node " << n << " thread " << t << " iteration " << i << ": "
                          << g.status();
            failures++;
            return;
          }
          const uint64_t v = *Word(r, kCounter);
          if ((i + static_cast<uint64_t>(t)) % 16 == 0) std::this_thread::yield();
          *Word(r, kCounter) = v + 1;
        }
      });
    }
  }
  RunParallel(fns);
  ASSERT_EQ(failures.load(), 0);
  const uint64_t want = kNodes * kThreadsPerNode * iters;
  for (int n = 0; n < kNodes; ++n) {
    absl::StatusOr<LockGuard> g = region(n)->Lock(kCounter, 8, LockMode::kShared);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(*Word(region(n), kCounter), want) << "node " << n << " sees a lost update";
  }
}

TEST_P(LockClusterTest, SharedHoldersCoexistAndAWaitingWriterIsNotStarved) {
  ASSERT_NO_FATAL_FAILURE(Map("shared", 2));
  Step("every node takes a shared lock on [0, 100)");
  std::vector<LockGuard> readers;
  for (int n = 0; n < kNodes; ++n) {
    absl::StatusOr<LockGuard> g =
        region(n)->Lock(0, 100, LockMode::kShared, absl::Now() + kLockWait);
    ASSERT_TRUE(g.ok()) << "node " << n << ": " << g.status();
    EXPECT_FALSE(g->previous_holder_died());
    readers.push_back(std::move(*g));
  }
  Step("an exclusive try-lock overlapping them is refused");
  absl::StatusOr<LockGuard> t = region(1)->TryLock(50, 100, LockMode::kExclusive);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kAborted) << t.status();
  Step("a disjoint exclusive lock is granted while they hold");
  absl::StatusOr<LockGuard> disjoint =
      region(2)->Lock(100, 100, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(disjoint.ok()) << disjoint.status();
  ASSERT_TRUE(disjoint->Unlock().ok());

  Step("node 2 queues an exclusive request behind the readers");
  absl::Notification granted;
  absl::StatusOr<LockHandle> writer = absl::UnknownError("not granted");
  region(2)->LockAsync(0, 8, LockMode::kExclusive, absl::Now() + kLockWait,
                       [&](absl::StatusOr<LockHandle> h) {
                         writer = std::move(h);
                         granted.Notify();
                       });
  // Wait until the arbiter has queued it: a new shared try-lock is refused from then on (it
  // would overtake an earlier conflicting waiter).
  const absl::Time until = absl::Now() + kLockWait;
  absl::StatusOr<LockGuard> late = absl::UnknownError("never tried");
  do {
    late = region(0)->TryLock(0, 8, LockMode::kShared);
    if (late.ok()) {
      ASSERT_TRUE(late->Unlock().ok());
    }
  } while (late.ok() && absl::Now() < until);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kAborted)
      << "a new shared request overtook a waiting writer: " << late.status();
  EXPECT_FALSE(granted.HasBeenNotified()) << "writer granted while three readers hold";

  Step("the readers leave; the writer is granted");
  readers.clear();
  ASSERT_TRUE(granted.WaitForNotificationWithTimeout(kLockWait)) << "writer never granted";
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_FALSE(writer->previous_holder_died());
  EXPECT_TRUE(region(2)->Unlock(*writer).ok());
  EXPECT_EQ(region(2)->Unlock(*writer).code(), absl::StatusCode::kNotFound);
}

TEST_P(LockClusterTest, AsyncRequestPendsWhileTheSameNodeKeepsServingFaults) {
  constexpr uint64_t kPages = 32;
  ASSERT_NO_FATAL_FAILURE(Map("async", kPages + 1));
  Step("node 0 holds [0, 4096) exclusively");
  absl::StatusOr<LockGuard> holder =
      region(0)->Lock(0, kPage, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(holder.ok()) << holder.status();

  Step("node 1 asks for it asynchronously");
  absl::Notification done;
  std::thread::id callback_thread;
  absl::Status unlock_in_callback = absl::UnknownError("callback did not run");
  std::optional<LockHandle> got;
  std::vector<std::thread::id> app_threads = {std::this_thread::get_id()};
  const uint64_t id = region(1)->LockAsync(
      0, kPage, LockMode::kExclusive, absl::Now() + kLockWait,
      [&](absl::StatusOr<LockHandle> h) {
        callback_thread = std::this_thread::get_id();
        if (h.ok()) {
          got = *h;
          // The engine thread may release from inside the callback.
          unlock_in_callback = region(1)->Unlock(*h);
        } else {
          unlock_in_callback = h.status();
        }
        done.Notify();
      });
  EXPECT_NE(id, 0u);

  Step("node 1's threads fault pages in while the request pends");
  // Pages 1..32: node 2 writes them first so node 1's accesses are remote faults and recalls.
  FillPattern(static_cast<uint8_t*>(region(2)->data()) + kPage, kPages * kPage, 9, kPage);
  std::optional<std::string> bad[2];
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; ++t) {
    ts.emplace_back([&, t] {
      uint8_t* base = static_cast<uint8_t*>(region(1)->data());
      const uint64_t first = 1 + static_cast<uint64_t>(t) * kPages / 2;
      bad[t] = CheckPattern(base + first * kPage, kPages / 2 * kPage, 9, first * kPage);
      if (!bad[t]) FillPattern(base + first * kPage, kPages / 2 * kPage, 10, first * kPage);
    });
  }
  for (auto& t : ts) app_threads.push_back(t.get_id());
  for (auto& t : ts) t.join();
  EXPECT_FALSE(bad[0]) << *bad[0];
  EXPECT_FALSE(bad[1]) << *bad[1];
  EXPECT_FALSE(done.HasBeenNotified()) << "granted while node 0 still holds the range";
  auto check2 = CheckPattern(static_cast<uint8_t*>(region(2)->data()) + kPage, kPages * kPage,
                             10, kPage);
  EXPECT_FALSE(check2) << "node 2 reading what node 1 wrote: " << *check2;
  EXPECT_GT(node(1)->GetStats().value().read_faults, 0u) << "node 1 served no remote faults";

  Step("node 0 releases; node 1's callback runs on its engine thread");
  ASSERT_TRUE(holder->Unlock().ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kLockWait)) << "async grant never came";
  ASSERT_TRUE(got.has_value()) << unlock_in_callback;
  EXPECT_EQ(got->id(), id);
  for (const std::thread::id& t : app_threads) {
    EXPECT_NE(callback_thread, t) << "the callback ran on an application thread";
  }
  EXPECT_TRUE(unlock_in_callback.ok()) << unlock_in_callback;
  Step("the range is free again");
  // Node 1's release travels node 1 -> arbiter while node 2's try travels node 2 -> arbiter:
  // nothing orders the two, so a refusal (Aborted) before the release lands is legitimate.
  absl::StatusOr<LockGuard> again = region(2)->TryLock(0, kPage, LockMode::kExclusive);
  const absl::Time until = absl::Now() + kLockWait;
  while (!again.ok() && absl::IsAborted(again.status()) && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(1));
    again = region(2)->TryLock(0, kPage, LockMode::kExclusive);
  }
  EXPECT_TRUE(again.ok()) << again.status();
}

// Node 0 is the region's arbiter and holds the lock; node 1's request queues behind it alone,
// so the arbiter names node 1 to node 0's lock (delivered locally before node 1 hears that it
// is queued) and node 0's release grants node 1 directly: one message.
TEST_P(LockClusterTest, AContendedReleaseHandsTheLockOverInOneMessage) {
  ASSERT_NO_FATAL_FAILURE(Map("handoff", 1));
  Step("node 0 holds [0, 64)");
  absl::StatusOr<LockGuard> holder =
      region(0)->Lock(0, 64, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(holder.ok()) << holder.status();
  const uint64_t handoffs_before = node(1)->GetStats().value().lock_handoffs;
  const uint64_t queued_before = node(1)->GetStats().value().locks_queued;
  Step("node 1 asks and is queued");
  absl::Notification done;
  absl::StatusOr<LockHandle> got = absl::UnknownError("callback did not run");
  region(1)->LockAsync(0, 64, LockMode::kExclusive, absl::Now() + kLockWait,
                       [&](absl::StatusOr<LockHandle> h) {
                         got = std::move(h);
                         done.Notify();
                       });
  while (node(1)->GetStats().value().locks_queued == queued_before) {
    absl::SleepFor(absl::Milliseconds(1));  // the watchdog bounds this wait
  }
  Step("node 0 releases: node 1 is granted by node 0 directly");
  ASSERT_TRUE(holder->Unlock().ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kLockWait)) << "grant never came";
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(node(1)->GetStats().value().lock_handoffs, handoffs_before + 1);
  EXPECT_TRUE(region(1)->Unlock(*got).ok());
}

TEST_P(LockClusterTest, CancelDeadlineAndBadRanges) {
  ASSERT_NO_FATAL_FAILURE(Map("errors", 1));
  absl::StatusOr<LockGuard> holder = region(0)->Lock(0, 16, LockMode::kExclusive);
  ASSERT_TRUE(holder.ok()) << holder.status();
  Step("a request that cannot be granted in time fails with DeadlineExceeded");
  absl::StatusOr<LockGuard> late =
      region(1)->Lock(0, 16, LockMode::kShared, absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  Step("a pending request is cancelled");
  absl::Notification done;
  absl::Status outcome;
  const uint64_t id = region(2)->LockAsync(0, 4, LockMode::kExclusive, absl::InfiniteFuture(),
                                           [&](absl::StatusOr<LockHandle> h) {
                                             outcome = h.status();
                                             done.Notify();
                                           });
  EXPECT_TRUE(region(2)->Cancel(id).ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kLockWait));
  EXPECT_EQ(outcome.code(), absl::StatusCode::kCancelled) << outcome;
  Step("ranges outside the region are refused");
  EXPECT_EQ(region(1)->Lock(kPage - 4, 8, LockMode::kShared).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(region(1)->Lock(0, 0, LockMode::kShared).status().code(),
            absl::StatusCode::kInvalidArgument);
  Step("the holder still holds; after it unlocks, the range is free");
  EXPECT_EQ(region(1)->TryLock(0, 1, LockMode::kShared).status().code(),
            absl::StatusCode::kAborted);
  ASSERT_TRUE(holder->Unlock().ok());
  EXPECT_TRUE(region(1)->TryLock(0, 16, LockMode::kExclusive).ok());
  Step("node 1's Stats count its lock traffic");
  const Stats s1 = node(1)->GetStats().value();
  EXPECT_EQ(s1.lock_requests, 5u);  // late, two bad ranges, the busy try, the last try
  EXPECT_EQ(s1.locks_granted, 1u);
  EXPECT_GE(s1.locks_queued, 1u);   // `late` waited at the arbiter before its deadline
  EXPECT_EQ(s1.locks_failed, 4u);
  EXPECT_EQ(s1.locks_lost, 0u);
}

// A guard may outlive its Region (destroyed or unmapped) and its Node: the unmap or the
// shutdown released the lock, Unlock() says so, and destruction is harmless (ASan-checked).
TEST_P(LockClusterTest, GuardsOutliveTheirRegionAndTheirNode) {
  ASSERT_NO_FATAL_FAILURE(Map("outlive", 1));
  const absl::StatusCode kGone = absl::StatusCode::kFailedPrecondition;
  absl::StatusOr<LockGuard> g1 =
      region(1)->Lock(0, 8, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(g1.ok()) << g1.status();
  absl::StatusOr<LockGuard> g2 =
      region(2)->Lock(16, 8, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(g2.ok()) << g2.status();
  absl::StatusOr<LockGuard> g1_dropped_late =
      region(1)->Lock(64, 8, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(g1_dropped_late.ok()) << g1_dropped_late.status();

  Step("node 1 destroys its Region while holding two locks");
  regions_[1].reset();
  for (uint64_t off : {0, 64}) {
    absl::StatusOr<LockGuard> next =
        region(0)->Lock(off, 8, LockMode::kExclusive, absl::Now() + kLockWait);
    ASSERT_TRUE(next.ok()) << "range at " << off << " not released by the unmap: "
                           << next.status();
  }
  EXPECT_TRUE(g1->owns_lock());
  EXPECT_EQ(g1->Unlock().code(), kGone);
  EXPECT_FALSE(g1->owns_lock());

  Step("node 2 unmaps its Region (which stays) while holding");
  ASSERT_TRUE(regions_[2]->Unmap().ok());
  EXPECT_EQ(g2->Unlock().code(), kGone);
  absl::StatusOr<LockGuard> after2 =
      region(0)->Lock(16, 8, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(after2.ok()) << after2.status();
  ASSERT_TRUE(after2->Unlock().ok());

  Step("the cluster shuts down while node 0 holds two locks");
  absl::StatusOr<LockGuard> g0 =
      region(0)->Lock(32, 8, LockMode::kExclusive, absl::Now() + kLockWait);
  ASSERT_TRUE(g0.ok()) << g0.status();
  absl::StatusOr<LockGuard> g0_dropped_late =
      region(0)->Lock(48, 8, LockMode::kShared, absl::Now() + kLockWait);
  ASSERT_TRUE(g0_dropped_late.ok()) << g0_dropped_late.status();
  cluster_.reset();
  EXPECT_EQ(g0->Unlock().code(), absl::StatusCode::kUnavailable);
  regions_.clear();  // Unmap after the shutdown: nothing left to do, not an error
  // g1_dropped_late and g0_dropped_late are destroyed here, after their regions and nodes.
}

TEST_P(LockClusterTest, BarriersOfAllNodesAndOfANamedGroup) {
  ASSERT_NO_FATAL_FAILURE(Map("barrier", 1));
  constexpr int kRounds = 20;
  Step("all nodes, 20 generations: nobody leaves before everyone arrived");
  std::atomic<int> failures{0};
  std::vector<std::function<void()>> fns;
  for (int n = 0; n < kNodes; ++n) {
    fns.push_back([&, n] {
      for (int round = 0; round < kRounds; ++round) {
        __atomic_fetch_add(const_cast<uint64_t*>(Word(region(n), 0)), 1, __ATOMIC_ACQ_REL);
        absl::Status s = node(n)->Barrier("all", {}, absl::Now() + kLockWait);
        if (!s.ok()) {
          ADD_FAILURE() << "node " << n << " round " << round << ": " << s;
          failures++;
          return;
        }
        const uint64_t seen =
            __atomic_load_n(const_cast<uint64_t*>(Word(region(n), 0)), __ATOMIC_ACQUIRE);
        if (seen < static_cast<uint64_t>(kNodes * (round + 1))) {
          ADD_FAILURE() << "node " << n << " left round " << round << " having seen " << seen
                        << " arrivals";
          failures++;
          return;
        }
        // Second barrier: nobody starts round+1's increment before all checked round.
        s = node(n)->Barrier("all-2", {}, absl::Now() + kLockWait);
        if (!s.ok()) {
          ADD_FAILURE() << "node " << n << " round " << round << " (second barrier): " << s;
          failures++;
          return;
        }
      }
    });
  }
  RunParallel(fns);
  EXPECT_EQ(failures.load(), 0);

  Step("a named group {0, 2} meets without node 1");
  RunParallel({[&] {
                 EXPECT_TRUE(node(0)->Barrier("pair", {0, 2}, absl::Now() + kLockWait).ok());
               },
               [&] {
                 EXPECT_TRUE(node(2)->Barrier("pair", {2, 0}, absl::Now() + kLockWait).ok());
               }});
  Step("a node outside the group, and a bad member, are refused");
  EXPECT_EQ(node(1)->Barrier("pair", {0, 2}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(node(1)->Barrier("bad", {1, 7}).code(), absl::StatusCode::kInvalidArgument);
  Step("a lone member's deadline passes");
  EXPECT_EQ(node(1)->Barrier("lonely", {0, 1}, absl::Now() + absl::Milliseconds(100)).code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_P(LockClusterTest, UnnamedBarrierOfEveryNodeAndErrorsNamingTheMissing) {
  ASSERT_NO_FATAL_FAILURE(Map("unnamed-barrier", 1));
  Step("the unnamed barrier of every node, 5 generations");
  for (int round = 0; round < 5; ++round) {
    std::vector<std::function<void()>> fns;
    for (int n = 0; n < kNodes; ++n) {
      fns.push_back([&, n, round] {
        __atomic_fetch_add(const_cast<uint64_t*>(Word(region(n), 0)), 1, __ATOMIC_ACQ_REL);
        absl::Status s = node(n)->Barrier(absl::Now() + kLockWait);
        EXPECT_TRUE(s.ok()) << "node " << n << ": " << s;
        EXPECT_GE(__atomic_load_n(const_cast<uint64_t*>(Word(region(n), 0)), __ATOMIC_ACQUIRE),
                  static_cast<uint64_t>(kNodes * (round + 1)));
      });
    }
    RunParallel(fns);
    RunParallel({[&] { EXPECT_TRUE(node(0)->Barrier(absl::Now() + kLockWait).ok()); },
                 [&] { EXPECT_TRUE(node(1)->Barrier(absl::Now() + kLockWait).ok()); },
                 [&] { EXPECT_TRUE(node(2)->Barrier(absl::Now() + kLockWait).ok()); }});
  }

  Step("node 2 stays away: the deadline error names it, the other waiter's error too");
  absl::Status s0, s1;
  RunParallel({[&] { s0 = node(0)->Barrier(absl::Now() + kLockWait); },
               [&] { s1 = node(1)->Barrier(absl::Now() + absl::Seconds(3)); }});
  EXPECT_EQ(s1.code(), absl::StatusCode::kDeadlineExceeded) << s1;
  EXPECT_THAT(std::string(s1.message()),
              HasSubstr("deadline passed; not entered: node 2 (entered: nodes 0, 1)"));
  EXPECT_EQ(s0.code(), absl::StatusCode::kAborted) << s0;
  EXPECT_THAT(std::string(s0.message()), HasSubstr("not entered: node 2 (entered: nodes 0, 1)"));

  Step("node 2's late attempt at the abandoned generation fails; then all meet again");
  EXPECT_EQ(node(2)->Barrier(absl::Now() + kLockWait).code(), absl::StatusCode::kAborted);
  RunParallel({[&] { EXPECT_TRUE(node(0)->Barrier(absl::Now() + kLockWait).ok()); },
               [&] { EXPECT_TRUE(node(1)->Barrier(absl::Now() + kLockWait).ok()); },
               [&] { EXPECT_TRUE(node(2)->Barrier(absl::Now() + kLockWait).ok()); }});

  Step("the library's barrier names are refused to applications");
  EXPECT_EQ(node(0)->Barrier("dsm.all", {}, absl::Now() + kLockWait).code(),
            absl::StatusCode::kInvalidArgument);
}

// What a holder wrote before Unlock is what the next holder reads after Lock, on every node,
// for many hand-offs. The writer puts a garbage value first, so a reader that were not excluded
// could see it.
TEST_P(LockClusterTest, DataWrittenBeforeUnlockIsSeenByTheNextHolder) {
  constexpr uint64_t kWords = 4;  // on 4 different pages
  ASSERT_NO_FATAL_FAILURE(Map("order", kWords + 2));
  const uint64_t rounds = Iters(20000) / 400;  // 50 turns per node by default
  constexpr uint64_t kTurn = kPage;            // word: the turn; data on pages 2..5
  Step("3 nodes take turns under one lock");
  std::vector<std::function<void()>> fns;
  std::atomic<int> failures{0};
  for (int n = 0; n < kNodes; ++n) {
    fns.push_back([&, n] {
      Region* r = region(n);
      const absl::Time deadline = absl::Now() + absl::Seconds(120);
      for (;;) {
        absl::StatusOr<LockGuard> g = r->Lock(0, 8, LockMode::kExclusive, deadline);
        if (!g.ok()) {
          ADD_FAILURE() << "node " << n << ": " << g.status();
          failures++;
          return;
        }
        const uint64_t turn = *Word(r, kTurn);
        for (uint64_t k = 0; k < kWords; ++k) {
          const uint64_t v = *Word(r, kTurn + (k + 1) * kPage);
          if (v != turn) {
            ADD_FAILURE() << "node " << n << " turn " << turn << ": data word " << k << " is "
                          << v << " under the lock";
            failures++;
            return;
          }
        }
        if (turn >= kNodes * rounds) return;
        if (turn % kNodes == static_cast<uint64_t>(n)) {
          for (uint64_t k = 0; k < kWords; ++k) *Word(r, kTurn + (k + 1) * kPage) = ~turn;
          for (uint64_t k = 0; k < kWords; ++k) *Word(r, kTurn + (k + 1) * kPage) = turn + 1;
          *Word(r, kTurn) = turn + 1;
        } else {
          (void)g->Unlock();
          std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
      }
    });
  }
  RunParallel(fns);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(*Word(region(1), kTurn), kNodes * rounds);
}

// Unlock of a lock held at another node's arbiter is decided on the calling thread (the node
// recorded the grant before handing it out). A second Unlock of the same handle must still be
// kNotFound, and the next holder on a third node must get the range every time.
TEST_P(LockClusterTest, AnUnlockDecidedOnTheCallingThreadIsDecidedOnce) {
  ASSERT_NO_FATAL_FAILURE(Map("once", 1));
  Step("node 1 unlocks each handle twice; node 2 takes the range after each");
  for (int i = 0; i < 50; ++i) {
    absl::StatusOr<LockGuard> g =
        region(1)->Lock(0, 8, LockMode::kExclusive, absl::Now() + kLockWait);
    ASSERT_TRUE(g.ok()) << "round " << i << ": " << g.status();
    const LockHandle h = g->Release();
    EXPECT_TRUE(region(1)->Unlock(h).ok()) << "round " << i;
    EXPECT_EQ(region(1)->Unlock(h).code(), absl::StatusCode::kNotFound) << "round " << i;
    EXPECT_EQ(region(1)->Cancel(h.id()).code(), absl::StatusCode::kNotFound) << "round " << i;
    absl::StatusOr<LockGuard> next =
        region(2)->Lock(0, 8, LockMode::kExclusive, absl::Now() + kLockWait);
    ASSERT_TRUE(next.ok()) << "round " << i << ": the release never reached the arbiter: "
                           << next.status();
    ASSERT_TRUE(next->Unlock().ok());
  }
}

// Unlock on one thread races the region's Unmap on another, on the same node: whichever the
// node sees first, the lock is released at the arbiter exactly once (the next holder gets the
// range; a lock leaked by the race would leave it waiting until its deadline), and Unlock
// answers OK (it came first) or kFailedPrecondition (the unmap released it).
TEST_P(LockClusterTest, AnUnlockRacingTheRegionsUnmapReleasesTheLockOnce) {
  for (int round = 0; round < 20; ++round) {
    ASSERT_NO_FATAL_FAILURE(Map(absl::StrCat("race", round), 1));
    absl::StatusOr<LockGuard> g =
        region(1)->Lock(0, 8, LockMode::kExclusive, absl::Now() + kLockWait);
    ASSERT_TRUE(g.ok()) << "round " << round << ": " << g.status();
    Step(absl::StrCat("round ", round, ": unlock and unmap at once on node 1"));
    std::atomic<bool> go{false};
    absl::Status unlocked, unmapped;
    std::thread a([&] {
      while (!go.load()) {
      }
      unlocked = g->Unlock();
    });
    std::thread b([&] {
      while (!go.load()) {
      }
      unmapped = regions_[1]->Unmap();
    });
    go.store(true);
    a.join();
    b.join();
    EXPECT_TRUE(unmapped.ok()) << unmapped;
    EXPECT_TRUE(unlocked.ok() || unlocked.code() == absl::StatusCode::kFailedPrecondition)
        << unlocked;
    absl::StatusOr<LockGuard> next =
        region(2)->Lock(0, 8, LockMode::kExclusive, absl::Now() + kLockWait);
    ASSERT_TRUE(next.ok()) << "round " << round << ": " << next.status();
    ASSERT_TRUE(next->Unlock().ok());
    for (int i = kNodes - 1; i >= 0; --i) {
      ASSERT_TRUE(regions_[static_cast<size_t>(i)]->Unmap().ok()) << "node " << i;
    }
    regions_.clear();
  }
}

// Polls `r`'s stats until `done` holds or 30 s pass; returns the last stats read.
Stats WaitForStats(Region* r, const std::function<bool(const Stats&)>& done) {
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  Stats s;
  for (;;) {
    absl::StatusOr<Stats> got = r->GetStats();
    EXPECT_TRUE(got.ok()) << got.status();
    if (got.ok()) s = *got;
    if (!got.ok() || done(s) || absl::Now() > give_up) return s;
    std::this_thread::sleep_for(milliseconds(1));
  }
}

// A lock granted with its pages (LockOptions::with_pages): the pages arrive, in the mode the
// lock needs, without the holder touching them; its accesses then take no fault and see what
// the previous holder wrote.
TEST_P(LockClusterTest, ALockGrantedWithItsPagesMapsThemBeforeTheFirstAccess) {
  ASSERT_NO_FATAL_FAILURE(Map("with_pages", 8));
  constexpr uint64_t kPages = 4;
  Step("node 1 writes pages 0..3 under a plain lock");
  {
    absl::StatusOr<LockGuard> g =
        region(1)->Lock(0, kPages * kPage, LockMode::kExclusive, absl::Now() + kLockWait);
    ASSERT_TRUE(g.ok()) << g.status();
    for (uint64_t p = 0; p < kPages; ++p) *Word(region(1), p * kPage + 8) = 100 + p;
  }
  Step("node 2 takes an exclusive lock over them with its pages");
  LockOptions with_pages;
  with_pages.deadline = absl::Now() + kLockWait;
  with_pages.with_pages = true;
  absl::StatusOr<LockGuard> g =
      region(2)->Lock(0, kPages * kPage, LockMode::kExclusive, with_pages);
  ASSERT_TRUE(g.ok()) << g.status();
  Stats s = WaitForStats(region(2), [](const Stats& x) { return x.pages_modified >= kPages; });
  ASSERT_EQ(s.pages_modified, kPages) << "the pages never arrived writable";
  EXPECT_EQ(s.lock_page_fetches, kPages);
  EXPECT_EQ(s.write_faults + s.read_faults, 0u);
  for (uint64_t p = 0; p < kPages; ++p) {
    EXPECT_EQ(*Word(region(2), p * kPage + 8), 100 + p) << "page " << p;
    *Word(region(2), p * kPage + 8) = 200 + p;
  }
  absl::StatusOr<Stats> after = region(2)->GetStats();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->write_faults + after->read_faults, 0u) << "the holder still faulted";
  ASSERT_TRUE(g->Unlock().ok());

  Step("node 1 takes a shared lock over pages 0..5 with its pages");
  absl::StatusOr<Stats> before = region(1)->GetStats();
  ASSERT_TRUE(before.ok()) << before.status();
  with_pages.deadline = absl::Now() + kLockWait;
  absl::StatusOr<LockGuard> r =
      region(1)->Lock(0, (kPages + 2) * kPage, LockMode::kShared, with_pages);
  ASSERT_TRUE(r.ok()) << r.status();
  s = WaitForStats(region(1), [](const Stats& x) { return x.pages_shared >= kPages + 2; });
  ASSERT_EQ(s.pages_shared, kPages + 2) << "the pages never arrived readable";
  EXPECT_EQ(s.pages_modified, 0u);
  for (uint64_t p = 0; p < kPages; ++p) {
    EXPECT_EQ(*Word(region(1), p * kPage + 8), 200 + p) << "page " << p;
  }
  EXPECT_EQ(*Word(region(1), (kPages + 1) * kPage + 8), 0u);
  absl::StatusOr<Stats> read = region(1)->GetStats();
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->read_faults, before->read_faults) << "the reader still faulted";
  EXPECT_EQ(read->lock_page_fetches - before->lock_page_fetches, kPages + 2);
}

std::string TransportName(const ::testing::TestParamInfo<TransportKind>& info) {
  return info.param == TransportKind::kLoopback ? "Loopback" : "Tcp";
}

INSTANTIATE_TEST_SUITE_P(Transports, LockClusterTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         TransportName);

// ---- nodes as processes -------------------------------------------------------------------

constexpr milliseconds kReply{90000};

enum class Net { kLoopbackTcp, kNamespaces };

class LockProcessTest : public ::testing::TestWithParam<Net> {
 protected:
  void SetUp() override {
    if (GetParam() == Net::kNamespaces) {
      if (std::string why = NetnsCluster::Unavailable(); !why.empty()) GTEST_SKIP() << why;
    }
  }
  void TearDown() override {
    Stop();
    net_.reset();
  }

  // Starts 3 workers mapping region `name` (`pages` pages, home 0), lock grace 500 ms.
  void Start(const std::string& name, uint64_t pages) {
    if (GetParam() == Net::kNamespaces && !net_) {
      absl::StatusOr<std::unique_ptr<NetnsCluster>> net = NetnsCluster::Create(kNodes);
      ASSERT_TRUE(net.ok()) << net.status();
      net_ = std::move(*net);
    }
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::vector<std::string> peers;
      if (net_) {
        for (int i = 0; i < kNodes; ++i) peers.push_back(net_->address(i) + ":7000");
      } else {
        for (int port : PickFreePorts(kNodes)) peers.push_back(absl::StrCat("127.0.0.1:", port));
      }
      workers_.clear();
      for (int i = 0; i < kNodes; ++i) {
        std::vector<std::string> argv = {
            DSM_NODE_WORKER, "--id", std::to_string(i), "--peers", absl::StrJoin(peers, ","),
            "--region", name, "--size", std::to_string(pages * kPage), "--home", "0",
            "--peer-timeout-ms", "2000", "--lock-grace-ms", "500"};
        absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
            {.argv = argv, .netns = net_ ? net_->ns(i) : "", .label = absl::StrCat("node", i)});
        ASSERT_TRUE(p.ok()) << p.status();
        workers_.push_back(std::move(*p));
      }
      const WorkersStart started = AwaitWorkersReady(workers_, kReply, /*may_collide=*/!net_);
      if (started.outcome == WorkersStart::kReady) return;
      if (started.outcome == WorkersStart::kUffdUnavailable) {
        GTEST_SKIP() << "userfaultfd unavailable: " << started.errors;
      }
      if (started.outcome == WorkersStart::kFailed) {
        FAIL() << "workers did not start: " << started.errors;
      }
    }
    FAIL() << "ports kept colliding";
  }

  std::string Call(int i, const std::string& cmd) {
    absl::StatusOr<std::string> r = workers_[static_cast<size_t>(i)]->Call(cmd, kReply);
    EXPECT_TRUE(r.ok()) << "node" << i << " '" << cmd << "': " << r.status();
    return r.ok() ? *r : "";
  }
  void Send(int i, const std::string& cmd) {
    absl::Status s = workers_[static_cast<size_t>(i)]->SendLine(cmd);
    EXPECT_TRUE(s.ok()) << s;
  }
  std::string Read(int i, const std::string& what) {
    absl::StatusOr<std::string> r = workers_[static_cast<size_t>(i)]->ReadLine(kReply);
    EXPECT_TRUE(r.ok()) << "node" << i << " " << what << ": " << r.status();
    return r.ok() ? *r : "";
  }
  std::vector<std::string> CallAll(const std::vector<std::pair<int, std::string>>& cmds) {
    for (const auto& [i, c] : cmds) Send(i, c);
    std::vector<std::string> out;
    for (const auto& [i, c] : cmds) out.push_back(Read(i, "'" + c + "'"));
    return out;
  }
  // "ok <id> died=<d>" -> id.
  static std::string IdOf(const std::string& reply) {
    std::vector<std::string> parts = absl::StrSplit(reply, ' ');
    return parts.size() >= 2 ? parts[1] : "?";
  }

  // Non-homes leave first, then the home; killed workers are only reaped.
  void Stop() {
    for (int i : {2, 1, 0}) {
      if (static_cast<size_t>(i) >= workers_.size()) continue;
      Subprocess* w = workers_[static_cast<size_t>(i)].get();
      if (killed_.count(i)) {
        (void)w->Wait(milliseconds(10000));
        continue;
      }
      (void)w->SendLine("quit");
      absl::StatusOr<std::string> bye = w->ReadLine(kReply);
      EXPECT_TRUE(bye.ok() && *bye == "bye")
          << w->label() << " did not leave cleanly: " << (bye.ok() ? *bye : bye.status().ToString());
      absl::StatusOr<int> st = w->Wait(milliseconds(30000));
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
          << w->label() << ": " << DescribeWaitStatus(*st) << "\ntranscript:\n"
          << w->transcript();
    }
    workers_.clear();
  }

  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::unique_ptr<NetnsCluster> net_;
  std::set<int> killed_;
};

TEST_P(LockProcessTest, ExclusiveLocksGiveAnExactPlainCounterAcrossProcesses) {
  Start("pcounter", 4);
  const uint64_t iters = Iters(20000) / 40;
  // Overlapping ranges [0, 64), [8, 72), [16, 80); the counter at 40 is in all of them.
  std::vector<std::string> r = CallAll({{0, absl::StrCat("lockincr 0 64 40 2 ", iters)},
                                        {1, absl::StrCat("lockincr 8 64 40 2 ", iters)},
                                        {2, absl::StrCat("lockincr 16 64 40 2 ", iters)}});
  for (int i = 0; i < kNodes; ++i) EXPECT_EQ(r[static_cast<size_t>(i)], "ok") << "node" << i;
  for (int i = 0; i < kNodes; ++i) {
    EXPECT_EQ(Call(i, "read64 40"), absl::StrCat("ok ", kNodes * 2 * iters)) << "node" << i;
  }
}

TEST_P(LockProcessTest, SharedHoldersCoexistAcrossProcesses) {
  Start("pshared", 2);
  for (int i = 0; i < kNodes; ++i) EXPECT_THAT(Call(i, "lock 0 100 s 30000"), StartsWith("ok "));
  EXPECT_THAT(Call(1, "trylock 0 1 x"), StartsWith("fail ABORTED"));
  EXPECT_THAT(Call(2, "trylock 64 64 s"), StartsWith("ok "));
}

TEST_P(LockProcessTest, AsyncRequestPendsWhileTheNodeServesFaults) {
  Start("pasync", 34);
  const std::string held = Call(0, "lock 0 4096 x");
  ASSERT_THAT(held, StartsWith("ok "));
  const std::string key = IdOf(Call(1, "lockasync 0 4096 x"));
  // While node 1's request pends, its threads fault 32 pages written by node 2.
  EXPECT_EQ(Call(2, "fill 1 32 5"), "ok");
  EXPECT_EQ(Call(1, "check 1 32 5"), "ok");
  EXPECT_EQ(Call(1, "fill 1 32 6"), "ok");
  EXPECT_EQ(Call(1, "asyncstate " + key), "ok pending");
  EXPECT_EQ(Call(2, "check 1 32 6"), "ok");
  EXPECT_EQ(Call(0, "unlock " + IdOf(held)), "ok");
  const std::string got = Call(1, "asyncwait " + key + " 60000");
  EXPECT_THAT(got, StartsWith("ok "));
  EXPECT_THAT(got, HasSubstr("died=0"));
  EXPECT_EQ(Call(1, "unlock " + IdOf(got)), "ok");
}

TEST_P(LockProcessTest, AKilledHoldersLocksPassToWaitersWhoAreTold) {
  Start("pkill", 2);
  // Node 1 holds [0, 64) exclusively and is killed with it.
  ASSERT_THAT(Call(1, "lock 0 64 x"), StartsWith("ok "));
  // Node 2 waits for an overlapping exclusive lock, node 0 for an overlapping shared one.
  const std::string key2 = IdOf(Call(2, "lockasync 32 64 x"));
  const std::string key0 = IdOf(Call(0, "lockasync 0 16 s"));
  EXPECT_EQ(Call(2, "asyncstate " + key2), "ok pending");
  EXPECT_EQ(Call(0, "asyncstate " + key0), "ok pending");
  workers_[1]->Kill(SIGKILL);
  killed_.insert(1);
  // Node 2 is granted after node 1 is declared down (its connection breaks) plus the grace,
  // and is told the previous holder died (bytes [32, 64) were held exclusively by it).
  const std::string got2 = Call(2, "asyncwait " + key2 + " 60000");
  EXPECT_THAT(got2, StartsWith("ok "));
  EXPECT_THAT(got2, HasSubstr("died=1"));
  // Node 0's shared request on [0, 16) overlaps bytes the dead node held exclusively that no
  // exclusive grant has covered since: it is told too.
  const std::string got0 = Call(0, "asyncwait " + key0 + " 60000");
  EXPECT_THAT(got0, StartsWith("ok "));
  EXPECT_THAT(got0, HasSubstr("died=1"));
  EXPECT_EQ(Call(2, "unlock " + IdOf(got2)), "ok");
  EXPECT_EQ(Call(0, "unlock " + IdOf(got0)), "ok");
  // An exclusive grant over [0, 64) clears the mark: its holder was told (and repairs).
  const std::string repair = Call(2, "lock 0 64 x 60000");
  EXPECT_THAT(repair, HasSubstr("died=1"));
  EXPECT_EQ(Call(2, "unlock " + IdOf(repair)), "ok");
  EXPECT_THAT(Call(0, "lock 0 64 s 60000"), HasSubstr("died=0"));
  // Barriers of all nodes now fail (a member is down); a group of the survivors still meets.
  EXPECT_THAT(Call(0, "cbarrier all all 30000"), StartsWith("fail UNAVAILABLE"));
  std::vector<std::string> r = CallAll({{0, "cbarrier two 0,2 30000"}, {2, "cbarrier two 0,2 30000"}});
  EXPECT_EQ(r[0], "ok");
  EXPECT_EQ(r[1], "ok");
}

TEST_P(LockProcessTest, BarriersAndAcquireReleaseOrderAcrossProcesses) {
  Start("porder", 8);
  for (int round = 0; round < 5; ++round) {
    std::vector<std::string> r =
        CallAll({{0, "cbarrier all all 30000"}, {1, "cbarrier all all 30000"},
                 {2, "cbarrier all all 30000"}});
    for (int i = 0; i < kNodes; ++i) {
      EXPECT_EQ(r[static_cast<size_t>(i)], "ok") << "node" << i << " round " << round;
    }
  }
  std::vector<std::string> g = CallAll({{1, "cbarrier pair 1,2 30000"}, {2, "cbarrier pair 1,2 30000"}});
  EXPECT_EQ(g[0], "ok");
  EXPECT_EQ(g[1], "ok");
  // Turns under one lock; data on pages 2..5 (see lockseq in worker_locks.h).
  const uint64_t rounds = Iters(20000) / 400;
  std::vector<std::string> r;
  for (int i = 0; i < kNodes; ++i) {
    Send(i, absl::StrCat("lockseq 0 ", i, " 3 ", rounds, " 4096 4 120000"));
  }
  for (int i = 0; i < kNodes; ++i) {
    EXPECT_THAT(Read(i, "lockseq"), StartsWith("ok looks=")) << "node" << i;
  }
  EXPECT_EQ(Call(2, "read64 4096"), absl::StrCat("ok ", 3 * rounds));
}

std::string NetName(const ::testing::TestParamInfo<Net>& info) {
  return info.param == Net::kLoopbackTcp ? "LoopbackTcp" : "Namespaces";
}

INSTANTIATE_TEST_SUITE_P(Networks, LockProcessTest,
                         ::testing::Values(Net::kLoopbackTcp, Net::kNamespaces), NetName);

}  // namespace
}  // namespace dsm::testing
