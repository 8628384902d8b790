// The home side on its own, through a recording port: grants, stale puts, overdue peers, and
// the memory cost of a huge region.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "coherence/cache.h"
#include "coherence/directory.h"
#include "common/page_ranges.h"
#include "common/payload_pool.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dsm::coherence {
namespace {

using test::kT0;
using test::Msg;

using ES = Directory::EntryState;

class HomePort final : public DirectoryPort {
 public:
  void Send(Message&& m) override { sent.push_back(std::move(m)); }
  absl::Status LoadPage(PageIndex, uint8_t* out) override {
    if (fail_loads) return absl::DataLossError("disk on fire");
    std::memcpy(out, store.data(), kPageSize);
    return absl::OkStatus();
  }
  absl::Status StorePage(PageIndex, const uint8_t* data) override {
    store.assign(data, data + kPageSize);
    ++stores;
    return absl::OkStatus();
  }
  std::vector<Message> sent;
  std::vector<uint8_t> store = std::vector<uint8_t>(kPageSize, 0);
  int stores = 0;
  bool fail_loads = false;
};

Directory::Config HomeConfig(uint64_t pages) {
  return {0, 1, pages, 4, [](PageIndex) -> NodeId { return 0; }};
}

TEST(Directory, GetMFromSharerGetsGrantWithoutData) {
  HomePort port;
  Directory d(HomeConfig(2), &port);
  d.OnMessage(Msg(MsgType::kGetS, 1, 0), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kData);
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);
  ASSERT_EQ(port.sent.size(), 2u);
  EXPECT_EQ(port.sent[1].type, MsgType::kGrant);
  EXPECT_TRUE(port.sent[1].payload.empty());
  EXPECT_EQ(d.entry(0).state, ES::kModified);
  EXPECT_EQ(d.entry(0).owner, 1u);
  // The same request from a non-sharer gets data: the home decides, not the requester.
  d.OnMessage(Msg(MsgType::kGetM, 2, 1), kT0);
  EXPECT_EQ(port.sent.back().type, MsgType::kData);
  EXPECT_EQ(port.sent.back().arg, uint64_t(Grant::kModified));
}

TEST(Directory, RunGrantsTheIdleUnwrittenPrefixAndRecordsEachSharer) {
  HomePort port;
  Directory d(HomeConfig(16), &port);
  d.OnMessage(Msg(MsgType::kGetS, 2, 3), kT0);  // page 3 Shared at node 2: grantable
  d.OnMessage(Msg(MsgType::kGetM, 3, 6), kT0);  // page 6 Modified at node 3: not
  port.sent.clear();
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 2, /*arg=*/8, /*req_id=*/77), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  const Message& r = port.sent[0];
  EXPECT_EQ(r.type, MsgType::kDataRun);
  EXPECT_EQ(r.dst, 1u);
  EXPECT_EQ(r.page, 2u);
  EXPECT_EQ(r.req_id, 77u);
  EXPECT_EQ(r.arg, 8u);                       // echoes what was asked
  EXPECT_EQ(r.payload.size(), 4 * kPageSize);  // pages 2..5; 6 stops the run
  for (PageIndex p = 2; p <= 5; ++p) {
    EXPECT_EQ(d.entry(p).state, ES::kShared) << p;
    EXPECT_NE(d.entry(p).sharers & (uint64_t{1} << 1), 0u) << p;  // recorded before sent
  }
  EXPECT_EQ(d.entry(3).sharers, (uint64_t{1} << 1) | (uint64_t{1} << 2));
  EXPECT_EQ(d.entry(6).owner, 3u);  // no recall for a speculation
  EXPECT_EQ(d.entry(7).state, ES::kUncached);
  EXPECT_EQ(d.counters().run_pages_granted, 4u);
  EXPECT_EQ(d.counters().recalls_sent, 0u);
}

