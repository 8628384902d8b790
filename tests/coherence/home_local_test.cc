// The home's own copy, taken in place for another node's request (DirectoryPort::
// DowngradeLocal / InvalidateLocal): through a recording port (what the directory asks of its
// port and sends, on success, failure and fallback), then in the simulator (a remote write
// miss or upgrade of a page the home wrote, and the races of directory.h).
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "coherence/directory.h"
#include "gtest/gtest.h"
#include "sim.h"
#include "test_util.h"

namespace dsm::coherence {
namespace {

using test::HomeAt;
using test::kT0;
using test::Msg;
using sim::Sim;
using ES = Directory::EntryState;
using TS = Sim::ThreadState;

// A home whose own cache holds each page as `held` says (what the directory's local calls
// find), with its mapping's contents in `mapped`.
class LocalPort final : public DirectoryPort {
 public:
  void Send(Message&& m) override { sent.push_back(std::move(m)); }
  absl::Status LoadPage(PageIndex, uint8_t* out) override {
    ++loads;
    std::memcpy(out, store.data(), kPageSize);
    return absl::OkStatus();
  }
  absl::Status StorePage(PageIndex, const uint8_t* data) override {
    store.assign(data, data + kPageSize);
    ++stores;
    return absl::OkStatus();
  }
  absl::StatusOr<bool> DowngradeLocal(PageIndex page, uint8_t* out) override {
    if (held[page] != PageState::kModified) return false;
    held[page] = PageState::kShared;
    std::memcpy(out, mapped.data(), kPageSize);
    return true;
  }
  absl::StatusOr<bool> InvalidateLocal(PageIndex page, PageState as, uint8_t* out) override {
    ++invalidate_calls;
    if (held[page] != as) return false;
    if (as == PageState::kModified) {
      if (fail_write_protect) {
        held[page] = PageState::kInvalid;  // lost here, as the cache does
        return absl::InternalError("injected write-protect failure");
      }
      std::memcpy(out, mapped.data(), kPageSize);
    }
    held[page] = PageState::kInvalid;
    return true;
  }

