// A randomized simulation of one region's locks: an arbiter (LockTable at node 0), a
// LockClient per node, a network that delivers per-pair FIFO in random order across pairs,
// random lock / try-lock / unlock / cancel / deadline / node-death events. After every step:
// the table's invariants hold, and the locks the applications believe they hold never
// conflict, and every grant overlapping bytes a killed node's application held exclusively
// (that no exclusive grant has covered since) says previous_holder_died. At the end (holders
// release everything, time runs on): every request has an outcome, and every blocking request
// without a deadline from a live node was granted.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "lock/lock_client.h"
#include "lock/lock_table.h"
#include "lock/test_util.h"
#include "protocol/validation.h"

namespace dsm::lock {
namespace {

using testing::Network;
using testing::NetPort;

struct Req {
  NodeId node;
  uint64_t id;
  LockRequest r;
  bool withdrawn = false;                     // the application cancelled it
  std::optional<absl::StatusOr<LockHandle>> outcome;
  bool released = false;
};

struct SimStats {
  uint64_t granted = 0, queued = 0, busy = 0, deadline = 0, died_flags = 0, deaths = 0,
           arbiter_deaths = 0, unavailable = 0, handoffs = 0, handoffs_received = 0,
           handoffs_refused = 0, regrants = 0, stray_handoffs = 0,
           must_tell = 0;  // grants that overlapped bytes a killed node held exclusively
};

class Sim {
 public:
  Sim(uint64_t seed, SimStats* stats) : rng_(seed), stats_(stats) {
    n_ = 3 + rng_() % 4;
    kill_arbiter_at_ = rng_() % 5 == 0 ? 500 + rng_() % 1000 : -1;
    for (NodeId i = 0; i < n_; ++i) {
      ports_.push_back(std::make_unique<NetPort>(&net_, i));
      clients_.push_back(std::make_unique<LockClient>(LockClient::Config{i}, ports_[i].get()));
    }
    LockTable::Config c;
    c.self = 0;
    c.region = 1;
    c.region_size = 256;
    c.release_grace = absl::Milliseconds(50);
    table_ = std::make_unique<LockTable>(c, ports_[0].get());
    alive_.assign(n_, true);
    must_tell_.assign(c.region_size, false);
  }

  void Run(int steps) {
    for (int step = 0; step < steps; ++step) {
      Step(step, /*draining=*/false);
      Check(step);
      if (HasFatalFailure()) return;
    }
    // Drain: no new requests; holders release; time runs on until everything settles.
    for (int step = steps; step < steps + 20000; ++step) {
      Step(step, /*draining=*/true);
      Check(step);
      if (HasFatalFailure()) return;
      if (Settled()) break;
    }
    ASSERT_TRUE(Settled()) << "no progress: requests still pending after the drain";
    stats_->handoffs += table_->counters().handoffs;
    stats_->handoffs_refused += table_->counters().handoffs_refused;
    stats_->regrants += table_->counters().regrants;
    for (const auto& c : clients_) {
      stats_->handoffs_received += c->counters().handoffs_received;
      stats_->stray_handoffs += c->counters().stray_handoffs;
      EXPECT_EQ(c->counters().forged_handoffs, 0u);
    }
    for (const Req& q : reqs_) {
      if (!alive_[q.node]) continue;
      ASSERT_TRUE(q.outcome.has_value()) << "request " << q.node << "/" << q.id << " hangs";
      const bool must_grant = !q.r.try_lock && q.r.deadline == absl::InfiniteFuture() &&
                              !q.withdrawn && arbiter_alive();
      if (must_grant) {
        ASSERT_TRUE(q.outcome->ok()) << "starved: " << q.node << "/" << q.id << ": "
                                     << q.outcome->status();
      }
    }
    if (arbiter_alive()) {
      ASSERT_EQ(table_->num_held() + table_->num_waiting(), 0u) << "locks leaked at the arbiter";
    }
  }

 private:
  bool arbiter_alive() const { return alive_[0]; }
  bool HasFatalFailure() const { return ::testing::Test::HasFatalFailure(); }

