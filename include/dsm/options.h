// dsm/options.h: how a Node and a Region are configured. Plain structs with defaults.
//
//   dsm::Options o;
//   o.node_id = 1;
//   o.peers = {"10.0.0.1:7000", "10.0.0.2:7000"};  // index = node id; this node listens on
//                                                   // peers[node_id] unless `listen` is set
//   o.peer_timeout = absl::Seconds(3);
//   auto node = dsm::Node::Create(o);
//
// Durations are absl::Duration and deadlines absl::Time throughout the API.
//
// Thread safety: plain values. Create() and MapRegion() copy what they need; the caller keeps
// ownership of its Options and may change or destroy them afterwards. on_pages_lost is copied
// into the node and called on its engine thread.
//
// C++17-clean: included by applications.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "dsm/abi.h"

DSM_NAMESPACE_BEGIN

using NodeId = uint32_t;
inline constexpr NodeId kMaxNodes = 64;  // sharer sets are 64-bit masks

// How much the library logs. Messages go to stderr, one line each, unless Options::log_sink
// takes them.
enum class LogLevel {
  kInfo,     // also peers coming up and other routine events
  kWarning,  // peers going down, refused messages, degraded operation (the default)
  kError,    // failures only
};

enum class TransportKind {
  kTcp,       // io_uring over TCP sockets (the default)
  kLoopback,  // in-process: every node in this process shares one hub; moves real bytes
  kRdma,      // libibverbs reliable-connected QPs (needs an RDMA device)
};

struct Options {
  // This node's id: an index into `peers`.
  NodeId node_id = 0;
  // Every node of the cluster as "host:port", indexed by node id (this node included).
  // Up to kMaxNodes entries.
  std::vector<std::string> peers;
  // Address to listen on; empty means peers[node_id]. "0.0.0.0:port" listens everywhere.
  std::string listen;
  TransportKind transport = TransportKind::kTcp;
  // For kLoopback: nodes with the same hub name in one process talk to each other.
  std::string loopback_hub = "default";

  // For kRdma (see docs/RDMA.md). Queue pairs are set up over a TCP socket on `peers` /
  // `listen`; messages and pages then move over the RDMA device.
  // Device name as ibv_devices lists it (e.g. "mlx5_0"); empty = the first device.
  std::string rdma_device;
  // Port number on that device (1-based, as ibv_devinfo prints it).
  uint8_t rdma_port = 1;
  // GID table index; -1 = automatic: InfiniBand uses the LID (no GRH), RoCE prefers a RoCE v2
  // GID holding an IPv4 address. Set it when `show_gids` says otherwise.
  int rdma_gid_index = -1;

  // Admission (kTcp and kRdma; see "Security model" in docs/ARCHITECTURE.md). Before any
  // other byte, the two nodes of each connection prove to each other that they hold the
  // cluster key (HMAC-SHA256 challenge-response bound to both node ids, fresh nonces and
  // the peer list). The key is taken from the first of: cluster_key, the file named by
  // cluster_key_file, the environment variable DSM_CLUSTER_KEY, the file named by the
  // environment variable DSM_CLUSTER_KEY_FILE. It is at least 16 bytes (a file's trailing
  // newline is dropped; `openssl rand -hex 32` makes a good one) and must be the same on
  // every node. Without a key, a cluster whose peers are all loopback addresses runs
  // unauthenticated; any other cluster refuses to start unless insecure_no_cluster_key is
  // set, which logs a WARNING at start: then anyone who can reach a node's port can read
  // and change the cluster's memory. The key is never logged.
  std::string cluster_key;
  std::string cluster_key_file;
  bool insecure_no_cluster_key = false;

