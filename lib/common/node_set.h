// Node sets as 64-bit masks: bit n stands for node n. kMaxNodes (dsm/options.h) is 64 because
// every sharer set, down set and member set in the protocol is one such word.
#pragma once

#include <cstdint>

#include "dsm/options.h"

namespace dsm {

static_assert(kMaxNodes == 64, "node sets are one 64-bit word");

// The mask holding only `n`; 0 for an id outside the cluster's range (never a valid member).
inline constexpr uint64_t NodeBit(NodeId n) { return n < kMaxNodes ? uint64_t{1} << n : 0; }

// Whether `n` is in `mask`; false for an id outside the range.
inline constexpr bool InNodeSet(uint64_t mask, NodeId n) { return (mask & NodeBit(n)) != 0; }

// The mask of nodes 0..count-1.
inline constexpr uint64_t FirstNodes(uint64_t count) {
  return count >= kMaxNodes ? ~uint64_t{0} : (uint64_t{1} << count) - 1;
}

}  // namespace dsm
