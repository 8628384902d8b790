// dsm/stats.h: counters as data. Node::GetStats() returns a snapshot; ToString() dumps it.
// C++17-clean.
//
//   dsm::Stats total;
//   for (const dsm::Stats& s : per_node) total += s;
//   std::puts(total.ToString().c_str());
//
// Every field is listed once more, in ForEachField, with its kind; ToString, += and -= are
// written over that list, so a field added to the struct and the list is printed, summed and
// subtracted everywhere. Plain data: copy it freely; no thread-safety concerns of its own.
#pragma once

#include <cstdint>
#include <string>

#include "dsm/abi.h"

DSM_NAMESPACE_BEGIN

struct Stats {
  // Fault path (this node's application threads).
  uint64_t read_faults = 0;      // MISSING faults on reads
  uint64_t write_faults = 0;     // MISSING faults on writes + write-protect faults
  uint64_t upgrade_faults = 0;   // write-protect faults on Shared pages
  uint64_t coalesced_faults = 0; // faults that joined a request already in flight
  uint64_t pages_installed = 0;  // pages mapped by UFFDIO_COPY
  uint64_t pages_lost = 0;       // pages poisoned because their data became unreachable
  uint64_t prefetches = 0;       // pages requested by readahead (Options::readahead_max_pages)
  uint64_t prefetch_hits = 0;    // prefetched pages then used (fault joined it, or no fault)
  uint64_t prefetch_runs = 0;    // multi-page readahead requests (of those pages)
  uint64_t prefetch_refused = 0; // readahead pages the home did not grant (busy or written)
  uint64_t prefetch_skipped = 0; // pages readahead left to demand faults (refused twice in a row)
  uint64_t lock_page_fetches = 0; // page requests sent at a lock's grant (LockOptions::with_pages)
  // Coherence traffic (as requester and as home).
  uint64_t requests_sent = 0;
  uint64_t invalidations_received = 0;
  uint64_t recalls_received = 0;
  uint64_t writebacks_sent = 0;
  uint64_t home_requests_served = 0;
  // Of those, requests this node answered by taking its own copy in place (it had written
  // the page): copies write-protected for a reader, copies given up for a writer.
  uint64_t home_local_downgrades = 0;
  uint64_t home_local_invalidations = 0;
  // Transport.
  uint64_t messages_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t bad_messages = 0;     // failed validation; the connection was closed
  uint64_t authority_violations = 0;  // a peer sent what it may not (a forged Inv, a grant
                                     // nobody asked it for, ...); the connection was closed
  uint64_t peers_down = 0;
  // Resident pages of all mapped regions, by state.
  uint64_t pages_shared = 0;
  uint64_t pages_modified = 0;
  // Memory budget and eviction (Options::cache_budget_bytes).
  uint64_t budget_pages = 0;           // the budget in pages (0 = unlimited)
  uint64_t resident_remote_pages = 0;  // pages counted against it now (remote-homed, S or M)
  uint64_t evictions = 0;              // pages released to stay within the budget
  uint64_t eviction_writebacks = 0;    // of which were Modified and written back first
  uint64_t eviction_batches = 0;       // times the budget was enforced (runs of releases)
  uint64_t sample_faults = 0;          // write faults that only re-marked a page as in use
  uint64_t eviction_time_us = 0;       // engine time spent choosing and releasing victims
  uint64_t buffer_pool_misses = 0;     // write-back buffers allocated on the fault path
  // Byte-range locks this node asked for (include/dsm/lock.h): requests, grants, how many had
  // to wait (queued at the arbiter), failures (deadline, try-lock busy, arbiter down, ...) and
  // held locks lost with their arbiter.
  uint64_t lock_requests = 0;
  uint64_t locks_granted = 0;
  uint64_t locks_queued = 0;
  uint64_t locks_failed = 0;
  uint64_t locks_lost = 0;
  // Of locks_granted, those handed over by the previous holder's node directly (one message,
  // the arbiter told afterwards; see docs/ARCHITECTURE.md, Locks).
  uint64_t lock_handoffs = 0;
  // Options::lock_memory: whether every lock asked for succeeded, and the bytes locked.
  bool memory_locked = false;
  uint64_t memory_locked_bytes = 0;

  // One line per field, in declaration order: "name value".
  std::string ToString() const;

