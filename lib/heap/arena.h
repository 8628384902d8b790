// Arena: the block allocator behind dsm::Heap's dynamic part, on plain memory. It keeps all of
// its state inside the memory it manages (a header and block headers), so any node that holds
// the heap's lock can continue where another node left off. No locking, no I/O: the caller
// serializes calls (dsm::Heap holds a cluster-wide lock around each one).
//
// Layout (offsets from the region's start, so every node agrees on them):
//   header:         the arena's header (magic, geometry, bump top, free-list head, counters)
//                   in a page of its own, so it never shares a page with allocated data
//   [blocks, end):  blocks, each a block header followed by its payload; the bump top marks
//                   where never-used memory starts. dsm::Heap keeps its collective part
//                   between the header page and `blocks`.
// Invariants (checked by Validate):
//   - every block lies in [blocks, top); a block's header says used or free
//   - the free list is in address order, its blocks are free, and no two are adjacent (freeing
//     merges neighbours); no free block ends at `top` (it is given back to the bump area)
//   - a used block's payload starts at its header's end, aligned as asked
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsm::heap {

inline constexpr uint64_t kArenaPage = 4096;

struct ArenaStats {
  uint64_t capacity = 0;         // bytes for blocks: [blocks, end)
  uint64_t allocated_bytes = 0;  // payload bytes handed out and not freed
  uint64_t allocations = 0;      // blocks in use
  uint64_t free_list_bytes = 0;  // bytes in free blocks below the top
  uint64_t top_bytes = 0;        // never-used bytes above the top
};

class Arena {
 public:
  // `base` is where offset 0 (the region's start) lives in this process. The header page is
  // at `header`; blocks are carved from [blocks, end). All page-aligned, blocks > header.
  Arena(uint8_t* base, uint64_t header, uint64_t blocks, uint64_t end)
      : base_(base), begin_(header), blocks_(blocks), end_(end) {}
  // Blocks right after the header page.
  Arena(uint8_t* base, uint64_t header, uint64_t end)
      : Arena(base, header, header + kArenaPage, end) {}

  // Sets the header up if the memory holds none (all zero: a fresh region), checks it
  // otherwise: a header written for another geometry is FailedPrecondition.
  absl::Status Open();

  // Returns the payload offset of a new block of `bytes` (> 0) aligned to `align` (a power of
  // two, at most kArenaPage). ResourceExhausted when no free block and not the top fit.
  absl::StatusOr<uint64_t> Allocate(uint64_t bytes, uint64_t align);
  // Frees the block whose payload starts at `offset`. InvalidArgument for an offset that is
  // not a live block's payload (outside the arena, freed already, corrupted header).
  absl::Status Free(uint64_t offset);

  ArenaStats Stats() const;
  // Walks the blocks and the free list and checks the invariants above (for tests).
  absl::Status Validate() const;

 private:
  struct Header;
  struct Block;
  Header* header() const;
  Block* block(uint64_t offset) const;
  void InsertFree(uint64_t at, uint64_t size);

  uint8_t* base_;
  uint64_t begin_;   // the header page
  uint64_t blocks_;  // the first block
  uint64_t end_;
};

}  // namespace dsm::heap
