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
// Invariants (per page, between transactions):
//  - Modified => exactly one owner and no sharers; Shared => owner none, sharers non-empty.
//  - The home's storage holds the latest data whenever the page is not Modified.
//  - At most one transaction is active; others queue in arrival order.
//  - A write-back (kPut) from the current owner is applied at once, even while the page is
//    busy: with per-pair FIFO delivery it precedes that owner's answer to any recall.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "coherence/types.h"

namespace dsm::coherence {

class DirectoryPort {
 public:
  virtual void Send(Message&& m) = 0;
  // Reads the home copy of `page` (from the file, or zeros) into out[kPageSize].
  virtual absl::Status LoadPage(PageIndex page, uint8_t* out) = 0;
  // Replaces the home copy of `page` (to be persisted by the next Sync).
  virtual void StorePage(PageIndex page, const uint8_t* data) = 0;

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

  // kGetS, kGetM, kPut, kInvAck, kRecallAck addressed to this region's home side.
  void OnMessage(const Message& m, absl::Time now);

  // `peer` is gone: its copies are forgotten, acks it owed count as given, pages it held
  // Modified are lost (requests for them are answered kNack/kPageLost).
  void OnPeerDown(NodeId peer);

  // Peers that have owed an acknowledgement longer than `timeout`.
  void CollectOverdue(absl::Time now, absl::Duration timeout, std::vector<NodeId>* peers) const;

  // For unmapping at the home: whether any node other than `self` holds a copy of any page.
  bool HasRemoteCopies() const;

  struct Counters {
    uint64_t requests_served = 0, invalidations_sent = 0, recalls_sent = 0, writebacks = 0,
             lost_pages = 0;
  };
  const Counters& counters() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dsm::coherence
