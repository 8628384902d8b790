// Evictor: the node's memory budget (Options::cache_budget_bytes) and the memory the fault and
// eviction path needs under pressure. One per node, owned by the engine.
//
// It owns the coherence::Replacer (policy, pure logic; see coherence/replacement.h for what
// counts against the budget and how victims are chosen) and carries out its effects on the
// MappedRegions: write protection in runs, unmaps batched into one madvise per run, messages
// sent after the unmaps. MappedRegion calls the hooks (OnInstall/OnDrop/...) from its
// CachePort methods.
//
// Memory-pressure safety: a pool of page buffers for write-backs and recall answers is filled
// ahead of time (and refilled by Maintain(), off the fault path); with Options::lock_memory the
// engine thread's stack window (uffd event array included), the replacer's scratch arrays and
// its bitmaps (MLOCK_ONFAULT) are mlock'ed as far as RLIMIT_MEMLOCK allows.
//
// Thread safety: engine thread only.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "coherence/replacement.h"
#include "dsm/options.h"
#include "dsm/stats.h"
#include "protocol/message.h"

namespace dsm {

class MappedRegion;

class Evictor final : public coherence::ReplacementPort {
 public:
  explicit Evictor(const Options& options);
  ~Evictor();
  Evictor(const Evictor&) = delete;
  Evictor& operator=(const Evictor&) = delete;

  // Called by MappedRegion::Create / ~MappedRegion. Returns the region's space id.
  int AddRegion(MappedRegion* region, NodeId self);
  void RemoveRegion(int space);

  // The fault path: a fault reported by the kernel on `page` of `region`.
  void OnFault(MappedRegion* region, PageIndex page, bool write, absl::Time now);
  // After a batch of faults: releases pages if the node is over its budget.
  void Enforce();
  // Periodic (engine tick): refills the buffer pool, locks memory the first time, and
  // enforces the budget as a backstop (installs that outran the reservations).
  void Maintain();

  // A kPageSize buffer, from the pool when it has one.
  void TakePageBuffer(std::vector<uint8_t>* out);

  coherence::Replacer& replacer() { return replacer_; }
  void AddStats(Stats* out) const;

  // ReplacementPort.
  absl::Status Protect(int space, PageIndex first, uint64_t n) override;
  absl::Status Unprotect(int space, PageIndex page) override;
  void BeginBatch(int space) override;
  void EndBatch(int space) override;

 private:
  void LockMemory(int space);
  // mlock (or mlock2 MLOCK_ONFAULT) of the pages spanning [addr, addr+bytes); bytes locked.
  uint64_t LockRange(const void* addr, size_t bytes, bool on_fault);
  MappedRegion* Region(int space) const;

  const bool lock_memory_;
  coherence::Replacer replacer_;
  std::vector<MappedRegion*> regions_;  // by space id
  std::vector<std::vector<uint8_t>> pool_;
  size_t pool_target_;
  bool stack_locked_ = false;
  bool lock_failed_ = false;
  uint64_t locked_bytes_ = 0;
  std::vector<uint64_t> locked_by_space_;
  uint64_t pool_misses_ = 0;
  absl::Duration evict_time_;
};

}  // namespace dsm