  // How long a peer may stay silent on an outstanding request before it is declared down.
  // Faults waiting on a down peer end: the access raises SIGBUS and the page is reported lost.
  absl::Duration peer_timeout = absl::Seconds(10);
  // How long the locks of a node declared down stay held before its waiters are granted in
  // order (on top of the time it takes to declare it down: at once when its connection breaks,
  // after peer_timeout when it just goes silent). Grants over bytes it held exclusively then
  // report previous_holder_died().
  absl::Duration lock_release_grace = absl::Seconds(1);
  // How long Create()/MapRegion() wait for peers to connect or for the home to map a region.
  absl::Duration connect_timeout = absl::Seconds(30);
  // Create() returns only once every peer is connected (admitted and Hello exchanged), or
  // fails when connect_timeout passes first: kDeadlineExceeded naming each node still missing
  // and its address (and which of them were declared down). Off: Create() returns once this
  // node listens, and peers come up later. Launchers' programs should set it (dsm/launch.h
  // reads DSM_WAIT_FOR_CLUSTER; dsmrun sets it).
  bool wait_for_cluster = false;
  // Cap of the engine thread's adaptive busy-poll; 0 = never spin (always sleep at once).
  // Waking a sleeping thread on another vCPU costs ~20 us on small VMs, more than a remote
  // fault's floor, so the engine polls instead of sleeping, but only while it is likely to
  // pay: after it sent a request, and after an input when inputs have been arriving at most
  // poll_spin apart; it spins until the answer comes (at most this long) or for a few times
  // the recent gap between inputs (at most this long), and stops for a while (1-128 ms) after
  // spins keep ending with nothing. It never spins
  // when this process runs more engines than vCPUs - 1 (several nodes in one process would
  // take each other's vCPU), and an idle node sleeps at most poll_spin after its last message
  // or fault. See "Threads" in docs/ARCHITECTURE.md and lib/transport/spin_policy.h.
  absl::Duration poll_spin = absl::Microseconds(200);

  // Memory budget for cached remote pages (0 = unlimited): the most memory this node holds in
  // pages of its mapped regions whose home is another node (a page counts while it is mapped
  // here, read-only or writable, and from the moment a fault requests it). Pages homed at this
  // node and the home's own storage are not counted. Over the budget, the node releases the
  // least recently used pages it can: clean ones are dropped (the home is told), dirty ones
  // are written back to their home first; pages with a request in flight are kept. Rounded
  // down to whole 4 KiB pages. See "Eviction and the memory budget" in docs/ARCHITECTURE.md.
  size_t cache_budget_bytes = 0;
  // mlock the memory the fault and eviction path needs (the engine thread's stack window and
  // the eviction tables) so it keeps working under memory pressure. Best effort: what
  // RLIMIT_MEMLOCK (`ulimit -l`) allows; Stats::memory_locked says whether all of it was.
  bool lock_memory = true;
  // Sequential readahead: when a node's read misses on a region walk consecutive pages, it
  // requests up to this many pages ahead (window 4, doubling while the stream continues), in
  // runs of up to 64 pages per message installed with one call, so later loads find them
  // mapped. Only pages homed at another node, and only while the memory budget has room;
  // pages another node is writing are simply not granted. 0 disables it. Keep it at least
  // 128 so two full runs can be in flight (one per 64 pages the application reads).
  size_t readahead_max_pages = 256;

  // Logging. The library's log is one per process: Create() applies these to it, for every
  // node in the process (the last Create() that sets one wins). log_level unset keeps the
  // current level (at start: the environment variable DSM_LOG_LEVEL = INFO, WARNING or
  // ERROR; default WARNING). log_sink, when set, receives every line at or above the level
  // instead of stderr (the line is formatted as on stderr, without the newline); it is called
  // from any of the library's threads, concurrently, and must be thread-safe and must not
  // block or touch region memory. It stays installed until the node that installed it is
  // destroyed (or another Create() installs its own).
  std::optional<LogLevel> log_level;
  std::function<void(LogLevel level, const std::string& line)> log_sink;

  // Called on the engine thread when pages become unreachable (their home or their only
  // up-to-date copy was on a node that went down). Must not block or touch region memory.
  std::function<void(const std::string& region, uint64_t first_page, uint64_t num_pages)>
      on_pages_lost;
};

enum class HomePolicy {
  kFixed,        // every page's home is RegionOptions::home
  kInterleaved,  // page i lives at node (i % cluster size); anonymous regions only
};

struct RegionOptions {
  // Cluster-wide name: every node maps the region under the same name and size.
  std::string name;
  // Size in bytes; rounded up to whole 4 KiB pages.
  size_t size = 0;
  NodeId home = 0;
  HomePolicy home_policy = HomePolicy::kFixed;
  // At the home node only: a file that backs the region. Empty = anonymous (zero-filled).
  // Pages are read from the file on first use; Sync() writes dirty pages back.
  // The file is extended to `size` if shorter.
  std::string file_path;
};

DSM_NAMESPACE_END
