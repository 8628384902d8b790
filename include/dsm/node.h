// dsm/node.h: a member of a dsm cluster.
//
//   dsm::Options opts;
//   opts.node_id = 1;
//   opts.peers = {"10.0.0.1:7000", "10.0.0.2:7000"};
//   absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(opts);
//   if (!node.ok()) { ...; }
//   dsm::RegionOptions ro;
//   ro.name = "data";
//   ro.size = 64 << 20;
//   ro.home = 0;
//   absl::StatusOr<std::unique_ptr<dsm::Region>> region = (*node)->MapRegion(ro);
//   absl::StatusOr<dsm::Stats> stats = (*node)->GetStats();
//
// A Node owns one engine thread that serves this node's page faults and the cluster's
// requests. Create() probes userfaultfd and io_uring and fails with an actionable message when
// they are unavailable (for example, not root and vm.unprivileged_userfaultfd=0).
//
// Barriers (semantics and errors in dsm/lock.h): node->Barrier(deadline) waits until every
// node of the cluster has entered it; node->Barrier("phase-1", {1, 2}, deadline) until the
// listed node ids have entered the barrier of that name.
//
// Statistics: GetStats() is this node's counters, Region::GetStats() one region's share of
// them, GatherStats(deadline) every node's and their sum (one message to and from each peer).
//
// Ownership: the application owns the Node (a std::unique_ptr from Create()); destroying it
// shuts it down. Regions it mapped are owned by the application too and should be destroyed
// first (see dsm/region.h).
//
// Thread safety: every method may be called from any application thread, concurrently, but not
// from a LockAsync/BarrierAsync callback (the engine thread) except BarrierAsync itself.
//
// C++17-clean: included by applications.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsm/abi.h"
#include "dsm/lock.h"
#include "dsm/options.h"
#include "dsm/region.h"
#include "dsm/stats.h"

DSM_NAMESPACE_BEGIN

namespace internal {
class NodeImpl;
class ApiAccess;
}  // namespace internal

// Node::GatherStats: every node's counters and their sum.
struct ClusterStats {
  // Indexed by node id; a node that did not answer has all zeros.
  std::vector<Stats> nodes;
  // Nodes that did not answer by the deadline (down, or slower than the deadline).
  std::vector<NodeId> missing;
  // The sum over the nodes that answered (Stats::operator+=).
  Stats total;
};

class Node {
 public:
  static absl::StatusOr<std::unique_ptr<Node>> Create(const Options& options);

  // Shutdown(), if not done yet.
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  NodeId id() const;
  size_t cluster_size() const;

  // Maps a region on this node. On a non-home node this waits (up to connect_timeout) for the
  // home to have mapped it with the same size.
  absl::StatusOr<std::unique_ptr<Region>> MapRegion(const RegionOptions& options);

  // A snapshot of this node's counters. An error (kDeadlineExceeded, kUnavailable after
  // Shutdown) when the engine does not answer, never zeros in place of counters.
  absl::StatusOr<Stats> GetStats() const;

  // Unmaps every region (writing dirty pages back), releases every lock, closes connections,
  // joins the engine. Regions and guards still held stay safe to destroy.
  absl::Status Shutdown();

  // ---- Barriers (errors: dsm/lock.h) ----

  // Blocks until every member has entered barrier `name` (same name, same members), then
  // returns OK on every member. `members` lists node ids; empty means every node of the
  // cluster; the calling node must be one of them. Consecutive barriers of a group are
  // numbered (generations) and never mix: a node that leaves generation g and enters again
  // waits for generation g+1. A node enters a given group at most once at a time.
  absl::Status Barrier(const std::string& name, const std::vector<NodeId>& members,
                       absl::Time deadline = absl::InfiniteFuture());
  // Barrier without blocking: returns at once; `done` runs exactly once on the engine thread.
  void BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                    absl::Time deadline, std::function<void(absl::Status)> done);
  // The barrier of every node of the cluster, without a name: blocks until every node has
  // called Barrier() (the same number of times). Errors as for the named form; on
  // kDeadlineExceeded and kAborted the message lists the nodes that had not entered.
  absl::Status Barrier(absl::Time deadline = absl::InfiniteFuture());

  // ---- Statistics ----

  // Asks every peer that is up for its counters and returns them with this node's and the
  // sum. Waits until every peer answered or `deadline`; peers that did not answer by then
  // are listed in `missing` (not an error). An error only when this node cannot answer
  // itself (kUnavailable after Shutdown, kDeadlineExceeded if its engine is wedged).
  absl::StatusOr<ClusterStats> GatherStats(absl::Time deadline);

 private:
  friend class internal::ApiAccess;
  explicit Node(std::unique_ptr<internal::NodeImpl> impl);

  const std::unique_ptr<internal::NodeImpl> impl_;
};

DSM_NAMESPACE_END
