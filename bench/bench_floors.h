// Registration of the benchmarks of dsm_bench, and the run configuration they share.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace dsm::bench {

enum class Net { kLoopback, kVeth };

struct BenchConfig {
  bool smoke = false;          // tiny sizes, for CI
  std::vector<Net> nets;       // which network paths the cluster benchmarks run over
  int64_t poll_spin_us = -1;   // Options::poll_spin for every node; -1 = library default
  std::string self_exe;        // this binary, re-run as helper processes
};

// Local userfaultfd floors (bench_floors.cc).
void RegisterFloorBenchmarks(const BenchConfig& cfg);
// Raw TCP floors and every dsm figure (dsm_bench.cc).
void RegisterClusterBenchmarks(const BenchConfig& cfg);

}  // namespace dsm::bench
