// Engine::WaitForCluster: Node::Create with Options::wait_for_cluster returns only once every
// peer is connected. The transport owns the peer states; this polls them from the application
// thread (the wait is once per node lifetime, so a short poll costs nothing worth a hook).
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/node_set.h"
#include "node/engine.h"

namespace dsm {
namespace {

constexpr absl::Duration kPollPeriod = absl::Milliseconds(5);

struct PeerView {
  uint64_t up = 0;    // connected (this node's own bit included)
  uint64_t down = 0;  // declared down
};

}  // namespace

absl::Status Engine::WaitForCluster(absl::Time deadline) {
  const uint64_t all = FirstNodes(cluster_size());
  PeerView view;
  for (;;) {
    absl::StatusOr<PeerView> v = RunOnEngine<PeerView>([this]() -> absl::StatusOr<PeerView> {
      PeerView out;
      out.up = NodeBit(options_.node_id);
      for (NodeId n = 0; n < cluster_size(); ++n) {
        if (n != options_.node_id && transport_->IsUp(n)) out.up |= NodeBit(n);
      }
      out.down = down_mask_;
      return out;
    });
    if (!v.ok()) return v.status();
    view = *v;
    if ((view.up & all) == all) return absl::OkStatus();
    if (absl::Now() >= deadline) break;
    absl::SleepFor(std::min(kPollPeriod, deadline - absl::Now()));
  }
  std::vector<std::string> missing;
  for (NodeId n = 0; n < cluster_size(); ++n) {
    if (InNodeSet(view.up, n)) continue;
    missing.push_back(absl::StrCat(n, " (", options_.peers[n],
                                   InNodeSet(view.down, n) ? ", declared down" : "", ")"));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "node ", options_.node_id, ": the cluster is not complete after connect_timeout (",
      absl::FormatDuration(options_.connect_timeout), "); ", missing.size(), " of ",
      cluster_size() - 1, " peers not connected: node ", absl::StrJoin(missing, ", node ")));
}

}  // namespace dsm
