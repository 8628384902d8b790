// Cache: the requester side of the MSI protocol for one region on one node.
//
// It turns page faults into requests to each page's home, coalesces concurrent faults on a
// page into one request, installs grants, and answers the home's invalidations and recalls.
// All effects (sending, mapping, protecting, dropping pages) go through CachePort, so tests
// drive it with no kernel and no network.
//
// Thread safety: not thread-safe; one engine thread owns it.
//
// Invariants (per page):
//  - state() is the access the page is mapped with on this node: I unmapped, S read-only,
//    M writable. Only this class changes it, through the port, before the message that
//    reports the change is sent (so the home never counts on a copy that is still writable).
//  - At most one request per page is outstanding (pending); later faults join it.
//  - A request is kGetM if any waiting fault is a write (a read that finds a write pending
//    waits for it: M satisfies reads).
//  - A reply is matched by req_id; a reply for a request that no longer exists is ignored.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "coherence/types.h"

namespace dsm::coherence {

class CachePort {
 public:
  virtual void Send(Message&& m) = 0;
  // Maps `page` (currently I) with `data`, read-only for kShared, writable for kModified,
  // and wakes the threads waiting on it.
  virtual void Install(PageIndex page, const uint8_t* data, PageState state) = 0;
  // Changes the access of a mapped page in place: S->M removes write protection (and wakes
  // waiters); M->S write-protects it (after which no store can change it).
  virtual void SetAccess(PageIndex page, PageState state) = 0;
  // Copies the contents of a mapped page into out[kPageSize]. For an M page the caller has
  // write-protected it first.
  virtual void ReadPage(PageIndex page, uint8_t* out) = 0;
  // Unmaps the page (-> I). Later accesses fault again.
  virtual void Drop(PageIndex page) = 0;
  // The page cannot be obtained: threads waiting on it, and later accesses, get SIGBUS.
  virtual void Fail(PageIndex page, ErrorCode why) = 0;
  // Wakes threads blocked on `page` whose fault is already resolved.
  virtual void Wake(PageIndex page) = 0;

 protected:
  ~CachePort() = default;
};

class Cache {
 public:
  struct Config {
    NodeId self = 0;
    RegionId region = 0;
    uint64_t num_pages = 0;
    HomeFn home;
  };
  Cache(Config config, CachePort* port);

  // A fault reported by the kernel on `page`: `write` for a write access (a MISSING fault
  // on a store or a write-protect fault).
  void OnFault(PageIndex page, bool write, absl::Time now);

  // Messages addressed to this region's requester side: kData, kGrant, kNack, kInv, kRecall.
  void OnMessage(const Message& m, absl::Time now);

  // `peer` is gone: requests outstanding at it fail (their pages are reported lost).
  void OnPeerDown(NodeId peer);

  // Homes that have had a request outstanding longer than `timeout` (to be declared down).
  void CollectOverdue(absl::Time now, absl::Duration timeout, std::vector<NodeId>* peers) const;

  // Voluntary release (eviction): S is dropped and the home told; M is written back and
  // dropped. No-op for I or pending pages. Returns true if the page was released.
  bool Release(PageIndex page);

  // Sync: every M page is written back and kept S. Appends each home written to (once).
  // Returns the number of pages written back.
  size_t WriteBackAll(std::vector<NodeId>* homes);

  PageState state(PageIndex page) const;
  bool pending(PageIndex page) const;
  uint64_t num_pages() const;

  struct Counters {
    uint64_t read_faults = 0, write_faults = 0, upgrade_faults = 0, coalesced_faults = 0,
             requests_sent = 0, invalidations = 0, recalls = 0, writebacks = 0, lost = 0;
    uint64_t shared = 0, modified = 0;  // pages currently in S / M
  };
  const Counters& counters() const;

 private:
  // Implementation's choice; keep per-page state to a byte or two (mmap'd lazily for huge
  // regions) and the pending requests in a side table.
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dsm::coherence
