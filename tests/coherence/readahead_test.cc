// Sequential readahead on the requester side (Cache::Config::readahead_max_pages): which
// misses trigger it, which pages it skips, that a prefetched page is then read with no fault,
// that a write joining a prefetch still gets M, that the memory budget bounds it, and a
// randomized run with sequential bursts, budgets and node failures.
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "coherence/cache.h"
#include "coherence/replacement.h"
#include "common/log.h"
#include "gtest/gtest.h"
#include "sim.h"
#include "test_util.h"

namespace dsm::coherence {
namespace {

using test::HomeAt;
using test::Reply;
using test::kT0;

using sim::Sim;

class RecordingPort final : public CachePort {
 public:
  void Send(Message&& m) override { sent.push_back(std::move(m)); }
  absl::Status Install(PageIndex, const uint8_t*, PageState) override {
    return absl::OkStatus();
  }
  absl::Status SetAccess(PageIndex, PageState) override { return absl::OkStatus(); }
  void ReadPage(PageIndex, uint8_t* out) override { out[0] = 0; }
  absl::Status Drop(PageIndex) override { return absl::OkStatus(); }
  void Fail(PageIndex, ErrorCode) override {}
  void Wake(PageIndex) override {}
  bool ReservePrefetch(PageIndex page) override {
    reserved.push_back(page);
    return room-- > 0;
  }
  void CancelPrefetch(PageIndex page) override { cancelled.push_back(page); }
  absl::Status InstallRun(PageIndex first, uint64_t n, const uint8_t*) override {
    runs_installed.push_back({first, n});
    return absl::OkStatus();
  }

