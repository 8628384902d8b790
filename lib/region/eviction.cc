#include "region/eviction.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/time/clock.h"
#include "common/log.h"
#include "region/mapped_region.h"

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif

namespace dsm {
namespace {

constexpr uint64_t kMaxBatch = 64;
// The engine thread's stack window locked around the tick's frame: the fault path runs a few
// frames deeper (its uffd event array is 64 * 16 bytes).
constexpr size_t kStackBelow = 256 * 1024;
constexpr size_t kStackAbove = 16 * 1024;

uint64_t BudgetPages(size_t bytes) { return bytes / kPageSize; }

}  // namespace

Evictor::Evictor(const Options& options)
    : lock_memory_(options.lock_memory),
      replacer_(coherence::Replacer::Config{options.node_id,
                                            BudgetPages(options.cache_budget_bytes),
                                            /*sample_writes=*/true, kMaxBatch},
                this),
      pool_target_(2 * kMaxBatch) {
  if (options.cache_budget_bytes != 0 && options.cache_budget_bytes < kPageSize) {
    DSM_LOG(WARNING) << "cache_budget_bytes " << options.cache_budget_bytes
                     << " is less than one page; using one page";
  }
  pool_.reserve(pool_target_);
  Maintain();  // fills the pool (no region yet: nothing to enforce)
}

Evictor::~Evictor() = default;

int Evictor::AddRegion(MappedRegion* region, NodeId /*self*/) {
  const int space = replacer_.AddSpace(&region->cache(),
                                       [region](PageIndex p) { return region->HomeOf(p); });
  if (regions_.size() <= static_cast<size_t>(space)) regions_.resize(space + 1, nullptr);
  regions_[static_cast<size_t>(space)] = region;
  // AddRegion runs on the engine thread: the first call also locks its stack window.
  if (lock_memory_) LockMemory(space);
  return space;
}

void Evictor::RemoveRegion(int space) {
  replacer_.RemoveSpace(space);
  if (static_cast<size_t>(space) < locked_by_space_.size()) {
    locked_bytes_ -= locked_by_space_[static_cast<size_t>(space)];
    locked_by_space_[static_cast<size_t>(space)] = 0;
  }
  if (static_cast<size_t>(space) < regions_.size()) regions_[static_cast<size_t>(space)] = nullptr;
}

MappedRegion* Evictor::Region(int space) const {
  if (space < 0 || static_cast<size_t>(space) >= regions_.size()) return nullptr;
  return regions_[static_cast<size_t>(space)];
}

void Evictor::OnFault(MappedRegion* region, PageIndex page, bool write, absl::Time now) {
  replacer_.OnFault(region->space(), page, write, now);
}

void Evictor::Enforce() {
  if (replacer_.budget_pages() == 0 ||
      replacer_.resident() + replacer_.reserved() <= replacer_.budget_pages()) {
    return;
  }
  const absl::Time t0 = absl::Now();
  replacer_.Enforce();
  evict_time_ += absl::Now() - t0;
}

void Evictor::Maintain() {
  while (pool_.size() < pool_target_) pool_.emplace_back(kPageSize);
  Enforce();
}

void Evictor::TakePageBuffer(std::vector<uint8_t>* out) {
  if (!pool_.empty()) {
    out->swap(pool_.back());
    pool_.pop_back();
  } else {
    ++pool_misses_;
  }
  out->resize(kPageSize);
}

uint64_t Evictor::LockRange(const void* addr, size_t bytes, bool on_fault) {
  if (addr == nullptr || bytes == 0) return 0;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(addr) + bytes + page - 1) & ~(page - 1);
  const int rc = on_fault ? mlock2(reinterpret_cast<void*>(a), e - a, MLOCK_ONFAULT)
                          : mlock(reinterpret_cast<void*>(a), e - a);
  if (rc == 0) return e - a;
  if (!lock_failed_) {
    DSM_LOG(WARNING) << "mlock of " << (e - a) << " bytes failed: " << std::strerror(errno)
                     << " (raise `ulimit -l` / RLIMIT_MEMLOCK or grant CAP_IPC_LOCK); the "
                        "fault path may page under memory pressure";
  }
  lock_failed_ = true;
  return 0;
}

void Evictor::LockMemory(int space) {
  if (!stack_locked_) {
    stack_locked_ = true;
    // The window of this (the engine) thread's stack around here, clamped to the stack.
    char here = 0;
    uintptr_t lo = reinterpret_cast<uintptr_t>(&here) - kStackBelow;
    uintptr_t hi = reinterpret_cast<uintptr_t>(&here) + kStackAbove;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      void* base = nullptr;
      size_t size = 0;
      if (pthread_attr_getstack(&attr, &base, &size) == 0) {
        const uintptr_t b = reinterpret_cast<uintptr_t>(base);
        lo = std::max(lo, b + static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)));  // above guard
        hi = std::min(hi, b + size);
      }
      pthread_attr_destroy(&attr);
    }
    if (hi > lo) locked_bytes_ += LockRange(reinterpret_cast<const void*>(lo), hi - lo, false);
    // The replacer's scratch arrays (fixed capacity, never reallocated).
    replacer_.ForEachScratch(
        [&](const void* p, size_t n) { locked_bytes_ += LockRange(p, n, false); });
  }
  // The space's bitmaps: locked as they are touched (MLOCK_ONFAULT), so a huge region costs
  // nothing up front. munmap unlocks them when the region goes.
  uint64_t bytes = 0;
  replacer_.ForEachTable(space, [&](const void* p, size_t n) { bytes += LockRange(p, n, true); });
  if (locked_by_space_.size() <= static_cast<size_t>(space)) locked_by_space_.resize(space + 1, 0);
  locked_by_space_[static_cast<size_t>(space)] = bytes;
  locked_bytes_ += bytes;
}

void Evictor::AddStats(Stats* out) const {
  const coherence::Replacer::Counters& c = replacer_.counters();
  out->budget_pages = replacer_.budget_pages();
  out->resident_remote_pages = replacer_.resident();
  out->evictions = c.evictions;
  out->eviction_writebacks = c.eviction_writebacks;
  out->eviction_batches = c.eviction_batches;
  out->sample_faults = c.sample_faults;
  out->eviction_time_us = static_cast<uint64_t>(absl::ToInt64Microseconds(evict_time_));
  out->buffer_pool_misses = pool_misses_;
  out->memory_locked = lock_memory_ && stack_locked_ && !lock_failed_;
  out->memory_locked_bytes = locked_bytes_;
}

absl::Status Evictor::Protect(int space, PageIndex first, uint64_t n) {
  MappedRegion* r = Region(space);
  return r != nullptr ? r->ProtectRun(first, n) : absl::OkStatus();
}

absl::Status Evictor::Unprotect(int space, PageIndex page) {
  MappedRegion* r = Region(space);
  return r != nullptr ? r->UnprotectPage(page) : absl::OkStatus();
}

void Evictor::BeginBatch(int space) {
  if (MappedRegion* r = Region(space)) r->BeginBatch();
}

void Evictor::EndBatch(int space) {
  if (MappedRegion* r = Region(space)) r->EndBatch();
}

}  // namespace dsm
