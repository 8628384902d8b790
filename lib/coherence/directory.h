// Directory: the home side of the MSI protocol for the pages of one region homed at this node.
//
// Per page it records the state (Uncached, Shared with a sharer set, Modified with an owner)
// and serializes transactions: a request for a busy page waits in a FIFO queue until the
// transaction ahead of it completes. A write is granted only after every other copy has
// acknowledged its invalidation; a Modified owner is recalled (downgraded or invalidated) and
// its data stored at the home before anyone else is served.
//
// Thread safety: not thread-safe; one engine thread owns it. No I/O: storage and messages go
// through DirectoryPort.
//
// Invariants (per page):
//  - Modified => exactly one owner and no sharers; Shared => owner none, sharers non-empty;
//    Uncached => no copies.
//  - Every node that has the page mapped (S or M) is recorded (a sharer or the owner): the
//    home records a grant before sending it and forgets a copy only after the holder reported
//    its drop (kInvAck, kRecallAck, kPut), so the recorded set is a superset of the real one.
//  - The home's storage holds the latest data whenever the page is not Modified (and not
//    lost).
//  - At most one transaction is active per page; others queue in arrival order in a side
//    table (busy pages only). A kGetM is granted only when every other copy has acknowledged
//    its invalidation or recall.
//  - A write-back (kPut) from the current owner is applied at once, even while the page is
//    busy: with per-pair FIFO delivery it precedes that owner's answer to any recall.
//  - Requests are judged on the directory's state, never on what the requester says: a kGetM
//    is answered without data only if the requester is a recorded sharer.
//  - A lost page (its Modified owner went down, or its latest data could not be stored or
//    taken: see DirectoryPort) stays lost: every request gets kNack.
//  - A readahead run (kGetSRun) never waits and never queues: it is granted only for the
//    prefix of its pages that are idle (no transaction active or queued) and not Modified at
//    another node, which is what a kGetS would have been granted without waiting for another
//    node; the rest are refused in the same reply (see OnRunRequest), so it cannot reorder or
//    delay any page's queue. A page Modified at the home itself is downgraded in place
//    (DirectoryPort::DowngradeLocal) with the same effect as the recall a kGetS would send;
//    a kGetS of such a page is served the same way (no recall to itself).
//  - A kGetM from another node takes the home's own copy in place (DirectoryPort::
//    InvalidateLocal), with the effect of the kRecall(kInvalidate) or kInv it would send to
//    itself: a Modified copy's data goes straight into the grant (the storage need not hold
//    it: the page leaves the home Modified elsewhere); a Shared copy is dropped. Only when
//    the home's cache holds the page exactly as recorded: otherwise a message from it about
//    the page is in flight on the self channel (a write-back, a drop), and the recall or
//    invalidation is sent as to any node, so it arrives after that message.
//
// Races handled here:
//  - Recall crosses a write-back: the kPut is applied when it arrives (state Uncached or
//    Shared{owner}); the recall ack that follows carries no data and only updates the
//    owner's membership.
//  - Invalidation crosses a sharer's own upgrade or release: the sharer acks any kInv, and its
//    kGetM waits in the queue behind the current transaction; when served it is no longer a
//    sharer, so it gets data. A kPut(kDropClean) that crosses a kInv just removes the sharer;
//    the ack is still awaited.
//  - Two sharers upgrade at once: the first kGetM invalidates the second sharer; the second
//    kGetM, queued, then recalls the first (now the owner) and is answered with data.
//  - Stale kPut (sender is not the owner/sharer it claims to be): only possible after a lost
//    page or a protocol bug. Its payload is never stored: if the sender is not the recorded
//    owner, the home's copy (or the current owner's) is at least as new, because ownership
//    only moves away from a node through its own write-back or recall ack.
//  - Reclaim crosses a write-back or the owner's failure: a reclaim is an ordinary transaction
//    (a recall queued like a kGetS from the home itself), so the kPut, the dataless recall ack
//    and OnPeerDown end it exactly as they end a kGetS's recall; it completes either way.
//  - The home's own copy taken in place while its application writes: a Modified copy is
//    write-protected before it is read, so a store either landed before the copy or faults
//    and waits; after the unmap the writer's fault is a write miss (a kGetM from the home to
//    itself), queued behind the transaction that took the copy. Its own upgrade in flight
//    (a kGetM from a Shared copy) is handled as for any sharer: the copy is dropped, the
//    request stays queued and is later answered with data.
//  - A local take while the page has requests queued: it happens only when a transaction
//    begins (the page's turn), never ahead of the queue.
//
// Entry checks (one place, OnMessage): messages from a node declared down are ignored; a
// message for a page outside the region or not homed here is a protocol error, and a request
// is refused with kNotHome; once closing, requests (kGetS, kGetM, kGetSRun) from other nodes
// are refused with kShuttingDown, while write-backs and acks are still applied. Refusals are
// built by coherence::Refusal.
//
// Closing (unmapping at the home): SetClosing(), then ReclaimModified() brings back every page
// another node holds Modified, so the home's storage holds the latest data of every page that
// is not lost; `done` is called once no reclaim is outstanding.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coherence/types.h"