// Run replies are built in recycled buffers that are not zero-filled: the reply must carry
// exactly the granted pages' bytes, whatever the buffer held before.
TEST(Directory, RunReplyInARecycledBufferCarriesOnlyTheGrantedPages) {
  // Fill this thread's pool (the one the replies below are built from) with dirty run buffers
  // only, whatever earlier tests left in it.
  while (PayloadPoolSizeForTesting() > 0) (void)TakePayloadBuffer(kPayloadPoolMinCapacity);
  for (size_t cached = 0; cached < kPayloadPoolMax; ++cached) {
    std::vector<uint8_t> dirty(kMaxRunPages * kPageSize, 0xee);
    RecyclePayloadBuffer(std::move(dirty));
  }
  ASSERT_EQ(PayloadPoolSizeForTesting(), kPayloadPoolMax);
  HomePort port;
  port.store.assign(kPageSize, 0x5a);
  Directory d(HomeConfig(2 * kMaxRunPages), &port);
  d.OnMessage(Msg(MsgType::kGetM, 3, 5), kT0);  // page 5 Modified at node 3: stops the run
  port.sent.clear();
  // A full run asked for, so its buffer is one the pool keeps (>= kPayloadPoolMinCapacity).
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 2, /*arg=*/kMaxRunPages), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  const std::vector<uint8_t>& got = port.sent[0].payload;
  ASSERT_EQ(got.size(), 3 * kPageSize);  // pages 2..4
  EXPECT_EQ(PayloadPoolSizeForTesting(), kPayloadPoolMax - 1);  // built in a dirty buffer
  EXPECT_EQ(std::count(got.begin(), got.end(), 0x5a), static_cast<std::ptrdiff_t>(got.size()));
  // A load that fails midway cuts the reply before the failed page.
  port.sent.clear();
  port.fail_loads = true;
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 8, /*arg=*/kMaxRunPages), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_TRUE(port.sent[0].payload.empty());
}

TEST(Directory, ASilencedPeerKeepsItsCopiesRecordedUntilItIsDown) {
  HomePort port;
  Directory d(HomeConfig(2), &port);
  d.OnMessage(Msg(MsgType::kGetS, 2, 0), kT0);  // node 2: a Shared copy of page 0
  d.OnMessage(Msg(MsgType::kGetM, 3, 1), kT0);  // node 3: page 1 Modified
  d.OnMessage(Msg(MsgType::kGetS, 2, 1, 0, 7), kT0);  // recall from 3 on behalf of node 2
  d.OnMessage(Msg(MsgType::kGetS, 3, 0, 0, 8), kT0);  // node 3 queued nothing yet: granted
  port.sent.clear();
  // Node 3 goes silent: stop serving it, but it may still read its copies.
  d.OnPeerSilenced(3, kT0);
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);  // must invalidate node 2 and node 3
  std::vector<NodeId> inv;
  for (const Message& m : port.sent) {
    if (m.type == MsgType::kInv) inv.push_back(m.dst);
  }
  std::sort(inv.begin(), inv.end());
  EXPECT_EQ(inv, (std::vector<NodeId>{2, 3}));
  d.OnMessage(Msg(MsgType::kInvAck, 2, 0), kT0);
  EXPECT_TRUE(d.entry(0).busy) << "granted M while a silenced sharer may still read its copy";
  EXPECT_EQ(d.entry(1).state, ES::kModified) << "its Modified page was lost before it fenced";
  EXPECT_FALSE(d.entry(1).lost);
  const size_t before = port.sent.size();
  d.OnMessage(Msg(MsgType::kGetS, 3, 0, 0, 9), kT0);  // ignored: it is not served any more
  EXPECT_EQ(port.sent.size(), before);
  // It has fenced itself: its copies are forgotten, the write is granted, its page lost.
  d.OnPeerDown(3, kT0);
  EXPECT_FALSE(d.entry(0).busy);
  EXPECT_EQ(d.entry(0).state, ES::kModified);
  EXPECT_EQ(d.entry(0).owner, 1u);
  EXPECT_TRUE(d.entry(1).lost);
  ASSERT_FALSE(port.sent.empty());
  EXPECT_EQ(port.sent.back().dst, 2u);  // the queued read of page 1 by node 2 gets its answer
  EXPECT_EQ(port.sent.back().type, MsgType::kNack);
}

