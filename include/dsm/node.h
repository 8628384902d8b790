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
// Finishing: every node calls node->Finalize(deadline) when its work is done. It returns on
// each node once every node's writes are at their homes (file-backed regions persisted there),
// and leaves the node shut down. Results a node wants to keep are copied out of the regions
// before it (docs/APPLICATIONS.md shows the pattern).
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

  // Leaves the cluster alone, in order: unmaps every region (writing dirty pages back; at a
  // home, the pages other nodes hold Modified come back and a file-backed region is
  // persisted), releases every lock, says goodbye to every peer (they record this node as
  // left, not failed), closes connections, joins the engine. Regions and guards still held
  // stay safe to destroy. The other nodes go on; pages homed here become unavailable to them
  // (copies they hold stay readable, a fault on any other raises SIGBUS and is reported
  // through Options::on_pages_lost): to finish together, use Finalize.
  absl::Status Shutdown();

  // Collective exit: every node of the cluster calls it, from any one application thread,
  // after its last access to any region (other threads must have stopped too). Two phases:
  //  1. This node gives back every copy it holds of every region -- its Modified pages are
  //     written back to their homes, which persist them (file-backed regions) -- and tells
  //     every peer it is done. It keeps serving the pages homed here.
  //  2. Once every other node has said the same (or has already left), it unmaps its regions
  //     (persisting the file-backed pages homed here) and shuts down as Shutdown() does.
  // So no node leaves while another may still read from it, and no orderly exit raises SIGBUS,
  // whatever the home policy. Afterwards region memory is gone (Region::data() must not be
  // used); Region handles stay safe to destroy. The node is shut down when Finalize returns,
  // whatever the result.
  // Errors (the node still shuts down): DeadlineExceeded naming the nodes that had not
  // arrived by `deadline`; Unavailable naming a node that failed first; a write-back or
  // persist error; FailedPrecondition if called twice, after Shutdown, or on the engine thread.
  absl::Status Finalize(absl::Time deadline);
  absl::Status Finalize(absl::Duration timeout);

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