namespace dsm::coherence {

// What a failed port call means (the Directory never goes on as if it had succeeded):
//  - LoadPage fails: the request is answered kNack(kIoError) (a run stops before the page).
//  - StorePage fails: the home cannot hold the latest data, so the page is lost (every later
//    request gets kNack(kPageLost)), as when its Modified owner goes down. (A node that kept a
//    Shared copy, after a downgrade or a kWritebackKeep, reads it until it drops it.)
//  - DowngradeLocal fails (this node could not write-protect its own Modified copy, which it
//    has therefore lost): the page is lost.
//  - InvalidateLocal fails for a Modified copy (the same write-protect failed): the page is
//    lost. For a Shared copy it cannot fail (an unmap that fails poisons the copy instead;
//    the home's storage still holds the data).
//  - A Modified owner answers a recall without data: its copy is gone (it could not give up
//    write access and poisoned it), so the page is lost.
class DirectoryPort {
 public:
  virtual void Send(Message&& m) = 0;
  // Reads the home copy of `page` (from the file, or zeros) into out[kPageSize].
  virtual absl::Status LoadPage(PageIndex page, uint8_t* out) = 0;
  // Replaces the home copy of `page` (to be persisted by the next Sync).
  virtual absl::Status StorePage(PageIndex page, const uint8_t* data) = 0;
  // This node (the home) holds `page` Modified: write-protect its copy (it stays Shared
  // here), copy it into out[kPageSize] and return true, as a kRecall(kDowngrade) to itself
  // would. False if the copy is not Modified here after all (nothing changed); an error if
  // the write-protect failed (the copy is lost here).
  virtual absl::StatusOr<bool> DowngradeLocal(PageIndex /*page*/, uint8_t* /*out*/) {
    return false;
  }
  // This node (the home) holds `page` with access `held` (kModified or kShared) and another
  // node's kGetM needs the copy gone: give it up in place (unmapped, or poisoned if the unmap
  // fails), a Modified copy write-protected and copied into out[kPageSize] first (so no
  // store lands after the copy), and return true, as a kRecall(kInvalidate) or a kInv to
  // itself would. `out` is unused for kShared. False if the copy is not held so here after
  // all (its change is then reported by a message to the home already sent; nothing
  // changed: the caller sends the recall or invalidation). An error only for kModified, if
  // the write-protect failed (the copy is lost here).
  virtual absl::StatusOr<bool> InvalidateLocal(PageIndex /*page*/, PageState /*held*/,
                                               uint8_t* /*out*/) {
    return false;
  }

 protected:
  ~DirectoryPort() = default;
};

class Directory {
 public:
  struct Config {
    NodeId self = 0;
    RegionId region = 0;
    uint64_t num_pages = 0;
    size_t cluster_size = 1;
    HomeFn home;  // the directory answers only for pages with home(page) == self
  };
  Directory(Config config, DirectoryPort* port);

  // kGetS, kGetM, kGetSRun, kPut, kInvAck, kRecallAck addressed to this region's home side.
  // Applies the entry checks above (refusing what it cannot serve) before the protocol.
  void OnMessage(const Message& m, absl::Time now);