  std::vector<Message> sent;
  std::vector<uint8_t> store = std::vector<uint8_t>(kPageSize, 0);
  std::vector<uint8_t> mapped = std::vector<uint8_t>(kPageSize, 0x77);
  std::vector<PageState> held = std::vector<PageState>(4, PageState::kInvalid);
  int loads = 0, stores = 0, invalidate_calls = 0;
  bool fail_write_protect = false;
};

Directory::Config HomeConfig() {
  return {0, 1, 4, 4, [](PageIndex) -> NodeId { return 0; }};
}

constexpr uint64_t Bit(NodeId n) { return uint64_t{1} << n; }

// The home (node 0) writes page p: its own kGetM is granted, its cache now holds it M.
void HomeWrites(Directory& d, LocalPort& port, PageIndex p) {
  d.OnMessage(Msg(MsgType::kGetM, 0, p), kT0);
  ASSERT_EQ(d.entry(p).owner, 0u);
  port.held[p] = PageState::kModified;
  port.sent.clear();
  port.loads = 0;  // the home's own grant
}

TEST(HomeLocal, WriteMissOfAPageTheHomeHoldsModifiedSendsItsCopyWithoutARecall) {
  LocalPort port;
  Directory d(HomeConfig(), &port);
  HomeWrites(d, port, 2);
  d.OnMessage(Msg(MsgType::kGetM, 1, 2, 0, 9), kT0);
  ASSERT_EQ(port.sent.size(), 1u);  // no kRecall to itself: only the grant
  const Message& g = port.sent[0];
  EXPECT_EQ(g.type, MsgType::kData);
  EXPECT_EQ(g.dst, 1u);
  EXPECT_EQ(g.req_id, 9u);
  EXPECT_EQ(g.arg, uint64_t(Grant::kModified));
  EXPECT_EQ(g.payload, port.mapped);  // the home's own data
  EXPECT_EQ(port.held[2], PageState::kInvalid);
  EXPECT_EQ(port.loads, 0);   // straight from the home's copy into the grant ...
  EXPECT_EQ(port.stores, 0);  // ... and not stored: the page is Modified at node 1 now
  EXPECT_EQ(d.entry(2).state, ES::kModified);
  EXPECT_EQ(d.entry(2).owner, 1u);
  EXPECT_FALSE(d.entry(2).busy);
  EXPECT_EQ(d.counters().local_invalidations, 1u);
  EXPECT_EQ(d.counters().recalls_sent, 0u);
  EXPECT_EQ(d.counters().protocol_errors, 0u);
}

TEST(HomeLocal, ReadOfAPageTheHomeHoldsModifiedStoresItOnceAndRepliesWithoutLoadingIt) {
  LocalPort port;
  Directory d(HomeConfig(), &port);
  HomeWrites(d, port, 1);
  d.OnMessage(Msg(MsgType::kGetS, 2, 1), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kData);
  EXPECT_EQ(port.sent[0].payload, port.mapped);
  EXPECT_EQ(port.loads, 0);
  EXPECT_EQ(port.stores, 1);
  EXPECT_EQ(port.store, port.mapped);  // the storage holds it: the page is Shared now
  EXPECT_EQ(d.entry(1).sharers, Bit(0) | Bit(2));
  EXPECT_EQ(d.counters().local_downgrades, 1u);
}

TEST(HomeLocal, UpgradeWithTheHomeASharerDropsItsCopyInPlace) {
  LocalPort port;
  Directory d(HomeConfig(), &port);
  d.OnMessage(Msg(MsgType::kGetS, 0, 0), kT0);
  port.held[0] = PageState::kShared;
  d.OnMessage(Msg(MsgType::kGetS, 1, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetS, 2, 0), kT0);
  port.sent.clear();
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);  // an upgrade: node 1 is a sharer
  ASSERT_EQ(port.sent.size(), 1u);               // kInv to node 2 only
  EXPECT_EQ(port.sent[0].type, MsgType::kInv);
  EXPECT_EQ(port.sent[0].dst, 2u);
  EXPECT_EQ(port.held[0], PageState::kInvalid);
  EXPECT_EQ(d.entry(0).sharers, Bit(1) | Bit(2));  // the home is no longer recorded
  d.OnMessage(Msg(MsgType::kInvAck, 2, 0), kT0);
  ASSERT_EQ(port.sent.size(), 2u);
  EXPECT_EQ(port.sent[1].type, MsgType::kGrant);  // dataless: node 1 still has its copy
  EXPECT_EQ(d.entry(0).owner, 1u);
  EXPECT_EQ(d.counters().local_invalidations, 1u);
  EXPECT_EQ(d.counters().invalidations_sent, 1u);
  EXPECT_EQ(d.counters().protocol_errors, 0u);
}

TEST(HomeLocal, FailedWriteProtectOfTheHomesCopyLosesThePage) {
  LocalPort port;
  Directory d(HomeConfig(), &port);
  HomeWrites(d, port, 3);
  port.fail_write_protect = true;
  d.OnMessage(Msg(MsgType::kGetM, 1, 3), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kNack);  // never the storage's stale copy
  EXPECT_EQ(port.sent[0].arg, uint64_t(ErrorCode::kPageLost));
  EXPECT_TRUE(d.entry(3).lost);
  EXPECT_EQ(d.counters().lost_pages, 1u);
  d.OnMessage(Msg(MsgType::kGetS, 2, 3), kT0);  // and it stays lost
  EXPECT_EQ(port.sent.back().type, MsgType::kNack);
  EXPECT_EQ(port.stores, 0);
}

// The directory records the home as owner but its cache has released the page (a write-back
// on the self channel, not yet applied): the recall goes out as to any node, and the
// write-back that precedes its answer supplies the data. A request behind it waits its turn.
TEST(HomeLocal, WriteMissFallsBackToARecallWhenTheHomesCacheNoLongerHoldsThePage) {
  LocalPort port;
  Directory d(HomeConfig(), &port);
  HomeWrites(d, port, 0);
  port.held[0] = PageState::kInvalid;  // released: kPut(kWritebackDrop) in flight
  d.OnMessage(Msg(MsgType::kGetM, 1, 0, 0, 5), kT0);
  d.OnMessage(Msg(MsgType::kGetM, 2, 0, 0, 6), kT0);  // queued behind it
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kRecall);
  EXPECT_EQ(port.sent[0].dst, 0u);
  EXPECT_EQ(port.sent[0].arg, uint64_t(RecallKind::kInvalidate));
  EXPECT_EQ(d.entry(0).queued, 1u);
  Message put = Msg(MsgType::kPut, 0, 0, uint64_t(PutKind::kWritebackDrop));
  put.payload.assign(kPageSize, 0x42);
  d.OnMessage(put, kT0);
  d.OnMessage(Msg(MsgType::kRecallAck, 0, 0, uint64_t(PageState::kInvalid)), kT0);
  ASSERT_EQ(port.sent.size(), 3u);
  EXPECT_EQ(port.sent[1].type, MsgType::kData);
  EXPECT_EQ(port.sent[1].dst, 1u);
  EXPECT_EQ(port.sent[1].payload, std::vector<uint8_t>(kPageSize, 0x42));
  EXPECT_EQ(port.sent[2].type, MsgType::kRecall);  // node 2's turn: recall node 1
  EXPECT_EQ(port.sent[2].dst, 1u);
  EXPECT_EQ(d.counters().local_invalidations, 0u);
  EXPECT_EQ(d.counters().protocol_errors, 0u);
}

