// counter_table: every node increments random records of two shared tables of counters, one
// under cluster-wide byte-range locks and one with atomic instructions.
//
// What it shows: the two ways to update shared records. Table L is updated with plain loads
// and stores inside Region::Lock on the record's 64 bytes (the lock arbiter serializes
// conflicting holders; what a holder wrote is what the next one reads). Table A is updated
// with __atomic_fetch_add, which is atomic cluster-wide because only one node can hold a page
// writable. Each node also allocates a report block from the region's shared heap (any node
// may allocate; the block is found by its offset, published in a collective slot) listing how
// often it touched each record. Node 0 checks that both tables hold exactly the sum of all
// reports, and that each report is what the node's deterministic sequence implies.
// --pad 1 gives every record pages of its own (no false sharing); the default packs 64
// records per page, so nodes fight over pages as well as records. Each lock is granted with
// the page of its record (LockOptions::with_pages: the node asks for the page as the grant
// arrives, before the thread wakes); --with-pages 0 leaves the page to the first access's
// fault, for comparison.
//
// Needs: userfaultfd (root, or vm.unprivileged_userfaultfd=1). Placed by a launcher:
// Usage: dsmrun -n 3 -- counter_table [--records 256] [--ops 2000] [--pad 0] [--with-pages 1]
// Exit status: 0 when every count is exact, 1 otherwise, 2 on bad arguments, 77 without
// userfaultfd.
#include <cstdio>
#include <vector>

#include "absl/time/clock.h"
#include "app_kernels.h"
#include "app_util.h"
#include "dsm/heap.h"

int main(int argc, char** argv) {
  app::Flags flags(argc, argv,
                   "counter_table [--records 256] [--ops 2000] [--pad 0] [--with-pages 1]");
  const uint64_t records = flags.Int("records", 256);
  const uint64_t ops = flags.Int("ops", 2000);
  const bool pad = flags.Int("pad", 0) != 0;
  dsm::LockOptions lock_options;
  lock_options.with_pages = flags.Int("with-pages", 1) != 0;
  flags.CheckAllUsed();
  if (records < 1 || records > (1u << 20) || ops > (1u << 30)) flags.Die("bad --records/--ops");

  std::unique_ptr<dsm::Node> node = app::StartNode("counter_table");
  const uint64_t nodes = node->cluster_size(), me = node->id();
  const uint64_t record_bytes = pad ? 4096 : sizeof(app::CounterRecord);
  const uint64_t table_bytes = (records * record_bytes + 4095) / 4096 * 4096;
  const uint64_t report_bytes = records * sizeof(uint32_t);

  dsm::RegionOptions ro;
  ro.name = "counters";
  // Header page, two tables and the slots (collective), then the shared heap for the reports.
  const uint64_t collective = 2 * table_bytes + 4096;
  ro.size = 4096 + collective + nodes * ((report_bytes + 4095) / 4096 + 1) * 4096 + 8192;
  absl::StatusOr<std::unique_ptr<dsm::Region>> region = node->MapRegion(ro);
  if (!region.ok()) {
    std::fprintf(stderr, "counter_table: %s\n", region.status().ToString().c_str());
    return 1;
  }
  dsm::HeapOptions ho;
  ho.collective_bytes = collective;
  absl::StatusOr<dsm::Heap> heap = dsm::Heap::Attach(region->get(), ho);
  if (!heap.ok()) {
    std::fprintf(stderr, "counter_table: %s\n", heap.status().ToString().c_str());
    return 1;
  }
  const dsm::HeapPlacement where = dsm::HeapPlacement::kOwnPages;
  absl::StatusOr<void*> locked = heap->AllocateCollective(records * record_bytes, 64, where);
  absl::StatusOr<void*> atomic = heap->AllocateCollective(records * record_bytes, 64, where);
  absl::StatusOr<absl::Span<uint64_t>> slots = heap->CollectiveArray<uint64_t>(nodes);
  if (!locked.ok() || !atomic.ok() || !slots.ok()) {
    std::fprintf(stderr, "counter_table: allocating the tables failed\n");
    return 1;
  }
  const app::CounterTables tables{static_cast<uint8_t*>(*locked), static_cast<uint8_t*>(*atomic),
                                  record_bytes, records};

  // This node's report, from the shared heap; its offset goes into this node's slot.
  absl::StatusOr<absl::Span<uint32_t>> report = heap->AllocateArray<uint32_t>(records);
  if (!report.ok()) {
    std::fprintf(stderr, "counter_table: %s\n", report.status().ToString().c_str());
    return 1;
  }
  for (uint32_t& c : *report) c = 0;
  (*slots)[me] = heap->OffsetOf(report->data());

  const absl::Duration timeout = absl::Seconds(120);
  app::BarrierOrExit(*node, "counter_table", "counters", "ready", timeout);
  const absl::Time start = absl::Now();
  absl::Status ops_done = app::CounterOps(
      tables, report->data(), me, ops, [&](void* rec, const auto& update) -> absl::Status {
        lock_options.deadline = absl::Now() + timeout;
        absl::StatusOr<dsm::LockGuard> g = (*region)->Lock(
            heap->OffsetOf(rec), sizeof(uint64_t), dsm::LockMode::kExclusive, lock_options);
        if (!g.ok()) return g.status();
        update();  // a plain read-modify-write, under the lock
        return g->Unlock();
      });
  if (!ops_done.ok()) {
    std::fprintf(stderr, "counter_table node %lu: lock: %s\n", static_cast<unsigned long>(me),
                 ops_done.ToString().c_str());
    return 1;
  }
  const absl::Duration took = absl::Now() - start;
  app::BarrierOrExit(*node, "counter_table", "counters", "done", timeout);

  int result = 0;
  if (me == 0) {
    std::vector<uint64_t> expect(records, 0);
    uint64_t bad_reports = 0, bad_locked = 0, bad_atomic = 0;
    for (uint64_t n = 0; n < nodes; ++n) {
      const uint32_t* rep = static_cast<const uint32_t*>(heap->At((*slots)[n]));
      std::vector<uint32_t> mine(records, 0);
      for (uint64_t k = 0; k < ops; ++k) ++mine[app::CounterPick(n, k, records)];
      for (uint64_t r = 0; r < records; ++r) {
        if (rep[r] != mine[r]) ++bad_reports;
        expect[r] += rep[r];
      }
      if (absl::Status s = heap->Free(heap->At((*slots)[n])); !s.ok()) {  // any node frees
        std::fprintf(stderr, "counter_table: free: %s\n", s.ToString().c_str());
        result = 1;
      }
    }
    for (uint64_t r = 0; r < records; ++r) {
      if (tables.Locked(r)->value != expect[r]) ++bad_locked;
      if (tables.Atomic(r)->value != expect[r]) ++bad_atomic;
    }
    const bool exact = bad_reports == 0 && bad_locked == 0 && bad_atomic == 0;
    std::printf("counter_table: %lu nodes x %lu ops on %lu %s records: %s (wrong: %lu reports, "
                "%lu locked, %lu atomic); node 0 took %.3f s\n",
                static_cast<unsigned long>(nodes), static_cast<unsigned long>(ops),
                static_cast<unsigned long>(records), pad ? "page-padded" : "packed",
                exact ? "every count exact" : "COUNTS WRONG",
                static_cast<unsigned long>(bad_reports), static_cast<unsigned long>(bad_locked),
                static_cast<unsigned long>(bad_atomic), absl::ToDoubleSeconds(took));
    if (!exact) result = 1;
  }
  heap = absl::FailedPreconditionError("released");
  return app::FinishAndReport(*node, "counter_table", result, timeout);
}