  // The region is being unmapped here: from now on requests from other nodes are refused
  // (kShuttingDown; a run gets nothing). Requests already queued are still served. For good.
  void SetClosing();
  bool closing() const;

  // Brings every page another node holds Modified back to the home: each such page, and each
  // page with a transaction in progress (it may end Modified elsewhere), gets a recall
  // transaction queued behind the page's other requests (a downgrade: the owner keeps a
  // Shared copy, as after a kGetS). A page lost meanwhile counts as reclaimed. `done` runs once
  // every reclaim has completed (at once, inside this call, if none is needed), from inside a
  // Directory call (OnMessage, OnPeerDown or this one): it must not call back into this
  // Directory. It is never called if the Directory is destroyed first, so the caller bounds
  // the wait with its own deadline. Call after SetClosing(), or new grants may make pages
  // Modified elsewhere again.
  void ReclaimModified(absl::Time now, absl::AnyInvocable<void()> done);

  // `peer` is declared down but may still hold copies it has not fenced yet (its lease has not
  // run out at the peer): its requests, queued or later, are dropped and its messages ignored,
  // but its copies stay recorded and the acks it owes are still awaited, so no transaction
  // that needs them completes. OnPeerDown, once the peer has fenced itself, forgets them.
  void OnPeerSilenced(NodeId peer, absl::Time now);

  // `peer` is gone and holds no usable copy (it has fenced itself, or died): its copies are
  // forgotten, acks it owed count as given, pages it held Modified are lost (requests for them
  // are answered kNack/kPageLost). Implies OnPeerSilenced. `now` starts the transactions this
  // unblocks, as in OnMessage.
  void OnPeerDown(NodeId peer, absl::Time now);
  // `peer` came back as a new incarnation (a restarted process) after OnPeerDown: its
  // messages are served again. It holds no copy (OnPeerDown forgot them); pages lost then
  // stay lost.
  void OnPeerRejoined(NodeId peer);

  // Peers that have owed an acknowledgement longer than `timeout`.
  void CollectOverdue(absl::Time now, absl::Duration timeout, std::vector<NodeId>* peers) const;

  // For unmapping at the home: whether any node other than `self` holds a copy of any page.
  bool HasRemoteCopies() const;

  // Message authority (protocol/authority.h), for a page homed here: whether `node` is
  // recorded holding `page` (a sharer or the owner) or the page is lost, so a write-back from
  // it is legitimate; whether the page's active transaction waits for `ack` (kInvAck or kRecallAck)
  // from `node`. False for a page outside the region.
  bool RecordsHolder(PageIndex page, NodeId node) const;
  bool AwaitsAck(PageIndex page, NodeId node, MsgType ack) const;

  struct Counters {
    uint64_t requests_served = 0, invalidations_sent = 0, recalls_sent = 0, writebacks = 0,
             lost_pages = 0, nacks_sent = 0, queued_requests = 0;
    // Readahead: kGetSRun answered, and the pages granted by them (also in requests_served).
    // local_downgrades: pages this node held Modified itself, downgraded in place (runs, kGetS).
    // local_invalidations: copies this node held itself, given up in place for a kGetM.
    uint64_t run_requests = 0, run_pages_granted = 0, local_downgrades = 0,
             local_invalidations = 0;
    // "Cannot happen" events handled defensively (logged): a correct run keeps this 0.
    uint64_t protocol_errors = 0;
  };
  const Counters& counters() const;

  // Test-only introspection (the protocol and directory tests check states through it); the
  // node never reads it: decisions stay inside the Directory.
  enum class EntryState : uint8_t { kUncached = 0, kShared = 1, kModified = 2 };
  struct EntryView {
    EntryState state = EntryState::kUncached;
    uint64_t sharers = 0;  // bit n = node n (Shared only)
    NodeId owner = 0;      // Modified only
    bool busy = false;     // a transaction is active
    bool lost = false;
    size_t queued = 0;     // requests waiting behind the active transaction
  };
  EntryView entry(PageIndex page) const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dsm::coherence
