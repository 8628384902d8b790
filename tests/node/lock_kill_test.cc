// Lock holders killed the way failures happen: three node_worker processes (TCP on loopback and
// across network namespaces), nodes 1 and 2 contending for one exclusive range in a loop so the
// one-message hand-off (lock/lock_table.h) is hot, and one of them SIGKILLed at a random moment:
// while it holds the lock, waits for it, or is handing it over. Node 0, the arbiter and the
// home of every page, is never killed. Each round uses fresh workers (a killed node cannot come
// back into the same cluster); DSM_TEST_ITERS scales the number of rounds (4 by default, one
// per 5000), DSM_TEST_SEED fixes the random choices.
//
// Each round checks, and counts across rounds, what went wrong:
//  - hang: a bounded call (the survivor's loop, a lock after the kill) did not answer;
//  - lock error: the survivor's loop ended on a failed lock, unlock or sync, or never saw the
//    stop word;
//  - lost increment: the survivor found the counter below a value it wrote (under the lock), or
//    the counter read afterwards is below the survivor's last write;
//  - missing died flag: a half-done critical section (A != B, see lockloop in
//    worker_locks.cc) was found by a grant that did not say previous_holder_died, or was left
//    with no grant after the kill saying it;
//  - stuck after: node 0 or the survivor cannot lock and unlock the range after the kill;
//  - unclean exit: a survivor did not leave cleanly.
// Odd rounds write the counter back to the home after each store (lockloop sync), so a holder
// killed between its two stores leaves a torn value the next holder must be told of; even
// rounds keep the stores in Modified pages, which a killed holder takes with it (the survivor's
// access raises SIGBUS: a lost page, counted, not a failure). Rounds 2-3 of every 4 take each
// lock with its pages (LockOptions::with_pages), so a kill also lands while pages are being
// fetched at a grant.
//
// No timing assertions: every wait is bounded, and a wait that runs out is a failure that
// carries the workers' transcripts.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "node/netns_cluster.h"
#include "node/node_test_util.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;

constexpr int kNodes = 3;
constexpr milliseconds kReply{90000};
// The counter is word A (page 0) and its copy word B (page 1); the lock covers both pages.
// Node 0 sets the stop word (page 3) once the victim is dead.
constexpr uint64_t kA = 0, kB = kPage, kStop = 3 * kPage, kLockLen = 2 * kPage;
constexpr uint64_t kRegionPages = 4;

uint64_t Iters(uint64_t def) {
  const char* e = std::getenv("DSM_TEST_ITERS");
  return e != nullptr ? std::strtoull(e, nullptr, 10) : def;
}

uint64_t Seed() {
  const char* e = std::getenv("DSM_TEST_SEED");
  return e != nullptr ? std::strtoull(e, nullptr, 10) : std::random_device{}();
}

// "ok k1=v1 k2=v2 ... end=<rest of the line>" -> {k: v}; end keeps its spaces.
std::map<std::string, std::string> Fields(const std::string& reply) {
  std::map<std::string, std::string> out;
  const size_t end = reply.find(" end=");
  if (end != std::string::npos) out["end"] = reply.substr(end + 5);
  for (absl::string_view kv : absl::StrSplit(reply.substr(0, end), ' ')) {
    std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.size() == 2) out[p[0]] = p[1];
  }
  return out;
}

uint64_t U(const std::map<std::string, std::string>& f, const std::string& k) {
  uint64_t v = 0;
  auto it = f.find(k);
  if (it != f.end() && !absl::SimpleAtoi(it->second, &v)) v = 0;
  return v;
}

// What the rounds saw. Failures first, then outcomes that are allowed.
struct Tally {
  int hang = 0, lock_error = 0, lost_increment = 0, missing_died = 0, stuck_after = 0,
      unclean_exit = 0;
  int rounds = 0, sync_rounds = 0, pages_rounds = 0, survivor_sigbus = 0, counter_lost = 0,
      told_rounds = 0, torn_told = 0;
  uint64_t survivor_increments = 0, survivor_handoffs = 0, survivor_page_fetches = 0;
  std::string log;      // one line per round
  std::string details;  // one paragraph per failed round

  int failures() const {
    return hang + lock_error + lost_increment + missing_died + stuck_after + unclean_exit;
  }
  std::string Summary() const {
    return absl::StrCat(
        "failures: hang=", hang, " lock_error=", lock_error, " lost_increment=", lost_increment,
        " missing_died=", missing_died, " stuck_after=", stuck_after,
        " unclean_exit=", unclean_exit, "\noutcomes: rounds=", rounds, " sync_rounds=", sync_rounds,
        " pages_rounds=", pages_rounds,
        " survivor_sigbus=", survivor_sigbus, " counter_lost=", counter_lost,
        " told_rounds=", told_rounds, " torn_told=", torn_told,
        " survivor_increments=", survivor_increments, " survivor_handoffs=", survivor_handoffs,
        " survivor_page_fetches=", survivor_page_fetches);
  }
};