// A restarted node (a new incarnation) is served again from no copies, and when the new
// incarnation fails too, its copies are forgotten again.
TEST(Directory, ARejoinedPeerIsServedAndItsNextFailureForgetsItsCopiesAgain) {
  HomePort port;
  Directory d(HomeConfig(2), &port);
  d.OnMessage(Msg(MsgType::kGetS, 3, 0), kT0);
  d.OnPeerDown(3, kT0);
  EXPECT_EQ(d.entry(0).state, ES::kUncached);
  d.OnPeerRejoined(3);
  port.sent.clear();
  d.OnMessage(Msg(MsgType::kGetM, 3, 1), kT0);  // the new incarnation is served
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kData);
  EXPECT_EQ(d.entry(1).state, ES::kModified);
  EXPECT_EQ(d.entry(1).owner, 3u);
  d.OnPeerDown(3, kT0);  // and its failure is handled again: the page it held alone is lost
  EXPECT_TRUE(d.entry(1).lost);
  EXPECT_EQ(d.entry(1).state, ES::kUncached);
}

TEST(Directory, RunStopsAtBusyLostUnreadableAndForeignPagesAndNeverNacks) {
  HomePort port;
  // Pages 0..9 homed here, 10.. at node 3.
  Directory d({0, 1, 16, 4, [](PageIndex p) -> NodeId { return p < 10 ? 0 : 3; }}, &port);
  d.OnMessage(Msg(MsgType::kGetS, 2, 1), kT0);
  d.OnMessage(Msg(MsgType::kGetM, 3, 1), kT0);  // invalidates node 2: page 1 busy
  ASSERT_TRUE(d.entry(1).busy);
  port.sent.clear();
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 1, 4), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kDataRun);
  EXPECT_TRUE(port.sent[0].payload.empty());  // refused whole, nothing lost
  EXPECT_EQ(d.entry(2).state, ES::kUncached);  // pages after the stop are not granted
  // Foreign pages end a run; so does the end of the region.
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 8, 4), kT0);
  EXPECT_EQ(port.sent.back().payload.size(), 2 * kPageSize);
  // A lost page (its owner went down) ends a run.
  d.OnMessage(Msg(MsgType::kInvAck, 2, 1), kT0);  // node 3 now owns page 1
  d.OnPeerDown(3, kT0);
  ASSERT_TRUE(d.entry(1).lost);
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 0, 3), kT0);
  EXPECT_EQ(port.sent.back().type, MsgType::kDataRun);
  EXPECT_EQ(port.sent.back().payload.size(), kPageSize);  // page 0 only
  // An unreadable page ends a run too (the home's file failed): refused, not lost.
  port.fail_loads = true;
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 4, 2), kT0);
  EXPECT_EQ(port.sent.back().type, MsgType::kDataRun);
  EXPECT_TRUE(port.sent.back().payload.empty());
  EXPECT_EQ(d.entry(4).state, ES::kUncached);
  // Malformed length (the wire rejects it; loopback delivers it): answered as at most a full
  // run, or not at all for 0 pages (nothing can be waiting on it).
  port.fail_loads = false;
  const size_t before = port.sent.size();
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 5, 0), kT0);
  EXPECT_EQ(port.sent.size(), before);
  EXPECT_EQ(d.counters().nacks_sent, 0u);
  EXPECT_EQ(d.counters().protocol_errors, 1u);
}

