// Slurm's compressed lists, expanded: host lists ("node[01-03,07],gpu5") and task counts per
// node ("2(x3),1"). Pure functions; errors name the offending text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dsm::launch {

// "a[1-3,5]b,c" -> a1b a2b a3b a5b c. Ranges keep their zero padding ("n[08-10]" -> n08 n09
// n10). Several bracket groups in one name multiply out ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1
// r2n2). At most kMaxExpanded names.
absl::StatusOr<std::vector<std::string>> ExpandHostList(absl::string_view list);

// "2(x3),1" -> 2 2 2 1.
absl::StatusOr<std::vector<uint32_t>> ExpandTasksPerNode(absl::string_view list);

inline constexpr size_t kMaxExpanded = 1 << 16;

}  // namespace dsm::launch
