// RegionLifecycle: mapping, syncing and unmapping regions on this node, with the messages that
// go with them (kRegionOpen / kRegionOpenReply, kSyncReq / kSyncAck).
//
//   Map:    refused at once (Unavailable, naming the node) when a home of the region is known
//           down. Otherwise the region is mapped and put in the RegionTable at once (faults on
//           pages homed here can be served); then every other node not known down is asked
//           kRegionOpen with this node's identity of the region (protocol/region_identity.h).
//           A node that maps the region answers with its own identity; any difference fails
//           the map with InvalidArgument naming the field and both values (and the answering
//           node refuses it too). Homes must confirm: kNoSuchRegion from a home (it has not
//           mapped the region yet) is retried every 20 ms until connect_timeout. Other nodes
//           are witnesses: they only compare (so two nodes that each think they are the home
//           still meet); "not mapped here", going down, or not answering by the deadline is
//           fine for them. The map succeeds when every home said kOk and no node differed.
//   Sync:   refused at once (Unavailable, naming the node) when a home is known down;
//           otherwise every Modified page is written back (kept Shared); every home, this node
//           included, is asked kSyncReq (persist) and must answer kOk.
//   Unmap:  the region becomes closing. At a home, the Directory refuses requests from other
//           nodes and reclaims every page held Modified elsewhere (Directory::ReclaimModified,
//           the protocol's own recall; completion by callback). Then every copy this node
//           holds is released (Modified pages written back) and every home is asked to persist.
//           The caller then drops the region (Remove). A home known down is not asked: the
//           unmap fails with Unavailable naming it once the live homes have answered.
//   Flush:  (Finalize, first phase) every copy this node holds is released (Modified pages
//           written back) and every home is asked to persist; the region stays mapped and
//           this node keeps serving the pages homed here.
//   Final unmap: (Finalize, second phase: every node has flushed) as Unmap, but only this
//           node persists: no other node holds a copy, and the other homes may be gone.
//
// Thread safety: every method runs on the engine thread. The only object shared with another
// thread is a RegionOp, through its Notification (see RegionOp).
//
// Invariants (of the operations, tracked by req_id in `ops_`):
//  - An op is in ops_ from its start until it finishes; it finishes exactly once (Finish),
//    when every peer in its pending set has answered, when its deadline passes (OnTick), when
//    a map has its first error (a differing identity, a home down), or when its region is
//    removed. Sync and unmap errors (a home down) end them once the others have answered.
//  - An op's status is its first error; an op never waits on a peer not in its pending set,
//    and never starts waiting on a peer known down (down_).
//  - A map's witness_mask is a subset of the nodes it asked; a witness never fails the map
//    except by answering another identity.
//  - A region is closing from StartUnmap until Remove; a closing region is not unmapped twice.
//  - Work resumed later (an open retry, the end of a reclaim) re-checks that its op is still
//    unfinished and its region still mapped before it acts.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "dsm/options.h"
#include "node/region_table.h"
#include "protocol/region_identity.h"

namespace dsm {

// One application thread's pending map, sync or unmap. The engine thread owns every field
// until `done` is notified; after that, only the waiting thread reads `status`.
class RegionOp {
 public:
  // Application thread: waits at most `limit`. The op's result, or DeadlineExceeded naming
  // `what` if the engine did not finish it in time (the op then stays the engine's).
  absl::Status Wait(absl::Duration limit, absl::string_view what);

 private:
  friend class RegionLifecycle;
  void Fail(const absl::Status& s) {
    if (status_.ok()) status_ = s;
  }

