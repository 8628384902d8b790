// dsm/stats.h: counters as data. Node::GetStats() returns a snapshot; ToString() dumps it.
// C++17-clean.
#pragma once

#include <cstdint>
#include <string>

namespace dsm {

struct Stats {
  // Fault path (this node's application threads).
  uint64_t read_faults = 0;      // MISSING faults on reads
  uint64_t write_faults = 0;     // MISSING faults on writes + write-protect faults
  uint64_t upgrade_faults = 0;   // write-protect faults on Shared pages
  uint64_t coalesced_faults = 0; // faults that joined a request already in flight
  uint64_t pages_installed = 0;  // pages mapped by UFFDIO_COPY
  uint64_t pages_lost = 0;       // pages poisoned because their data became unreachable
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

  std::string ToString() const;
};

}  // namespace dsm
