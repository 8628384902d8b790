// node_worker: one dsm node in its own process, driven by a test.
//
// Joins the cluster (--id, --peers, --transport), maps one region (--region, --size, --home,
// --policy, --file at the home), prints "ready", then runs --scenario:
//
//   repl     (default) reads one command per line on stdin and answers each with one line:
//            "ok [value]", "sigbus", or "err <message>". Commands are listed in RunCommand().
//   counter  self-contained: every node meets the others at a barrier in region memory, runs
//            --threads x --iters atomic increments on two counters in one page (words 0 and 1
//            of page 1) and one counter on each of pages 2 and 3, meets again, and checks the
//            exact totals (nodes x threads x iters). Prints "ok totals=<a>,<b>,<c>,<d>" or "err".
//            Synchronization is only through region memory (page 0 holds the barriers).
//
// After the scenario (or the "quit" command, or EOF) the worker waits for a line or EOF on
// stdin before it unmaps and shuts down, so the test decides the order in which nodes leave
// (the home must outlive the others). Exit code 0 when everything it checked held, 1
// otherwise, 2 on bad arguments, 77 when userfaultfd is unavailable.
//
// Usage: node_worker --id 1 --peers 127.0.0.1:7000,127.0.0.1:7001 --region r --size 65536
//                    [--home 0] [--policy fixed|interleaved] [--file PATH] [--transport tcp]
//                    [--scenario repl|counter] [--threads 2] [--iters 20000]
//                    [--peer-timeout-ms 3000] [--lease-ms 0] [--lock-grace-ms 1000]
//                    [--leave collective] [--log-file PATH]
//        Without --peers, the node's id and peers come from the environment a launcher sets
//        (dsm/launch.h: DSM_*, Slurm, Open MPI, PMI). --leave collective: after the scenario
//        every node calls Node::Finalize instead of waiting for stdin. --log-file:
//        the node's log (stderr) goes to PATH, for tests that inspect it.
//
// Lock and barrier commands of the repl: see node/worker_locks.h.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dsm/launch.h"
#include "dsm/node.h"
#include "dsm/options.h"
#include "dsm/region.h"
#include "node/node_test_util.h"
#include "node/worker_locks.h"

namespace {

using dsm::testing::kPage;
using std::chrono::milliseconds;

struct Args {
  std::map<std::string, std::string> kv;
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
  uint64_t GetU(const std::string& k, uint64_t def) const {
    uint64_t v = def;
    auto it = kv.find(k);
    if (it != kv.end() && !absl::SimpleAtoi(it->second, &v)) {
      std::fprintf(stderr, "node_worker: bad number for --%s: %s\n", k.c_str(), it->second.c_str());
      std::exit(2);
    }
    return v;
  }
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) != 0) {
      std::fprintf(stderr, "node_worker: unexpected argument %s\n", s.c_str());
      std::exit(2);
    }
    s = s.substr(2);
    size_t eq = s.find('=');
    if (eq != std::string::npos) {
      a.kv[s.substr(0, eq)] = s.substr(eq + 1);
    } else if (i + 1 < argc) {
      a.kv[s] = argv[++i];
    } else {
      std::fprintf(stderr, "node_worker: --%s needs a value\n", s.c_str());
      std::exit(2);
    }
  }
  return a;
}

void Reply(const std::string& line) {
  std::cout << line << std::endl;  // flushes: the test reads line by line
}

class Worker {
 public:
  Worker(std::unique_ptr<dsm::Node> node, std::unique_ptr<dsm::Region> region)
      : node_(std::move(node)), region_(std::move(region)) {}

  uint8_t* base() const { return static_cast<uint8_t*>(region_->data()); }
  uint64_t* word(uint64_t off) const { return reinterpret_cast<uint64_t*>(base() + off); }
  dsm::Node* node() const { return node_.get(); }

  bool InRange(uint64_t off, uint64_t len) const {
    return off <= region_->size() && len <= region_->size() - off;
  }

  // One command line -> one reply line.
  std::string RunCommand(const std::vector<std::string>& c);

  // The "counter" scenario; returns the reply line.
  std::string Counter(uint64_t nodes, uint64_t threads, uint64_t iters, milliseconds timeout);

  absl::Status Leave() {
    locks_.reset();  // releases held locks while the region is still mapped
    absl::Status s = region_ ? region_->Unmap() : absl::OkStatus();
    region_.reset();
    absl::Status s2 = node_->Shutdown();
    return s.ok() ? s2 : s;
  }

