// Links against an installed libdsm through its public headers only, compiled as C++17.
// Prints what Node::Create says about options that cannot work, and a Stats dump.
#include <cstdio>
#include <string>

#include "dsm/node.h"
#include "dsm/options.h"
#include "dsm/region.h"
#include "dsm/stats.h"

int main() {
  dsm::Options options;
  options.node_id = 7;  // no such peer: there are none
  options.connect_timeout = absl::Milliseconds(100);
  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(options);
  if (node.ok()) {
    std::printf("Node::Create accepted an empty peer list (node %u)\n", (*node)->id());
    (void)(*node)->Shutdown();
  } else {
    std::printf("Node::Create with bad options: %s\n", node.status().ToString().c_str());
  }
  dsm::Stats stats;
  stats.read_faults = 3;
  const std::string dump = stats.ToString();
  if (dump.find("read_faults") == std::string::npos) {
    std::printf("Stats::ToString() lacks read_faults:\n%s", dump.c_str());
    return 1;
  }
  std::printf("dsm consumer ok\n");
  return 0;
}
