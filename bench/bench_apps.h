// Application figures of dsm_bench: the example applications' kernels (examples/app_kernels.h:
// red-black SOR, matrix multiply, the counter table) run on 1 to 3 nodes of the benchmark
// cluster, each beside a plain single-process run of the same kernel on private memory in the
// same benchmark, and checked against it byte for byte (a wrong result is an error, never a
// figure). bench_apps.cc has the drivers and the per-node runner; the helper processes run
// their share through the helper command `app` (bench_helper.cc).
//
// Thread safety: the benchmark thread drives a run; RunAppCommand runs on a helper's command
// thread. Neither is reentrant.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench_floors.h"
#include "dsm/node.h"
#include "dsm/region.h"

namespace dsm::bench {

// The benchmark cluster as the application figures use it (implemented over dsm_bench.cc's
// cluster): node 0 is this process, nodes 1..5 helper processes driven over a pipe each.
class AppCluster {
 public:
  virtual ~AppCluster() = default;
  virtual dsm::Node* node() = 0;
  // Every node process (0 = this one), for a CpuMeter.
  virtual std::vector<pid_t> node_pids() = 0;
  // One command line to helper `id`; Read returns its reply ("ok ...") or an error.
  virtual absl::Status Send(int id, const std::string& cmd) = 0;
  virtual absl::StatusOr<std::string> Read(int id) = 0;
};

// The cluster for `net`, started on first use (defined in dsm_bench.cc).
absl::StatusOr<AppCluster*> GetAppCluster(Net net);

// Registers App_Sor, App_Matmul and App_CounterTable for every network of `cfg`.
void RegisterAppBenchmarks(const BenchConfig& cfg);

// Helper side of `app <region> <kernel> <index> <nodes> <a> <b>`: runs node `index`'s share
// of the run on `region` (mapped by the helper, home node 0). Returns the reply line.
std::string RunAppCommand(dsm::Node& node, dsm::Region& region,
                          const std::vector<std::string>& args);

// How many application runs in this process computed a wrong result (dsm_bench --smoke
// exits non-zero if any did).
int AppWrongResults();

}  // namespace dsm::bench
