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
//  - A request is kGetM if the fault that started it is a write (a read that finds a write
//    pending waits for it: M satisfies reads). A write that joins a pending kGetS is
//    remembered: when the S grant is installed the cache sends kGetM at once (the writer,
//    woken by the install, re-faults with a WP fault that joins this kGetM).
//  - pending => state is I or S (an M page needs nothing). A lost page is I, never pending,
//    and every later fault on it is answered with Fail.
//  - A reply is matched by req_id; a reply for a request that no longer exists is ignored.
//  - kInv and kRecall are always answered (idempotent), whatever the state: the home counts
//    the answers, and a copy that is already gone was reported by an earlier kPut on the
//    same FIFO channel.
//
// Readahead (Config::readahead_max_pages): a sequential stream of read misses (each miss at
// the page after the previous one, or inside the window already prefetched) makes the cache
// request the next pages that are I, not pending, not lost, homed at another live node and
// inside the region: contiguous pages with one home go out as one kGetSRun of up to
// kMaxRunPages pages (a lone page as kGetS). Each page of a run is an ordinary pending
// request (all with the run's req_id) with no waiting thread; a fault on one joins it (a write
// fault joins as want_write, upgraded after the install). The kDataRun installs the granted
// prefix read-only in one port call; a page the home did not grant leaves pending and stays
// I: if a thread joined it, it is requested again at once (kGetS, or kGetM for a writer), and
// otherwise its budget reservation is returned. A page refused in two runs in a row (without
// a grant between) is left to demand faults from then on (until Advise kNormal/kSequential):
// a home that keeps refusing a page (another node keeps writing it) would otherwise cost a
// refused request per pass. Pages advised kRandom start no readahead and are never asked
// for by it. Writes never trigger readahead. The window
// grows 4 -> max while the stream continues and new requests go out only once a whole chunk
// (a quarter of the window, at most one run) is due, so the runs stay long.
//
// Races handled here (see also directory.h):
//  - Stale fault: the kernel reports a fault the page already satisfies (read on S/M, write on
//    M: another thread's fault was resolved first) -> port Wake, no request.
//  - WP fault on a page that was invalidated meanwhile (now I) -> a write miss (kGetM).
//  - kInv while our own upgrade (kGetM from S) is in flight: drop, ack, stay pending; the
//    home serves our kGetM after this invalidation's transaction and, since we are no longer
//    a sharer, answers with kData.
//  - kRecall after we wrote the page back (kPut crossed the recall): answer without payload
//    with the current state; the home applied the kPut first (per-pair FIFO).
//  - kInv for a page of a run still in flight: the home granted the run before it sent the
//    kInv (per-pair FIFO), so the kDataRun arrives first; an invalidation of a pending I page
//    is acked and changes nothing.
//  - A dataless kGrant while the page is I cannot happen (the home grants without data only
//    to a recorded sharer, and a sharer is removed only after it reported its drop). It is
//    handled defensively: logged, and kGetM is sent again (the home then sends data).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coherence/types.h"