 private:
  std::string Barrier(uint64_t off, uint64_t n, milliseconds timeout);
  std::string Incr(const std::vector<uint64_t>& offs, uint64_t threads, uint64_t iters);

  std::unique_ptr<dsm::Node> node_;
  std::unique_ptr<dsm::Region> region_;
  std::unique_ptr<dsm::testing::WorkerLocks> locks_;
};

std::string Worker::Barrier(uint64_t off, uint64_t n, milliseconds timeout) {
  __atomic_fetch_add(word(off), 1, __ATOMIC_ACQ_REL);
  dsm::testing::PollResult r = dsm::testing::PollWord(
      word(off), [n](uint64_t v) { return v >= n; }, timeout);
  if (!r.ok) {
    return absl::StrCat("err barrier at offset ", off, " saw ", r.last, " of ", n,
                        " arrivals within ", timeout.count(), " ms");
  }
  return "ok";
}

std::string Worker::Incr(const std::vector<uint64_t>& offs, uint64_t threads, uint64_t iters) {
  std::vector<std::thread> ts;
  for (uint64_t t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      for (uint64_t i = 0; i < iters; ++i) {
        for (uint64_t off : offs) __atomic_fetch_add(word(off), 1, __ATOMIC_RELAXED);
      }
    });
  }
  for (auto& t : ts) t.join();
  return "ok";
}

std::string Worker::Counter(uint64_t nodes, uint64_t threads, uint64_t iters,
                            milliseconds timeout) {
  const std::vector<uint64_t> counters = {kPage, kPage + 8, 2 * kPage, 3 * kPage};
  if (!InRange(0, 4 * kPage)) return "err region smaller than 4 pages";
  if (std::string r = Barrier(0, nodes, timeout); r != "ok") return r;
  Incr(counters, threads, iters);
  if (std::string r = Barrier(8, nodes, timeout); r != "ok") return r;
  const uint64_t want = nodes * threads * iters;
  std::string totals;
  bool good = true;
  for (uint64_t off : counters) {
    uint64_t v = __atomic_load_n(word(off), __ATOMIC_ACQUIRE);
    absl::StrAppend(&totals, totals.empty() ? "" : ",", v);
    good = good && v == want;
  }
  // Nobody leaves before everyone has read the totals.
  if (std::string r = Barrier(16, nodes, timeout); r != "ok") return r;
  if (!good) return absl::StrCat("err totals=", totals, " want ", want, " each");
  return "ok totals=" + totals;
}

