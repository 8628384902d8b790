// Helper processes of dsm_bench: `dsm_bench --helper ...` runs one dsm node driven over
// stdin/stdout (commands in bench_helper.cc); `dsm_bench --raw-server host:port` runs the raw
// TCP floor server (bench_common.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsm::bench {

struct HelperArgs {
  uint32_t id = 0;
  std::vector<std::string> peers;
  int64_t poll_spin_us = -1;  // -1: the library default
};

// Returns the process exit code (77 when userfaultfd is unavailable).
int RunHelper(const HelperArgs& args);

}  // namespace dsm::bench
