// Bounds on what unauthenticated clients may cost a node: connection slots per source
// address, and log lines about refused or failed connections.
//
// Threading: not thread-safe; one instance per transport, used on its loop thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "dsm/options.h"

namespace dsm::admission {

// How many connections that have not finished admission one source address may hold: the
// number of configured nodes at that address that dial this node (on one host, all of them),
// plus kSlack for redials racing a closing connection and for multi-homed peers whose source
// address is not the configured one. `peers_ipv4[i]` = node i's address (host byte order).
inline constexpr size_t kPerSourceSlack = 2;
size_t PerSourceSlots(const std::vector<uint32_t>& peers_ipv4, NodeId self, uint32_t source);

// Total connections without admission: as many as could legitimately dial plus slack.
inline size_t TotalSlots(size_t cluster_size) { return 2 * cluster_size + 8; }

// One log line per source per interval: Note() counts an event and says whether to log now,
// and how many events of that source the line stands for (this one included).
//
// Invariants: at most kMaxSources sources are remembered; when full, entries idle for a whole
// interval are dropped, and if none is, further new sources share one entry (source 0), so
// memory stays bounded whatever the number of addresses an attacker uses.
class RateLimitedLog {
 public:
  static constexpr size_t kMaxSources = 1024;
  explicit RateLimitedLog(absl::Duration interval) : interval_(interval) {}
  // True: log now, standing for `*count` events since the last line for this source.
  bool Note(uint32_t source, absl::Time now, uint64_t* count);
  size_t sources() const { return entries_.size(); }

 private:
  struct Entry {
    absl::Time last_line = absl::InfinitePast();
    uint64_t unlogged = 0;
  };
  const absl::Duration interval_;
  absl::flat_hash_map<uint32_t, Entry> entries_;
};

// "a.b.c.d" for an address in host byte order.
std::string Ipv4String(uint32_t ipv4);

}  // namespace dsm::admission
