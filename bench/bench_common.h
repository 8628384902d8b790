// Pieces shared by the dsm_bench driver and its helper processes: a clock, latency samples,
// the raw-TCP floor protocol, and resident-memory readings.
//
// Thread safety: Samples is used by one thread at a time; the free functions are reentrant.
#pragma once

#include <sys/types.h>
#include <time.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "app_kernels.h"

namespace dsm::bench {

inline constexpr size_t kPage = 4096;

// Monotonic nanoseconds (vDSO clock_gettime, ~20 ns).
inline uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

inline void CpuRelax() { __builtin_ia32_pause(); }

// Per-operation latencies of one benchmark run, in nanoseconds.
class Samples {
 public:
  void Reserve(size_t n) { ns_.reserve(n); }
  void Add(uint64_t ns) { ns_.push_back(ns); }
  void Append(const Samples& o) { ns_.insert(ns_.end(), o.ns_.begin(), o.ns_.end()); }
  size_t size() const { return ns_.size(); }
  // q in [0, 1]; nearest rank. 0 when empty.
  double QuantileUs(double q);
  double MeanUs() const;

 private:
  std::vector<uint64_t> ns_;
  bool sorted_ = false;
};

// The record the counter-table kernel touches at its k-th operation on the node seeded
// `seed`, out of `records` (the pick of examples/counter_table.cc).
inline uint64_t CounterRecord(uint64_t seed, uint64_t k, uint64_t records) {
  return app::CounterPick(seed, k, records);
}

// ---- raw TCP floor protocol ---------------------------------------------------------------
// The client sends one 64-byte request; the server answers per `op`. Both sides busy-poll with
// recv(MSG_DONTWAIT) while a measurement runs; the server blocks after kRawIdleSpinNs of quiet.
enum class RawOp : uint32_t {
  kRtt = 1,     // reply `len` bytes
  kStream = 2,  // send `count` messages of `len` bytes, back to back (one send() each)
  kQuit = 3,
};
struct RawRequest {
  RawOp op;
  uint32_t len;
  uint64_t count;
  uint8_t pad[48];
};
static_assert(sizeof(RawRequest) == 64);
inline constexpr uint64_t kRawIdleSpinNs = 50'000'000;  // server spins 50 ms after a request

// Runs the raw server: listens on host:port, prints "ready" on stdout, serves one connection
// until kQuit or EOF. Returns a process exit code.
int RunRawServer(const std::string& host_port);

// Connects to a raw server (TCP_NODELAY). Blocking fd.
absl::StatusOr<int> RawConnect(const std::string& host_port);
// Busy-polls recv(MSG_DONTWAIT) until exactly `len` bytes arrived (or error).
absl::Status RecvAllSpin(int fd, void* buf, size_t len);
absl::Status SendAll(int fd, const void* buf, size_t len);

// ---- CPU time ----------------------------------------------------------------------------
// CPU consumed by a set of processes (pid 0 = this one), read from each process's CPU-time
// clock (clock_getcpuclockid: nanoseconds, summed over all its threads, exited ones too; root
// or the same user may read another process's). Only the intervals between Resume() and
// Pause() count, so the untimed preparation inside a benchmark loop is left out exactly as the
// manual time leaves it out. A process that went away counts what was read before.
class CpuMeter {
 public:
  explicit CpuMeter(std::vector<pid_t> pids);
  void Resume();
  void Pause();
  size_t size() const { return clocks_.size(); }
  // CPU of process i (the i-th pid given) in the counted intervals, microseconds.
  double Us(size_t i) const { return static_cast<double>(counted_ns_[i]) / 1000.0; }
  double TotalUs() const;

 private:
  std::vector<uint64_t> Read() const;

  std::vector<clockid_t> clocks_;
  std::vector<uint64_t> at_resume_;
  std::vector<uint64_t> counted_ns_;
  bool running_ = false;
};

// ---- memory ---------------------------------------------------------------------------------
struct MemUsage {
  uint64_t resident_bytes = 0;
  uint64_t virtual_bytes = 0;
};
// From /proc/<pid>/statm (pid 0 = self).
absl::StatusOr<MemUsage> ReadMemUsage(pid_t pid = 0);

// "host:port" -> parts.
bool SplitHostPort(const std::string& hp, std::string* host, int* port);

}  // namespace dsm::bench