  std::string what_;  // for error messages
  uint64_t req_id_ = 0;
  uint64_t pending_mask_ = 0;  // peers that still owe an answer
  uint64_t witness_mask_ = 0;  // a map's peers that are not homes: they only compare identity
  absl::Time deadline_;
  absl::Status status_;  // first error
  bool finished_ = false;
  RegionId region_ = 0;
  uint64_t open_size_ = 0;  // a map's region size (non-zero: kNoSuchRegion is retried)
  std::string region_name_;  // a map's region name and identity, as this node maps it
  RegionIdentity identity_;
  bool persist_here_only_ = false;  // a final unmap: no kSyncReq to other homes
  absl::Notification done_;
};

class RegionLifecycle {
 public:
  // What it needs from the engine, each called on the engine thread.
  struct Hooks {
    std::function<void(Message&&)> send;  // the engine's SendMessage (sets src)
    // Runs `fn` on the engine thread after `delay` (zero: after the current event).
    std::function<void(absl::Duration delay, absl::AnyInvocable<void()> fn)> after;
    // Why a peer was declared down, as "node N is down: ..." (OK if it is not): a request the
    // engine answered locally because its peer is down fails with this text (a refusal names
    // a misconfiguration).
    std::function<absl::Status(NodeId)> down_reason;
  };
  RegionLifecycle(const Options& options, RegionTable* table, RegionHost* host, Hooks hooks);

  // Starting the operations (engine thread). On error the op is not started (not tracked,
  // not finished); the caller returns the error.
  absl::StatusOr<MappedRegion*> StartMap(const RegionOptions& options,
                                         std::shared_ptr<RegionOp> op);
  absl::Status StartSync(RegionId region, std::shared_ptr<RegionOp> op);
  // kCluster: the other nodes go on (homes here reclaim, every home persists). kFinal: after
  // every node flushed (Finalize): this node's home pages are reclaimed and persisted here;
  // no message needs another node.
  enum class UnmapScope { kCluster, kFinal };
  absl::Status StartUnmap(RegionId region, std::shared_ptr<RegionOp> op,
                          UnmapScope scope = UnmapScope::kCluster);
  // Finalize's first phase for one region (see Flush above).
  absl::Status StartFlush(RegionId region, std::shared_ptr<RegionOp> op);
  // Drops the region (after a failed map or a finished unmap): ops still running on it fail.
  void Remove(RegionId region);

  // Messages (engine thread).
  void OnRegionOpen(const Message& m);
  void OnSyncReq(const Message& m);
  void OnReply(const Message& m);  // kRegionOpenReply, kSyncAck
  // Peer events and time. `why` names the peer ("node 2 is down: ...", "node 2 has left").
  // A peer is known down from OnPeerDown until OnPeerUp.
  void OnPeerUp(NodeId peer);
  void OnPeerDown(NodeId peer, const absl::Status& why);
  void OnTick(absl::Time now);  // ops past their deadline fail
  // Message authority (protocol/authority.h): the peers (bit per id) operation `req_id` still
  // waits for an answer from; nullopt if no such operation is in progress.
  std::optional<uint64_t> AwaitedBy(uint64_t req_id) const {
    auto it = ops_.find(req_id);
    if (it == ops_.end()) return std::nullopt;
    return it->second->pending_mask_;
  }

 private:
  void Track(const std::shared_ptr<RegionOp>& op);
  void Finish(const std::shared_ptr<RegionOp>& op);
  // `from` answered op `req_id` with `code`.
  void Complete(uint64_t req_id, NodeId from, ErrorCode code);
  // A map's kRegionOpenReply: compares the identities, retries or settles the answer.
  void OnOpenReply(const Message& m);
  // Unavailable naming `peer` (the `role` it has for `what`) if it is known down; else OK.
  absl::Status DownError(absl::string_view what, NodeId peer, absl::string_view role) const;
  void SendRegionOpen(const RegionOp& op, const MappedRegion& r, NodeId home);
  // Unmap, once no page is held Modified elsewhere: give every copy back, then persist.
  void ReleaseAndPersist(const std::shared_ptr<RegionOp>& op);
  // Gives back every copy of `r` this node holds (Modified pages written back), in batches.
  void ReleaseAll(MappedRegion& r);
  // kSyncReq to every home of `r` (this node included; only this node if the op persists
  // here only); `op` waits for their acks.
  void AskHomesToPersist(MappedRegion& r, const std::shared_ptr<RegionOp>& op);

  const Options& options_;
  RegionTable* const table_;
  RegionHost* const host_;
  Hooks hooks_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<RegionOp>> ops_;  // by req_id
  absl::flat_hash_set<RegionId> closing_;
  absl::flat_hash_map<NodeId, absl::Status> down_;  // peers known down, and why
  uint64_t next_req_id_ = 1;
};

}  // namespace dsm