namespace dsm::coherence {

// What a failed kernel call means (the rules the Cache applies; a port never hides one):
//  - Install / InstallRun / SetAccess(M) fail (a grant this node cannot map): the grant is
//    handed back to the home at once -- kPut(kWritebackDrop) with the page's data for an M
//    grant, kPut(kDropClean) for an S grant -- and the page is lost here (Fail(kIoError):
//    poisoned, waiting threads get SIGBUS, on_pages_lost). The home's record stays exact and
//    no other node is affected. A failed InstallRun is retried page by page first (Install
//    repairs a page the run had already mapped).
//  - SetAccess(S) / DowngradeRun fail (this node cannot give up write access): on a recall
//    the copy is lost here and the recall is answered without data as Invalid, which tells
//    the home its only current copy is gone (the home then reports the page lost); Release
//    leaves the page Modified and returns false; WriteBackAll leaves those pages Modified
//    and returns the error (the Sync fails); DowngradeForHome loses the copy and returns the
//    error (the home reports the page lost).
//  - Drop fails on an invalidation, a recall or an eviction: the copy is poisoned (Fail) before
//    the message reporting the drop is sent, so no stale read survives the acknowledgment.
// Success costs nothing: an OK absl::Status does not allocate.
class CachePort {
 public:
  virtual void Send(Message&& m) = 0;
  // Maps `page` (currently I) with `data`, read-only for kShared, writable for kModified,
  // and wakes the threads waiting on it. On error the page is not mapped with `data`.
  virtual absl::Status Install(PageIndex page, const uint8_t* data, PageState state) = 0;
  // Changes the access of a mapped page in place: S->M removes write protection (and wakes
  // waiters); M->S write-protects it (after which no store can change it). On error the
  // access is unchanged.
  virtual absl::Status SetAccess(PageIndex page, PageState state) = 0;
  // M->S for every page of [first, first + n) (all M): after it no store can change them. A
  // port should write-protect the whole range in one call (Sync of many dirty pages). On
  // error none of them may be assumed protected.
  virtual absl::Status DowngradeRun(PageIndex first, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) {
      if (absl::Status s = SetAccess(first + i, PageState::kShared); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  // Copies the contents of a mapped page into out[kPageSize]. For an M page the caller has
  // write-protected it first.
  virtual void ReadPage(PageIndex page, uint8_t* out) = 0;
  // Unmaps the page (-> I). Later accesses fault again. On error the old contents may still
  // be mapped.
  virtual absl::Status Drop(PageIndex page) = 0;
  // The page cannot be obtained: threads waiting on it, and later accesses, get SIGBUS (or
  // SIGSEGV where the kernel cannot poison). The last resort: it has no failure of its own.
  virtual void Fail(PageIndex page, ErrorCode why) = 0;
  // Wakes threads blocked on `page` whose fault is already resolved.
  virtual void Wake(PageIndex page) = 0;
  // Makes *out a kPageSize buffer for a page the cache is about to send (write-back, recall
  // answer). A port may hand out buffers allocated ahead of time, so the eviction path need
  // not allocate under memory pressure.
  virtual void TakePageBuffer(std::vector<uint8_t>* out) { out->resize(kPageSize); }
  // Readahead: may a speculative request for `page` (I, not pending) go out now? A port that
  // keeps a memory budget reserves room for the page (as for a demand fault) and returns
  // true, or returns false when the budget has no room; the Cache then requests the page in
  // the same call (so a reservation is always followed by a pending request).
  virtual bool ReservePrefetch(PageIndex /*page*/) { return true; }
  // Readahead: the reservation ReservePrefetch made for `page` is not needed any more (the
  // home did not grant the page and no thread waits for it; the page stays I).
  virtual void CancelPrefetch(PageIndex /*page*/) {}
  // Maps the n pages [first, first + n) (all I) read-only with data[n * kPageSize] and wakes
  // their waiters. A port should do it in one call (one UFFDIO_COPY for the whole run). On
  // error any prefix of the run may be mapped.
  virtual absl::Status InstallRun(PageIndex first, uint64_t n, const uint8_t* data) {
    for (uint64_t i = 0; i < n; ++i) {
      absl::Status s = Install(first + i, data + i * kPageSize, PageState::kShared);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

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
    // Sequential readahead: after kReadaheadTrigger consecutive read misses, speculative
    // requests for up to this many pages ahead (window 4, doubling while the stream
    // continues, reset by a non-sequential read miss). 0 disables it.
    uint64_t readahead_max_pages = 0;
    // Request ids start here. A node gives each mapping of a region its own range, so a late
    // reply to an earlier mapping of the same region (same RegionId) matches no request of
    // this one and is ignored.
    uint64_t first_req_id = 1;
  };
  static constexpr uint64_t kReadaheadTrigger = 2;
  Cache(Config config, CachePort* port);

  // A fault reported by the kernel on `page`: `write` for a write access (a MISSING fault
  // on a store or a write-protect fault).
  void OnFault(PageIndex page, bool write, absl::Time now);

  // Messages addressed to this region's requester side: kData, kDataRun, kGrant, kNack, kInv,
  // kRecall.
  void OnMessage(const Message& m, absl::Time now);

  // `peer` is gone: requests outstanding at it fail (their pages are reported lost). Copies of
  // pages homed there stay (right for a home that left in order: nobody can change them).
  void OnPeerDown(NodeId peer);
  // `home` is declared down while it may still be running (failed, stalled, cut off): as
  // OnPeerDown, and this node fences itself for it: every copy (S or M) of a page homed there
  // is poisoned (SIGBUS from now on; reported lost), because the home may hand the page to
  // another node once it stops hearing from this one. Idempotent.
  void FenceHome(NodeId home);

  // Homes that have had a request outstanding longer than `timeout` (to be declared down).
  void CollectOverdue(absl::Time now, absl::Duration timeout, std::vector<NodeId>* peers) const;

  // Voluntary release (eviction): S is dropped and the home told; M is written back and
  // dropped. No-op for I or pending pages. Returns true if the page was released (or lost
  // here because its unmap failed), false if nothing changed.
  bool Release(PageIndex page);

  // A kernel call on `page` failed so that its copy here cannot be used any more (see
  // ReplacementPort): the page is lost here (Fail: poisoned, waiters get SIGBUS). No-op for a
  // page outside the region or already lost.
  void LoseCopy(PageIndex page);

  // Whether Release(page) would release it now: mapped, not pending, not lost, and if M its
  // home is up (the write-back needs somewhere to go).
  bool CanRelease(PageIndex page) const;

  // The home's directory takes this node's Modified copy of a page it homes (a readahead run
  // from another node wants it): write-protect it (-> S) and copy it to out[kPageSize].
  // Returns false, changing nothing, unless the page is M here; an error if the write-protect
  // failed (the copy is then lost here: the home must report the page lost).
  absl::StatusOr<bool> DowngradeForHome(PageIndex page, uint8_t* out);
  // The home's directory takes this node's copy of a page it homes (another node's kGetM
  // needs it gone), as a kRecall(kInvalidate) or a kInv would, without the message: a
  // Modified copy is write-protected and copied to out[kPageSize], then the page is dropped
  // (poisoned if the unmap fails); a pending request stays pending. Returns false, changing
  // nothing, unless the page is `held` (kModified or kShared) here; an error if the
  // write-protect of a Modified copy failed (the copy is then lost here: the home must report
  // the page lost).
  absl::StatusOr<bool> InvalidateForHome(PageIndex page, PageState held, uint8_t* out);

  // Sync: every M page is written back and kept S (runs of consecutive pages with one home in
  // one kPut of up to kMaxRunPages pages). Appends each home written to (once).
  // Returns the number of pages written back, or the first write-protect error: the pages of
  // a run that could not be protected stay M here and are not written back (the others are).
  absl::StatusOr<size_t> WriteBackAll(std::vector<NodeId>* homes);

  // Hints (Region::Advise) over pages [first, first + n) (clipped to the region).
  // enabled = false (kRandom): faults on these pages start no readahead and readahead asks for
  // none of them. enabled = true (kNormal, kSequential): undoes that and forgets the refusals
  // readahead counted on them.
  void SetReadahead(PageIndex first, uint64_t n, bool enabled);
  // Requests read-only copies of the pages of [first, first + n) that readahead could ask for
  // (I, not pending, not lost, homed at another live node), whatever the hints and refusals,
  // as runs; stops early when the memory budget has no room. Counted as prefetches. Returns
  // the number of pages requested.
  uint64_t Prefetch(PageIndex first, uint64_t n, absl::Time now);
  // A lock over pages [first, first + n) was granted with its pages (LockOptions::with_pages):
  // requests, one page at a time as a fault would, each page the holder will need that is not
  // here in the needed state -- kGetM for a write lock (from I, or an upgrade from S), kGetS
  // for a read lock (from I) -- homed at any live node (this one included), not lost, at most
  // kMaxLockFetchPages of them. A page already pending is left to its request (a write lock
  // marks a pending kGetS want_write, so it is upgraded once installed). The requests have no
  // waiting thread until a fault joins them; pages fetched from I reserve room in the memory
  // budget first, and the fetch stops where the budget has none. Returns the number of
  // requests sent (counted in lock_fetches).
  static constexpr uint64_t kMaxLockFetchPages = kMaxRunPages;
  uint64_t FetchForLock(PageIndex first, uint64_t n, bool write, absl::Time now);

  PageState state(PageIndex page) const;
  bool pending(PageIndex page) const;
  // The page could not be obtained (kNack or home down): accesses get SIGBUS from now on.
  bool lost(PageIndex page) const;
  uint64_t num_pages() const;

  struct Counters {
    // read/write/upgrade_faults count faults that needed a request (coalesced ones included);
    // stale_faults were already satisfied and only woken.
    uint64_t read_faults = 0, write_faults = 0, upgrade_faults = 0, coalesced_faults = 0,
             stale_faults = 0, requests_sent = 0, invalidations = 0, recalls = 0,
             writebacks = 0, lost = 0;
    // "Cannot happen" events handled defensively (logged): a correct run keeps this 0.
    uint64_t protocol_errors = 0;
    // Port calls that failed (each handled by the rules above CachePort).
    uint64_t port_failures = 0;
    // Readahead: prefetches counts pages requested speculatively (their messages are in
    // requests_sent, run_requests of them kGetSRun); prefetch_hits: prefetched pages a later
    // fault joined while in flight, or that the sequential stream passed over while they were
    // mapped (read without a fault); prefetch_refused: pages of runs the home did not grant.
    uint64_t prefetches = 0, prefetch_hits = 0, run_requests = 0, prefetch_refused = 0;
    // Pages readahead passed over because their home refused them in kRefusalsBeforeSkip
    // runs in a row (cache.cc); a later demand fault still fetches them.
    uint64_t prefetch_skipped = 0;
    // Requests sent because a lock was granted with its pages (FetchForLock).
    uint64_t lock_fetches = 0;
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