std::string Worker::RunCommand(const std::vector<std::string>& c) {
  auto num = [&](size_t i, uint64_t def = 0) {
    uint64_t v = def;
    if (i < c.size() && !absl::SimpleAtoi(c[i], &v)) v = def;
    return v;
  };
  const std::string& cmd = c[0];
  if (cmd == "ping") return "ok";
  if (cmd == "size") return absl::StrCat("ok ", region_->size());

  if (cmd == "fill" || cmd == "check") {  // fill|check <page> <npages> <seed>
    uint64_t off = num(1) * kPage, len = num(2, 1) * kPage, seed = num(3);
    if (!InRange(off, len)) return "err out of range";
    std::optional<std::string> bad;
    bool bus = dsm::testing::RaisesSigbus([&] {
      if (cmd == "fill") {
        dsm::testing::FillPattern(base() + off, len, seed, off);
      } else {
        bad = dsm::testing::CheckPattern(base() + off, len, seed, off);
      }
    });
    if (bus) return "sigbus";
    return bad ? "err " + *bad : "ok";
  }
  if (cmd == "write64" || cmd == "read64" || cmd == "add64") {  // <off> [value]
    uint64_t off = num(1), v = num(2);
    if (off % 8 != 0 || !InRange(off, 8)) return "err bad offset";
    uint64_t out = 0;
    bool bus = dsm::testing::RaisesSigbus([&] {
      if (cmd == "write64") __atomic_store_n(word(off), v, __ATOMIC_RELEASE);
      if (cmd == "add64") out = __atomic_add_fetch(word(off), v, __ATOMIC_ACQ_REL);
      if (cmd == "read64") out = __atomic_load_n(word(off), __ATOMIC_ACQUIRE);
    });
    if (bus) return "sigbus";
    return cmd == "write64" ? "ok" : absl::StrCat("ok ", out);
  }
  if (cmd == "readn") {
    // <off> <n> <want>: n loads of the word, each on its own (a SIGBUS ends only that load).
    // Replies "ok fresh=<loads that saw want> lost=<loads that raised SIGBUS> stale=<others>
    // [first_stale=<value>]".
    uint64_t off = num(1), n = num(2, 1), want = num(3);
    if (off % 8 != 0 || !InRange(off, 8)) return "err bad offset";
    uint64_t fresh = 0, lost = 0, stale = 0, first_stale = 0;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t v = 0;
      if (dsm::testing::RaisesSigbus([&] { v = __atomic_load_n(word(off), __ATOMIC_ACQUIRE); })) {
        ++lost;
      } else if (v == want) {
        ++fresh;
      } else if (stale++ == 0) {
        first_stale = v;
      }
    }
    std::string r = absl::StrCat("ok fresh=", fresh, " lost=", lost, " stale=", stale);
    if (stale != 0) absl::StrAppend(&r, " first_stale=", first_stale);
    return r;
  }
  if (cmd == "wait64") {  // <off> <value> <timeout_ms>: until the word equals value
    uint64_t off = num(1), v = num(2), ms = num(3, 10000);
    if (off % 8 != 0 || !InRange(off, 8)) return "err bad offset";
    dsm::testing::PollResult r{false, 0};
    bool bus = dsm::testing::RaisesSigbus([&] {
      r = dsm::testing::PollWord(
          word(off), [v](uint64_t x) { return x == v; }, milliseconds(ms));
    });
    if (bus) return "sigbus";
    if (!r.ok) return absl::StrCat("err word at ", off, " is ", r.last, ", want ", v);
    return "ok";
  }
  if (cmd == "barrier") {  // <off> <n> <timeout_ms>
    uint64_t off = num(1);
    if (off % 8 != 0 || !InRange(off, 8)) return "err bad offset";
    return Barrier(off, num(2), milliseconds(num(3, 10000)));
  }
  if (cmd == "incr") {  // <threads> <iters> <off>...: atomic increments
    std::vector<uint64_t> offs;
    for (size_t i = 3; i < c.size(); ++i) {
      uint64_t off = num(i);
      if (off % 8 != 0 || !InRange(off, 8)) return "err bad offset";
      offs.push_back(off);
    }
    return Incr(offs, num(1, 1), num(2, 1));
  }
  if (cmd == "pingpong") {
    // <off> <me> <rounds> <timeout_ms>: two players, me in {0,1}. Word `off` is the turn
    // counter, word off+8 the payload. Player p waits for counter % 2 == p, checks the payload
    // equals the counter (written by the other player before it), writes payload then counter.
    uint64_t off = num(1), me = num(2), rounds = num(3), ms = num(4, 10000);
    if (off % 8 != 0 || !InRange(off, 16) || me > 1) return "err bad arguments";
    std::string err;
    bool bus = dsm::testing::RaisesSigbus([&] {
      for (uint64_t r = 0; r < rounds && err.empty(); ++r) {
        uint64_t want = 2 * r + me;
        dsm::testing::PollResult pr = dsm::testing::PollWord(
            word(off), [want](uint64_t x) { return x == want; }, milliseconds(ms));
        if (!pr.ok) {
          err = absl::StrCat("err round ", r, ": turn counter stuck at ", pr.last, ", want ", want);
          break;
        }
        uint64_t payload = __atomic_load_n(word(off + 8), __ATOMIC_ACQUIRE);
        if (payload != want) {
          err = absl::StrCat("err round ", r, ": payload ", payload, " != turn ", want);
          break;
        }
        __atomic_store_n(word(off + 8), want + 1, __ATOMIC_RELEASE);
        __atomic_store_n(word(off), want + 1, __ATOMIC_RELEASE);
      }
    });
    if (bus) return "sigbus";
    return err.empty() ? "ok" : err;
  }
  if (cmd == "kread") {
    // <off> <len> <seed>: read(2) from a pipe straight into region memory (the kernel's copy
    // faults through userfaultfd), then check the bytes through the mapping.
    uint64_t off = num(1), len = num(2), seed = num(3);
    if (!InRange(off, len) || len > 60000) return "err bad range";
    std::vector<uint8_t> src(len);
    dsm::testing::FillPattern(src.data(), len, seed, off);
    int p[2];
    if (pipe(p) != 0) return absl::StrCat("err pipe: ", strerror(errno));
    if (write(p[1], src.data(), len) != static_cast<ssize_t>(len)) return "err pipe write";
    close(p[1]);
    size_t got = 0;
    int err = 0;
    bool bus = dsm::testing::RaisesSigbus([&] {
      while (got < len) {
        ssize_t n = read(p[0], base() + off + got, len - got);
        if (n <= 0) {
          err = n < 0 ? errno : 0;
          break;
        }
        got += static_cast<size_t>(n);
      }
    });
    close(p[0]);
    if (bus) return "sigbus";
    if (got != len) return absl::StrCat("err read(2) into region: ", strerror(err), " after ", got);
    if (auto bad = dsm::testing::CheckPattern(base() + off, len, seed, off)) return "err " + *bad;
    return "ok";
  }
  if (cmd == "kwrite") {
    // <off> <len> <seed>: write(2) from region memory into a pipe; the bytes read back from
    // the pipe must match the pattern.
    uint64_t off = num(1), len = num(2), seed = num(3);
    if (!InRange(off, len) || len > 60000) return "err bad range";
    int p[2];
    if (pipe(p) != 0) return absl::StrCat("err pipe: ", strerror(errno));
    ssize_t n = write(p[1], base() + off, len);
    int e = errno;
    close(p[1]);
    std::vector<uint8_t> back(len);
    size_t got = 0;
    while (n > 0 && got < len) {
      ssize_t r = read(p[0], back.data() + got, len - got);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    close(p[0]);
    if (n != static_cast<ssize_t>(len)) {
      return absl::StrCat("err write(2) from region returned ", n, ": ", strerror(e));
    }
    if (auto bad = dsm::testing::CheckPattern(back.data(), len, seed, off)) return "err " + *bad;
    return "ok";
  }
  if (cmd == "hammer") {
    // <off> <iters>: atomic increments, tolerating SIGBUS (the page may be lost when a peer
    // dies). Prints "started" once the first increment is done, then the final reply.
    uint64_t off = num(1), iters = num(2);
    if (off % 8 != 0 || !InRange(off, 8)) return "err bad offset";
    uint64_t done = 0;
    bool bus = dsm::testing::RaisesSigbus([&] {
      for (; done < iters; ++done) {
        __atomic_fetch_add(word(off), 1, __ATOMIC_RELAXED);
        if (done == 0) Reply("started");
      }
    });
    if (done == 0) Reply("started");
    return bus ? absl::StrCat("sigbus after ", done) : absl::StrCat("ok ", done);
  }
  if (cmd == "probe") {  // <off> <r|w>: "ok" or "sigbus"
    uint64_t off = num(1);
    if (!InRange(off, 1)) return "err bad offset";
    bool w = c.size() > 2 && c[2] == "w";
    bool bus = dsm::testing::RaisesSigbus([&] {
      volatile uint8_t* p = base() + off;
      if (w) {
        *p = static_cast<uint8_t>(*p + 1);
      } else {
        (void)*p;
      }
    });
    return bus ? "sigbus" : "ok";
  }
  if (cmd == "finalize") {  // <timeout_ms>: Node::Finalize; the node is shut down afterwards
    absl::Status s = node_->Finalize(absl::Milliseconds(num(1, 60000)));
    return s.ok() ? "ok" : "err " + s.ToString();
  }
  if (cmd == "sync") {
    absl::Status s = region_->Sync();
    return s.ok() ? "ok" : "err " + s.ToString();
  }
  if (cmd == "stats") {
    absl::StatusOr<dsm::Stats> st = node_->GetStats();
    if (!st.ok()) return "err " + st.status().ToString();
    const dsm::Stats& s = *st;
    return absl::StrCat("ok read_faults=", s.read_faults, " write_faults=", s.write_faults,
                        " upgrade_faults=", s.upgrade_faults,
                        " pages_installed=", s.pages_installed, " pages_lost=", s.pages_lost,
                        " peers_down=", s.peers_down, " bad_messages=", s.bad_messages);
  }
  if (!locks_) {
    locks_ = std::make_unique<dsm::testing::WorkerLocks>(node_.get(), region_.get(), Reply);
  }
  if (std::string r = locks_->Run(c); !r.empty()) return r;
  return "err unknown command " + cmd;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = ParseArgs(argc, argv);
  if (std::string log = args.Get("log-file"); !log.empty()) {
    if (std::freopen(log.c_str(), "w", stderr) == nullptr) {
      std::perror("node_worker: --log-file");
      return 2;
    }
    std::setvbuf(stderr, nullptr, _IONBF, 0);
  }
  dsm::Options o;
  o.node_id = static_cast<dsm::NodeId>(args.GetU("id", 0));
  o.peers = absl::StrSplit(args.Get("peers"), ',', absl::SkipEmpty());
  o.listen = args.Get("listen");
  std::string transport = args.Get("transport", "tcp");
  if (transport == "tcp") {
    o.transport = dsm::TransportKind::kTcp;
  } else if (transport == "rdma") {
    o.transport = dsm::TransportKind::kRdma;
  } else {
    std::fprintf(stderr, "node_worker: --transport must be tcp or rdma across processes\n");
    return 2;
  }
  o.peer_timeout = absl::Milliseconds(args.GetU("peer-timeout-ms", 3000));
  o.lease_duration = absl::Milliseconds(args.GetU("lease-ms", 0));
  o.lock_release_grace = absl::Milliseconds(args.GetU("lock-grace-ms", 1000));
  o.connect_timeout = absl::Milliseconds(args.GetU("connect-timeout-ms", 20000));
  std::atomic<uint64_t> lost{0};
  o.on_pages_lost = [&lost](const std::string&, uint64_t, uint64_t n) { lost += n; };

  if (!args.kv.count("peers")) {
    // Placed by a launcher (dsmrun, srun, mpirun): id and peers from the environment.
    absl::StatusOr<dsm::Options> from_env = dsm::OptionsFromEnvironment(o);
    if (!from_env.ok()) {
      Reply("err environment: " + from_env.status().ToString());
      return 2;
    }
    o = *std::move(from_env);
  }

  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(o);
  if (!node.ok()) {
    std::string msg = node.status().ToString();
    Reply("err create: " + msg);
    // Tests retry on a port collision; they look for this marker.
    return node.status().code() == absl::StatusCode::kPermissionDenied ? 77 : 1;
  }
  dsm::RegionOptions ro;
  ro.name = args.Get("region", "r");
  ro.size = args.GetU("size", 16 * kPage);
  ro.home = static_cast<dsm::NodeId>(args.GetU("home", 0));
  ro.home_policy = args.Get("policy", "fixed") == "interleaved" ? dsm::HomePolicy::kInterleaved
                                                                : dsm::HomePolicy::kFixed;
  ro.file_path = args.Get("file");  // every node states the backing; the home opens it
  absl::StatusOr<std::unique_ptr<dsm::Region>> region = (*node)->MapRegion(ro);
  if (!region.ok()) {
    Reply("err map: " + region.status().ToString());
    (void)(*node)->Shutdown();
    return 1;
  }
  Worker w(std::move(*node), std::move(*region));
  Reply("ready");

  bool all_ok = true;
  std::string scenario = args.Get("scenario", "repl");
  std::string line;
  if (scenario == "counter") {
    std::string r = w.Counter(o.peers.size(), args.GetU("threads", 2), args.GetU("iters", 20000),
                              milliseconds(args.GetU("timeout-ms", 60000)));
    all_ok = r.rfind("ok", 0) == 0;
    Reply(r);
  } else if (scenario == "repl") {
    while (std::getline(std::cin, line)) {
      std::vector<std::string> c = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (c.empty()) continue;
      if (c[0] == "quit") break;
      std::string r = w.RunCommand(c);
      if (r.rfind("err", 0) == 0) all_ok = false;
      Reply(r);
    }
  } else {
    Reply("err unknown scenario " + scenario);
    all_ok = false;
  }
  absl::Status s;
  if (args.Get("leave") == "collective") {
    // No test drives the order: Finalize is collective.
    s = w.node()->Finalize(absl::Milliseconds(args.GetU("timeout-ms", 60000)));
    if (absl::Status rest = w.Leave(); s.ok()) s = rest;
  } else {
    // Leave only when the test says so (a line or EOF), so the home outlives the others.
    if (scenario != "repl") std::getline(std::cin, line);
    s = w.Leave();
  }
  if (!s.ok()) std::fprintf(stderr, "node_worker %u: leave: %s\n", o.node_id, s.ToString().c_str());
  if (lost.load() > 0)
    std::fprintf(stderr, "node_worker %u: %lu pages reported lost\n", o.node_id,
                 static_cast<unsigned long>(lost.load()));
  Reply(s.ok() ? "bye" : "bye err " + s.ToString());
  return all_ok ? 0 : 1;
}