// Recorded a sharer, but the home's cache dropped its copy (a kDropClean in flight): the kInv
// goes out, after that drop on the self channel, and its ack is awaited.
TEST(HomeLocal, UpgradeFallsBackToAnInvalidationWhenTheHomeNoLongerHoldsItsCopy) {
  LocalPort port;
  Directory d(HomeConfig(), &port);
  d.OnMessage(Msg(MsgType::kGetS, 0, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetS, 1, 0), kT0);
  port.sent.clear();  // port.held[0] stays I: the home's copy is gone already
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kInv);
  EXPECT_EQ(port.sent[0].dst, 0u);
  EXPECT_TRUE(d.entry(0).busy);
  d.OnMessage(Msg(MsgType::kPut, 0, 0, uint64_t(PutKind::kDropClean)), kT0);
  d.OnMessage(Msg(MsgType::kInvAck, 0, 0), kT0);
  EXPECT_EQ(port.sent.back().type, MsgType::kGrant);
  EXPECT_EQ(d.entry(0).owner, 1u);
  EXPECT_EQ(d.counters().protocol_errors, 0u);
}

// Requests that arrive while the page is busy do not take the home's copy early: the local
// drop happens when the kGetM that needs it begins, in queue order.
TEST(HomeLocal, ALocalTakeHappensOnlyWhenItsTransactionBegins) {
  LocalPort port;
  Directory d(HomeConfig(), &port);
  d.OnMessage(Msg(MsgType::kGetS, 2, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetM, 3, 0), kT0);  // invalidates node 2: busy
  ASSERT_TRUE(d.entry(0).busy);
  d.OnMessage(Msg(MsgType::kGetS, 0, 0), kT0);  // the home reads: queued
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);  // queued
  EXPECT_EQ(port.invalidate_calls, 0);
  EXPECT_EQ(d.entry(0).queued, 2u);
  d.OnMessage(Msg(MsgType::kInvAck, 2, 0), kT0);  // node 3 gets M; the home's kGetS recalls it
  EXPECT_EQ(port.invalidate_calls, 0);
  ASSERT_EQ(port.sent.back().type, MsgType::kRecall);
  Message ack = Msg(MsgType::kRecallAck, 3, 0, uint64_t(PageState::kShared));
  ack.payload.assign(kPageSize, 0x33);
  const size_t before = port.sent.size();
  d.OnMessage(ack, kT0);  // the home is granted S; then node 1's kGetM begins
  // The home's grant is still on the self channel (its cache holds nothing yet), so the one
  // local call finds no copy and the kInv goes to the home by message, behind the grant.
  EXPECT_EQ(port.invalidate_calls, 1);
  ASSERT_EQ(port.sent.size(), before + 3);
  EXPECT_EQ(port.sent[before].type, MsgType::kData);
  EXPECT_EQ(port.sent[before].dst, 0u);
  EXPECT_EQ(port.sent[before + 1].type, MsgType::kInv);
  EXPECT_EQ(port.sent[before + 1].dst, 0u);
  EXPECT_EQ(port.sent[before + 2].type, MsgType::kInv);
  EXPECT_EQ(port.sent[before + 2].dst, 3u);
  EXPECT_EQ(d.counters().local_invalidations, 0u);
  EXPECT_EQ(d.counters().protocol_errors, 0u);
}