enum class Net { kLoopbackTcp, kNamespaces };

class LockKillTest : public ::testing::TestWithParam<Net> {
 protected:
  void SetUp() override {
    if (GetParam() == Net::kNamespaces) {
      if (std::string why = NetnsCluster::Unavailable(); !why.empty()) GTEST_SKIP() << why;
      absl::StatusOr<std::unique_ptr<NetnsCluster>> net = NetnsCluster::Create(kNodes);
      ASSERT_TRUE(net.ok()) << net.status();
      net_ = std::move(*net);
    }
  }
  void TearDown() override {
    workers_.clear();  // kills and reaps whatever is left
    net_.reset();
  }

  // Starts 3 workers mapping region `name` (home 0); peer timeout 2 s, lock grace 500 ms.
  void Start(const std::string& name) {
    killed_.clear();
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::vector<std::string> peers;
      if (net_) {
        for (int i = 0; i < kNodes; ++i) peers.push_back(net_->address(i) + ":7000");
      } else {
        for (int port : PickFreePorts(kNodes)) peers.push_back(absl::StrCat("127.0.0.1:", port));
      }
      workers_.clear();
      for (int i = 0; i < kNodes; ++i) {
        std::vector<std::string> argv = {DSM_NODE_WORKER,
                                         "--id",
                                         std::to_string(i),
                                         "--peers",
                                         absl::StrJoin(peers, ","),
                                         "--region",
                                         name,
                                         "--size",
                                         std::to_string(kRegionPages * kPage),
                                         "--home",
                                         "0",
                                         "--peer-timeout-ms",
                                         "2000",
                                         "--lock-grace-ms",
                                         "500"};
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

  Subprocess* worker(int i) { return workers_[static_cast<size_t>(i)].get(); }

  // One bounded call; an error (no answer in time, the worker gone) is returned, not asserted.
  absl::StatusOr<std::string> Ask(int i, const std::string& cmd) {
    return worker(i)->Call(cmd, kReply);
  }

  std::string Transcripts() {
    std::string out;
    for (int i = 0; i < static_cast<int>(workers_.size()); ++i) {
      absl::StrAppend(&out, "--- ", worker(i)->label(), killed_.count(i) ? " (killed)" : "", ":\n",
                      worker(i)->transcript());
    }
    return out;
  }

  // Survivors leave (non-homes first, then the home); the killed worker is only reaped.
  // Returns what went wrong, "" if nothing.
  std::string Stop() {
    std::string bad;
    for (int i : {2, 1, 0}) {
      Subprocess* w = worker(i);
      if (killed_.count(i)) {
        (void)w->Wait(milliseconds(10000));
        continue;
      }
      (void)w->SendLine("quit");
      absl::StatusOr<std::string> bye = w->ReadLine(kReply);
      if (!bye.ok() || *bye != "bye") {
        absl::StrAppend(&bad, w->label(),
                        " did not leave cleanly: ", bye.ok() ? *bye : bye.status().ToString(),
                        "\n");
      }
      absl::StatusOr<int> st = w->Wait(milliseconds(30000));
      if (!st.ok() || !WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
        absl::StrAppend(&bad, w->label(),
                        " exit: ", st.ok() ? DescribeWaitStatus(*st) : st.status().ToString(),
                        "\n");
      }
    }
    return bad;
  }

  // One round: start, contend, kill, check; adds to `t`.
  void Round(int round, std::mt19937_64& rng, Tally* t);

  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::unique_ptr<NetnsCluster> net_;
  std::set<int> killed_;
};

void LockKillTest::Round(int round, std::mt19937_64& rng, Tally* t) {
  const bool sync = round % 2 == 1;
  const bool with_pages = round % 4 >= 2;
  const int victim = 1 + static_cast<int>(rng() % 2);
  const int survivor = 3 - victim;
  const int delay_ms = static_cast<int>(rng() % 250);
  Start(absl::StrCat("kill", round));
  if (HasFatalFailure() || IsSkipped()) return;
  ++t->rounds;
  if (sync) ++t->sync_rounds;
  if (with_pages) ++t->pages_rounds;
  std::string bad;  // this round's failures, each on a line
  auto fail = [&bad](int* counter, const std::string& what) {
    ++*counter;
    absl::StrAppend(&bad, what, "\n");
  };

  const std::string loop = absl::StrCat("lockloop 0 ", kLockLen, " ", kA, " ", kB, " ", kStop,
                                        " 120000 30000 ", sync ? 1 : 0, " ",
                                        with_pages ? 1 : 0);
  for (int i : {1, 2}) EXPECT_TRUE(worker(i)->SendLine(loop).ok());
  bool running = true;
  for (int i : {1, 2}) {
    absl::StatusOr<std::string> s = worker(i)->ReadLine(kReply);
    if (!s.ok() || *s != "started") {
      running = false;
      fail(&t->hang, absl::StrCat("node", i, " never started its loop: ",
                                  s.ok() ? *s : s.status().ToString()));
    }
  }
  if (running) {
    std::this_thread::sleep_for(milliseconds(delay_ms));
    worker(victim)->Kill(SIGKILL);
    killed_.insert(victim);
  } else {
    for (int i : {1, 2}) {  // their loops would outlast every bounded read below
      worker(i)->Kill(SIGKILL);
      killed_.insert(i);
    }
  }

  // The survivor goes on alone: node 0 watches the counter (plain reads, no lock) until the
  // survivor has added kAfter increments since the kill, so its grants after the victim's
  // death are part of the round. The watch ends early if the counter's page is lost (the
  // survivor's loop ends on SIGBUS then) and is bounded beyond the survivor's own lock
  // deadline (a stuck lock ends the survivor's loop with an error).
  if (running) {
    constexpr uint64_t kAfter = 20;
    const absl::Time until = absl::Now() + absl::Seconds(45);
    std::optional<uint64_t> first;
    for (;;) {
      absl::StatusOr<std::string> r = Ask(0, absl::StrCat("read64 ", kA));
      uint64_t v = 0;
      if (!r.ok() || r->rfind("ok ", 0) != 0 || !absl::SimpleAtoi(r->substr(3), &v)) break;
      if (!first) first = v;
      if (v >= *first + kAfter || absl::Now() >= until) break;
      std::this_thread::sleep_for(milliseconds(20));
    }
  }

  // The survivor's loop ends when node 0 sets the stop word (node 0 may first wait for the
  // home to reassign the victim's copy of that page).
  std::map<std::string, std::string> f;
  bool answered = false;
  if (running) {
    absl::StatusOr<std::string> s = Ask(0, absl::StrCat("write64 ", kStop, " 1"));
    if (!s.ok() || *s != "ok") {
      fail(&t->hang, "node0 could not set the stop word: " + (s.ok() ? *s : s.status().ToString()));
    }
    absl::StatusOr<std::string> r = worker(survivor)->ReadLine(kReply);
    if (!r.ok()) {
      fail(&t->hang,
           absl::StrCat("node", survivor, "'s loop never ended: ", r.status().ToString()));
    } else {
      answered = true;
      f = Fields(*r);
      const std::string& end = f["end"];
      t->survivor_increments += U(f, "done");
      t->survivor_handoffs += U(f, "handoffs");
      t->survivor_page_fetches += U(f, "fetches");
      t->torn_told += static_cast<int>(U(f, "torn_told"));
      if (end == "sigbus") {
        ++t->survivor_sigbus;
      } else if (end != "stop") {
        fail(&t->lock_error, absl::StrCat("node", survivor, "'s loop: ", *r));
      }
      if (U(f, "back") != 0) {
        fail(&t->lost_increment,
             absl::StrCat("node", survivor, " found the counter below its own write: ", *r));
      }
      if (U(f, "torn") != 0) {
        fail(&t->missing_died,
             absl::StrCat("node", survivor, " found a half-done increment and was not told: ", *r));
      }
    }
  }

  // The lock keeps working: node 0 takes it (and reads the counter under it), then the
  // survivor.
  bool told = answered && U(f, "died") != 0;
  uint64_t a = 0, b = 0;
  bool readable = false;
  std::string node0_grant = "-";
  if (running) {
    absl::StatusOr<std::string> g = Ask(0, absl::StrCat("lock 0 ", kLockLen, " x 60000"));
    if (!g.ok() || g->rfind("ok ", 0) != 0) {
      fail(&t->stuck_after,
           "node0 cannot lock after the kill: " + (g.ok() ? *g : g.status().ToString()));
    } else {
      node0_grant = *g;
      told = told || g->find("died=1") != std::string::npos;
      absl::StatusOr<std::string> ra = Ask(0, absl::StrCat("read64 ", kA));
      absl::StatusOr<std::string> rb = Ask(0, absl::StrCat("read64 ", kB));
      readable = ra.ok() && rb.ok() && absl::SimpleAtoi(ra->substr(ra->find(' ') + 1), &a) &&
                 absl::SimpleAtoi(rb->substr(rb->find(' ') + 1), &b) && ra->rfind("ok ", 0) == 0 &&
                 rb->rfind("ok ", 0) == 0;
      if (!readable) ++t->counter_lost;
      std::vector<std::string> parts = absl::StrSplit(*g, ' ');
      absl::StatusOr<std::string> u = Ask(0, "unlock " + parts[1]);
      if (!u.ok() || *u != "ok") {
        fail(&t->stuck_after, "node0 cannot unlock: " + (u.ok() ? *u : u.status().ToString()));
      }
    }
    absl::StatusOr<std::string> sg = Ask(survivor, absl::StrCat("lock 0 ", kLockLen, " x 60000"));
    if (!sg.ok() || sg->rfind("ok ", 0) != 0) {
      fail(&t->stuck_after, absl::StrCat("node", survivor, " cannot lock after the kill: ",
                                         sg.ok() ? *sg : sg.status().ToString()));
    } else {
      std::vector<std::string> parts = absl::StrSplit(*sg, ' ');
      absl::StatusOr<std::string> u = Ask(survivor, "unlock " + parts[1]);
      if (!u.ok() || *u != "ok") {
        fail(&t->stuck_after, absl::StrCat("node", survivor, " cannot unlock: ",
                                           u.ok() ? *u : u.status().ToString()));
      }
    }
  }
  if (told) ++t->told_rounds;
  if (readable && answered) {
    if (a < U(f, "last")) {
      fail(&t->lost_increment, absl::StrCat("counter ", a, " after the round is below node",
                                            survivor, "'s last write ", U(f, "last")));
    }
    if (a != b && !told) {
      fail(&t->missing_died, absl::StrCat("counter left half-done (A=", a, " B=", b,
                                          ") and no grant after the kill said died=1"));
    }
  }

  if (std::string s = Stop(); !s.empty()) fail(&t->unclean_exit, s);
  absl::StrAppend(&t->log, "round ", round, " sync=", sync ? 1 : 0, " kill node", victim, " at +",
                  delay_ms, " ms: node", survivor, " ",
                  answered ? absl::StrJoin(f, " ", absl::PairFormatter("=")) : "(no answer)",
                  "; node0 ", node0_grant, "; counter ",
                  readable ? absl::StrCat(a, "/", b) : "lost", bad.empty() ? "" : " FAILED", "\n");
  if (!bad.empty()) {
    absl::StrAppend(&t->details, "round ", round, " (victim node", victim, ", killed ", delay_ms,
                    " ms after both loops started, sync=", sync ? 1 : 0, "):\n", bad, Transcripts(),
                    "\n");
  }
  workers_.clear();
}

// Nodes 1 and 2 increment a counter under one exclusive lock; one of them is SIGKILLed at a
// random moment of its loop. The survivor's loop must end (no hang), never find an increment
// it completed gone, and be told (previous_holder_died) whenever it finds the dead node's
// critical section half done; afterwards the lock works for node 0 and the survivor.
TEST_P(LockKillTest, ContendedLockSurvivesAKilledHolderOrSuccessor) {
  const uint64_t seed = Seed();
  const int rounds = static_cast<int>(std::max<uint64_t>(1, Iters(20000) / 5000));
  std::mt19937_64 rng(seed);
  Tally t;
  for (int round = 0; round < rounds; ++round) {
    ASSERT_NO_FATAL_FAILURE(Round(round, rng, &t)) << "seed " << seed;
    if (IsSkipped()) return;
  }
  std::cout << "[ tally    ] seed " << seed << "\n" << t.log << t.Summary() << std::endl;
  EXPECT_EQ(t.failures(), 0) << "seed " << seed << "\n" << t.Summary() << "\n" << t.details;
  EXPECT_GT(t.survivor_handoffs, 0u) << "the direct hand-off path was never taken";
  if (t.pages_rounds > 0) {
    EXPECT_GT(t.survivor_page_fetches, 0u) << "no grant fetched its pages in the with_pages rounds";
  }
}

std::string NetName(const ::testing::TestParamInfo<Net>& info) {
  return info.param == Net::kLoopbackTcp ? "LoopbackTcp" : "Namespaces";
}

INSTANTIATE_TEST_SUITE_P(Networks, LockKillTest,
                         ::testing::Values(Net::kLoopbackTcp, Net::kNamespaces), NetName);

}  // namespace
}  // namespace dsm::testing