TEST(Directory, WriteBackRunAppliesEachPageAsItsOwnWriteBack) {
  HomePort port;
  Directory d(HomeConfig(8), &port);
  for (PageIndex p : {2, 4}) d.OnMessage(Msg(MsgType::kGetM, 1, p), kT0);  // node 1 owns 2, 4
  d.OnMessage(Msg(MsgType::kGetS, 1, 3), kT0);                            // and shares 3
  Message put = Msg(MsgType::kPut, 1, 2, uint64_t(PutKind::kWritebackKeep));
  put.payload.assign(3 * kPageSize, 0);
  for (int i = 0; i < 3; ++i) put.payload[i * kPageSize] = static_cast<uint8_t>(10 + i);
  d.OnMessage(put, kT0);
  EXPECT_EQ(port.stores, 2);  // pages 2 and 4; page 3's payload is stale (not the owner)
  EXPECT_EQ(port.store[0], 12);
  EXPECT_EQ(d.counters().writebacks, 2u);
  EXPECT_EQ(d.counters().protocol_errors, 1u);
  for (PageIndex p = 2; p <= 4; ++p) {
    EXPECT_EQ(d.entry(p).state, ES::kShared) << p;
    EXPECT_EQ(d.entry(p).sharers, uint64_t{1} << 1) << p;
  }
  // A run that leaves the region (or this home's pages) stops there; a malformed size is
  // dropped whole.
  Message out = Msg(MsgType::kPut, 1, 7, uint64_t(PutKind::kWritebackDrop));
  out.payload.assign(2 * kPageSize, 1);
  d.OnMessage(out, kT0);
  Message odd = Msg(MsgType::kPut, 1, 2, uint64_t(PutKind::kWritebackDrop));
  odd.payload.assign(kPageSize + 1, 1);
  d.OnMessage(odd, kT0);
  EXPECT_EQ(d.counters().protocol_errors, 4u);  // 7 stale, 8 beyond, odd size
  EXPECT_EQ(port.stores, 2);
}

TEST(Directory, StaleWriteBackIsIgnored) {
  HomePort port;
  Directory d(HomeConfig(1), &port);
  d.OnMessage(Msg(MsgType::kGetS, 1, 0), kT0);
  Message put = Msg(MsgType::kPut, 2, 0, uint64_t(PutKind::kWritebackDrop));
  put.payload.assign(kPageSize, 9);
  d.OnMessage(put, kT0);
  EXPECT_EQ(port.stores, 0);
  EXPECT_EQ(d.counters().protocol_errors, 1u);
  EXPECT_EQ(d.entry(0).sharers, uint64_t{1} << 1);
  // A clean drop from the sharer is applied; a second one is stale and harmless.
  d.OnMessage(Msg(MsgType::kPut, 1, 0, uint64_t(PutKind::kDropClean)), kT0);
  EXPECT_EQ(d.entry(0).state, ES::kUncached);
  d.OnMessage(Msg(MsgType::kPut, 1, 0, uint64_t(PutKind::kDropClean)), kT0);
  EXPECT_EQ(d.entry(0).state, ES::kUncached);
}

TEST(Directory, WriteBackFromOwnerIsStored) {
  HomePort port;
  Directory d(HomeConfig(1), &port);
  d.OnMessage(Msg(MsgType::kGetM, 3, 0), kT0);
  Message put = Msg(MsgType::kPut, 3, 0, uint64_t(PutKind::kWritebackKeep));
  put.payload.assign(kPageSize, 9);
  d.OnMessage(put, kT0);
  EXPECT_EQ(port.stores, 1);
  EXPECT_EQ(port.store[0], 9);
  EXPECT_EQ(d.entry(0).state, ES::kShared);
  EXPECT_EQ(d.entry(0).sharers, uint64_t{1} << 3);
  EXPECT_EQ(d.counters().writebacks, 1u);
}

TEST(Directory, NotHomeAndIoErrorAreNacked) {
  HomePort port;
  Directory d({0, 1, 4, 2, [](PageIndex p) -> NodeId { return p % 2; }}, &port);
  d.OnMessage(Msg(MsgType::kGetS, 1, 1), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kNack);
  EXPECT_EQ(port.sent[0].arg, uint64_t(ErrorCode::kNotHome));
  port.fail_loads = true;
  d.OnMessage(Msg(MsgType::kGetS, 1, 2), kT0);
  EXPECT_EQ(port.sent.back().type, MsgType::kNack);
  EXPECT_EQ(port.sent.back().arg, uint64_t(ErrorCode::kIoError));
  EXPECT_EQ(d.entry(2).state, ES::kUncached);
  EXPECT_FALSE(d.entry(2).busy);
}

