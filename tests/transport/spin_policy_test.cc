// SpinPolicy: when an event loop may busy-poll, and for how long. Time is synthetic: every
// test passes the clock, none measures it.
#include "transport/spin_policy.h"

#include <random>

#include "gtest/gtest.h"

namespace dsm {
namespace {

constexpr absl::Duration kCap = absl::Microseconds(200);
const absl::Time kT0 = absl::FromUnixSeconds(1000);

absl::Duration Us(int64_t n) { return absl::Microseconds(n); }

struct Fixture {
  explicit Fixture(absl::Duration cap = kCap, int vcpus = 2, int live = 1)
      : live_loops(live), policy({cap, vcpus, &live_loops}) {}
  std::atomic<int> live_loops;
  SpinPolicy policy;
};

// One request/reply exchange: send at t, reply `wait` later; returns the reply's time.
absl::Time Exchange(SpinPolicy& p, absl::Time t, absl::Duration wait) {
  p.OnSend(t);
  (void)p.SpinFor(t);
  p.OnInput(t + wait, /*message=*/true);
  return t + wait;
}

TEST(SpinPolicy, ZeroCapNeverSpins) {
  Fixture f(absl::ZeroDuration());
  f.policy.OnSend(kT0);
  EXPECT_EQ(f.policy.SpinFor(kT0), absl::ZeroDuration());
  for (int i = 0; i < 10; ++i) f.policy.OnInput(kT0 + Us(i), true);
  EXPECT_EQ(f.policy.SpinFor(kT0 + Us(10)), absl::ZeroDuration());
  EXPECT_FALSE(f.policy.spinning_allowed());
}

TEST(SpinPolicy, NoSpinWhenLoopThreadsOutnumberSpareCpus) {
  Fixture f(kCap, /*vcpus=*/2, /*live=*/2);
  f.policy.OnSend(kT0);
  EXPECT_EQ(f.policy.SpinFor(kT0), absl::ZeroDuration());
  // Another loop thread of the process ends: one loop on two vCPUs may spin again.
  f.live_loops.store(1);
  EXPECT_GT(f.policy.SpinFor(kT0 + Us(1)), absl::ZeroDuration());
  // A third node starts in this process: the very next decision stops spinning.
  f.live_loops.store(3);
  EXPECT_EQ(f.policy.SpinFor(kT0 + Us(2)), absl::ZeroDuration());
}

TEST(SpinPolicy, OneVcpuNeverSpins) {
  Fixture f(kCap, /*vcpus=*/1, /*live=*/1);
  f.policy.OnSend(kT0);
  EXPECT_EQ(f.policy.SpinFor(kT0), absl::ZeroDuration());
}

TEST(SpinPolicy, FirstWaitSpinsUpToTheCap) {
  Fixture f;
  f.policy.OnSend(kT0);
  EXPECT_EQ(f.policy.SpinFor(kT0), kCap);
  EXPECT_EQ(f.policy.SpinFor(kT0 + Us(50)), kCap - Us(50));
}

TEST(SpinPolicy, AwaitingSpinsUpToTheCapHoweverFastRecentRepliesWere) {
  // An answer is due: the window covers a slow one too (a shrunken window made the slowest
  // replies pay a wake-up on top).
  for (absl::Duration wait : {Us(1), Us(30), Us(150)}) {
    Fixture f;
    absl::Time t = kT0;
    for (int i = 0; i < 20; ++i) t = Exchange(f.policy, t + absl::Milliseconds(5), wait);
    const absl::Time send = t + absl::Milliseconds(5);
    f.policy.OnSend(send);
    EXPECT_EQ(f.policy.SpinFor(send), kCap) << wait;
    // The answer ends the window: nothing else is awaited.
    f.policy.OnInput(send + wait, /*message=*/true);
    EXPECT_LT(f.policy.SpinFor(send + wait), kCap) << wait;
  }
}

TEST(SpinPolicy, SparseInputsDoNotSpinStreamsDo) {
  Fixture f;
  // Faults 10 ms apart (far above the cap), no message sent: no reason to spin.
  for (int i = 0; i < 20; ++i) f.policy.OnInput(kT0 + absl::Milliseconds(10 * i), false);
  EXPECT_EQ(f.policy.SpinFor(kT0 + absl::Milliseconds(190)), absl::ZeroDuration());
  // 250 us apart (more than the cap): no stream either.
  absl::Time u = kT0 + absl::Milliseconds(500);
  for (int i = 0; i < 20; ++i) f.policy.OnInput(u += Us(250), true);
  EXPECT_EQ(f.policy.SpinFor(u), absl::ZeroDuration());
  // Faults 20 us apart: spin a few gaps after the last one.
  absl::Time t = kT0 + absl::Seconds(1);
  for (int i = 0; i < 20; ++i) f.policy.OnInput(t += Us(20), false);
  EXPECT_EQ(f.policy.SpinFor(t), SpinPolicy::kWindowFactor * Us(20));
}

TEST(SpinPolicy, IdleLoopStopsSpinningWithinCapOfItsLastActivity) {
  // Whatever happened before, no spin reaches past last activity + cap.
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    Fixture f;
    absl::Time t = kT0;
    absl::Time last_activity = absl::InfinitePast();
    const int steps = static_cast<int>(rng() % 100);
    for (int i = 0; i < steps; ++i) {
      t += Us(static_cast<int64_t>(rng() % 400));
      switch (rng() % 3) {
        case 0:
          f.policy.OnSend(t);
          last_activity = t;
          break;
        case 1:
          f.policy.OnInput(t, rng() % 2 == 0);
          last_activity = t;
          break;
        default: {
          const absl::Duration spin = f.policy.SpinFor(t);
          ASSERT_LE(spin, kCap);
          if (spin > absl::ZeroDuration()) {
            ASSERT_LE(t + spin, last_activity + kCap) << "round " << round << " step " << i;
          }
        }
      }
    }
    // At rest: from cap after the last activity on, the loop only sleeps.
    for (int k = 0; k < 5; ++k) {
      const absl::Time later = t + kCap + absl::Milliseconds(k * 100);
      EXPECT_EQ(f.policy.SpinFor(later), absl::ZeroDuration()) << "round " << round;
    }
  }
}

TEST(SpinPolicy, WindowsThatRunOutBackOffAndAHitResets) {
  Fixture f;
  absl::Time t = kT0;
  // Sends nobody answers in time: each window runs out (a miss).
  for (int i = 0; i < SpinPolicy::kMissesToBackOff; ++i) {
    t += absl::Milliseconds(1);
    f.policy.OnSend(t);
    ASSERT_GT(f.policy.SpinFor(t), absl::ZeroDuration());
    t += kCap + Us(1);
    ASSERT_EQ(f.policy.SpinFor(t), absl::ZeroDuration());
  }
  EXPECT_EQ(f.policy.counters().misses, uint64_t{SpinPolicy::kMissesToBackOff});
  EXPECT_EQ(f.policy.counters().back_offs, 1u);
  // Backing off: a fresh send does not spin until the back-off ends.
  f.policy.OnSend(t + Us(1));
  EXPECT_EQ(f.policy.SpinFor(t + Us(1)), absl::ZeroDuration());
  t += SpinPolicy::kMinBackOff;
  f.policy.OnSend(t);
  EXPECT_GT(f.policy.SpinFor(t), absl::ZeroDuration());
  // The reply comes inside the window: a hit; the miss count starts over.
  f.policy.OnInput(t + Us(10), true);
  EXPECT_EQ(f.policy.counters().hits, 1u);
}

TEST(SpinPolicy, RepeatedBackOffsDoubleUpToTheMaximum) {
  Fixture f;
  absl::Time t = kT0;
  absl::Duration expected = SpinPolicy::kMinBackOff;
  for (int b = 0; b < 12; ++b) {
    for (int i = 0; i < SpinPolicy::kMissesToBackOff; ++i) {
      f.policy.OnSend(t);
      ASSERT_GT(f.policy.SpinFor(t), absl::ZeroDuration()) << "back-off " << b;
      t += kCap + Us(1);
      (void)f.policy.SpinFor(t);  // notices the miss
    }
    // Just before the back-off ends nothing spins; at its end a send spins again.
    f.policy.OnSend(t + expected - Us(1));
    EXPECT_EQ(f.policy.SpinFor(t + expected - Us(1)), absl::ZeroDuration()) << "back-off " << b;
    t += expected;
    expected = std::min(2 * expected, SpinPolicy::kMaxBackOff);
  }
  EXPECT_EQ(f.policy.counters().back_offs, 12u);
}

TEST(SpinPolicy, AReplyHandledJustAfterTheDeadlineIsStillAHit) {
  Fixture f;
  f.policy.OnSend(kT0);
  EXPECT_EQ(f.policy.SpinFor(kT0), kCap);
  f.policy.OnInput(kT0 + kCap + SpinPolicy::kHitSlack, true);
  EXPECT_EQ(f.policy.counters().hits, 1u);
  EXPECT_EQ(f.policy.counters().misses, 0u);
}

TEST(SpinPolicy, LoopThreadRegistrationCountsLiveThreads) {
  const int before = SpinPolicy::LiveLoopThreads().load();
  {
    LoopThreadRegistration a;
    LoopThreadRegistration b;
    EXPECT_EQ(SpinPolicy::LiveLoopThreads().load(), before + 2);
  }
  EXPECT_EQ(SpinPolicy::LiveLoopThreads().load(), before);
  EXPECT_GE(SpinPolicy::UsableCpus(), 1);
}

}  // namespace
}  // namespace dsm