  std::vector<Message> sent;
  std::vector<PageIndex> reserved, cancelled;
  std::vector<std::pair<PageIndex, uint64_t>> runs_installed;
  int room = 1 << 30;
};

// Pages of the kGetS sent from index `from` on.
std::vector<PageIndex> GetSPages(const RecordingPort& port, size_t from = 0) {
  std::vector<PageIndex> out;
  for (size_t i = from; i < port.sent.size(); ++i) {
    if (port.sent[i].type == MsgType::kGetS) out.push_back(port.sent[i].page);
  }
  return out;
}

// (first, count) of the kGetSRun sent from index `from` on.
using Runs = std::vector<std::pair<PageIndex, uint64_t>>;
Runs GetSRuns(const RecordingPort& port, size_t from = 0) {
  Runs out;
  for (size_t i = from; i < port.sent.size(); ++i) {
    if (port.sent[i].type == MsgType::kGetSRun) out.push_back({port.sent[i].page, port.sent[i].arg});
  }
  return out;
}

// The home's kDataRun answer to `req` granting its first `granted` pages.
Message RunReply(const Message& req, uint64_t granted) {
  Message m = Reply(MsgType::kDataRun, req, req.arg);
  m.payload.assign(granted * kPageSize, 7);
  return m;
}

Cache::Config Config(uint64_t pages, uint64_t readahead, HomeFn home = nullptr) {
  if (!home) home = [](PageIndex) -> NodeId { return 0; };
  return Cache::Config{1, 1, pages, std::move(home), readahead};
}

TEST(Readahead, SequentialMissesPrefetchRunsWithAGrowingWindow) {
  RecordingPort port;
  Cache cache(Config(64, 16), &port);
  cache.OnFault(0, false, kT0);
  EXPECT_EQ(port.sent.size(), 1u);  // one miss is not a stream
  cache.OnFault(1, false, kT0);
  EXPECT_EQ(GetSPages(port), (std::vector<PageIndex>{0, 1}));
  EXPECT_EQ(GetSRuns(port), (Runs{{2, 4}}));  // window 4, one message
  EXPECT_EQ(cache.counters().prefetches, 4u);
  for (PageIndex p = 2; p <= 5; ++p) EXPECT_TRUE(cache.pending(p));
  // A fault on a page still in flight joins it (a hit) and pushes the window on: 8 ahead.
  size_t before = port.sent.size();
  cache.OnFault(2, false, kT0);
  EXPECT_EQ(cache.counters().prefetch_hits, 1u);
  EXPECT_EQ(cache.counters().coalesced_faults, 1u);
  EXPECT_EQ(GetSRuns(port, before), (Runs{{6, 5}}));
  // The window stops growing at the maximum (16).
  cache.OnFault(3, false, kT0);   // window 16: 11..19
  cache.OnFault(10, false, kT0);  // inside the requested range: still sequential; up to 26
  EXPECT_EQ(GetSRuns(port), (Runs{{2, 4}, {6, 5}, {11, 9}, {20, 7}}));
  // A fault that finds less than a chunk (16 / 4) due sends nothing yet.
  before = port.sent.size();
  cache.OnFault(11, false, kT0);  // due: 27 only
  EXPECT_EQ(port.sent.size(), before);
  EXPECT_EQ(cache.counters().prefetches, 4u + 5u + 9u + 7u);
  EXPECT_EQ(cache.counters().run_requests, 4u);
  EXPECT_EQ(cache.counters().requests_sent, 2u + 4u);
}

TEST(Readahead, LongStreamsSendFullAlignedRunsAndKeepTwoInFlight) {
  RecordingPort port;
  Cache cache(Config(4096, 256), &port);
  // The application reads sequentially and faults only where a run has not arrived yet.
  cache.OnFault(0, false, kT0);
  cache.OnFault(1, false, kT0);
  PageIndex next = 2;  // first page of the oldest run in flight
  for (int i = 0; i < 40; ++i) {
    // The application catches up with the oldest run (its fault joins it), then the run
    // arrives whole; the next page it needs must already be in flight.
    ASSERT_TRUE(cache.pending(next)) << "the stream stalls at " << next;
    cache.OnFault(next, false, kT0);
    const Message* req = nullptr;
    for (const Message& m : port.sent) {
      if (m.type == MsgType::kGetSRun && m.page == next) req = &m;
    }
    ASSERT_NE(req, nullptr) << "no run starts at " << next;
    const Message r = *req;
    cache.OnMessage(RunReply(r, r.arg), kT0);
    next = r.page + r.arg;
  }
  const Runs runs = GetSRuns(port);
  size_t full = 0;
  for (const auto& [first, n] : runs) {
    EXPECT_LE(n, kMaxRunPages);
    if (n == kMaxRunPages) {
      ++full;
      EXPECT_EQ(first % kMaxRunPages, 0u) << first;
    }
  }
  EXPECT_GE(full, runs.size() - 8);  // after the ramp-up every run is full
  EXPECT_EQ(GetSPages(port), (std::vector<PageIndex>{0, 1}));  // no demand miss after the ramp
  EXPECT_EQ(port.runs_installed.size(), 40u);
}

TEST(Readahead, RunReplyInstallsTheGrantedPrefixAndReturnsTheRest) {
  RecordingPort port;
  Cache cache(Config(64, 16), &port);
  cache.OnFault(0, false, kT0);
  cache.OnFault(1, false, kT0);
  ASSERT_EQ(GetSRuns(port), (Runs{{2, 4}}));
  const Message run = port.sent.back();
  cache.OnFault(4, false, kT0);  // a reader joins page 4 (not sequential: no new readahead)
  cache.OnFault(5, true, kT0);   // a writer joins page 5
  const size_t before = port.sent.size();
  cache.OnMessage(RunReply(run, 2), kT0);  // pages 2 and 3 granted, 4 and 5 refused
  EXPECT_EQ(port.runs_installed, (Runs{{2, 2}}));
  EXPECT_EQ(cache.state(2), PageState::kShared);
  EXPECT_EQ(cache.state(3), PageState::kShared);
  EXPECT_FALSE(cache.pending(2) || cache.pending(3));
  // The refused pages with a waiting thread are requested alone, as the thread needs them.
  ASSERT_EQ(port.sent.size(), before + 2);
  EXPECT_EQ(port.sent[before].type, MsgType::kGetS);
  EXPECT_EQ(port.sent[before].page, 4u);
  EXPECT_EQ(port.sent[before + 1].type, MsgType::kGetM);
  EXPECT_EQ(port.sent[before + 1].page, 5u);
  EXPECT_TRUE(port.cancelled.empty());
  EXPECT_EQ(cache.counters().prefetch_refused, 2u);
  // A run refused whole with no thread waiting: every reservation is returned, nothing lost.
  RecordingPort port2;
  Cache cache2(Config(64, 16), &port2);
  cache2.OnFault(0, false, kT0);
  cache2.OnFault(1, false, kT0);
  cache2.OnMessage(RunReply(port2.sent.back(), 0), kT0);
  EXPECT_EQ(port2.cancelled, (std::vector<PageIndex>{2, 3, 4, 5}));
  for (PageIndex p = 2; p <= 5; ++p) {
    EXPECT_FALSE(cache2.pending(p) || cache2.lost(p));
    EXPECT_EQ(cache2.state(p), PageState::kInvalid);
  }
  EXPECT_TRUE(port2.runs_installed.empty());
  EXPECT_EQ(cache2.counters().protocol_errors, 0u);
}

TEST(Readahead, MalformedOrStrayRunRepliesAreIgnoredOrContained) {
  RecordingPort port;
  Cache cache(Config(64, 16), &port);
  cache.OnFault(0, false, kT0);
  cache.OnFault(1, false, kT0);
  const Message run = port.sent.back();
  Message stray = RunReply(run, 4);
  stray.req_id += 100;  // no such request
  cache.OnMessage(stray, kT0);
  Message wrong_home = RunReply(run, 4);
  wrong_home.src = 3;
  cache.OnMessage(wrong_home, kT0);
  EXPECT_EQ(cache.counters().protocol_errors, 2u);
  EXPECT_TRUE(port.runs_installed.empty());
  EXPECT_TRUE(cache.pending(2));
  Message too_many = RunReply(run, 4);
  too_many.payload.resize(6 * kPageSize);  // more pages than the run has (the wire forbids)
  cache.OnMessage(too_many, kT0);
  EXPECT_EQ(port.runs_installed, (Runs{{2, 4}}));  // only the run's own pages
  EXPECT_EQ(cache.counters().protocol_errors, 3u);
  for (PageIndex p = 2; p <= 5; ++p) EXPECT_EQ(cache.state(p), PageState::kShared) << p;
  // A Nack for a run (homes never send one) ends every page of it.
  RecordingPort port2;
  Cache cache2(Config(64, 16), &port2);
  cache2.OnFault(0, false, kT0);
  cache2.OnFault(1, false, kT0);
  cache2.OnMessage(Reply(MsgType::kNack, port2.sent.back(), uint64_t(ErrorCode::kPageLost)), kT0);
  for (PageIndex p = 2; p <= 5; ++p) EXPECT_TRUE(cache2.lost(p)) << p;
}

TEST(Readahead, RandomMissesAndWritesDoNotPrefetch) {
  RecordingPort port;
  Cache cache(Config(64, 64), &port);
  for (PageIndex p : {5, 17, 3, 9, 20, 40, 2, 30}) cache.OnFault(p, false, kT0);
  for (PageIndex p = 50; p < 60; ++p) cache.OnFault(p, true, kT0);  // sequential writes
  EXPECT_EQ(cache.counters().prefetches, 0u);
  EXPECT_EQ(port.sent.size(), 18u);
  EXPECT_TRUE(port.reserved.empty());
}

TEST(Readahead, PagesRefusedTwiceInARowAreLeftToDemandFaults) {
  RecordingPort port;
  Cache cache(Config(64, 16), &port);
  // Pages 2..5 refused in two runs in a row (explicit prefetches count like readahead).
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(cache.Prefetch(2, 4, kT0), 4u);
    ASSERT_EQ(port.sent.back().type, MsgType::kGetSRun);
    cache.OnMessage(RunReply(port.sent.back(), 0), kT0);
  }
  EXPECT_EQ(cache.counters().prefetch_refused, 8u);
  // A sequential stream 0, 1 now asks for nothing up to page 5: readahead skips them.
  size_t before = port.sent.size();
  cache.OnFault(0, false, kT0);
  cache.OnFault(1, false, kT0);
  EXPECT_EQ(GetSPages(port, before), (std::vector<PageIndex>{0, 1}));
  EXPECT_TRUE(GetSRuns(port, before).empty());
  EXPECT_EQ(cache.counters().prefetch_skipped, 4u);
  // A page refused once is still asked for; a granted run page starts counting afresh.
  RecordingPort port2;
  Cache cache2(Config(64, 16), &port2);
  cache2.Prefetch(2, 4, kT0);
  cache2.OnMessage(RunReply(port2.sent.back(), 2), kT0);  // 2, 3 granted; 4, 5 refused once
  before = port2.sent.size();
  cache2.OnFault(0, false, kT0);
  cache2.OnFault(1, false, kT0);
  EXPECT_EQ(GetSRuns(port2, before), (Runs{{4, 2}}));
  EXPECT_EQ(cache2.counters().prefetch_skipped, 0u);
  // Explicit prefetch ignores refusals.
  EXPECT_EQ(cache.Prefetch(2, 4, kT0), 4u);
  // Advice kNormal forgets the refusals: the stream asks for 2..5 again.
  RecordingPort port3;
  Cache cache3(Config(64, 16), &port3);
  for (int i = 0; i < 2; ++i) {
    cache3.Prefetch(2, 4, kT0);
    cache3.OnMessage(RunReply(port3.sent.back(), 0), kT0);
  }
  cache3.SetReadahead(0, 64, /*enabled=*/true);
  before = port3.sent.size();
  cache3.OnFault(0, false, kT0);
  cache3.OnFault(1, false, kT0);
  EXPECT_EQ(GetSRuns(port3, before), (Runs{{2, 4}}));
  EXPECT_EQ(cache3.counters().prefetch_skipped, 0u);
}

TEST(Readahead, RandomAdviceStopsReadaheadFromAndIntoTheRange) {
  RecordingPort port;
  Cache cache(Config(64, 16), &port);
  cache.SetReadahead(0, 8, /*enabled=*/false);
  for (PageIndex p = 0; p < 8; ++p) cache.OnFault(p, false, kT0);
  EXPECT_EQ(cache.counters().prefetches, 0u);
  EXPECT_EQ(port.sent.size(), 8u);
  // A stream just below the range stops at its edge.
  cache.SetReadahead(20, 10, /*enabled=*/false);
  size_t before = port.sent.size();
  cache.OnFault(17, false, kT0);
  cache.OnFault(18, false, kT0);  // window 4: 19..22, of which 20..22 are advised kRandom
  EXPECT_EQ(GetSPages(port, before), (std::vector<PageIndex>{17, 18, 19}));
  EXPECT_TRUE(GetSRuns(port, before).empty());
  // Taken back: the stream continues into the range (past what it already passed over).
  cache.SetReadahead(20, 10, /*enabled=*/true);
  before = port.sent.size();
  cache.OnFault(19, false, kT0);  // joins the lone prefetch of 19; window 8: up to 27
  EXPECT_EQ(GetSRuns(port, before), (Runs{{23, 5}}));
}

TEST(Readahead, PrefetchAsksForWhatReadaheadCouldInRuns) {
  RecordingPort port;
  // Pages 0..99 at node 0; 100..127 at this node (1): never requested.
  Cache cache(Config(128, 0, [](PageIndex p) -> NodeId { return p < 100 ? 0 : 1; }), &port);
  EXPECT_EQ(cache.Prefetch(10, 200, kT0), 90u);  // clipped to the region; 100.. homed here
  EXPECT_EQ(GetSRuns(port), (Runs{{10, 54}, {64, 36}}));
  EXPECT_EQ(cache.counters().prefetches, 90u);
  // Everything is pending now: nothing more to ask.
  EXPECT_EQ(cache.Prefetch(0, 128, kT0), 10u);  // only 0..9
  EXPECT_EQ(GetSRuns(port).back(), (std::pair<PageIndex, uint64_t>{0, 10}));
  // The budget bounds it.
  RecordingPort tight;
  tight.room = 3;
  Cache small(Config(64, 0), &tight);
  EXPECT_EQ(small.Prefetch(0, 64, kT0), 3u);
}

TEST(Readahead, DisabledByZero) {
  RecordingPort port;
  Cache cache(Config(64, 0), &port);
  for (PageIndex p = 0; p < 10; ++p) cache.OnFault(p, false, kT0);
  EXPECT_EQ(port.sent.size(), 10u);
  EXPECT_EQ(cache.counters().prefetches, 0u);
}

TEST(Readahead, NeverForPagesPendingLostOwnedHomedHereOrAtADownHome) {
  RecordingPort port;
  // Page 3 is homed here (node 1), pages 11 and 12 at node 2, the rest at node 0.
  Cache cache(Config(32, 64,
                     [](PageIndex p) -> NodeId {
                       return p == 3 ? 1 : (p == 11 || p == 12) ? 2 : 0;
                     }),
              &port);
  cache.OnFault(5, true, kT0);  // pending kGetM
  cache.OnFault(7, false, kT0);
  cache.OnMessage(Reply(MsgType::kNack, port.sent.back(), 1), kT0);  // 7 lost
  ASSERT_TRUE(cache.lost(7));
  cache.OnFault(2, true, kT0);
  cache.OnMessage(Reply(MsgType::kData, port.sent.back(), static_cast<uint64_t>(Grant::kModified)),
                  kT0);
  ASSERT_EQ(cache.state(2), PageState::kModified);
  cache.OnPeerDown(2);
  size_t before = port.sent.size();
  cache.OnFault(0, false, kT0);  // not sequential after 7: a new stream
  cache.OnFault(1, false, kT0);  // window 4: 2 M, 3 homed here, 4 ok, 5 pending
  EXPECT_EQ(GetSPages(port, before), (std::vector<PageIndex>{0, 1, 4}));  // a lone page: kGetS
  EXPECT_TRUE(GetSRuns(port, before).empty());
  before = port.sent.size();
  cache.OnFault(4, false, kT0);  // joins the prefetch; window 8: 6..12 minus 7 (lost), 11, 12
  EXPECT_EQ(GetSPages(port, before), (std::vector<PageIndex>{6}));
  EXPECT_EQ(GetSRuns(port, before), (Runs{{8, 3}}));
  EXPECT_EQ(cache.counters().prefetches, 5u);
  for (PageIndex p : port.reserved) {
    EXPECT_TRUE(p != 2 && p != 3 && p != 5 && p != 7 && p != 11 && p != 12) << p;
  }
  // Beyond the region: never.
  RecordingPort port2;
  Cache small(Config(4, 64), &port2);
  small.OnFault(1, false, kT0);
  small.OnFault(2, false, kT0);
  EXPECT_EQ(GetSPages(port2), (std::vector<PageIndex>{1, 2, 3}));  // 3: the region's end
}

TEST(Readahead, StopsWhereThePortHasNoRoom) {
  RecordingPort port;
  port.room = 2;
  Cache cache(Config(64, 64), &port);
  cache.OnFault(0, false, kT0);
  cache.OnFault(1, false, kT0);
  EXPECT_EQ(GetSPages(port), (std::vector<PageIndex>{0, 1}));
  EXPECT_EQ(GetSRuns(port), (Runs{{2, 2}}));  // the pages reserved before the refusal
  EXPECT_EQ(cache.counters().prefetches, 2u);
  EXPECT_FALSE(cache.pending(4));
}

// Node `n` reads pages 0 and 1, one at a time: a sequential stream whose readahead then asks
// for pages 2..5 (window 4).
void StartStream(Sim& sim, NodeId n) {
  for (PageIndex p = 0; p < 2; ++p) {
    sim.Access(n, p, false);
    ASSERT_TRUE(sim.Settle()) << sim.error();
  }
}

// Node `n` reads `page` and sees what thread `writer` stored; every invariant holds.
void ExpectReadSees(Sim& sim, NodeId n, PageIndex page, int writer) {
  const int r = sim.Access(n, page, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(r).value, sim.thread(writer).value) << "page " << page;
  EXPECT_TRUE(sim.Check()) << sim.error();
}

TEST(Readahead, PrefetchedPagesAreThenReadWithoutAFault) {
  Sim sim(2, 32, HomeAt(0), /*readahead=*/64);
  for (PageIndex p = 0; p < 2; ++p) {
    const int t = sim.Access(1, p, false);
    ASSERT_TRUE(sim.Settle()) << sim.error();
    ASSERT_EQ(sim.thread(t).state, Sim::ThreadState::kDone);
  }
  // Pages 2..5 were prefetched and installed read-only: no fault at all.
  for (PageIndex p = 2; p <= 5; ++p) {
    EXPECT_EQ(sim.mapped(1, p), PageState::kShared) << p;
    const int t = sim.Access(1, p, false);
    EXPECT_EQ(sim.thread(t).state, Sim::ThreadState::kDone) << p;
    EXPECT_EQ(sim.thread(t).faults, 0) << p;
  }
  const int t = sim.Access(1, 6, false);  // the next miss continues the stream
  EXPECT_EQ(sim.thread(t).faults, 1);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.cache(1).counters().prefetch_hits, 4u);
  EXPECT_EQ(sim.cache(1).counters().read_faults, 3u);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

TEST(Readahead, WriteJoiningAPrefetchGetsM) {
  Sim sim(2, 16, HomeAt(0), 64);
  sim.Access(1, 0, false);
  ASSERT_TRUE(sim.Settle());
  sim.Access(1, 1, false);
  ASSERT_TRUE(sim.DeliverFault(1));  // GetS 1 + prefetch 2..5, none delivered yet
  ASSERT_TRUE(sim.cache(1).pending(2));
  const int w = sim.Access(1, 2, true);
  ASSERT_TRUE(sim.DeliverFault(1));  // joins the prefetch as a writer
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, Sim::ThreadState::kDone);
  EXPECT_EQ(sim.mapped(1, 2), PageState::kModified);
  EXPECT_EQ(sim.last_write(2), sim.thread(w).value);
  EXPECT_TRUE(sim.Check()) << sim.error();
}

