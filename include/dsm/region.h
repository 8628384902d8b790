// dsm/region.h: one shared memory region mapped on this node.
//
//   auto region = node->MapRegion({.name = "grid", .size = 1 << 20, .home = 0});
//   int* p = static_cast<int*>((*region)->data());
//   p[0] = 42;                       // plain stores; the library keeps the nodes coherent
//   (*region)->Sync();               // this node's dirty pages -> home's file, durably
//
// Coherence guarantee: per page, a single writer or many readers; every read sees the latest
// write. Across nodes, programs observe x86-TSO; an atomic read-modify-write on one word is
// atomic cluster-wide.
//
// Locks (RegionLocks, dsm/lock.h): byte-range locks on this region, shared or exclusive,
// arbitrated by the region's home node (the home of page 0), so no two nodes ever hold
// conflicting locks. Lock() blocks the calling thread; LockAsync() returns at once and its
// callback (the grant or the error) runs on this node's engine thread, the thread that serves
// the page faults: it must not block or touch region memory. Unmapping the region releases
// every lock this node holds in it.
//
//   absl::StatusOr<dsm::LockGuard> g = region->Lock(0, 64, dsm::LockMode::kExclusive);
//   if (g.ok()) { p[0]++; }          // the next holder sees the increment
//
// Thread safety: data() memory may be used from any thread. Sync(), Unmap() and the lock
// methods may be called from any application thread, never from a thread that serves this
// node's faults (there is none in the application). Destroying a Region unmaps it.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "dsm/lock.h"

namespace dsm {

class Region : public RegionLocks {
 public:
  virtual ~Region() = default;

  virtual void* data() const = 0;
  virtual size_t size() const = 0;
  virtual const std::string& name() const = 0;

  // Writes every page this node holds Modified back to its home (keeping a Shared copy),
  // and has each home that received pages persist them with fdatasync before it returns.
  // Anonymous regions: the write-back happens, there is nothing to persist.
  virtual absl::Status Sync() = 0;

  // Writes dirty pages back, releases every copy and removes the mapping; data() is invalid
  // afterwards. At the home, remote copies are recalled first and the file is synced.
  virtual absl::Status Unmap() = 0;
};

}  // namespace dsm
