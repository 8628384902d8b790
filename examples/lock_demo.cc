// lock_demo: N hosts append records to one shared log under a cluster-wide byte-range lock.
//
// What it shows: every node maps the same dsm region (an anonymous log homed at node 0) and
// appends --records records to it. An append reads the log's header (the record count),
// writes the record at that slot and bumps the count: a read-modify-write that would lose
// records if two hosts did it at once. The header bytes [0, 64) are protected by an exclusive
// dsm lock (Region::Lock), arbitrated by the region's home; the stores themselves are plain.
// The nodes then meet at a cluster barrier (Node::Barrier), and each verifies the whole log
// under a shared lock: exactly N x records records, every node's sequence numbers 0..records-1
// in order, and a checksum kept in the header. What a holder wrote before its unlock is what
// the next holder reads after its lock, on every host.
//
// Needs: Linux with userfaultfd write-protect support (5.7+, 6.x recommended), run as root (or
// vm.unprivileged_userfaultfd=1), and TCP between the hosts. scripts/lock_demo.sh runs three
// nodes in three network namespaces joined by a bridge.
//
// Usage: lock_demo --id 0 --peers 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000
//                  [--records 200] [--timeout-ms 60000]
//        (start one per host, same --peers, --id = its index in --peers)
// Exit status: 0 when the log verified on this node, 1 otherwise, 77 when userfaultfd is
// unavailable.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "dsm/node.h"

namespace {

// The log region: a header, then fixed-size records. The lock on [0, sizeof(Header)) guards the
// header and the slot an append claims (slots are only written by the node that claimed them
// while it held the lock, and only read under a shared lock on the header).
struct Header {
  uint64_t count;     // records appended so far
  uint64_t checksum;  // sum of every record's value
  uint64_t pad[6];
};
struct Record {
  uint32_t node;
  uint32_t seq;    // 0, 1, ... per node
  uint64_t value;  // a function of (node, seq), so a reader can check it
};
static_assert(sizeof(Header) == 64);

uint64_t ValueOf(uint32_t node, uint32_t seq) {
  return (uint64_t{node} << 32 | seq) * 0x9E3779B97F4A7C15ull;
}

void Say(uint32_t id, const std::string& what) {
  std::printf("[node %u%s] %s\n", id, id == 0 ? " (home)" : "", what.c_str());
  std::fflush(stdout);
}

int Fail(uint32_t id, const std::string& why) {
  Say(id, "FAILED: " + why);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  uint32_t id = 0;
  uint64_t records = 200, timeout_ms = 60000;
  if (!absl::SimpleAtoi(args["--id"], &id) || args["--peers"].empty() ||
      (args.count("--records") && !absl::SimpleAtoi(args["--records"], &records)) ||
      (args.count("--timeout-ms") && !absl::SimpleAtoi(args["--timeout-ms"], &timeout_ms))) {
    std::fprintf(stderr,
                 "usage: lock_demo --id N --peers host:port,host:port,... [--records 200] "
                 "[--timeout-ms 60000]\n");
    return 1;
  }
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);

  dsm::Options o;
  o.node_id = id;
  o.peers = absl::StrSplit(args["--peers"], ',', absl::SkipEmpty());
  o.connect_timeout = absl::Milliseconds(timeout_ms);
  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(o);
  if (!node.ok()) {
    Say(id, "cannot start: " + node.status().ToString());
    return node.status().code() == absl::StatusCode::kPermissionDenied ? 77 : 1;
  }
  const uint64_t nodes = (*node)->cluster_size();
  const size_t size = sizeof(Header) + nodes * records * sizeof(Record);
  absl::StatusOr<std::unique_ptr<dsm::Region>> region =
      (*node)->MapRegion({.name = "lock-demo-log", .size = size, .home = 0});
  if (!region.ok()) return Fail(id, "MapRegion: " + region.status().ToString());
  dsm::Region* log = region->get();
  auto* header = static_cast<Header*>(log->data());
  auto* slots = reinterpret_cast<Record*>(static_cast<uint8_t*>(log->data()) + sizeof(Header));
  Say(id, absl::StrCat("mapped the log (", size, " bytes) in a cluster of ", nodes));

  // 1. Everyone is there before anyone appends (so the appends interleave).
  if (absl::Status s = (*node)->Barrier("start", {}, deadline); !s.ok()) {
    return Fail(id, "barrier start: " + s.ToString());
  }

  // 2. Appends: lock the header exclusively, claim a slot, fill it, bump count and checksum.
  for (uint32_t seq = 0; seq < records; ++seq) {
    absl::StatusOr<dsm::LockGuard> g =
        log->Lock(0, sizeof(Header), dsm::LockMode::kExclusive, deadline);
    if (!g.ok()) return Fail(id, "lock for append: " + g.status().ToString());
    if (g->previous_holder_died()) {
      Say(id, "the previous holder of the header died mid-append; its record may be torn");
    }
    const uint64_t slot = header->count;
    if (slot >= nodes * records) return Fail(id, "log full: the count is corrupt");
    slots[slot] = Record{id, seq, ValueOf(id, seq)};
    header->checksum += ValueOf(id, seq);
    header->count = slot + 1;
    // g's destructor unlocks: the next holder, on any host, sees these stores.
  }
  Say(id, absl::StrCat("appended ", records, " records"));

  // 3. Everyone has appended.
  if (absl::Status s = (*node)->Barrier("appended", {}, deadline); !s.ok()) {
    return Fail(id, "barrier appended: " + s.ToString());
  }

  // 4. Verify under a shared lock (readers on every host hold it at once).
  std::string problem;
  {
    absl::StatusOr<dsm::LockGuard> g =
        log->Lock(0, sizeof(Header), dsm::LockMode::kShared, deadline);
    if (!g.ok()) return Fail(id, "lock for verify: " + g.status().ToString());
    std::vector<uint32_t> next_seq(nodes, 0);
    uint64_t sum = 0;
    if (header->count != nodes * records) {
      problem = absl::StrCat("count is ", header->count, ", want ", nodes * records);
    }
    for (uint64_t i = 0; i < header->count && problem.empty(); ++i) {
      const Record r = slots[i];
      if (r.node >= nodes || r.seq != next_seq[r.node] || r.value != ValueOf(r.node, r.seq)) {
        problem = absl::StrCat("slot ", i, " holds node ", r.node, " seq ", r.seq,
                               " (a lost or torn append)");
        break;
      }
      ++next_seq[r.node];
      sum += r.value;
    }
    if (problem.empty() && sum != header->checksum) problem = "checksum mismatch";
  }
  if (problem.empty()) {
    Say(id, absl::StrCat("verified: ", nodes * records, " records, every node's appends in order, "
                         "checksum matches"));
  }

  // 5. Leave: non-homes unmap first, then everyone meets once more so the home unmaps last.
  if (id != 0) (void)(*region)->Unmap();
  if (absl::Status s = (*node)->Barrier("done", {}, deadline); !s.ok()) {
    Say(id, "barrier done: " + s.ToString());
  }
  (void)(*region)->Unmap();
  (void)(*node)->Shutdown();
  return problem.empty() ? 0 : Fail(id, problem);
}