TEST(Readahead, InvalidationOfAPrefetchedPage) {
  Sim sim(3, 16, HomeAt(0), 64);
  sim.Access(1, 0, false);
  ASSERT_TRUE(sim.Settle());
  sim.Access(1, 1, false);
  ASSERT_TRUE(sim.Settle());
  ASSERT_EQ(sim.mapped(1, 3), PageState::kShared);  // prefetched
  const int w = sim.Access(2, 3, true);              // invalidates node 1's copy
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.thread(w).state, Sim::ThreadState::kDone);
  EXPECT_EQ(sim.mapped(1, 3), PageState::kInvalid);
  ExpectReadSees(sim, 1, 3, w);
}

// The hard crossing for runs: another node writes a page of the region while a run over it is
// asked for. The home must not grant that page (nor any after it) from a stale copy, and the
// reader must then see the writer's value.
TEST(Readahead, RunStopsAtAPageAnotherNodeHoldsModified) {
  Sim sim(3, 32, HomeAt(0), 64);
  const int w = sim.Access(2, 4, true);  // node 2 holds page 4 M
  ASSERT_TRUE(sim.Settle()) << sim.error();
  StartStream(sim, 1);
  // The run asked for 2..5: 2 and 3 granted, 4 (Modified at node 2) and 5 refused.
  EXPECT_EQ(sim.mapped(1, 2), PageState::kShared);
  EXPECT_EQ(sim.mapped(1, 3), PageState::kShared);
  EXPECT_EQ(sim.mapped(1, 4), PageState::kInvalid);
  EXPECT_EQ(sim.mapped(2, 4), PageState::kModified);  // not recalled by a speculation
  EXPECT_GE(sim.cache(1).counters().prefetch_refused, 2u);
  ExpectReadSees(sim, 1, 4, w);
}