  bool Settled() const {
    if (!net_.empty() || !pending_down_.empty()) return false;
    for (size_t idx : held_) {
      if (alive_[reqs_[idx].node]) return false;
    }
    for (NodeId i = 0; i < n_; ++i) {
      if (alive_[i] && clients_[i]->num_pending() > 0) return false;
    }
    return !arbiter_alive() || table_->NextDeadline() == absl::InfiniteFuture();
  }

  void Step(int step, bool draining) {
    const int r = rng_() % 100;
    if (step == kill_arbiter_at_ && alive_[0]) {
      Kill(0);
    } else if (!draining && r < 30) {
      StartRequest();
    } else if (r < 45 || (draining && r < 60)) {
      ReleaseSome(draining);
    } else if (!draining && r < 48) {
      CancelSome();
    } else if (r < 80) {
      DeliverOne();
    } else if (!draining && r == 80 && rng_() % 4 == 0) {
      KillSomeone();
    } else {
      now_ += absl::Milliseconds(rng_() % 8);
      Tick();
    }
  }

  void StartRequest() {
    std::vector<NodeId> live;
    for (NodeId i = 0; i < n_; ++i) {
      if (alive_[i]) live.push_back(i);
    }
    const NodeId node = live[rng_() % live.size()];
    // Like a few application threads per node: at most 6 locks held or awaited per node.
    if (clients_[node]->num_pending() + clients_[node]->num_held() >= 6) return;
    LockRequest r;
    r.offset = rng_() % 200;
    r.length = 1 + rng_() % 40;
    r.mode = rng_() % 5 < 3 ? LockMode::kShared : LockMode::kExclusive;
    r.try_lock = rng_() % 10 == 0;
    if (!r.try_lock && rng_() % 2 == 0) r.deadline = now_ + absl::Milliseconds(1 + rng_() % 100);
    const size_t idx = reqs_.size();
    reqs_.push_back(Req{node, 0, r});
    reqs_[idx].id = clients_[node]->Acquire(
        1, 0, 256, r, now_, [this, idx](absl::StatusOr<LockHandle> h) { OnOutcome(idx, h); });
  }

  void OnOutcome(size_t idx, const absl::StatusOr<LockHandle>& h) {
    Req& q = reqs_[idx];
    ASSERT_FALSE(q.outcome.has_value()) << "callback ran twice";
    q.outcome = h;
    if (h.ok()) {
      ++stats_->granted;
      // Bytes a killed node's application held exclusively: a grant overlapping them must say
      // so; an exclusive one takes the duty over (the table clears its marks in the range).
      bool must_tell = false;
      for (uint64_t b = q.r.offset; b < q.r.offset + q.r.length; ++b) must_tell |= must_tell_[b];
      if (must_tell) ++stats_->must_tell;
      ASSERT_TRUE(!must_tell || h->previous_holder_died())
          << "grant " << q.node << "/" << q.id << " overlaps bytes a dead node held "
          << "exclusively and was not told";
      if (q.r.mode == LockMode::kExclusive) {
        for (uint64_t b = q.r.offset; b < q.r.offset + q.r.length; ++b) must_tell_[b] = false;
      }
      if (h->previous_holder_died()) {
        ++stats_->died_flags;
        ASSERT_GT(stats_->deaths, 0u) << "previous_holder_died with no death";
      }
      ASSERT_EQ(h->id(), q.id);
      ASSERT_EQ(h->offset(), q.r.offset);
      ASSERT_EQ(h->length(), q.r.length);
      held_.push_back(idx);
    } else if (h.status().code() == absl::StatusCode::kAborted) {
      ++stats_->busy;
      ASSERT_TRUE(q.r.try_lock);
    } else if (h.status().code() == absl::StatusCode::kDeadlineExceeded) {
      ++stats_->deadline;
      ASSERT_NE(q.r.deadline, absl::InfiniteFuture());
    } else if (h.status().code() == absl::StatusCode::kUnavailable) {
      ++stats_->unavailable;
      ASSERT_FALSE(arbiter_alive()) << h.status();
    } else {
      ASSERT_EQ(h.status().code(), absl::StatusCode::kCancelled) << h.status();
      ASSERT_TRUE(q.withdrawn);
    }
  }

