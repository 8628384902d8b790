#include "common/payload_pool.h"

#include <utility>

namespace dsm {
namespace {

// Bounded: at most kPayloadPoolMax buffers of at most kMaxKept bytes each per thread.
constexpr size_t kMaxKept = 1024 * 1024;

std::vector<std::vector<uint8_t>>& Pool() {
  thread_local std::vector<std::vector<uint8_t>> pool;
  return pool;
}

// A pooled buffer with capacity >= bytes (its old size and bytes kept), or an empty one.
std::vector<uint8_t> TakePooled(size_t bytes) {
  if (bytes >= kPayloadPoolMinCapacity) {
    auto& pool = Pool();
    for (size_t i = pool.size(); i-- > 0;) {
      if (pool[i].capacity() < bytes) continue;
      std::vector<uint8_t> buf = std::move(pool[i]);
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(i));
      return buf;
    }
  }
  return {};
}

}  // namespace

std::vector<uint8_t> TakePayloadBuffer(size_t bytes) {
  std::vector<uint8_t> buf = TakePooled(bytes);
  buf.clear();
  buf.reserve(bytes);
  return buf;
}

std::vector<uint8_t> TakePayloadBufferForOverwrite(size_t bytes) {
  std::vector<uint8_t> buf = TakePooled(bytes);
  // Shrinking, or growing within the bytes a recycled buffer already had, writes nothing; only
  // a fresh buffer (or the part beyond a recycled one's old size) is zero-filled.
  buf.resize(bytes);
  return buf;
}

void RecyclePayloadBuffer(std::vector<uint8_t>&& buf) {
  std::vector<uint8_t> mine = std::move(buf);
  buf.clear();  // a moved-from vector is valid but unspecified: make it empty
  const size_t cap = mine.capacity();
  if (cap < kPayloadPoolMinCapacity || cap > kMaxKept) return;
  auto& pool = Pool();
  if (pool.size() >= kPayloadPoolMax) return;
  // Kept at its size: TakePayloadBufferForOverwrite can then hand it out without zero-filling.
  pool.push_back(std::move(mine));
}

size_t PayloadPoolSizeForTesting() { return Pool().size(); }

}  // namespace dsm