// The common case of a home that filled its region itself: its own Modified copies are
// downgraded in place and go out in the run (no recall message to itself); a later write at
// the home must then invalidate the reader's copies again.
TEST(Readahead, RunTakesPagesTheHomeHoldsModifiedByDowngradingThem) {
  Sim sim(2, 32, HomeAt(0), 64);
  std::vector<int> writes;
  for (PageIndex p = 0; p < 8; ++p) {
    writes.push_back(sim.Access(0, p, true));
    ASSERT_TRUE(sim.Settle()) << sim.error();
  }
  StartStream(sim, 1);
  // Pages 0 and 1 (the stream's first two reads, kGetS) and the run 2..5.
  EXPECT_EQ(sim.directory(0).counters().local_downgrades, 6u);
  EXPECT_EQ(sim.directory(0).counters().recalls_sent, 0u);
  for (PageIndex p = 2; p <= 5; ++p) {
    EXPECT_EQ(sim.mapped(0, p), PageState::kShared) << p;  // write-protected at the home
    EXPECT_EQ(sim.mapped(1, p), PageState::kShared) << p;
    const int r = sim.Access(1, p, false);
    EXPECT_EQ(sim.thread(r).faults, 0) << p;
    EXPECT_EQ(sim.thread(r).value, sim.thread(writes[p]).value) << p;
  }
  const int w = sim.Access(0, 3, true);  // upgrade at the home: invalidates node 1
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.mapped(1, 3), PageState::kInvalid);
  ExpectReadSees(sim, 1, 3, w);
}

