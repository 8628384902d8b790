// dsm/node.h: a member of a dsm cluster.
//
//   dsm::Options opts;
//   opts.node_id = 1;
//   opts.peers = {"10.0.0.1:7000", "10.0.0.2:7000"};
//   absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(opts);
//   if (!node.ok()) { ...; }
//   auto region = (*node)->MapRegion({.name = "data", .size = 64 << 20, .home = 0});
//
// A Node owns one engine thread that serves this node's page faults and the cluster's
// requests. Create() probes userfaultfd and io_uring and fails with an actionable message when
// they are unavailable (for example, not root and vm.unprivileged_userfaultfd=0).
//
// Barriers (ClusterBarrier, dsm/lock.h): node->Barrier("phase-1", {}, deadline) waits until
// every node of the cluster (or the listed node ids) has entered the same barrier.
//
// Thread safety: all methods may be called from any application thread.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dsm/lock.h"
#include "dsm/options.h"
#include "dsm/region.h"
#include "dsm/stats.h"

namespace dsm {

class Node : public ClusterBarrier {
 public:
  static absl::StatusOr<std::unique_ptr<Node>> Create(const Options& options);

  virtual ~Node() = default;  // Shutdown() if not done yet

  virtual NodeId id() const = 0;
  virtual size_t cluster_size() const = 0;

  // Maps a region on this node. On a non-home node this waits (up to connect_timeout) for the
  // home to have mapped it with the same size. Regions must be unmapped before the Node dies.
  virtual absl::StatusOr<std::unique_ptr<Region>> MapRegion(const RegionOptions& options) = 0;

  virtual Stats GetStats() const = 0;

  // Unmaps every region (writing dirty pages back), closes connections, joins the engine.
  virtual absl::Status Shutdown() = 0;
};

}  // namespace dsm