TEST(Directory, CollectOverdueAndHasRemoteCopies) {
  HomePort port;
  Directory d(HomeConfig(2), &port);
  EXPECT_FALSE(d.HasRemoteCopies());
  d.OnMessage(Msg(MsgType::kGetS, 0, 0), kT0);  // the home itself
  EXPECT_FALSE(d.HasRemoteCopies());
  d.OnMessage(Msg(MsgType::kGetS, 1, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetS, 2, 0), kT0);
  EXPECT_TRUE(d.HasRemoteCopies());
  d.OnMessage(Msg(MsgType::kGetM, 3, 0), kT0);  // invalidates 0, 1, 2
  EXPECT_EQ(d.counters().invalidations_sent, 3u);
  d.OnMessage(Msg(MsgType::kInvAck, 1, 0), kT0);
  std::vector<NodeId> peers;
  d.CollectOverdue(kT0 + absl::Seconds(1), absl::Seconds(2), &peers);
  EXPECT_TRUE(peers.empty());
  d.CollectOverdue(kT0 + absl::Seconds(3), absl::Seconds(2), &peers);
  EXPECT_EQ(peers, (std::vector<NodeId>{0, 2}));
  d.OnPeerDown(2, kT0);
  d.OnMessage(Msg(MsgType::kInvAck, 0, 0), kT0);
  EXPECT_EQ(port.sent.back().type, MsgType::kData);  // 3 had no copy
  EXPECT_EQ(d.entry(0).owner, 3u);
  EXPECT_FALSE(d.entry(0).busy);
}

// ---- closing and reclaim (unmapping at the home) -----------------------------------------

Message WithPage(Message m, uint8_t fill) {
  m.payload.assign(kPageSize, fill);
  return m;
}

size_t CountSent(const HomePort& port, MsgType t, NodeId dst) {
  return static_cast<size_t>(std::count_if(port.sent.begin(), port.sent.end(),
                                           [&](const Message& m) {
                                             return m.type == t && m.dst == dst;
                                           }));
}

TEST(Directory, ReclaimWithNothingHeldElsewhereCompletesAtOnce) {
  HomePort port;
  Directory d(HomeConfig(4), &port);
  d.OnMessage(Msg(MsgType::kGetM, 0, 0), kT0);  // Modified at the home itself
  d.OnMessage(Msg(MsgType::kGetS, 1, 1), kT0);  // Shared elsewhere: nothing to bring back
  port.sent.clear();
  d.SetClosing();
  int done = 0;
  d.ReclaimModified(kT0, [&done] { ++done; });
  EXPECT_EQ(done, 1);
  EXPECT_TRUE(port.sent.empty());
  EXPECT_EQ(d.entry(0).owner, 0u);  // the home's own cache writes it back on release
}