// --- in the simulator ---------------------------------------------------------------------

// The home writes page 5; node 1's write miss gets the home's data from its copy in place.
TEST(HomeLocal, RemoteWriteMissOfAPageTheHomeWroteGetsTheHomesDataWithoutARecall) {
  Sim sim(2, 8, HomeAt(0));
  const int hw = sim.Access(0, 5, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  ASSERT_EQ(sim.mapped(0, 5), PageState::kModified);
  const int w = sim.Access(1, 5, true);
  ASSERT_TRUE(sim.DeliverFault(1));   // kGetM
  ASSERT_TRUE(sim.Deliver(1, 0));     // the home takes its copy in place and grants
  EXPECT_EQ(sim.mapped(0, 5), PageState::kInvalid);
  EXPECT_EQ(sim.channel(0, 0).size(), 0u);  // no message to itself
  ASSERT_TRUE(sim.Deliver(0, 1));     // installed M at node 1
  EXPECT_EQ(sim.value(1, 5), sim.thread(hw).value);  // the home's write, before node 1's
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, TS::kDone);
  EXPECT_EQ(sim.mapped(1, 5), PageState::kModified);
  EXPECT_EQ(sim.directory(0).counters().local_invalidations, 1u);
  EXPECT_EQ(sim.directory(0).counters().recalls_sent, 0u);
  const int r = sim.Access(0, 5, false);  // and the home reads node 1's write back
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(r).value, sim.thread(w).value);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

