// sor: red-black successive over-relaxation on a grid shared by every node.
//
// What it shows: a stencil over one dsm region. The grid lives in a heap's collective part
// (every node gets the same offsets without a message); each row is padded to whole pages so
// the nodes' row blocks share only their boundary rows. Each half-step updates one colour of
// the node's own rows from the other colour, then the nodes meet at a barrier (Node::Barrier):
// a boundary row written by a neighbour is fetched by the page fault that reads it. Red-black
// ordering makes the result independent of how rows are split, so node 0 checks the shared
// grid against a plain single-process run of the same iterations, bit for bit.
//
// Needs: userfaultfd (root, or vm.unprivileged_userfaultfd=1). Placed by a launcher:
// Usage: dsmrun -n 3 -- sor [--n 510] [--iters 40] [--omega 1.5]
//        srun -n 3 sor ...   |   mpirun -np 3 -x DSM_HOSTFILE=hosts sor ...
// Exit status: 0 when the grid matches the single-process run, 1 otherwise, 2 on bad
// arguments, 77 when userfaultfd is unavailable.
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/time/clock.h"
#include "app_kernels.h"
#include "app_util.h"
#include "dsm/heap.h"

int main(int argc, char** argv) {
  app::Flags flags(argc, argv, "sor [--n 510] [--iters 40] [--omega 1.5]");
  const uint64_t n = flags.Int("n", 510);
  const uint64_t iters = flags.Int("iters", 40);
  const double omega = flags.Real("omega", 1.5);
  flags.CheckAllUsed();
  if (n < 2 || n > 16384 || omega <= 0 || omega >= 2) flags.Die("need 2 <= n <= 16384, 0 < omega < 2");

  std::unique_ptr<dsm::Node> node = app::StartNode("sor");
  const uint64_t nodes = node->cluster_size(), me = node->id();
  const uint64_t stride = app::SorStride(n);
  const uint64_t grid_bytes = app::SorGridBytes(n);

  dsm::RegionOptions ro;
  ro.name = "sor";
  ro.size = grid_bytes + 2 * app::kKernelPage;  // the heap's header page, and room to round
  absl::StatusOr<std::unique_ptr<dsm::Region>> region = node->MapRegion(ro);
  if (!region.ok()) {
    std::fprintf(stderr, "sor: %s\n", region.status().ToString().c_str());
    return 1;
  }
  dsm::HeapOptions ho;
  ho.collective_bytes = grid_bytes;
  absl::StatusOr<dsm::Heap> heap = dsm::Heap::Attach(region->get(), ho);
  absl::StatusOr<absl::Span<double>> cells =
      heap.ok() ? heap->CollectiveArray<double>((n + 2) * stride, dsm::HeapPlacement::kOwnPages)
                : absl::StatusOr<absl::Span<double>>(heap.status());
  if (!cells.ok()) {
    std::fprintf(stderr, "sor: %s\n", cells.status().ToString().c_str());
    return 1;
  }
  const app::SorGrid g{cells->data(), n, stride};

  // Rows 1..n in blocks; node 0 also owns row 0, the last node row n+1 (the boundary).
  const auto [first, end] = app::SorRows(n, nodes, me);
  const app::RowBlock init = app::SorInitRows(n, nodes, me);
  app::SorInit(g, init.first, init.end);
  const absl::Duration timeout = absl::Seconds(120);
  app::BarrierOrExit(*node, "sor", "sor", "init", timeout);
  const absl::StatusOr<dsm::Stats> before = node->GetStats();
  const absl::Time start = absl::Now();
  for (uint64_t it = 0; it < iters; ++it) {
    for (int colour = 0; colour < 2; ++colour) {
      if (first < end) app::SorHalfStep(g, first, end, colour, omega);
      app::BarrierOrExit(*node, "sor", "sor", "sweep", timeout);
    }
  }
  const absl::Duration took = absl::Now() - start;
  const absl::StatusOr<dsm::Stats> after = node->GetStats();

  int result = 0;
  if (me == 0) {
    // The same iterations on private memory, in one process.
    std::vector<double> ref_cells((n + 2) * stride);
    const app::SorGrid ref{ref_cells.data(), n, stride};
    app::SorInit(ref, 0, n + 2);
    app::SorSweeps(ref, iters, omega);
    double sum = 0;
    uint64_t wrong = 0;
    for (uint64_t i = 0; i < n + 2; ++i) {
      for (uint64_t j = 0; j < n + 2; ++j) {
        sum += g.at(i, j);
        if (std::memcmp(&g.at(i, j), &ref.at(i, j), sizeof(double)) != 0) ++wrong;
      }
    }
    std::printf("sor: n=%lu iters=%lu nodes=%lu sum=%.12g %s (%lu points differ) in %.3f s\n",
                static_cast<unsigned long>(n), static_cast<unsigned long>(iters),
                static_cast<unsigned long>(nodes), sum,
                wrong == 0 ? "matches the single-process run" : "DIFFERS from the single-process run",
                static_cast<unsigned long>(wrong), absl::ToDoubleSeconds(took));
    result = wrong == 0 ? 0 : 1;
  }
  if (before.ok() && after.ok()) {
    const dsm::Stats d = *after - *before;
    std::printf("sor node %lu: %lu read faults, %lu write faults during the sweeps; readahead: "
                "%lu pages requested, %lu refused, %lu skipped, %lu used\n",
                static_cast<unsigned long>(me), static_cast<unsigned long>(d.read_faults),
                static_cast<unsigned long>(d.write_faults),
                static_cast<unsigned long>(d.prefetches),
                static_cast<unsigned long>(d.prefetch_refused),
                static_cast<unsigned long>(d.prefetch_skipped),
                static_cast<unsigned long>(d.prefetch_hits));
  } else {
    std::printf("sor node %lu: no fault counts: %s\n", static_cast<unsigned long>(me),
                (before.ok() ? after.status() : before.status()).ToString().c_str());
  }
  heap = absl::FailedPreconditionError("released");  // before its region goes
  return app::FinishAndReport(*node, "sor", result, timeout);
}
