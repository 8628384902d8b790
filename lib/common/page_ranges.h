// Page ranges: pages that share a fate (lost together) gathered into contiguous ranges, so a
// node that loses a thousand pages at once reports a handful of ranges, not a thousand lines.
//
//   std::vector<PageRange> lost;
//   for (PageIndex p : pages) AddPage(&lost, p);       // ascending order coalesces best
//   LogLostRanges("region 'x'", lost, "its only copy was on node 2");
//
// Thread safety: plain functions of their arguments.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"

namespace dsm {

struct PageRange {
  uint64_t first = 0;
  uint64_t count = 0;
  uint64_t end() const { return first + count; }
};

// Adds `page` to `ranges`: extends the last range when `page` follows it, does nothing when
// the last range already holds it, and opens a new range otherwise.
void AddPage(std::vector<PageRange>* ranges, uint64_t page);

// At most this many lines per LogLostRanges call: one per range, the rest summed up in one.
inline constexpr size_t kMaxLostRangeLines = 8;

// One WARNING line per range: "<what>: pages [first, end) lost (<count> pages): <why>", then,
// past kMaxLostRangeLines ranges, one line summing up the rest.
void LogLostRanges(absl::string_view what, const std::vector<PageRange>& ranges,
                   absl::string_view why);
// The same with a reason per range (the summary line takes the first summed-up range's).
void LogLostRanges(absl::string_view what, const std::vector<PageRange>& ranges,
                   absl::FunctionRef<std::string(const PageRange&)> why);

}  // namespace dsm
