// Shared vocabulary of the coherence layer. Pure logic: nothing in lib/coherence/ performs I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <utility>

#include "protocol/message.h"

namespace dsm::coherence {

// Per page and node. I: not mapped (access raises a MISSING fault). S: mapped write-protected.
// M: mapped writable, the only valid copy in the cluster.
enum class PageState : uint8_t { kInvalid = 0, kShared = 1, kModified = 2 };

const char* PageStateName(PageState s);

// Which node is home (directory + authoritative copy) of a page.
using HomeFn = std::function<NodeId(PageIndex)>;

namespace internal {
// Zero-filled memory from mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE): pages of it that are
// never written cost no resident memory and no swap reservation. nullptr for 0 bytes. Aborts
// if the address space is exhausted (there is no way to run without the table).
void* MapLazy(size_t bytes);
void UnmapLazy(void* p, size_t bytes);
}  // namespace internal

// A fixed-size, zero-initialized per-page table that costs memory only where it is written, so
// a 64 GiB region that is never touched costs (almost) nothing. T's all-zero bytes must be its
// initial value. Reading an untouched part maps the shared zero page (no resident cost either).
template <typename T>
class LazyArray {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  LazyArray() = default;
  explicit LazyArray(size_t n) : n_(n), p_(static_cast<T*>(internal::MapLazy(n * sizeof(T)))) {}
  ~LazyArray() { internal::UnmapLazy(p_, n_ * sizeof(T)); }
  LazyArray(LazyArray&& o) noexcept
      : n_(std::exchange(o.n_, 0)), p_(std::exchange(o.p_, nullptr)) {}
  LazyArray& operator=(LazyArray&& o) noexcept {
    std::swap(n_, o.n_);
    std::swap(p_, o.p_);
    return *this;
  }
  LazyArray(const LazyArray&) = delete;
  LazyArray& operator=(const LazyArray&) = delete;

  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  size_t size() const { return n_; }

 private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace dsm::coherence