TEST(Directory, ReclaimRecallsEveryPageModifiedElsewhereAndStoresIt) {
  HomePort port;
  Directory d(HomeConfig(4), &port);
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetM, 2, 2), kT0);
  d.OnMessage(Msg(MsgType::kGetS, 1, 3), kT0);
  port.sent.clear();
  d.SetClosing();
  int done = 0;
  d.ReclaimModified(kT0, [&done] { ++done; });
  EXPECT_EQ(done, 0);
  ASSERT_EQ(port.sent.size(), 2u);
  for (const Message& m : port.sent) {
    EXPECT_EQ(m.type, MsgType::kRecall);
    EXPECT_EQ(m.arg, uint64_t(RecallKind::kDowngrade));  // the owner may keep reading
  }
  EXPECT_EQ(CountSent(port, MsgType::kRecall, 1), 1u);
  EXPECT_EQ(CountSent(port, MsgType::kRecall, 2), 1u);
  d.OnMessage(WithPage(Msg(MsgType::kRecallAck, 1, 0, uint64_t(PageState::kShared)), 0x11), kT0);
  EXPECT_EQ(done, 0);
  EXPECT_EQ(port.store[0], 0x11);
  d.OnMessage(WithPage(Msg(MsgType::kRecallAck, 2, 2, uint64_t(PageState::kShared)), 0x22), kT0);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(port.store[0], 0x22);
  EXPECT_EQ(d.entry(0).state, ES::kShared);
  EXPECT_EQ(d.entry(0).sharers, uint64_t{1} << 1);
  EXPECT_EQ(d.entry(2).sharers, uint64_t{1} << 2);
  EXPECT_FALSE(d.entry(0).busy);
  EXPECT_FALSE(d.entry(2).busy);
  EXPECT_EQ(d.counters().protocol_errors, 0u);
  // Nothing is granted for a reclaim: no kData or kGrant went out.
  EXPECT_EQ(port.sent.size(), 2u);
}

TEST(Directory, ReclaimCrossingAWriteBackCompletesWithTheWrittenBackData) {
  HomePort port;
  Directory d(HomeConfig(2), &port);
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);
  port.sent.clear();
  d.SetClosing();
  int done = 0;
  d.ReclaimModified(kT0, [&done] { ++done; });
  ASSERT_EQ(CountSent(port, MsgType::kRecall, 1), 1u);
  // Node 1 evicted the page before it saw the recall: its write-back arrives first.
  d.OnMessage(WithPage(Msg(MsgType::kPut, 1, 0, uint64_t(PutKind::kWritebackDrop)), 0x5a), kT0);
  EXPECT_EQ(port.store[0], 0x5a);
  EXPECT_EQ(done, 0);  // the recall is still owed an answer
  // Its answer to the recall carries no data: it holds nothing any more.
  d.OnMessage(Msg(MsgType::kRecallAck, 1, 0, uint64_t(PageState::kInvalid)), kT0);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(d.entry(0).state, ES::kUncached);
  EXPECT_FALSE(d.entry(0).busy);
  EXPECT_EQ(port.stores, 1);
  EXPECT_EQ(d.counters().protocol_errors, 0u);
}

TEST(Directory, ReclaimWhileTheOwnerGoesDownCompletesAndThePageIsLost) {
  HomePort port;
  Directory d(HomeConfig(4), &port);
  d.OnMessage(Msg(MsgType::kGetM, 1, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetM, 2, 1), kT0);
  port.sent.clear();
  d.SetClosing();
  int done = 0;
  d.ReclaimModified(kT0, [&done] { ++done; });
  ASSERT_EQ(port.sent.size(), 2u);
  // Node 1 goes silent: the home sees it owes the recall, and then it is declared down.
  std::vector<NodeId> overdue;
  d.CollectOverdue(kT0 + absl::Seconds(3), absl::Seconds(2), &overdue);
  EXPECT_EQ(overdue, (std::vector<NodeId>{1, 2}));
  d.OnPeerDown(1, kT0);
  EXPECT_EQ(done, 0);  // node 2 still owes its page
  EXPECT_TRUE(d.entry(0).lost);
  EXPECT_FALSE(d.entry(0).busy);
  d.OnMessage(WithPage(Msg(MsgType::kRecallAck, 2, 1, uint64_t(PageState::kShared)), 0x33), kT0);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(d.entry(1).state, ES::kShared);
}

int CountLines(const std::string& text, const std::string& with) {
  int n = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (text.substr(start, end - start).find(with) != std::string::npos) ++n;
    start = end + 1;
  }
  return n;
}