// The home writes page 3, node 1 reads it (the home's copy is downgraded), then node 1
// writes: the upgrade drops the home's copy in place, with no kInv to itself.
TEST(HomeLocal, RemoteUpgradeOfAPageTheHomeWroteDropsTheHomesCopyInPlace) {
  Sim sim(3, 8, HomeAt(0));
  const int hw = sim.Access(0, 3, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  const int r = sim.Access(1, 3, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(r).value, sim.thread(hw).value);
  ASSERT_EQ(sim.mapped(0, 3), PageState::kShared);
  const int w = sim.Access(1, 3, true);
  ASSERT_TRUE(sim.DeliverFault(1));
  ASSERT_TRUE(sim.Deliver(1, 0));
  EXPECT_EQ(sim.mapped(0, 3), PageState::kInvalid);
  EXPECT_EQ(sim.channel(0, 0).size(), 0u);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, TS::kDone);
  EXPECT_EQ(sim.directory(0).counters().local_invalidations, 1u);
  EXPECT_EQ(sim.directory(0).counters().invalidations_sent, 0u);
  const int r2 = sim.Access(2, 3, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(r2).value, sim.thread(w).value);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

// The home's application writes the page just after its copy was taken: it faults (the
// page is unmapped) and waits for its own write miss, served after node 1's write; it never
// writes into the copy it gave up.
TEST(HomeLocal, TheHomesWriteAfterItsCopyWasTakenFaultsAndIsOrderedAfterTheRemoteWrite) {
  Sim sim(2, 8, HomeAt(0));
  sim.Access(0, 5, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  const int w = sim.Access(1, 5, true);
  ASSERT_TRUE(sim.DeliverFault(1));
  ASSERT_TRUE(sim.Deliver(1, 0));  // taken in place, grant in flight to node 1
  const int hw = sim.Access(0, 5, true);
  EXPECT_EQ(sim.thread(hw).state, TS::kBlocked);  // faulted: nothing written
  ASSERT_TRUE(sim.DeliverFault(0));  // the home's kGetM to itself, behind nothing
  ASSERT_TRUE(sim.Deliver(0, 0));    // recalls node 1 (its grant is still on the way)
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, TS::kDone);
  EXPECT_EQ(sim.thread(hw).state, TS::kDone);
  EXPECT_GT(sim.thread(hw).value, sim.thread(w).value);  // node 1's store came first
  EXPECT_EQ(sim.last_write(5), sim.thread(hw).value);
  const int r = sim.Access(1, 5, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(r).value, sim.thread(hw).value);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

// The home's own upgrade is in flight (its kGetM on the self channel) when node 2's kGetM
// takes its Shared copy in place: the home's request stays pending and is later answered
// with data (it is no longer a sharer), after node 2's write.
TEST(HomeLocal, ALocalDropCrossingTheHomesOwnUpgradeIsAnsweredWithData) {
  Sim sim(3, 4, HomeAt(0));
  sim.Access(0, 1, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  sim.Access(1, 1, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();  // S at nodes 0 and 1
  const int hw = sim.Access(0, 1, true);      // WP fault at the home
  ASSERT_TRUE(sim.DeliverFault(0));           // kGetM 0 -> 0 queued on the self channel
  const int w = sim.Access(2, 1, true);
  ASSERT_TRUE(sim.DeliverFault(2));
  ASSERT_TRUE(sim.Deliver(2, 0));  // node 2 first: the home's copy dropped, node 1 kInv'd
  EXPECT_EQ(sim.mapped(0, 1), PageState::kInvalid);
  EXPECT_TRUE(sim.cache(0).pending(1));
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, TS::kDone);
  EXPECT_EQ(sim.thread(hw).state, TS::kDone);
  EXPECT_GT(sim.thread(hw).value, sim.thread(w).value);
  EXPECT_EQ(sim.mapped(0, 1), PageState::kModified);
  EXPECT_EQ(sim.directory(0).counters().local_invalidations, 1u);
  EXPECT_EQ(sim.directory(0).counters().protocol_errors, 0u);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

// A Sync at the home (its write-back on the self channel) crosses a remote write miss: the
// home's cache holds the page Shared, not Modified as recorded, so the recall goes out as a
// message and the remote writer still gets the home's data.
TEST(HomeLocal, AHomeWriteBackInFlightTakesTheMessagePath) {
  Sim sim(2, 4, HomeAt(0));
  const int hw = sim.Access(0, 2, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  ASSERT_EQ(sim.WriteBackAll(0), 1u);  // kPut(kWritebackKeep) 0 -> 0, not yet delivered
  const int w = sim.Access(1, 2, true);
  ASSERT_TRUE(sim.DeliverFault(1));
  ASSERT_TRUE(sim.Deliver(1, 0));
  EXPECT_EQ(sim.directory(0).counters().local_invalidations, 0u);
  EXPECT_EQ(sim.directory(0).counters().recalls_sent, 1u);
  ASSERT_TRUE(sim.Deliver(0, 0));  // the write-back
  ASSERT_TRUE(sim.Deliver(0, 0));  // the recall
  ASSERT_TRUE(sim.Deliver(0, 0));  // its ack
  ASSERT_TRUE(sim.Deliver(0, 1));  // the grant
  EXPECT_EQ(sim.value(1, 2), sim.thread(hw).value);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, TS::kDone);
  EXPECT_EQ(sim.directory(0).counters().protocol_errors, 0u);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

// The home cannot write-protect its Modified copy: the page is lost everywhere (the writer
// fails, the home's own accesses fail), never served from the stale storage.
TEST(HomeLocal, FailedWriteProtectOfTheHomesCopyFailsTheRemoteWriter) {
  Sim sim(2, 4, HomeAt(0));
  sim.Access(0, 2, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  sim.FailNextPortCall(0, Sim::PortOp::kSetAccessShared, 2);
  const int w = sim.Access(1, 2, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, TS::kFailed);
  EXPECT_TRUE(sim.directory(0).entry(2).lost);
  const int hr = sim.Access(0, 2, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(hr).state, TS::kFailed);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

// The home's Shared copy cannot be unmapped: it is poisoned (lost at the home only) and the
// writer is granted as usual; the storage still held the data.
TEST(HomeLocal, FailedUnmapOfTheHomesSharedCopyPoisonsItAndGrants) {
  Sim sim(2, 4, HomeAt(0));
  const int hw = sim.Access(0, 2, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  sim.Access(1, 2, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  sim.FailNextPortCall(0, Sim::PortOp::kDrop, 2);
  const int w = sim.Access(1, 2, true);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, TS::kDone);
  EXPECT_TRUE(sim.cache(0).lost(2));
  EXPECT_FALSE(sim.directory(0).entry(2).lost);
  EXPECT_EQ(sim.directory(0).entry(2).owner, 1u);
  EXPECT_GT(sim.thread(w).value, sim.thread(hw).value);
  EXPECT_TRUE(sim.Check() && sim.ok()) << sim.error();
}

}  // namespace
}  // namespace dsm::coherence
