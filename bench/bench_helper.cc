// The helper side of dsm_bench: one dsm node per process, driven over stdin/stdout by the
// benchmark driver (one command per line, one reply line per command: "ok [value]" or
// "err <message>").
//
// Commands (<name> is a region; pages are 4 KiB page indices):
//   map <name> <bytes> <home>    map a region (the home must be mapped first)
//   unmap <name>                 unmap it (the home last)
//   read <name> <first> <n>      load one byte of each page in [first, first+n)
//   write <name> <first> <n>     store one byte in each page of [first, first+n)
//   pong <name> <rounds>         ping-pong player 1 on word 0 of page 0: waits for 2r+1,
//                                stores 2r+2; replies "ok" when every round is done
//   lockloop <name> <off> <len> <n>  n times: exclusive Region::Lock of [off, off+len), then
//                                Unlock; replies "ok <ns>" (the loop's wall time)
//   counter <name> <records> <n> [pages]  the counter table's lock phase: n times, pick a
//                                64-byte record (CounterRecord, seeded with this node's id),
//                                lock its first 8 bytes exclusively (with its page if "pages":
//                                LockOptions::with_pages), increment them, unlock; "ok <ns>"
//   app <name> <kernel> <index> <nodes> <a> <b>  node <index>'s share of an application
//                                figure on region <name> (bench_apps.h); "ok" when done
//   quit                         leave (unmaps what is still mapped)
#include <sched.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench_apps.h"
#include "bench_common.h"
#include "bench_helper.h"
#include "dsm/lock.h"
#include "dsm/node.h"
#include "dsm/region.h"

namespace dsm::bench {
namespace {

void Reply(const std::string& s) { std::cout << s << std::endl; }

class Helper {
 public:
  explicit Helper(std::unique_ptr<dsm::Node> node) : node_(std::move(node)) {}

  std::string Run(const std::vector<std::string>& c);
  void Leave() {
    for (auto& [name, r] : regions_) (void)r->Unmap();
    regions_.clear();
    (void)node_->Shutdown();
  }

 private:
  std::unique_ptr<dsm::Node> node_;
  std::map<std::string, std::unique_ptr<dsm::Region>> regions_;
};

std::string Helper::Run(const std::vector<std::string>& c) {
  auto num = [&](size_t i) {
    uint64_t v = 0;
    if (i >= c.size() || !absl::SimpleAtoi(c[i], &v)) return uint64_t{0};
    return v;
  };
  const std::string& cmd = c[0];
  if (cmd == "ping") return "ok";
  if (c.size() < 2) return "err missing region name";
  const std::string& name = c[1];
  if (cmd == "map") {
    dsm::RegionOptions ro;
    ro.name = name;
    ro.size = num(2);
    ro.home = static_cast<dsm::NodeId>(num(3));
    absl::StatusOr<std::unique_ptr<dsm::Region>> r = node_->MapRegion(ro);
    if (!r.ok()) return "err map: " + r.status().ToString();
    regions_[name] = std::move(*r);
    return "ok";
  }
  auto it = regions_.find(name);
  if (it == regions_.end()) return "err region not mapped: " + name;
  dsm::Region* r = it->second.get();
  volatile uint8_t* base = static_cast<volatile uint8_t*>(r->data());
  const uint64_t pages = r->size() / kPage;
  if (cmd == "unmap") {
    absl::Status s = r->Unmap();
    regions_.erase(it);
    return s.ok() ? "ok" : "err unmap: " + s.ToString();
  }
  if (cmd == "read" || cmd == "write") {
    uint64_t first = num(2), n = num(3);
    if (first > pages || n > pages - first) return "err out of range";
    uint64_t sum = 0;
    for (uint64_t p = first; p < first + n; ++p) {
      if (cmd == "read") {
        sum += base[p * kPage];
      } else {
        base[p * kPage + 1] = static_cast<uint8_t>(p);
      }
    }
    return absl::StrCat("ok ", sum);
  }
  if (cmd == "lockloop" || cmd == "counter") {
    const bool counter = cmd == "counter";
    const uint64_t a = num(2), n = counter ? num(3) : num(4), seed = node_->id();
    const uint64_t len = counter ? 8 : num(3);
    if (counter ? (a == 0 || a * 64 > r->size()) : (len == 0 || a + len > r->size())) {
      return "err out of range";
    }
    dsm::LockOptions options;
    options.with_pages = counter && c.size() > 4 && c[4] == "pages";
    auto* words = reinterpret_cast<volatile uint64_t*>(const_cast<uint8_t*>(base));
    const uint64_t t0 = NowNs();
    for (uint64_t k = 0; k < n; ++k) {
      const uint64_t rec = counter ? CounterRecord(seed, k, a) : 0;
      const uint64_t off = counter ? rec * 64 : a;
      absl::StatusOr<dsm::LockGuard> g = r->Lock(off, len, dsm::LockMode::kExclusive, options);
      if (!g.ok()) return "err lock: " + g.status().ToString();
      if (counter) words[rec * 8] = words[rec * 8] + 1;
      if (absl::Status s = g->Unlock(); !s.ok()) return "err unlock: " + s.ToString();
    }
    return absl::StrCat("ok ", NowNs() - t0);
  }
  if (cmd == "app") return RunAppCommand(*node_, *r, c);
  if (cmd == "pong") {
    uint64_t rounds = num(2);
    auto* word = reinterpret_cast<uint64_t*>(const_cast<uint8_t*>(base));
    for (uint64_t i = 0; i < rounds; ++i) {
      const uint64_t want = 2 * i + 1;
      uint64_t spins = 0;
      while (__atomic_load_n(word, __ATOMIC_ACQUIRE) != want) {
        if (++spins % 64 == 0) sched_yield();
        CpuRelax();
      }
      __atomic_store_n(word, want + 1, __ATOMIC_RELEASE);
    }
    return "ok";
  }
  return "err unknown command " + cmd;
}

}  // namespace

int RunHelper(const HelperArgs& a) {
  dsm::Options o;
  o.node_id = a.id;
  o.peers = a.peers;
  o.transport = dsm::TransportKind::kTcp;
  o.peer_timeout = absl::Milliseconds(5000);
  o.connect_timeout = absl::Milliseconds(30000);
  if (a.poll_spin_us >= 0) o.poll_spin = absl::Microseconds(a.poll_spin_us);
  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(o);
  if (!node.ok()) {
    Reply("err create: " + node.status().ToString());
    return node.status().code() == absl::StatusCode::kPermissionDenied ? 77 : 1;
  }
  Helper h(std::move(*node));
  Reply("ready");
  std::string line;
  while (std::getline(std::cin, line)) {
    std::vector<std::string> c = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (c.empty()) continue;
    if (c[0] == "quit") break;
    Reply(h.Run(c));
  }
  h.Leave();
  Reply("bye");
  return 0;
}

}  // namespace dsm::bench