// Pages a down node held Modified are lost and logged as ranges: one line per contiguous
// range, and past kMaxLostRangeLines ranges one line for the rest, never one per page.
TEST(Directory, PagesLostWithADownOwnerAreLoggedAsRanges) {
  HomePort port;
  Directory d(HomeConfig(64), &port);
  for (PageIndex p : {0, 1, 2, 3, 4, 7, 8}) d.OnMessage(Msg(MsgType::kGetM, 1, p), kT0);
  d.OnMessage(Msg(MsgType::kGetM, 2, 5), kT0);  // another owner: not lost
  ::testing::internal::CaptureStderr();
  d.OnPeerDown(1, kT0);
  std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(CountLines(log, "lost"), 2) << log;
  EXPECT_NE(log.find("pages [0, 5) lost (5 pages)"), std::string::npos) << log;
  EXPECT_NE(log.find("pages [7, 9) lost (2 pages)"), std::string::npos) << log;
  EXPECT_NE(log.find("node 1"), std::string::npos) << log;
  for (PageIndex p : {0, 4, 7, 8}) EXPECT_TRUE(d.entry(p).lost) << p;
  EXPECT_FALSE(d.entry(5).lost);

  // Every other page (as interleaving leaves them): capped at kMaxLostRangeLines + 1 lines.
  for (PageIndex p = 20; p < 60; p += 2) d.OnMessage(Msg(MsgType::kGetM, 2, p), kT0);
  ::testing::internal::CaptureStderr();
  d.OnPeerDown(2, kT0);
  log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(CountLines(log, "lost"), static_cast<int>(kMaxLostRangeLines) + 1) << log;
  EXPECT_NE(log.find("more ranges lost"), std::string::npos) << log;
  EXPECT_TRUE(d.entry(58).lost);
}

TEST(Directory, ReclaimQueuesBehindATransactionThatEndsModifiedElsewhere) {
  HomePort port;
  Directory d(HomeConfig(2), &port);
  d.OnMessage(Msg(MsgType::kGetS, 1, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetS, 2, 0), kT0);
  d.OnMessage(Msg(MsgType::kGetM, 1, 0, 0, /*req_id=*/9), kT0);  // waits for 2's kInvAck
  ASSERT_TRUE(d.entry(0).busy);
  port.sent.clear();
  d.SetClosing();
  int done = 0;
  d.ReclaimModified(kT0, [&done] { ++done; });
  EXPECT_TRUE(port.sent.empty());  // behind the active transaction
  EXPECT_EQ(d.entry(0).queued, 1u);
  d.OnMessage(Msg(MsgType::kInvAck, 2, 0), kT0);
  // The write is granted first, then the reclaim recalls it from its new owner.
  ASSERT_EQ(port.sent.size(), 2u);
  EXPECT_EQ(port.sent[0].type, MsgType::kGrant);
  EXPECT_EQ(port.sent[0].req_id, 9u);
  EXPECT_EQ(port.sent[1].type, MsgType::kRecall);
  EXPECT_EQ(port.sent[1].dst, 1u);
  EXPECT_EQ(done, 0);
  d.OnMessage(WithPage(Msg(MsgType::kRecallAck, 1, 0, uint64_t(PageState::kShared)), 0x44), kT0);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(port.store[0], 0x44);
}

TEST(Directory, ClosingRefusesOtherNodesRequestsButServesTheHomeAndAppliesWriteBacks) {
  HomePort port;
  Directory d(HomeConfig(8), &port);
  d.OnMessage(Msg(MsgType::kGetM, 2, 5), kT0);
  port.sent.clear();
  d.SetClosing();
  EXPECT_TRUE(d.closing());
  d.OnMessage(Msg(MsgType::kGetS, 1, 0, 0, /*req_id=*/3), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kNack);
  EXPECT_EQ(port.sent[0].arg, uint64_t(ErrorCode::kShuttingDown));
  EXPECT_EQ(port.sent[0].req_id, 3u);
  EXPECT_EQ(port.sent[0].dst, 1u);
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 0, /*arg=*/4, /*req_id=*/4), kT0);
  ASSERT_EQ(port.sent.size(), 2u);
  EXPECT_EQ(port.sent[1].type, MsgType::kDataRun);  // a run is refused whole, never nacked
  EXPECT_EQ(port.sent[1].arg, 4u);
  EXPECT_TRUE(port.sent[1].payload.empty());
  EXPECT_EQ(d.entry(0).state, ES::kUncached);
  d.OnMessage(Msg(MsgType::kGetS, 0, 1), kT0);  // the home's own fault is served
  EXPECT_EQ(port.sent.back().type, MsgType::kData);
  d.OnMessage(WithPage(Msg(MsgType::kPut, 2, 5, uint64_t(PutKind::kWritebackDrop)), 0x77), kT0);
  EXPECT_EQ(port.store[0], 0x77);  // write-backs still land
  EXPECT_EQ(d.entry(5).state, ES::kUncached);
}

