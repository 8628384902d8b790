// dsm/heap.h: allocation inside a region.
//
//   dsm::HeapOptions ho;
//   ho.collective_bytes = 16 << 20;        // the first 16 MiB: collective allocations
//   absl::StatusOr<dsm::Heap> heap = dsm::Heap::Attach(region.get(), ho);   // on every node
//   // Collective: every node makes the same calls in the same order and gets the same
//   // offsets, with no message exchanged.
//   absl::StatusOr<absl::Span<double>> grid = heap->CollectiveArray<double>(1024 * 1024);
//   // Dynamic: any node, any time; blocks are visible to every node by their offset.
//   absl::StatusOr<void*> rec = heap->Allocate(256, 64, dsm::HeapPlacement::kOwnPages);
//   uint64_t off = heap->OffsetOf(*rec);   // store offsets, not pointers, in shared memory:
//   void* same = heap->At(off);            // each node maps the region at its own address
//   heap->Free(*rec);
//
// Layout. The heap manages [offset, offset + length) of one region (page-aligned): a header
// page, then collective_bytes handed out by a bump pointer kept on each node (the same
// sequence of calls gives the same offsets everywhere), then the shared part. The shared
// part's state (in the header page and in block headers) lives in region memory itself and
// is changed only under an exclusive byte-range lock on the header: Allocate and Free cost
// one lock round trip to the region's lock arbiter plus the coherence traffic for the header
// and the touched block headers. Freed blocks merge with free neighbours, reused first-fit.
//
// False sharing: nodes that write to different allocations on one 4 KiB page take the page
// from each other on every write. HeapPlacement::kOwnPages gives an allocation pages of its
// own (start and end on page boundaries) for data that different nodes write.
//
// Contents: collective allocations in a fresh anonymous region read as zeros; memory from
// Allocate may hold what an earlier, freed allocation left there.
//
// Errors: kResourceExhausted (no room: says how much is left), kInvalidArgument (size 0, bad
// alignment, Free of something that is not a live block), kFailedPrecondition (the range
// holds another heap's header, or one created with other HeapOptions), and the lock's errors
// (kDeadlineExceeded after HeapOptions::lock_timeout, kUnavailable when the arbiter is down).
//
// Thread safety: Allocate, Free, OffsetOf and At may be called from any thread of any node.
// Collective calls are made in the same order on every node: from one thread per node, or
// ordered by the application.
//
// C++17-clean: included by applications.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "dsm/region.h"

namespace dsm {

enum class HeapPlacement {
  kPacked,    // aligned as asked, next to other allocations
  kOwnPages,  // starts on a page boundary and no other allocation shares its pages
};

struct HeapOptions {
  // The range of the region the heap manages: page-aligned; length 0 = to the region's end.
  uint64_t offset = 0;
  uint64_t length = 0;
  // Bytes for collective allocations (rounded up to whole pages), after the header page. The
  // rest of the range is the shared part (it may be empty).
  uint64_t collective_bytes = 0;
  // How long Allocate and Free wait for the heap's lock.
  absl::Duration lock_timeout = absl::Seconds(30);
};

struct HeapStats {
  uint64_t collective_used = 0;   // bytes of the collective part handed out on this node
  uint64_t collective_bytes = 0;  // its size
  uint64_t shared_capacity = 0;   // bytes of the shared part available for blocks
  uint64_t allocated_bytes = 0;   // payload bytes live in the shared part (cluster-wide)
  uint64_t allocations = 0;       // live blocks in the shared part (cluster-wide)
  uint64_t free_bytes = 0;        // bytes still available there, freed blocks included
};

class Heap {
 public:
  // Every node attaches with the same options; a node whose options differ from those the
  // heap was created with gets kFailedPrecondition here. Takes the heap's lock once. The
  // region must outlive the heap. The first node to attach writes the header (a fresh range
  // reads as zeros: a new anonymous region, or a zero range of a file; a file-backed heap
  // found again in its file is reopened as it was).
  static absl::StatusOr<Heap> Attach(Region* region, const HeapOptions& options);

  Heap(Heap&&) noexcept;
  Heap& operator=(Heap&&) noexcept;
  ~Heap();

  // Collective: the next `bytes` of the collective part, aligned (power of two, <= 4096).
  absl::StatusOr<void*> AllocateCollective(size_t bytes, size_t align = alignof(std::max_align_t),
                                           HeapPlacement placement = HeapPlacement::kPacked);
  // Dynamic: a block of the shared part; cluster-safe.
  absl::StatusOr<void*> Allocate(size_t bytes, size_t align = alignof(std::max_align_t),
                                 HeapPlacement placement = HeapPlacement::kPacked);
  // Frees a block from Allocate (any node may free any block). Collective allocations are
  // never freed one by one.
  absl::Status Free(void* p);

  template <class T>
  absl::StatusOr<absl::Span<T>> CollectiveArray(size_t n,
                                                HeapPlacement placement = HeapPlacement::kPacked) {
    static_assert(std::is_trivially_copyable<T>::value, "region memory holds plain data");
    if (n == 0 || n > SIZE_MAX / sizeof(T)) return absl::InvalidArgumentError("bad count");
    absl::StatusOr<void*> p = AllocateCollective(n * sizeof(T), alignof(T), placement);
    if (!p.ok()) return p.status();
    return absl::Span<T>(static_cast<T*>(*p), n);
  }
  template <class T>
  absl::StatusOr<absl::Span<T>> AllocateArray(size_t n,
                                              HeapPlacement placement = HeapPlacement::kPacked) {
    static_assert(std::is_trivially_copyable<T>::value, "region memory holds plain data");
    if (n == 0 || n > SIZE_MAX / sizeof(T)) return absl::InvalidArgumentError("bad count");
    absl::StatusOr<void*> p = Allocate(n * sizeof(T), alignof(T), placement);
    if (!p.ok()) return p.status();
    return absl::Span<T>(static_cast<T*>(*p), n);
  }

  // Offsets from the region's start: the same on every node.
  uint64_t OffsetOf(const void* p) const;
  void* At(uint64_t offset) const;

  // The shared part's figures are read under the heap's lock.
  absl::StatusOr<HeapStats> GetStats();

 private:
  struct State;
  explicit Heap(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace dsm
