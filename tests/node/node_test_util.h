// Helpers shared by the multi-node tests and node_worker: data patterns, free TCP ports,
// catching SIGBUS on an access, and bounded polling of region memory.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dsm::testing {

inline constexpr size_t kPage = 4096;

// A deterministic byte for (seed, offset); different seeds give different pages.
inline uint8_t PatternByte(uint64_t seed, uint64_t offset) {
  uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (offset * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  return static_cast<uint8_t>(x ^ (x >> 17) ^ 0x5a);
}

// Writes / checks PatternByte(seed, base_offset + i) over [p, p + len). Check returns a
// description of the first mismatch, or nullopt.
void FillPattern(void* p, size_t len, uint64_t seed, uint64_t base_offset);
std::optional<std::string> CheckPattern(const void* p, size_t len, uint64_t seed,
                                        uint64_t base_offset);

// `n` distinct ports free on 127.0.0.1 right now (bound together, then released).
std::vector<int> PickFreePorts(int n);

// Runs `fn` on this thread; returns true when it raised SIGBUS (caught and unwound with
// siglongjmp; `fn` must not hold locks or own resources across the faulting access). A SIGBUS on
// a thread not inside RaisesSigbus() keeps its default action.
bool RaisesSigbus(const std::function<void()>& fn);

// Loads `*word` with acquire ordering until `pred(value)` or `timeout`; returns the last value
// seen and whether pred held. Yields between loads.
struct PollResult {
  bool ok;
  uint64_t last;
};
PollResult PollWord(const uint64_t* word, const std::function<bool(uint64_t)>& pred,
                    std::chrono::milliseconds timeout);

}  // namespace dsm::testing
