// In-process clusters for tests: N dsm::Nodes in this process over loopback or TCP on
// 127.0.0.1, and a watchdog that turns a hang into a failure that names the step it hung in.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dsm/node.h"
#include "dsm/options.h"
#include "dsm/region.h"

namespace dsm::testing {

// Aborts the process with a message naming the current step when the test runs longer than
// `limit` (a hang in a uffd fault cannot be interrupted any other way). Destroy to disarm.
class Watchdog {
 public:
  Watchdog(std::string test, std::chrono::seconds limit);
  ~Watchdog();
  void Step(std::string what);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::string test_;
  std::string step_;
  std::thread thread_;
};

class LocalCluster {
 public:
  // Starts n nodes (Create() runs on n threads at once, since a node may wait for its peers).
  // For kTcp, ports are picked free and picked again when a bind collides.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(
      TransportKind kind, int n, const std::function<void(Options&)>& tweak = nullptr);

  ~LocalCluster();  // unmaps what is still mapped (non-homes first), shuts nodes down

  int size() const { return static_cast<int>(nodes_.size()); }
  Node* node(int i) { return nodes_[static_cast<size_t>(i)].get(); }

  // Maps the region on every node at once, with the same options (the home opens the file).
  absl::StatusOr<std::vector<std::unique_ptr<Region>>> MapAll(const RegionOptions& ro);

  // Shuts node i down and destroys it (regions it mapped must be gone).
  absl::Status StopNode(int i);

 private:
  std::vector<std::unique_ptr<Node>> nodes_;
};

// Runs each function on its own thread and joins them all.
void RunParallel(const std::vector<std::function<void()>>& fns);

}  // namespace dsm::testing