TEST(Directory, RequestsForPagesNotHomedHereOrOutsideTheRegionAreRefused) {
  HomePort port;
  Directory d({0, 1, 4, 2, [](PageIndex p) -> NodeId { return p % 2; }}, &port);
  d.OnMessage(Msg(MsgType::kGetSRun, 1, 1, /*arg=*/2), kT0);
  ASSERT_EQ(port.sent.size(), 1u);
  EXPECT_EQ(port.sent[0].type, MsgType::kDataRun);
  EXPECT_TRUE(port.sent[0].payload.empty());
  d.OnMessage(Msg(MsgType::kGetM, 1, 9), kT0);  // beyond the region
  ASSERT_EQ(port.sent.size(), 2u);
  EXPECT_EQ(port.sent[1].type, MsgType::kNack);
  EXPECT_EQ(port.sent[1].arg, uint64_t(ErrorCode::kNotHome));
  d.OnMessage(Msg(MsgType::kInvAck, 1, 3), kT0);  // an ack gets no answer
  EXPECT_EQ(port.sent.size(), 2u);
  EXPECT_EQ(d.counters().protocol_errors, 3u);
}

long ResidentBytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  std::fclose(f);
  return resident * sysconf(_SC_PAGESIZE);
}

// The stated target: a 64 GiB region that is never touched costs (almost) no memory, and
// the per-page tables stay within 12 bytes (home) and 2 bytes (cache) per page.
TEST(Directory, HugeUntouchedRegionCostsAlmostNothing) {
  const uint64_t pages = (uint64_t{64} << 30) / kPageSize;
  HomePort hport;
  struct NullPort final : CachePort {
    void Send(Message&&) override {}
    absl::Status Install(PageIndex, const uint8_t*, PageState) override {
      return absl::OkStatus();
    }
    absl::Status SetAccess(PageIndex, PageState) override { return absl::OkStatus(); }
    void ReadPage(PageIndex, uint8_t*) override {}
    absl::Status Drop(PageIndex) override { return absl::OkStatus(); }
    void Fail(PageIndex, ErrorCode) override {}
    void Wake(PageIndex) override {}
  } cport;
  const long before = ResidentBytes();
  ASSERT_GT(before, 0);
  Directory d({0, 1, pages, 2, [](PageIndex) -> NodeId { return 0; }}, &hport);
  Cache c({0, 1, pages, [](PageIndex) -> NodeId { return 0; }}, &cport);
  // Touch a few scattered pages on both sides.
  for (PageIndex p : {PageIndex{0}, pages / 2, pages - 1}) {
    d.OnMessage(Msg(MsgType::kGetS, 1, p), kT0);
    c.OnFault(p, false, kT0);
  }
  std::vector<NodeId> homes;
  ASSERT_TRUE(c.WriteBackAll(&homes).ok());
  const long grown = ResidentBytes() - before;
  EXPECT_LT(grown, 4 << 20) << "resident memory grew by " << grown << " bytes";
  EXPECT_EQ(d.entry(pages / 2).sharers, uint64_t{1} << 1);
  EXPECT_TRUE(c.pending(pages - 1));
}

}  // namespace
}  // namespace dsm::coherence
