// Registration of the benchmarks of dsm_bench, and the run configuration they share.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.h"
#include "benchmark/benchmark.h"

namespace dsm::bench {

enum class Net { kLoopback, kVeth };

struct BenchConfig {
  bool smoke = false;          // tiny sizes, for CI
  std::vector<Net> nets;       // which network paths the cluster benchmarks run over
  int64_t poll_spin_us = -1;   // Options::poll_spin for every node; -1 = library default
  std::string self_exe;        // this binary, re-run as helper processes
};

// CPU per operation from `m` (its first process is this one, node 0 or the floor's client):
// cpu_us_per_op (all processes of `m`), cpu_self_us_per_op (the first), and for a cluster
// meter (node 0, the home, the others) cpu_home_us_per_op; for a floor with a server process,
// cpu_server_us_per_op.
enum class CpuMeterKind { kSelf, kFloorWithServer, kCluster };
void ReportCpu(benchmark::State& state, const CpuMeter& m, double ops, CpuMeterKind kind);

// Local userfaultfd floors (bench_floors.cc).
void RegisterFloorBenchmarks(const BenchConfig& cfg);
// Composed floors over a connected raw-server socket (bench_common.h; `server_pid` is the
// raw server, whose CPU counts in the floor's CPU per operation), registered with the
// cluster benchmarks (they need the cluster's raw server):
// one MISSING fault served by a busy-polling handler that fetches the page with a raw 4 KiB
// request/response first (the prototype remote fault, no dsm code);
void BM_FloorRemoteFault(benchmark::State& state, int raw_fd, pid_t server_pid);
// `total_bytes` received as 256 KiB replies, four requests in flight, each installed with one
// UFFDIO_COPY of 64 pages, all on this thread (readahead's receive-and-install, no dsm code).
void BM_FloorRunInstall(benchmark::State& state, int raw_fd, pid_t server_pid,
                        size_t total_bytes);
// Raw TCP floors and every dsm figure (dsm_bench.cc).
void RegisterClusterBenchmarks(const BenchConfig& cfg);

}  // namespace dsm::bench
