// The hidden side of the public handles (include/dsm/node.h, region.h, lock.h).
//
// dsm::Node and dsm::Region are concrete classes holding one of these. The node layer
// implements them over its Engine (node/node_impl.cc); tests implement them over fakes. The
// handles' own logic (blocking forms over the async ones, LockGuard, forwarding) lives in
// lock/lock_api.cc and is the same for both.
//
// Ownership: a Region holds its RegionImpl by shared_ptr and is its only long-lived strong
// owner; a LockGuard holds it weakly, and a blocking Lock's rendezvous holds it weakly, so a
// RegionImpl dies with its Region (or at the end of the one call that was using it). A Node
// owns its NodeImpl alone.
//
// Thread safety: every method may be called from any thread, concurrently (the contracts of
// the public methods they implement).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsm/abi.h"
#include "dsm/lock.h"
#include "dsm/node.h"
#include "dsm/options.h"
#include "dsm/region.h"
#include "dsm/stats.h"

DSM_NAMESPACE_BEGIN
namespace internal {

class RegionImpl {
 public:
  virtual ~RegionImpl() = default;

  virtual void* data() const = 0;
  virtual size_t size() const = 0;
  virtual const std::string& name() const = 0;
  virtual absl::Status Sync() = 0;
  // Idempotent. Afterwards ReleaseLock answers kFailedPrecondition (the unmap released every
  // lock) without reaching the lock layer.
  virtual absl::Status Unmap() = 0;

  // Starts `request` and returns its lock id (never 0). `done` runs exactly once on the engine
  // thread, with the handle or the error; a request that cannot start fails through `done`.
  // Never blocks.
  virtual uint64_t RequestLock(const LockRequest& request, LockCallback done) = 0;
  // Releases a held lock or withdraws a pending request (Region::Unlock and Region::Cancel).
  virtual absl::Status ReleaseLock(uint64_t lock_id) = 0;

  // Region::Advise over whole pages [first_page, first_page + num_pages), inside the region
  // (checked by the caller). Implementations without hints keep the defaults.
  virtual absl::Status Advise(uint64_t /*first_page*/, uint64_t /*num_pages*/, Advice /*a*/) {
    return absl::UnimplementedError("hints are not supported here");
  }
  virtual absl::StatusOr<Stats> GetStats() const {
    return absl::UnimplementedError("per-region statistics are not supported here");
  }
};

class NodeImpl {
 public:
  virtual ~NodeImpl() = default;

  virtual NodeId id() const = 0;
  virtual size_t cluster_size() const = 0;
  virtual absl::StatusOr<std::shared_ptr<RegionImpl>> MapRegion(const RegionOptions& options) = 0;
  virtual absl::StatusOr<Stats> GetStats() const = 0;
  // Idempotent.
  virtual absl::Status Shutdown() = 0;
  // Node::Finalize; the node is shut down afterwards.
  virtual absl::Status Finalize(absl::Time deadline) = 0;
  virtual void BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                            absl::Time deadline, std::function<void(absl::Status)> done) = 0;
  virtual absl::StatusOr<ClusterStats> GatherStats(absl::Time /*deadline*/) {
    return absl::UnimplementedError("cluster statistics are not supported here");
  }
};

// The name of the unnamed barrier of every node (Node::Barrier(deadline)). Names starting
// with kReservedBarrierPrefix are the library's: the named API refuses them.
inline constexpr char kReservedBarrierPrefix[] = "dsm.";
inline constexpr char kClusterBarrierName[] = "dsm.all";

// Builds the public handles (their constructors are private to keep applications off them).
class ApiAccess {
 public:
  static std::unique_ptr<Region> MakeRegion(std::shared_ptr<RegionImpl> impl) {
    return std::unique_ptr<Region>(new Region(std::move(impl)));
  }
  static std::unique_ptr<Node> MakeNode(std::unique_ptr<NodeImpl> impl) {
    return std::unique_ptr<Node>(new Node(std::move(impl)));
  }
};

}  // namespace internal
DSM_NAMESPACE_END