  void ReleaseSome(bool all) {
    for (size_t k = 0; k < held_.size();) {
      Req& q = reqs_[held_[k]];
      if (!alive_[q.node]) {
        held_.erase(held_.begin() + k);
        continue;
      }
      if (all || rng_() % 3 == 0) {
        const absl::Status s = clients_[q.node]->Release(q.id);
        ASSERT_TRUE(s.ok() || (!arbiter_alive() && s.code() == absl::StatusCode::kUnavailable))
            << s;
        q.released = true;
        held_.erase(held_.begin() + k);
        if (!all) return;
        continue;
      }
      ++k;
    }
  }

  void CancelSome() {
    std::vector<size_t> pending;
    for (size_t i = 0; i < reqs_.size(); ++i) {
      if (!reqs_[i].outcome && alive_[reqs_[i].node]) pending.push_back(i);
    }
    if (pending.empty()) return;
    Req& q = reqs_[pending[rng_() % pending.size()]];
    q.withdrawn = true;
    ASSERT_TRUE(clients_[q.node]->Release(q.id).ok());
  }

  void DeliverOne() {
    Message m;
    if (!net_.PopAny([this](size_t k) { return rng_() % k; }, &m)) return;
    if (!alive_[m.dst]) return;
    ASSERT_TRUE(CheckMessage(m, n_).ok()) << CheckMessage(m, n_);
    if (m.type == MsgType::kLockReply || m.type == MsgType::kLockSuccessor ||
        m.type == MsgType::kLockHandoff) {
      clients_[m.dst]->OnMessage(m, now_);
    } else {
      ASSERT_EQ(m.dst, 0u);
      table_->OnMessage(m, now_);
    }
  }

  void KillSomeone() {
    int alive_others = 0;
    for (NodeId i = 1; i < n_; ++i) alive_others += alive_[i];
    if (alive_others < 2) return;
    NodeId victim;
    do {
      victim = 1 + rng_() % (n_ - 1);
    } while (!alive_[victim]);
    Kill(victim);
  }

  // The node stops at once; the others declare it down a little later (its messages already
  // in flight may still arrive until then).
  void Kill(NodeId victim) {
    alive_[victim] = false;
    for (size_t idx : held_) {
      const Req& q = reqs_[idx];
      if (q.node != victim || q.r.mode != LockMode::kExclusive) continue;
      for (uint64_t b = q.r.offset; b < q.r.offset + q.r.length; ++b) must_tell_[b] = true;
    }
    // Its connections break mid-stream: each peer gets a prefix of what it sent (so a
    // releaser may die between its kLockHandoff and its kLockPassed).
    net_.TruncateFrom(victim, [this](size_t k) { return rng_() % (k + 1); });
    ++stats_->deaths;
    if (victim == 0) ++stats_->arbiter_deaths;
    pending_down_.emplace(now_ + absl::Milliseconds(rng_() % 20), victim);
  }

  void Tick() {
    while (!pending_down_.empty() && pending_down_.begin()->first <= now_) {
      const NodeId d = pending_down_.begin()->second;
      pending_down_.erase(pending_down_.begin());
      net_.Sever(d);
      if (alive_[0]) table_->OnNodeDown(d, now_);
      for (NodeId i = 0; i < n_; ++i) {
        if (alive_[i]) clients_[i]->OnPeerDown(d);
      }
    }
    if (alive_[0]) table_->OnTick(now_);
    for (NodeId i = 0; i < n_; ++i) {
      if (alive_[i]) clients_[i]->OnTick(now_);
    }
  }

