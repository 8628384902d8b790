#include "node/worker_locks.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "node/node_test_util.h"

namespace dsm::testing {

struct WorkerLocks::State {
  Node* node;
  Region* region;
  std::function<void(const std::string&)> say;
  absl::Mutex mu;
  // Locks held, by id (guards release them when erased).
  std::map<uint64_t, LockGuard> held ABSL_GUARDED_BY(mu);
  // LockAsync outcomes by this worker's key; absent = still pending.
  std::map<uint64_t, absl::StatusOr<LockHandle>> async ABSL_GUARDED_BY(mu);
  uint64_t next_key ABSL_GUARDED_BY(mu) = 0;
};

namespace {

std::string Granted(const LockHandle& h) {
  return absl::StrCat("ok ", h.id(), " died=", h.previous_holder_died() ? 1 : 0);
}

std::string Fail(const absl::Status& s) { return "fail " + s.ToString(); }

volatile uint64_t* Word(Region* r, uint64_t off) {
  return reinterpret_cast<volatile uint64_t*>(static_cast<uint8_t*>(r->data()) + off);
}

bool InRange(Region* r, uint64_t off, uint64_t len) {
  return off <= r->size() && len <= r->size() - off;
}

uint64_t LockHandoffs(Node* node) {
  absl::StatusOr<Stats> s = node->GetStats();
  return s.ok() ? s->lock_handoffs : 0;
}

uint64_t LockPageFetches(Node* node) {
  absl::StatusOr<Stats> s = node->GetStats();
  return s.ok() ? s->lock_page_fetches : 0;
}

// lockloop <off> <len> <a_off> <b_off> <stop_off> <max_ms> <lock_ms> <sync> [<with_pages>]:
// a lock-increment
// loop meant to have a node killed in it (another node running the same loop is the victim or
// the survivor). Until the word at stop_off is non-zero (read before each lock) or max_ms pass:
// exclusive lock on [off, off + len) (deadline lock_ms), read words A and B with plain loads,
// write A = a + 1 then B = a + 1 with plain stores, unlock. With sync = 1, Region::Sync after
// each store, so the two stores reach the home one by one: a holder killed between them leaves
// A != B at the home ("torn"), which the next holder must be told of (previous_holder_died).
// Without sync the stores stay in pages held Modified, which a killed holder takes with it
// (the survivor's access raises SIGBUS: the loop stops there).
//
// Prints "started" once the first increment is done (or the loop ended without one), then
//   "ok done=<increments completed> last=<value this node last wrote> died=<grants that said
//    previous_holder_died> torn=<grants that found A != B and were not told>
//    torn_told=<grants that found A != B and were told> back=<grants that found A below the
//    value this node last wrote: an increment it completed is gone> handoffs=<grants taken
//    by direct hand-off meanwhile> fetches=<page requests sent at grants (with_pages)>
//    end=<stop | time | sigbus | lock: <status> |
//    unlock: <status> | sync: <status>>"
// With with_pages = 1 every lock is granted with its pages (LockOptions::with_pages), so the
// pages move at each grant, before the holder touches them.
// Every wait is bounded (lock_ms per lock); a failed lock, unlock or sync ends the loop.
std::string LockLoop(Node* node, Region* r, const std::vector<uint64_t>& a,
                     const std::function<void(const std::string&)>& say) {
  const uint64_t off = a[0], len = a[1], a_off = a[2], b_off = a[3], stop_off = a[4];
  const absl::Duration max = absl::Milliseconds(a[5]), lock_wait = absl::Milliseconds(a[6]);
  const bool sync = a[7] != 0;
  LockOptions options;
  options.with_pages = a.size() > 8 && a[8] != 0;
  for (uint64_t w : {a_off, b_off, stop_off}) {
    if (w % 8 != 0 || !InRange(r, w, 8)) return "err bad word offset";
  }
  if (len == 0 || !InRange(r, off, len)) return "err bad lock range";
  volatile uint64_t* const wa = Word(r, a_off);
  volatile uint64_t* const wb = Word(r, b_off);
  const uint64_t* const stop = const_cast<const uint64_t*>(Word(r, stop_off));
  const uint64_t handoffs_before = LockHandoffs(node);
  const uint64_t fetches_before = LockPageFetches(node);
  const absl::Time end_by = absl::Now() + max;
  uint64_t done = 0, last = 0, died = 0, torn = 0, torn_told = 0, back = 0;
  std::string end;
  // The SIGBUS-guarded blocks hold no lock and own nothing (RaisesSigbus unwinds with
  // siglongjmp): the guard lives outside them.
  for (;;) {
    uint64_t stopped = 0;
    if (RaisesSigbus([&] { stopped = __atomic_load_n(stop, __ATOMIC_ACQUIRE); })) {
      end = "sigbus";
      break;
    }
    if (stopped != 0) {
      end = "stop";
      break;
    }
    if (absl::Now() >= end_by) {
      end = "time";
      break;
    }
    options.deadline = absl::Now() + lock_wait;
    absl::StatusOr<LockGuard> g = r->Lock(off, len, LockMode::kExclusive, options);
    if (!g.ok()) {
      end = "lock: " + g.status().ToString();
      break;
    }
    const bool told = g->previous_holder_died();
    if (told) ++died;
    uint64_t va = 0, vb = 0;
    bool bus = RaisesSigbus([&] {
      va = *wa;
      vb = *wb;
    });
    const uint64_t next = va + 1;
    absl::Status synced;
    if (!bus) {
      if (va != vb) ++(told ? torn_told : torn);
      if (va < last) ++back;
      bus = RaisesSigbus([&] { *wa = next; });
      if (!bus && sync) synced = r->Sync();
      if (!bus && synced.ok()) bus = RaisesSigbus([&] { *wb = next; });
      if (!bus && synced.ok() && sync) synced = r->Sync();
    }
    if (bus || !synced.ok()) {
      end = bus ? "sigbus" : "sync: " + synced.ToString();
      (void)g->Unlock();
      break;
    }
    ++done;
    last = next;
    if (absl::Status u = g->Unlock(); !u.ok()) {
      end = "unlock: " + u.ToString();
      break;
    }
    if (done == 1) say("started");
  }
  if (done == 0) say("started");
  return absl::StrCat("ok done=", done, " last=", last, " died=", died, " torn=", torn,
                      " torn_told=", torn_told, " back=", back,
                      " handoffs=", LockHandoffs(node) - handoffs_before,
                      " fetches=", LockPageFetches(node) - fetches_before, " end=", end);
}

}  // namespace

WorkerLocks::WorkerLocks(Node* node, Region* region, std::function<void(const std::string&)> say)
    : state_(std::make_shared<State>()) {
  state_->node = node;
  state_->region = region;
  state_->say = std::move(say);
}

WorkerLocks::~WorkerLocks() {
  std::map<uint64_t, LockGuard> held;
  {
    absl::MutexLock l(&state_->mu);
    held.swap(state_->held);
  }
  // Destroying the guards unlocks outside the mutex.
}

std::string WorkerLocks::Run(const std::vector<std::string>& c) {
  auto num = [&](size_t i, uint64_t def = 0) {
    uint64_t v = def;
    if (i < c.size() && !absl::SimpleAtoi(c[i], &v)) v = def;
    return v;
  };
  auto mode = [&](size_t i) {
    return i < c.size() && c[i] == "s" ? LockMode::kShared : LockMode::kExclusive;
  };
  State& st = *state_;
  Region* r = st.region;
  const std::string& cmd = c[0];

  if (cmd == "lock" || cmd == "trylock") {
    const uint64_t off = num(1), len = num(2, 1);
    absl::StatusOr<LockGuard> g =
        cmd == "lock" ? r->Lock(off, len, mode(3),
                                c.size() > 4 ? absl::Now() + absl::Milliseconds(num(4))
                                             : absl::InfiniteFuture())
                      : r->TryLock(off, len, mode(3));
    if (!g.ok()) return Fail(g.status());
    const std::string reply = Granted(g->handle());
    const uint64_t id = g->handle().id();
    absl::MutexLock l(&st.mu);
    st.held.emplace(id, std::move(*g));
    return reply;
  }
  if (cmd == "unlock") {
    std::optional<LockGuard> g;
    {
      absl::MutexLock l(&st.mu);
      auto it = st.held.find(num(1));
      if (it == st.held.end()) return absl::StrCat("err lock ", num(1), " is not held here");
      g.emplace(std::move(it->second));
      st.held.erase(it);
    }
    absl::Status s = g->Unlock();
    return s.ok() ? "ok" : Fail(s);
  }
  if (cmd == "lockasync") {
    // Replies with a key of this worker (a failure delivered to the callback has no lock id).
    uint64_t key = 0;
    {
      absl::MutexLock l(&st.mu);
      key = ++st.next_key;
    }
    std::weak_ptr<State> weak = state_;
    r->LockAsync(num(1), num(2, 1), mode(3), absl::InfiniteFuture(),
                 [weak, key](absl::StatusOr<LockHandle> h) {
                   // Engine thread: record the outcome and return.
                   std::shared_ptr<State> s = weak.lock();
                   if (s == nullptr) return;
                   absl::MutexLock l(&s->mu);
                   s->async.emplace(key, std::move(h));
                 });
    return absl::StrCat("ok ", key);
  }
  if (cmd == "asyncstate" || cmd == "asyncwait") {
    const uint64_t key = num(1);
    absl::MutexLock l(&st.mu);
    auto has = [&st, key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) {
      return st.async.count(key) != 0;
    };
    if (cmd == "asyncwait" &&
        !st.mu.AwaitWithTimeout(absl::Condition(&has), absl::Milliseconds(num(2, 10000)))) {
      return absl::StrCat("err async request ", key, " not answered within ", num(2, 10000),
                          " ms");
    }
    if (!has()) return "ok pending";
    auto it = st.async.find(key);
    absl::StatusOr<LockHandle> h = std::move(it->second);
    st.async.erase(it);
    if (!h.ok()) return Fail(h.status());
    st.held.emplace(h->id(), r->Adopt(*h));
    return Granted(*h);
  }
  if (cmd == "lockincr") {
    const uint64_t off = num(1), len = num(2, 1), counter = num(3), threads = num(4, 1),
                   iters = num(5, 1);
    if (counter % 8 != 0 || !InRange(r, counter, 8)) return "err bad counter offset";
    absl::Mutex mu;
    std::string err;
    std::vector<std::thread> ts;
    for (uint64_t t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        for (uint64_t i = 0; i < iters; ++i) {
          absl::StatusOr<LockGuard> g =
              r->Lock(off, len, LockMode::kExclusive, absl::Now() + absl::Seconds(60));
          if (!g.ok()) {
            absl::MutexLock l(&mu);
            err = Fail(g.status());
            return;
          }
          const uint64_t v = *Word(r, counter);  // plain load and store: only the lock
          if ((i + t) % 32 == 0) std::this_thread::yield();
          *Word(r, counter) = v + 1;
        }
      });
    }
    for (auto& t : ts) t.join();
    return err.empty() ? "ok" : err;
  }
  if (cmd == "lockseq") {
    // Nodes take turns, strictly in order me = turn % n, each taking an exclusive lock on
    // [lock_off, lock_off + 8) for every look. Word data_off is the turn; data word k (k <
    // words) is the first word of page k + 1 after data_off. The holder whose turn it is
    // writes every data word twice (a garbage value, then turn + 1) and then the turn. Every
    // holder, whoever's turn it is, checks under the lock that each data word equals the turn:
    // what the previous holder wrote before its unlock must be visible after this lock.
    const uint64_t lock_off = num(1), me = num(2), n = num(3, 1), rounds = num(4, 1),
                   data_off = num(5), words = num(6, 1), ms = num(7, 60000);
    if (data_off % kPage != 0 || !InRange(r, data_off, (words + 1) * kPage) || me >= n) {
      return "err bad arguments";
    }
    const absl::Time deadline = absl::Now() + absl::Milliseconds(ms);
    uint64_t looks = 0;
    for (;;) {
      absl::StatusOr<LockGuard> g = r->Lock(lock_off, 8, LockMode::kExclusive, deadline);
      if (!g.ok()) return absl::StrCat("err after ", looks, " looks: ", g.status().ToString());
      ++looks;
      const uint64_t turn = *Word(r, data_off);
      for (uint64_t k = 0; k < words; ++k) {
        const uint64_t v = *Word(r, data_off + (k + 1) * kPage);
        if (v != turn) {
          return absl::StrCat("err turn ", turn, ": data word ", k, " is ", v,
                              " under the lock (the last holder's stores are not all visible)");
        }
      }
      if (turn >= n * rounds) break;
      if (turn % n == me) {
        for (uint64_t k = 0; k < words; ++k) *Word(r, data_off + (k + 1) * kPage) = ~turn;
        for (uint64_t k = 0; k < words; ++k) *Word(r, data_off + (k + 1) * kPage) = turn + 1;
        *Word(r, data_off) = turn + 1;
      }
      (void)g->Unlock();
      if (turn % n != me) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return absl::StrCat("ok looks=", looks);
  }
  if (cmd == "lockloop") {
    std::vector<uint64_t> a;
    for (size_t i = 1; i < 10; ++i) a.push_back(num(i));
    return LockLoop(st.node, r, a, st.say);
  }
  if (cmd == "cbarrier") {
    std::vector<NodeId> members;
    if (c.size() > 2 && c[2] != "all") {
      for (absl::string_view s : absl::StrSplit(c[2], ',')) {
        uint32_t id = 0;
        if (!absl::SimpleAtoi(s, &id)) return "err bad member list";
        members.push_back(id);
      }
    }
    absl::Status s = st.node->Barrier(c.size() > 1 ? c[1] : "b", members,
                                      absl::Now() + absl::Milliseconds(num(3, 30000)));
    return s.ok() ? "ok" : Fail(s);
  }
  return "";
}

}  // namespace dsm::testing