  // Counters only grow; gauges are a current value (summed across nodes or regions, kept from
  // the later snapshot by -=); flags are true if any part says so (|=; kept by -=).
  enum class Kind { kCounter, kGauge, kFlag };
  // Calls fn(name, kind, member pointer) for every field, in declaration order. The member
  // pointer is `uint64_t Stats::*`, or `bool Stats::*` for flags, so fn is generic.
  template <typename Fn>
  static constexpr void ForEachField(Fn&& fn) {
    fn("read_faults", Kind::kCounter, &Stats::read_faults);
    fn("write_faults", Kind::kCounter, &Stats::write_faults);
    fn("upgrade_faults", Kind::kCounter, &Stats::upgrade_faults);
    fn("coalesced_faults", Kind::kCounter, &Stats::coalesced_faults);
    fn("pages_installed", Kind::kCounter, &Stats::pages_installed);
    fn("pages_lost", Kind::kCounter, &Stats::pages_lost);
    fn("prefetches", Kind::kCounter, &Stats::prefetches);
    fn("prefetch_hits", Kind::kCounter, &Stats::prefetch_hits);
    fn("prefetch_runs", Kind::kCounter, &Stats::prefetch_runs);
    fn("prefetch_refused", Kind::kCounter, &Stats::prefetch_refused);
    fn("prefetch_skipped", Kind::kCounter, &Stats::prefetch_skipped);
    fn("lock_page_fetches", Kind::kCounter, &Stats::lock_page_fetches);
    fn("requests_sent", Kind::kCounter, &Stats::requests_sent);
    fn("invalidations_received", Kind::kCounter, &Stats::invalidations_received);
    fn("recalls_received", Kind::kCounter, &Stats::recalls_received);
    fn("writebacks_sent", Kind::kCounter, &Stats::writebacks_sent);
    fn("home_requests_served", Kind::kCounter, &Stats::home_requests_served);
    fn("home_local_downgrades", Kind::kCounter, &Stats::home_local_downgrades);
    fn("home_local_invalidations", Kind::kCounter, &Stats::home_local_invalidations);
    fn("messages_sent", Kind::kCounter, &Stats::messages_sent);
    fn("messages_received", Kind::kCounter, &Stats::messages_received);
    fn("bytes_sent", Kind::kCounter, &Stats::bytes_sent);
    fn("bytes_received", Kind::kCounter, &Stats::bytes_received);
    fn("bad_messages", Kind::kCounter, &Stats::bad_messages);
    fn("authority_violations", Kind::kCounter, &Stats::authority_violations);
    fn("peers_down", Kind::kCounter, &Stats::peers_down);
    fn("pages_shared", Kind::kGauge, &Stats::pages_shared);
    fn("pages_modified", Kind::kGauge, &Stats::pages_modified);
    fn("budget_pages", Kind::kGauge, &Stats::budget_pages);
    fn("resident_remote_pages", Kind::kGauge, &Stats::resident_remote_pages);
    fn("evictions", Kind::kCounter, &Stats::evictions);
    fn("eviction_writebacks", Kind::kCounter, &Stats::eviction_writebacks);
    fn("eviction_batches", Kind::kCounter, &Stats::eviction_batches);
    fn("sample_faults", Kind::kCounter, &Stats::sample_faults);
    fn("eviction_time_us", Kind::kCounter, &Stats::eviction_time_us);
    fn("buffer_pool_misses", Kind::kCounter, &Stats::buffer_pool_misses);
    fn("lock_requests", Kind::kCounter, &Stats::lock_requests);
    fn("locks_granted", Kind::kCounter, &Stats::locks_granted);
    fn("locks_queued", Kind::kCounter, &Stats::locks_queued);
    fn("locks_failed", Kind::kCounter, &Stats::locks_failed);
    fn("locks_lost", Kind::kCounter, &Stats::locks_lost);
    fn("memory_locked", Kind::kFlag, &Stats::memory_locked);
    fn("memory_locked_bytes", Kind::kGauge, &Stats::memory_locked_bytes);
    fn("lock_handoffs", Kind::kCounter, &Stats::lock_handoffs);
  }

  // Field by field: counters and gauges add, flags or.
  Stats& operator+=(const Stats& other);
  // The change since `earlier`: counters subtract (a counter that went down gives 0), gauges
  // and flags keep this snapshot's value.
  Stats& operator-=(const Stats& earlier);
};

inline Stats operator+(Stats a, const Stats& b) { return a += b; }
inline Stats operator-(Stats later, const Stats& earlier) { return later -= earlier; }

DSM_NAMESPACE_END
