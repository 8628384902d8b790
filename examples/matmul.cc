// matmul: C = A x B for square matrices of doubles, rows of C split across the nodes.
//
// What it shows: read sharing. A and B are filled once (each node fills its block of rows),
// then every node reads all of B and its own rows of A: the pages of B end up Shared on every
// node, fetched once each. Each node writes only its rows of C, laid out so that no two nodes
// write one page (every matrix starts on a page boundary and the row blocks are whole pages
// when n is a multiple of 512, otherwise only a boundary page is shared). Node 0 then checks
// C against a plain single-process product, bit for bit (same summation order), and every
// node finishes with Node::Finalize. With --interleave 1 the pages' homes are spread over the
// nodes (page p at node p mod N): node 0 then reads rows of C homed at nodes that are already
// finishing, which Finalize keeps serving until node 0 is done.
//
// Needs: userfaultfd (root, or vm.unprivileged_userfaultfd=1). Placed by a launcher:
// Usage: dsmrun -n 3 -- matmul [--n 256] [--interleave 0|1]
// Exit status: 0 when C matches, 1 otherwise, 2 on bad arguments, 77 without userfaultfd.
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/time/clock.h"
#include "app_kernels.h"
#include "app_util.h"
#include "dsm/heap.h"

int main(int argc, char** argv) {
  app::Flags flags(argc, argv, "matmul [--n 256] [--interleave 0|1]");
  const uint64_t n = flags.Int("n", 256);
  const bool interleave = flags.Int("interleave", 0) != 0;
  flags.CheckAllUsed();
  if (n < 1 || n > 8192) flags.Die("need 1 <= n <= 8192");

  std::unique_ptr<dsm::Node> node = app::StartNode("matmul");
  const uint64_t nodes = node->cluster_size(), me = node->id();
  const uint64_t matrix_bytes = app::MatmulMatrixBytes(n);

  dsm::RegionOptions ro;
  ro.name = "matmul";
  ro.size = 3 * matrix_bytes + 4096;  // three matrices and the heap's header page
  ro.home_policy = interleave ? dsm::HomePolicy::kInterleaved : dsm::HomePolicy::kFixed;
  absl::StatusOr<std::unique_ptr<dsm::Region>> region = node->MapRegion(ro);
  if (!region.ok()) {
    std::fprintf(stderr, "matmul: %s\n", region.status().ToString().c_str());
    return 1;
  }
  dsm::HeapOptions ho;
  ho.collective_bytes = 3 * matrix_bytes;
  absl::StatusOr<dsm::Heap> heap = dsm::Heap::Attach(region->get(), ho);
  if (!heap.ok()) {
    std::fprintf(stderr, "matmul: %s\n", heap.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<absl::Span<double>> a = heap->CollectiveArray<double>(n * n, dsm::HeapPlacement::kOwnPages);
  absl::StatusOr<absl::Span<double>> b = heap->CollectiveArray<double>(n * n, dsm::HeapPlacement::kOwnPages);
  absl::StatusOr<absl::Span<double>> c = heap->CollectiveArray<double>(n * n, dsm::HeapPlacement::kOwnPages);
  if (!a.ok() || !b.ok() || !c.ok()) {
    std::fprintf(stderr, "matmul: allocating the matrices failed\n");
    return 1;
  }

  const auto [first, end] = app::MatmulRows(n, nodes, me);
  app::MatmulFill(a->data(), b->data(), n, first, end);
  const absl::Duration timeout = absl::Seconds(120);
  app::BarrierOrExit(*node, "matmul", "matmul", "filled", timeout);
  const absl::StatusOr<dsm::Stats> before = node->GetStats();
  const absl::Time start = absl::Now();
  app::MatmulMultiply(a->data(), b->data(), c->data(), n, first, end);
  app::BarrierOrExit(*node, "matmul", "matmul", "multiplied", timeout);
  const absl::Duration took = absl::Now() - start;
  const absl::StatusOr<dsm::Stats> after = node->GetStats();

  int result = 0;
  if (me == 0) {
    std::vector<double> ra(n * n), rb(n * n), rc(n * n);
    app::MatmulFill(ra.data(), rb.data(), n, 0, n);
    app::MatmulMultiply(ra.data(), rb.data(), rc.data(), n, 0, n);
    const bool same = std::memcmp(rc.data(), c->data(), n * n * sizeof(double)) == 0;
    double trace = 0;
    for (uint64_t i = 0; i < n; ++i) trace += (*c)[i * n + i];
    std::printf("matmul: n=%lu nodes=%lu trace=%.6f %s in %.3f s\n",
                static_cast<unsigned long>(n), static_cast<unsigned long>(nodes), trace,
                same ? "matches the single-process product" : "DIFFERS from the single-process product",
                absl::ToDoubleSeconds(took));
    result = same ? 0 : 1;
  }
  if (before.ok() && after.ok()) {
    std::printf("matmul node %lu: %lu read faults, %lu write faults while multiplying\n",
                static_cast<unsigned long>(me),
                static_cast<unsigned long>(after->read_faults - before->read_faults),
                static_cast<unsigned long>(after->write_faults - before->write_faults));
  } else {
    std::printf("matmul node %lu: no fault counts: %s\n", static_cast<unsigned long>(me),
                (before.ok() ? after.status() : before.status()).ToString().c_str());
  }
  heap = absl::FailedPreconditionError("released");
  return app::FinishAndReport(*node, "matmul", result, timeout);
}
