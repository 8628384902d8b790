// Small pieces shared by the example applications (sor, matmul, counter_table): start a node
// from the launcher's environment, read --flags, and leave the cluster in an agreed order.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "dsm/launch.h"
#include "dsm/node.h"

namespace app {

// Exit statuses: 0 verified, 1 wrong result or error, 2 bad arguments, 77 no userfaultfd.
inline constexpr int kExitSkip = 77;

// --name value / --name=value flags with defaults.
class Flags {
 public:
  Flags(int argc, char** argv, const char* usage) : usage_(usage) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) Die("unexpected argument " + a);
      a = a.substr(2);
      const size_t eq = a.find('=');
      if (eq != std::string::npos) {
        kv_[a.substr(0, eq)] = a.substr(eq + 1);
      } else if (i + 1 < argc) {
        kv_[a] = argv[++i];
      } else {
        Die("--" + a + " needs a value");
      }
    }
  }
  uint64_t Int(const std::string& name, uint64_t def) {
    auto it = kv_.find(name);
    uint64_t v = def;
    if (it != kv_.end() && !absl::SimpleAtoi(it->second, &v)) Die("bad number for --" + name);
    kv_.erase(name);
    return v;
  }
  double Real(const std::string& name, double def) {
    auto it = kv_.find(name);
    double v = def;
    if (it != kv_.end() && !absl::SimpleAtod(it->second, &v)) Die("bad number for --" + name);
    kv_.erase(name);
    return v;
  }
  // After every flag was read: anything left is unknown.
  void CheckAllUsed() {
    if (!kv_.empty()) Die("unknown flag --" + kv_.begin()->first);
  }
  [[noreturn]] void Die(const std::string& why) {
    std::fprintf(stderr, "%s\nUsage: %s\n", why.c_str(), usage_);
    std::exit(2);
  }

 private:
  const char* usage_;
  std::map<std::string, std::string> kv_;
};

// A node placed by dsmrun, srun or mpirun (dsm/launch.h). Exits with a message on failure.
inline std::unique_ptr<dsm::Node> StartNode(const char* program) {
  absl::StatusOr<dsm::Options> o = dsm::OptionsFromEnvironment();
  if (!o.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, o.status().ToString().c_str());
    std::exit(2);
  }
  o->wait_for_cluster = true;  // the first barrier then never waits for a node still starting
  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(*o);
  if (!node.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, node.status().ToString().c_str());
    std::exit(node.status().code() == absl::StatusCode::kPermissionDenied ? kExitSkip : 1);
  }
  return *std::move(node);
}

// Leaves in an order that keeps every write: all nodes meet, the nodes that are not the
// region's home write back and unmap, all meet again, then the home unmaps and every node
// shuts down. Returns the first error.
inline absl::Status LeaveTogether(dsm::Node& node, std::unique_ptr<dsm::Region> region,
                                  dsm::NodeId home, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status s = node.Barrier("leave-1", {}, deadline);
  if (s.ok() && node.id() != home) s = region->Unmap();
  if (absl::Status b = node.Barrier("leave-2", {}, deadline); s.ok()) s = b;
  if (absl::Status u = region->Unmap(); s.ok()) s = u;
  if (absl::Status d = node.Shutdown(); s.ok()) s = d;
  return s;
}

}  // namespace app
