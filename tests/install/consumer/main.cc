// A downstream program: two nodes of one cluster in this process (loopback transport), built
// against an installed libdsm through its public headers only, as C++17 with -Wpedantic
// -Werror. Node 0 (the home) fills a region, node 1 checks every byte, writes its own
// pattern, and node 0 checks that. Exits 0 and prints "dsm consumer ok" when every byte
// matched; 1 with the first mismatch otherwise; 77 when userfaultfd is unavailable.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "dsm/node.h"
#include "dsm/options.h"
#include "dsm/region.h"
#include "dsm/stats.h"

namespace {

constexpr size_t kRegionBytes = 64 * 4096;

uint8_t Pattern(size_t i, unsigned round) {
  return static_cast<uint8_t>((i * 131 + (i >> 12) * 7 + round * 29) & 0xff);
}

void Fill(const dsm::Region& r, unsigned round) {
  uint8_t* p = static_cast<uint8_t*>(r.data());
  for (size_t i = 0; i < r.size(); ++i) p[i] = Pattern(i, round);
}

// True when every byte of `r` (read through its own node) is round's pattern.
bool Check(const dsm::Region& r, unsigned round, const char* who) {
  const uint8_t* p = static_cast<const uint8_t*>(r.data());
  for (size_t i = 0; i < r.size(); ++i) {
    if (p[i] != Pattern(i, round)) {
      std::printf("%s: byte %zu is %u, expected %u (round %u)\n", who, i, p[i],
                  Pattern(i, round), round);
      return false;
    }
  }
  return true;
}

}  // namespace

int main() {
  std::vector<std::string> peers = {"local:0", "local:1"};
  absl::StatusOr<std::unique_ptr<dsm::Node>> nodes[2] = {absl::UnknownError("not created"),
                                                         absl::UnknownError("not created")};
  {
    std::vector<std::thread> threads;  // each Create waits for the other node
    for (dsm::NodeId id = 0; id < 2; ++id) {
      threads.emplace_back([&nodes, &peers, id] {
        dsm::Options options;
        options.node_id = id;
        options.peers = peers;
        options.transport = dsm::TransportKind::kLoopback;
        options.loopback_hub = "dsm-consumer";
        options.wait_for_cluster = true;
        nodes[id] = dsm::Node::Create(options);
      });
    }
    for (std::thread& t : threads) t.join();
  }
  for (const auto& n : nodes) {
    if (n.ok()) continue;
    if (n.status().code() == absl::StatusCode::kPermissionDenied) {
      std::printf("dsm consumer skipped: %s\n", n.status().ToString().c_str());
      return 77;
    }
    std::printf("Node::Create: %s\n", n.status().ToString().c_str());
    return 1;
  }

  absl::StatusOr<std::unique_ptr<dsm::Region>> regions[2] = {absl::UnknownError("not mapped"),
                                                             absl::UnknownError("not mapped")};
  {
    std::vector<std::thread> threads;  // the non-home node waits for the home's mapping
    for (size_t id = 0; id < 2; ++id) {
      threads.emplace_back([&nodes, &regions, id] {
        dsm::RegionOptions ro;
        ro.name = "consumer";
        ro.size = kRegionBytes;
        ro.home = 0;
        regions[id] = (*nodes[id])->MapRegion(ro);
      });
    }
    for (std::thread& t : threads) t.join();
  }
  for (const auto& r : regions) {
    if (!r.ok()) {
      std::printf("MapRegion: %s\n", r.status().ToString().c_str());
      return 1;
    }
  }
  const dsm::Region& home = **regions[0];
  const dsm::Region& other = **regions[1];
  if (home.size() != kRegionBytes || other.size() != kRegionBytes) {
    std::printf("region sizes %zu and %zu, expected %zu\n", home.size(), other.size(),
                kRegionBytes);
    return 1;
  }

  Fill(home, 1);
  bool ok = Check(other, 1, "node 1 reading node 0's writes");
  if (ok) {
    Fill(other, 2);
    ok = Check(home, 2, "node 0 reading node 1's writes");
  }

  // Statistics through the installed library: node 1's share of the region, every node's.
  if (ok) {
    absl::StatusOr<dsm::Stats> mine = (*regions[1])->GetStats();
    absl::StatusOr<dsm::ClusterStats> all =
        (*nodes[0])->GatherStats(absl::Now() + absl::Seconds(20));
    if (!mine.ok() || !all.ok()) {
      std::printf("GetStats / GatherStats: %s / %s\n", mine.status().ToString().c_str(),
                  all.status().ToString().c_str());
      ok = false;
    } else if (mine->read_faults == 0 || !all->missing.empty() ||
               all->nodes[1].read_faults < mine->read_faults ||
               all->total.read_faults < mine->read_faults) {
      std::printf("statistics disagree: region read_faults %llu, node 1 %llu, total %llu, "
                  "%zu nodes missing\n",
                  static_cast<unsigned long long>(mine->read_faults),
                  static_cast<unsigned long long>(all->nodes[1].read_faults),
                  static_cast<unsigned long long>(all->total.read_faults), all->missing.size());
      ok = false;
    }
  }

  // The non-home node leaves first, so the home is there to take its write-backs.
  for (size_t id : {size_t{1}, size_t{0}}) {
    absl::Status s = (*regions[id])->Unmap();
    if (!s.ok()) {
      std::printf("Unmap at node %zu: %s\n", id, s.ToString().c_str());
      ok = false;
    }
  }
  for (size_t id : {size_t{1}, size_t{0}}) {
    absl::Status s = (*nodes[id])->Shutdown();
    if (!s.ok()) {
      std::printf("Shutdown of node %zu: %s\n", id, s.ToString().c_str());
      ok = false;
    }
  }

  dsm::Stats stats;
  stats.read_faults = 3;
  if (stats.ToString().find("read_faults") == std::string::npos) {
    std::printf("Stats::ToString() lacks read_faults:\n%s", stats.ToString().c_str());
    ok = false;
  }
  if (!ok) return 1;
  std::printf("dsm consumer ok: %zu bytes matched in both directions\n", kRegionBytes);
  return 0;
}
