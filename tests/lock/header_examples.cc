// The usage examples of include/dsm/*.h and README.md, written out so they compile: the
// dsm_header_examples target (tests/lock/CMakeLists.txt) builds this file as C++17 with
// -Wpedantic -Werror, as applications do; it is never run. When an example in a header or the
// README changes, change it here too.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>

#include "dsm/heap.h"
#include "dsm/launch.h"
#include "dsm/lock.h"
#include "dsm/node.h"
#include "dsm/options.h"
#include "dsm/region.h"
#include "dsm/stats.h"
#include "dsm/version.h"

namespace {

// dsm/options.h
void OptionsExample() {
  dsm::Options o;
  o.node_id = 1;
  o.peers = {"10.0.0.1:7000", "10.0.0.2:7000"};
  o.peer_timeout = absl::Seconds(3);
  auto node = dsm::Node::Create(o);
  (void)node;
}

// dsm/node.h
int NodeExample() {
  dsm::Options opts;
  opts.node_id = 1;
  opts.peers = {"10.0.0.1:7000", "10.0.0.2:7000"};
  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(opts);
  if (!node.ok()) return 1;
  dsm::RegionOptions ro;
  ro.name = "data";
  ro.size = 64 << 20;
  ro.home = 0;
  absl::StatusOr<std::unique_ptr<dsm::Region>> region = (*node)->MapRegion(ro);
  absl::StatusOr<dsm::Stats> stats = (*node)->GetStats();
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::Status s = (*node)->Barrier("phase-1", {}, deadline);
  return region.ok() && stats.ok() && s.ok() ? 0 : 1;
}

// dsm/region.h
int RegionExample(dsm::Node* node) {
  dsm::RegionOptions ro;
  ro.name = "grid";
  ro.size = 1 << 20;
  ro.home = 0;
  absl::StatusOr<std::unique_ptr<dsm::Region>> region = node->MapRegion(ro);
  if (!region.ok()) return 1;
  int* p = static_cast<int*>((*region)->data());
  p[0] = 42;
  absl::Status s = (*region)->Sync();
  absl::StatusOr<dsm::LockGuard> g = (*region)->Lock(0, 64, dsm::LockMode::kExclusive);
  if (g.ok()) { p[0]++; }
  return s.ok() ? 0 : 1;
}

// dsm/lock.h
int LockExample(dsm::Node* node, dsm::Region* region, uint64_t* counter) {
  absl::StatusOr<dsm::LockGuard> g =
      region->Lock(/*offset=*/0, /*length=*/64, dsm::LockMode::kExclusive,
                   absl::Now() + absl::Seconds(5));
  if (!g.ok()) return 1;
  if (g->previous_holder_died()) { counter[0] = 0; }
  counter[0]++;
  g->Unlock().IgnoreError();

  uint64_t id = region->LockAsync(
      4096, 4096, dsm::LockMode::kShared, absl::InfiniteFuture(),
      [](absl::StatusOr<dsm::LockHandle> h) { (void)h; });
  absl::Status c = region->Cancel(id);

  absl::Status s = node->Barrier("phase-1", {}, absl::Now() + absl::Seconds(30));
  return s.ok() && c.ok() ? 0 : 1;
}

// dsm/heap.h
int HeapExample(const std::unique_ptr<dsm::Region>& region) {
  dsm::HeapOptions ho;
  ho.collective_bytes = 16 << 20;
  absl::StatusOr<dsm::Heap> heap = dsm::Heap::Attach(region.get(), ho);
  if (!heap.ok()) return 1;
  absl::StatusOr<absl::Span<double>> grid = heap->CollectiveArray<double>(1024 * 1024);
  absl::StatusOr<void*> rec = heap->Allocate(256, 64, dsm::HeapPlacement::kOwnPages);
  if (!grid.ok() || !rec.ok()) return 1;
  uint64_t off = heap->OffsetOf(*rec);
  void* same = heap->At(off);
  absl::Status freed = heap->Free(*rec);
  return same == *rec && freed.ok() ? 0 : 1;
}

// dsm/launch.h
int LaunchExample() {
  absl::StatusOr<dsm::Options> o = dsm::OptionsFromEnvironment();
  if (!o.ok()) { std::cerr << o.status() << "\n"; return 1; }
  auto node = dsm::Node::Create(*o);
  return node.ok() ? 0 : 1;
}

// dsm/version.h
void VersionExample() {
#if DSM_VERSION_MAJOR == 0 && DSM_VERSION_MINOR < 2
  std::printf("built against dsm %s\n", DSM_VERSION);
#endif
}

// README.md, "A short example".
int ReadmeExample() {
  dsm::Options opts;
  opts.node_id = 1;
  opts.peers = {"10.0.0.1:7000", "10.0.0.2:7000"};
  auto node = dsm::Node::Create(opts);
  if (!node.ok()) { fprintf(stderr, "%s\n", node.status().ToString().c_str()); return 1; }

  dsm::RegionOptions ro;
  ro.name = "table";
  ro.size = 64 << 20;
  ro.home = 0;
  auto region = (*node)->MapRegion(ro);
  auto* counters = static_cast<std::atomic<long>*>((*region)->data());
  counters[0].fetch_add(1);
  absl::Status s = (*region)->Sync();  // this node's writes are now durable in the home's file
  return s.ok() ? 0 : 1;
}

}  // namespace

// Referenced so -Wunused-function holds; [[maybe_unused]] because a const at namespace scope
// has internal linkage, which clang reports as unused.
[[maybe_unused]] int (*const kExamples[])() = {NodeExample, ReadmeExample, LaunchExample};
[[maybe_unused]] int (*const kHeapExample)(const std::unique_ptr<dsm::Region>&) = HeapExample;
[[maybe_unused]] void (*const kOtherExamples[])() = {OptionsExample, VersionExample};
[[maybe_unused]] int (*const kRegionExample)(dsm::Node*) = RegionExample;
[[maybe_unused]] int (*const kLockExample)(dsm::Node*, dsm::Region*, uint64_t*) = LockExample;
