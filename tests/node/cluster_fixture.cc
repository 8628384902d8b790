#include "node/cluster_fixture.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "node/node_test_util.h"

namespace dsm::testing {

Watchdog::Watchdog(std::string test, std::chrono::seconds limit)
    : test_(std::move(test)), step_("start") {
  thread_ = std::thread([this, limit] {
    std::unique_lock<std::mutex> l(mu_);
    if (!cv_.wait_for(l, limit, [this] { return done_; })) {
      std::fprintf(stderr, "\nWATCHDOG: %s hung for %lld s in step: %s\n", test_.c_str(),
                   static_cast<long long>(limit.count()), step_.c_str());
      std::fflush(stderr);
      std::abort();
    }
  });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> l(mu_);
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::Step(std::string what) {
  std::lock_guard<std::mutex> l(mu_);
  step_ = std::move(what);
}

void RunParallel(const std::vector<std::function<void()>>& fns) {
  std::vector<std::thread> ts;
  ts.reserve(fns.size());
  for (const auto& f : fns) ts.emplace_back(f);
  for (auto& t : ts) t.join();
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(
    TransportKind kind, int n, const std::function<void(Options&)>& tweak) {
  static std::atomic<int> hub_seq{0};
  absl::Status last;
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::vector<std::string> peers;
    if (kind == TransportKind::kTcp) {
      for (int port : PickFreePorts(n)) peers.push_back(absl::StrCat("127.0.0.1:", port));
    } else {
      for (int i = 0; i < n; ++i) peers.push_back(absl::StrCat("local:", i));
    }
    std::string hub = absl::StrCat("cluster-", getpid(), "-", hub_seq.fetch_add(1));
    std::vector<absl::StatusOr<std::unique_ptr<Node>>> made;
    for (int i = 0; i < n; ++i) made.emplace_back(absl::UnknownError("not run"));
    std::vector<std::function<void()>> fns;
    for (int i = 0; i < n; ++i) {
      fns.push_back([&, i] {
        Options o;
        o.node_id = static_cast<NodeId>(i);
        o.peers = peers;
        o.transport = kind;
        o.loopback_hub = hub;
        o.connect_timeout = absl::Milliseconds(15000);
        o.peer_timeout = absl::Milliseconds(3000);
        if (tweak) tweak(o);
        made[static_cast<size_t>(i)] = Node::Create(o);
      });
    }
    RunParallel(fns);
    auto c = std::unique_ptr<LocalCluster>(new LocalCluster());
    bool collided = false;
    std::vector<std::string> errors;
    for (int i = 0; i < n; ++i) {
      auto& m = made[static_cast<size_t>(i)];
      if (m.ok()) {
        c->nodes_.push_back(std::move(*m));
      } else {
        errors.push_back(absl::StrCat("node ", i, ": ", m.status().ToString()));
        std::string msg(m.status().message());
        if (msg.find("in use") != std::string::npos || msg.find("EADDRINUSE") != std::string::npos)
          collided = true;
        if (m.status().code() == absl::StatusCode::kPermissionDenied) return m.status();
      }
    }
    if (errors.empty()) return c;
    last = absl::UnavailableError(absl::StrJoin(errors, "; "));
    if (!collided) break;  // c's destructor stops the nodes that did start
  }
  return last;
}

LocalCluster::~LocalCluster() {
  for (auto& n : nodes_) {
    if (n) (void)n->Shutdown();
  }
  nodes_.clear();
}

absl::StatusOr<std::vector<std::unique_ptr<Region>>> LocalCluster::MapAll(const RegionOptions& ro) {
  std::vector<absl::StatusOr<std::unique_ptr<Region>>> made;
  for (size_t i = 0; i < nodes_.size(); ++i) made.emplace_back(absl::UnknownError("not run"));
  std::vector<std::function<void()>> fns;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (!nodes_[i]) continue;
    fns.push_back([&, i] {
      made[i] = nodes_[i]->MapRegion(ro);
    });
  }
  RunParallel(fns);
  std::vector<std::unique_ptr<Region>> out;
  std::vector<std::string> errors;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (!nodes_[i]) {
      out.emplace_back();
    } else if (made[i].ok()) {
      out.push_back(std::move(*made[i]));
    } else {
      errors.push_back(absl::StrCat("node ", i, ": ", made[i].status().ToString()));
      out.emplace_back();
    }
  }
  if (!errors.empty()) {
    return absl::Status(absl::StatusCode::kInternal,
                        absl::StrCat("MapRegion ", ro.name, ": ", absl::StrJoin(errors, "; ")));
  }
  return out;
}

absl::Status LocalCluster::StopNode(int i) {
  auto& n = nodes_[static_cast<size_t>(i)];
  if (!n) return absl::OkStatus();
  absl::Status s = n->Shutdown();
  n.reset();
  return s;
}

}  // namespace dsm::testing
