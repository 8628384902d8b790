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

}  // namespace

std::vector<uint8_t> TakePayloadBuffer(size_t bytes) {
  std::vector<uint8_t> buf;
  if (bytes >= kPayloadPoolMinCapacity) {
    auto& pool = Pool();
    for (size_t i = pool.size(); i-- > 0;) {
      if (pool[i].capacity() < bytes) continue;
      buf = std::move(pool[i]);
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(i));
      return buf;
    }
  }
  buf.reserve(bytes);
  return buf;
}

void RecyclePayloadBuffer(std::vector<uint8_t>&& buf) {
  std::vector<uint8_t> mine = std::move(buf);
  buf.clear();  // a moved-from vector is valid but unspecified: make it empty
  const size_t cap = mine.capacity();
  if (cap < kPayloadPoolMinCapacity || cap > kMaxKept) return;
  auto& pool = Pool();
  if (pool.size() >= kPayloadPoolMax) return;
  mine.clear();
  pool.push_back(std::move(mine));
}

size_t PayloadPoolSizeForTesting() { return Pool().size(); }

}  // namespace dsm