// Without readahead: a read of a page the home wrote itself downgrades the home's copy in
// place (no recall message to itself), the reader sees the home's value, and the home's next
// write invalidates the reader again; a second home write and read repeat it.
TEST(Readahead, AReadOfAPageTheHomeWroteIsServedWithoutARecallToItself) {
  Sim sim(2, 8, HomeAt(0));
  for (int round = 0; round < 2; ++round) {
    const int w = sim.Access(0, 5, true);
    ASSERT_TRUE(sim.Settle()) << sim.error();
    EXPECT_EQ(sim.mapped(0, 5), PageState::kModified);
    ExpectReadSees(sim, 1, 5, w);
    EXPECT_EQ(sim.mapped(0, 5), PageState::kShared);  // write-protected at the home
    EXPECT_EQ(sim.mapped(1, 5), PageState::kShared);
    EXPECT_EQ(sim.directory(0).counters().local_downgrades, static_cast<uint64_t>(round + 1));
    EXPECT_EQ(sim.directory(0).counters().recalls_sent, 0u);
  }
  const int w = sim.Access(0, 5, true);  // upgrade at the home: invalidates node 1
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.mapped(1, 5), PageState::kInvalid);
  ExpectReadSees(sim, 1, 5, w);
}

// A run asked for while a writer's transaction on one of its pages is in flight at the home
// (invalidations outstanding): that page is busy, so the run stops there.
TEST(Readahead, RunStopsAtABusyPage) {
  Sim sim(3, 32, HomeAt(0), 64);
  sim.Access(2, 3, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();  // node 2 shares page 3
  sim.Access(1, 0, false);
  ASSERT_TRUE(sim.Settle()) << sim.error();
  const int w = sim.Access(0, 3, true);      // the home writes page 3: kInv to node 2 ...
  ASSERT_TRUE(sim.DeliverFault(0));
  ASSERT_TRUE(sim.Deliver(0, 0));            // ... sent, not yet acknowledged
  ASSERT_TRUE(sim.directory(0).entry(3).busy);
  sim.Access(1, 1, false);
  ASSERT_TRUE(sim.DeliverFault(1));          // GetS 1 + GetSRun 2..5
  ASSERT_TRUE(sim.Deliver(1, 0));
  ASSERT_TRUE(sim.Deliver(1, 0));
  EXPECT_EQ(sim.directory(0).counters().run_requests, 1u);
  EXPECT_EQ(sim.directory(0).counters().run_pages_granted, 1u);  // page 2 only
  ASSERT_TRUE(sim.Settle()) << sim.error();
  EXPECT_EQ(sim.mapped(1, 3), PageState::kInvalid);
  ExpectReadSees(sim, 1, 3, w);
}

TEST(Readahead, BudgetIsRespectedAtEveryStep) {
  constexpr int kPages = 96;
  for (uint64_t budget : {8u, 32u}) {
    Sim sim(2, kPages, HomeAt(0), 64);
    sim.SetBudget(1, budget);
    for (int round = 0; round < 2; ++round) {
      for (PageIndex p = 0; p < kPages; ++p) {
        const int t = sim.Access(1, p, false);
        for (int i = 0; i < 10000 && sim.thread(t).state != Sim::ThreadState::kDone; ++i) {
          if (!sim.DeliverFault(1) && !sim.Deliver(1, 0) && !sim.Deliver(0, 1)) sim.RunAll();
          const Replacer& r = *sim.replacer(1);
          ASSERT_LE(sim.MappedRemote(1), budget) << "page " << p;
          ASSERT_LE(r.resident() + r.reserved(), budget) << "page " << p;
          ASSERT_TRUE(sim.Check()) << sim.error();
        }
        ASSERT_EQ(sim.thread(t).state, Sim::ThreadState::kDone);
      }
    }
    ASSERT_TRUE(sim.Settle()) << sim.error();
    EXPECT_GT(sim.cache(1).counters().prefetches, 0u) << budget;
    EXPECT_EQ(sim.replacer(1)->counters().over_budget, 0u);
    std::printf("budget %llu: %llu prefetches, %llu hits, %llu read faults for %d reads\n",
                static_cast<unsigned long long>(budget),
                static_cast<unsigned long long>(sim.cache(1).counters().prefetches),
                static_cast<unsigned long long>(sim.cache(1).counters().prefetch_hits),
                static_cast<unsigned long long>(sim.cache(1).counters().read_faults),
                2 * kPages);
  }
}

TEST(Readahead, ReplacerReservesOnlyWithRoom) {
  struct NullPort final : ReplacementPort {
    absl::Status Protect(int, PageIndex, uint64_t) override { return absl::OkStatus(); }
    absl::Status Unprotect(int, PageIndex) override { return absl::OkStatus(); }
    void BeginBatch(int) override {}
    void EndBatch(int) override {}
  } rport;
  RecordingPort cport;
  Cache cache(Config(16, 0), &cport);
  Replacer r(Replacer::Config{1, 3, true, 64}, &rport);
  const int sp = r.AddSpace(&cache, [](PageIndex p) -> NodeId { return p == 9 ? 1 : 0; });
  EXPECT_TRUE(r.ReservePrefetch(sp, 4));
  EXPECT_TRUE(r.ReservePrefetch(sp, 5));
  EXPECT_EQ(r.reserved(), 2u);
  EXPECT_FALSE(r.ReservePrefetch(sp, 6));  // room left only for the demand fault
  EXPECT_TRUE(r.ReservePrefetch(sp, 9));   // homed here: not counted
  EXPECT_EQ(r.reserved(), 2u);
  EXPECT_FALSE(r.ReservePrefetch(sp, 16));  // beyond the region
}

// Randomized: 2-4 nodes, 4-12 pages, readahead 1-8, half the new accesses sequential bursts,
// some runs with budgets and some with a node going down; every invariant after every step.
void RunReadaheadSeeds(uint64_t first_seed, int seeds, bool budget, bool kill) {
  SetLogThreshold(LogSeverity::kError);
  uint64_t prefetches = 0, hits = 0, invs = 0, runs = 0, refused = 0;
  for (uint64_t seed = first_seed; seed < first_seed + seeds; ++seed) {
    const int nodes = 2 + static_cast<int>(seed % 3);
    const int pages = 4 + static_cast<int>((seed / 3) % 9);
    std::mt19937_64 rng(seed);
    const bool interleaved = (seed / 27) % 2 == 1;
    Sim sim(nodes, pages,
            interleaved ? HomeFn([nodes](PageIndex p) { return static_cast<NodeId>(p % nodes); })
                        : HomeAt(0),
            1 + rng() % 8);
    if (budget) {
      for (int n = 0; n < nodes; ++n) sim.SetBudget(static_cast<NodeId>(n), 2 + rng() % 6);
    }
    const int steps = 2000;
    const int kill_at = kill ? steps / 4 + static_cast<int>(rng() % (steps / 2)) : -1;
    for (int i = 0; i < steps && sim.ok(); ++i) {
      if (i == kill_at) sim.Kill(static_cast<NodeId>(rng() % nodes));
      sim.Step(rng, /*allow_new=*/true, /*maintenance=*/true);
    }
    if (sim.ok()) sim.Settle(&rng);
    if (budget) {
      // As in RunBudgetSeeds: installs that outran the last fault batch are released by the
      // next Enforce (the engine's tick), then its Puts are delivered.
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
      const Cache::Counters& c = sim.cache(static_cast<NodeId>(n)).counters();
      ASSERT_EQ(c.protocol_errors + sim.directory(static_cast<NodeId>(n)).counters().protocol_errors,
                0u)
          << where;
      prefetches += c.prefetches;
      hits += c.prefetch_hits;
      invs += c.invalidations;
      runs += c.run_requests;
      refused += c.prefetch_refused;
      if (budget && !kill) {
        ASSERT_LE(sim.MappedRemote(static_cast<NodeId>(n)),
                  sim.replacer(static_cast<NodeId>(n))->budget_pages())
            << where << " node " << n;
      }
    }
  }
  std::printf("%d seeds: %llu prefetches (%llu runs, %llu pages refused), %llu hits, %llu "
              "invalidations\n",
              seeds, static_cast<unsigned long long>(prefetches),
              static_cast<unsigned long long>(runs), static_cast<unsigned long long>(refused),
              static_cast<unsigned long long>(hits), static_cast<unsigned long long>(invs));
  EXPECT_GT(prefetches, 0u);
  EXPECT_GT(hits, 0u);
  EXPECT_GT(runs, 0u);     // multi-page runs were exercised
  EXPECT_GT(refused, 0u);  // and so were runs crossing busy or written pages
}

TEST(RandomProtocol, WithReadahead) { RunReadaheadSeeds(500001, 1500, false, false); }
TEST(RandomProtocol, WithReadaheadAndMemoryBudget) { RunReadaheadSeeds(600001, 1500, true, false); }
TEST(RandomProtocol, WithReadaheadAndPeerDown) { RunReadaheadSeeds(700001, 1000, true, true); }

}  // namespace
}  // namespace dsm::coherence
