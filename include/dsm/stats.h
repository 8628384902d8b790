// dsm/stats.h: counters as data. Node::GetStats() returns a snapshot; ToString() dumps it.
// C++17-clean.
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
  uint64_t prefetch_runs = 0;    // multi-page readahead requests (of those pages)
  uint64_t prefetch_refused = 0; // readahead pages the home did not grant (busy or written)
  uint64_t prefetch_hits = 0;    // prefetched pages then used (fault joined it, or no fault)
  // Coherence traffic (as requester and as home).
  uint64_t requests_sent = 0;
  uint64_t invalidations_received = 0;
  uint64_t recalls_received = 0;
  uint64_t writebacks_sent = 0;
  uint64_t home_requests_served = 0;
  // Transport.
  uint64_t messages_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t bad_messages = 0;     // failed validation; the connection was closed
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
  // Options::lock_memory: whether every lock asked for succeeded, and the bytes locked.
  bool memory_locked = false;
  uint64_t memory_locked_bytes = 0;

  std::string ToString() const;
};

DSM_NAMESPACE_END
