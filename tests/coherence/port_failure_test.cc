// Failed kernel calls: each test makes one port call fail in the simulator and checks the
// outcome the rules above CachePort / DirectoryPort / ReplacementPort define -- never a message
// that reports a change that did not happen -- and the invariants of sim.h.
#include "gtest/gtest.h"
#include "sim.h"
#include "test_util.h"

namespace dsm::coherence::sim {
namespace {

using test::HomeAt;
using Op = Sim::PortOp;
using TS = Sim::ThreadState;

int Settled(Sim& sim, NodeId n, PageIndex p, bool write) {
  const int t = sim.Access(n, p, write);
  EXPECT_TRUE(sim.Settle());
  EXPECT_EQ(sim.thread(t).state, TS::kDone);
  return t;
}

TEST(Cache, FailedDowngradeNeverAcksAsShared) {
  Sim sim(3, 1, HomeAt(0));
  Settled(sim, 1, 0, true);  // node 1 holds the page M
  sim.FailNextPortCall(1, Op::kSetAccessShared, 0);
  const int r = sim.Access(2, 0, false);
  sim.DeliverAllFaults();
  ASSERT_TRUE(sim.Deliver(2, 0));
  ASSERT_EQ(sim.channel(0, 1).front().type, MsgType::kRecall);
  ASSERT_TRUE(sim.Deliver(0, 1));  // the write-protect fails
  ASSERT_EQ(sim.channel(1, 0).size(), 1u);
  const Message& ack = sim.channel(1, 0).front();
  EXPECT_EQ(ack.type, MsgType::kRecallAck);
  EXPECT_TRUE(ack.payload.empty()) << "a copy taken while stores may still land";
  EXPECT_EQ(ack.arg, static_cast<uint64_t>(PageState::kInvalid));
  // Poisoned before the answer left: the page is no longer mapped writable at node 1.
  EXPECT_EQ(sim.mapped(1, 0), PageState::kInvalid);
  EXPECT_TRUE(sim.cache(1).lost(0));
  EXPECT_EQ(sim.cache(1).counters().port_failures, 1u);
  ASSERT_TRUE(sim.Settle());
  // The only current copy is gone: the home reports the page lost instead of serving its
  // stale copy.
  EXPECT_TRUE(sim.directory(0).entry(0).lost);
  EXPECT_EQ(sim.thread(r).state, TS::kFailed);
  const int again = sim.Access(1, 0, false);
  ASSERT_TRUE(sim.Settle());
  EXPECT_EQ(sim.thread(again).state, TS::kFailed);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Cache, FailedInstallHandsTheGrantBackAndFailsTheWaiters) {
  Sim sim(3, 1, HomeAt(0));
  const int w = Settled(sim, 2, 0, true);
  Settled(sim, 2, 0, false);
  sim.FailNextPortCall(1, Op::kInstall, 0);
  const int r = sim.Access(1, 0, false);
  ASSERT_TRUE(sim.Settle());
  EXPECT_EQ(sim.thread(r).state, TS::kFailed);
  EXPECT_TRUE(sim.cache(1).lost(0));
  EXPECT_EQ(sim.mapped(1, 0), PageState::kInvalid);
  // The home no longer counts node 1, and the page lives on for everyone else.
  EXPECT_FALSE(sim.directory(0).entry(0).lost);
  EXPECT_EQ(sim.directory(0).entry(0).sharers & (uint64_t{1} << 1), 0u);
  const int w2 = Settled(sim, 2, 0, true);
  EXPECT_GT(sim.thread(w2).value, sim.thread(w).value);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Cache, FailedModifiedInstallWritesTheGrantedDataBack) {
  Sim sim(3, 1, HomeAt(0));
  const int w = Settled(sim, 2, 0, true);
  sim.FailNextPortCall(1, Op::kInstall, 0);
  const int w1 = sim.Access(1, 0, true);
  ASSERT_TRUE(sim.Settle());
  EXPECT_EQ(sim.thread(w1).state, TS::kFailed);
  // Node 2's write reached the home through the recall, and node 1 gave the M grant back with
  // that data: the home holds the last write and no owner.
  EXPECT_EQ(sim.home_value(0), sim.thread(w).value);
  EXPECT_EQ(sim.directory(0).entry(0).state, Directory::EntryState::kUncached);
  const int r = Settled(sim, 2, 0, false);
  EXPECT_EQ(sim.thread(r).value, sim.thread(w).value);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Cache, FailedUpgradeHandsModifiedBackWithItsData) {
  Sim sim(2, 1, HomeAt(0));
  const int w = Settled(sim, 1, 0, true);
  ASSERT_EQ(sim.WriteBackAll(1), 1u);  // now S at node 1, current at the home
  sim.FailNextPortCall(1, Op::kSetAccessModified, 0);
  const int w1 = sim.Access(1, 0, true);
  ASSERT_TRUE(sim.Settle());
  EXPECT_EQ(sim.thread(w1).state, TS::kFailed);
  EXPECT_TRUE(sim.cache(1).lost(0));
  EXPECT_EQ(sim.directory(0).entry(0).state, Directory::EntryState::kUncached);
  EXPECT_EQ(sim.home_value(0), sim.thread(w).value);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Cache, FailedZapOnInvalidationPoisonsBeforeTheAck) {
  Sim sim(3, 1, HomeAt(0));
  Settled(sim, 1, 0, false);
  sim.FailNextPortCall(1, Op::kDrop, 0);
  const int w = sim.Access(2, 0, true);
  sim.DeliverAllFaults();
  ASSERT_TRUE(sim.Deliver(2, 0));
  ASSERT_EQ(sim.channel(0, 1).front().type, MsgType::kInv);
  ASSERT_TRUE(sim.Deliver(0, 1));  // the unmap fails
  ASSERT_EQ(sim.channel(1, 0).front().type, MsgType::kInvAck);
  EXPECT_EQ(sim.mapped(1, 0), PageState::kInvalid) << "acked while the stale copy is mapped";
  EXPECT_TRUE(sim.cache(1).lost(0));
  ASSERT_TRUE(sim.Settle());
  EXPECT_EQ(sim.thread(w).state, TS::kDone);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Cache, FailedSyncWriteProtectFailsTheSyncAndKeepsThePageModified) {
  Sim sim(2, 2, HomeAt(0));
  Settled(sim, 1, 0, true);
  const int w = Settled(sim, 1, 1, true);
  // DowngradeRun, then the page-by-page retry, both fail for page 0.
  sim.FailNextPortCall(1, Op::kSetAccessShared, 0);
  sim.FailNextPortCall(1, Op::kSetAccessShared, 0);
  EXPECT_EQ(sim.WriteBackAll(1), 0u);
  EXPECT_FALSE(sim.last_writeback_status().ok());
  EXPECT_EQ(sim.mapped(1, 0), PageState::kModified);  // still writable, still the only copy
  EXPECT_EQ(sim.mapped(1, 1), PageState::kShared);    // the other page was written back
  ASSERT_TRUE(sim.Settle());
  EXPECT_EQ(sim.home_value(1), sim.thread(w).value);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Cache, FailedEvictionWriteProtectKeepsThePage) {
  Sim sim(2, 1, HomeAt(0));
  Settled(sim, 1, 0, true);
  sim.FailNextPortCall(1, Op::kSetAccessShared, 0);
  EXPECT_FALSE(sim.Release(1, 0));
  EXPECT_EQ(sim.mapped(1, 0), PageState::kModified);
  EXPECT_TRUE(sim.channel(1, 0).empty());
  EXPECT_TRUE(sim.Release(1, 0));  // the next attempt writes it back
  ASSERT_TRUE(sim.Settle());
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Directory, FailedStoreOfARecalledPageLosesIt) {
  Sim sim(3, 1, HomeAt(0));
  Settled(sim, 1, 0, true);
  sim.FailNextPortCall(0, Op::kStore, 0);
  const int w = sim.Access(2, 0, true);  // recalls (invalidates) node 1's Modified copy
  ASSERT_TRUE(sim.Settle());
  // The recalled data exists nowhere else now: the page is lost, not served stale.
  EXPECT_TRUE(sim.directory(0).entry(0).lost);
  EXPECT_EQ(sim.thread(w).state, TS::kFailed);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

TEST(Replacer, FailedUnprotectReleasesThePageAndTheWriterFetchesItAgain) {
  constexpr PageIndex kHot = 0;
  Sim sim(2, 65, HomeAt(0));
  sim.SetBudget(1, 16, /*sample_writes=*/true);
  int last = -1;
  // A hot dirty page among streaming reads: the hand soon arms it for write sampling.
  for (int i = 0; i < 400 && !sim.replacer(1)->is_armed(0, kHot); ++i) {
    last = Settled(sim, 1, kHot, true);
    Settled(sim, 1, 1 + static_cast<PageIndex>(i % 64), false);
  }
  ASSERT_TRUE(sim.replacer(1)->is_armed(0, kHot)) << "the hot page was never armed";
  const uint64_t writebacks = sim.cache(1).counters().writebacks;
  sim.FailNextPortCall(1, Op::kUnprotect, kHot);
  const int w = sim.Access(1, kHot, true);
  ASSERT_TRUE(sim.Settle());
  EXPECT_EQ(sim.replacer(1)->counters().port_failures, 1u);
  EXPECT_EQ(sim.cache(1).counters().writebacks, writebacks + 1);  // released, written back
  EXPECT_EQ(sim.thread(w).state, TS::kDone);  // re-faulted as a write miss and served
  EXPECT_GT(sim.thread(w).value, sim.thread(last).value);
  EXPECT_FALSE(sim.cache(1).lost(kHot));
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

}  // namespace
}  // namespace dsm::coherence::sim