  void Check(int step) {
    if (alive_[0]) {
      const absl::Status s = table_->CheckInvariants();
      ASSERT_TRUE(s.ok()) << "step " << step << ": " << s;
    }
    // What the live applications believe they hold never conflicts, and the arbiter agrees.
    // A lock handed over directly may be held before the arbiter applies the kLockPassed: it
    // is then still waiting there, named as its holder's successor.
    std::map<std::pair<NodeId, uint64_t>, bool> table_held;
    if (alive_[0]) {
      for (const auto& l : table_->Dump()) table_held[{l.node, l.id}] = l.held || l.named;
    }
    for (size_t a = 0; a < held_.size(); ++a) {
      const Req& x = reqs_[held_[a]];
      if (!alive_[x.node]) continue;
      if (alive_[0]) {
        ASSERT_TRUE((table_held[{x.node, x.id}]))
            << "step " << step << ": " << x.node << "/" << x.id << " held but not at arbiter";
      }
      for (size_t b = a + 1; b < held_.size(); ++b) {
        const Req& y = reqs_[held_[b]];
        if (!alive_[y.node]) continue;
        const bool overlap = x.r.offset < y.r.offset + y.r.length &&
                             y.r.offset < x.r.offset + x.r.length;
        const bool excl = x.r.mode == LockMode::kExclusive || y.r.mode == LockMode::kExclusive;
        ASSERT_FALSE(overlap && excl) << "step " << step << ": conflicting holders " << x.node
                                      << "/" << x.id << " and " << y.node << "/" << y.id;
      }
    }
  }

  std::mt19937_64 rng_;
  SimStats* stats_;
  size_t n_;
  int kill_arbiter_at_;
  Network net_;
  std::vector<std::unique_ptr<NetPort>> ports_;
  std::vector<std::unique_ptr<LockClient>> clients_;
  std::unique_ptr<LockTable> table_;
  std::vector<bool> alive_;
  std::multimap<absl::Time, NodeId> pending_down_;
  std::vector<Req> reqs_;
  std::vector<size_t> held_;  // indexes into reqs_ of locks the applications hold
  // Per byte: a killed node's application held it exclusively, and no exclusive grant has
  // covered it since.
  std::vector<bool> must_tell_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST(LockSim, RandomizedMutualExclusionAndNoStarvation) {
  SimStats stats;
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(absl::StrFormat("seed %d", seed));
    Sim sim(seed, &stats);
    sim.Run(3000);
    if (::testing::Test::HasFatalFailure()) return;
  }
  // The simulation must actually reach the interesting cases.
  EXPECT_GT(stats.granted, 10000u);
  EXPECT_GT(stats.busy, 100u);
  EXPECT_GT(stats.deadline, 100u);
  EXPECT_GT(stats.died_flags, 10u);
  EXPECT_GT(stats.arbiter_deaths, 10u);
  EXPECT_GT(stats.handoffs, 200u);
  EXPECT_GT(stats.handoffs_received, 200u);
  EXPECT_GT(stats.handoffs_refused, 10u);
  EXPECT_GT(stats.regrants, 0u);
  EXPECT_GT(stats.must_tell, 100u);
  std::printf("handoffs %lu received %lu refused %lu regrants %lu stray %lu\n",
              static_cast<unsigned long>(stats.handoffs),
              static_cast<unsigned long>(stats.handoffs_received),
              static_cast<unsigned long>(stats.handoffs_refused),
              static_cast<unsigned long>(stats.regrants),
              static_cast<unsigned long>(stats.stray_handoffs));
  std::printf("granted %lu busy %lu deadline %lu died_flags %lu (required %lu) deaths %lu "
              "arbiter_deaths %lu unavailable %lu\n",
              static_cast<unsigned long>(stats.granted), static_cast<unsigned long>(stats.busy),
              static_cast<unsigned long>(stats.deadline),
              static_cast<unsigned long>(stats.died_flags),
              static_cast<unsigned long>(stats.must_tell),
              static_cast<unsigned long>(stats.deaths),
              static_cast<unsigned long>(stats.arbiter_deaths),
              static_cast<unsigned long>(stats.unavailable));
}

}  // namespace
}  // namespace dsm::lock
