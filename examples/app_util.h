// Small pieces shared by the example applications (sor, matmul, counter_table): start a node
// from the launcher's environment, read --flags, meet at barriers, and finish together.
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

// Meets every node at barrier `name`, or exits with status 1 and a message naming the step
// (`what`): an example has nothing sensible to do once a node has gone missing.
inline void BarrierOrExit(dsm::Node& node, const char* program, const char* name,
                          const char* what, absl::Duration timeout) {
  absl::Status s = node.Barrier(name, {}, absl::Now() + timeout);
  if (!s.ok()) {
    std::fprintf(stderr, "%s node %u: barrier (%s): %s\n", program, node.id(), what,
                 s.ToString().c_str());
    std::exit(1);
  }
}

// Leaves the cluster with every other node (Node::Finalize: every node's writes reach their
// homes, then everyone shuts down) and returns the process's exit status: `result` when
// Finalize succeeded, 1 (reported) when it did not. Results must be read or copied out of the
// regions before this.
inline int FinishAndReport(dsm::Node& node, const char* program, int result,
                           absl::Duration timeout) {
  absl::Status s = node.Finalize(timeout);
  if (!s.ok()) {
    std::fprintf(stderr, "%s node %u: finalize: %s\n", program, node.id(),
                 s.ToString().c_str());
    return 1;
  }
  return result;
}

}  // namespace app
