// EventLoop's posted tasks and timers: a task posted from another thread wakes a sleeping
// Poll(); a task posted from inside the loop's own Poll() (which writes no eventfd) runs in
// the next Poll() before it would wait; a loop destroyed and another created at the same
// address by the same thread is woken again by that thread's posts.
//
// Waits are bounded by generous timeouts (seconds, for work of microseconds): a test that
// reaches one has found a lost wake-up, which would otherwise hang an engine thread until its
// next tick.
#include "transport/event_loop.h"

#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace dsm {
namespace {

constexpr absl::Duration kLongWait = absl::Seconds(20);

std::unique_ptr<EventLoop> NewLoop() {
  absl::StatusOr<std::unique_ptr<EventLoop>> l = EventLoop::Create();
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? std::move(*l) : nullptr;
}

// Polls (no spin) until `done` or `limit` passes; returns how long it took.
absl::Duration PollUntil(EventLoop& loop, const std::atomic<bool>& done, absl::Duration limit) {
  const absl::Time start = absl::Now();
  while (!done.load() && absl::Now() - start < limit) loop.Poll(absl::ZeroDuration(), limit);
  return absl::Now() - start;
}

TEST(EventLoop, APostFromAnotherThreadWakesASleepingPoll) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  std::atomic<bool> ran{false};
  std::thread poster([&] {
    absl::SleepFor(absl::Milliseconds(20));  // let the loop go to sleep first
    loop->Post([&] { ran.store(true); });
  });
  const absl::Duration took = PollUntil(*loop, ran, kLongWait);
  poster.join();
  EXPECT_TRUE(ran.load());
  EXPECT_LT(took, kLongWait / 2) << "the post did not wake the loop";
}

TEST(EventLoop, ATaskPostedFromInsidePollRunsBeforeTheNextWait) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  // A chain of tasks, each posted by the previous one on the loop thread (as a node's message
  // to itself is): no eventfd is written for them, yet none may wait for the timeout.
  constexpr int kChain = 100;
  std::atomic<int> step{0};
  std::atomic<bool> done{false};
  std::function<void()> next = [&] {
    if (step.fetch_add(1) + 1 == kChain) {
      done.store(true);
      return;
    }
    loop->Post(next);
  };
  loop->Post(next);  // from the test thread, outside Poll(): wakes as any other thread's post
  const absl::Duration took = PollUntil(*loop, done, kLongWait);
  EXPECT_EQ(step.load(), kChain);
  EXPECT_LT(took, kLongWait / 2) << "a task posted from inside Poll() waited for a wake-up";
}

TEST(EventLoop, ATimerThatPostsDoesNotLetTheLoopSleep) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  std::atomic<bool> done{false};
  loop->RunAfter(absl::Milliseconds(1), [&] { loop->Post([&] { done.store(true); }); });
  const absl::Duration took = PollUntil(*loop, done, kLongWait);
  EXPECT_TRUE(done.load());
  EXPECT_LT(took, kLongWait / 2);
}

TEST(EventLoop, PostsFromTheThreadThatPolledAnEarlierLoopStillWake) {
  // The test thread polls a loop, destroys it and creates others (possibly at the same
  // address); each new loop is polled by another thread and must be woken by this thread's
  // posts.
  for (int round = 0; round < 20; ++round) {
    {
      std::unique_ptr<EventLoop> old = NewLoop();
      ASSERT_NE(old, nullptr);
      old->Poll(absl::ZeroDuration(), absl::ZeroDuration());
    }
    std::unique_ptr<EventLoop> loop = NewLoop();
    ASSERT_NE(loop, nullptr);
    std::atomic<bool> ran{false};
    absl::Duration took;
    absl::Notification polling;
    std::thread poller([&] {
      polling.Notify();
      took = PollUntil(*loop, ran, kLongWait);
    });
    polling.WaitForNotification();
    absl::SleepFor(absl::Milliseconds(2));
    loop->Post([&] { ran.store(true); });
    poller.join();
    EXPECT_TRUE(ran.load()) << "round " << round;
    EXPECT_LT(took, kLongWait / 2) << "round " << round;
  }
}

}  // namespace
}  // namespace dsm
