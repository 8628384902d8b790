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
// Thread safety: data() memory may be used from any thread. Sync() and Unmap() may be called
// from any application thread, never from a thread that serves this node's faults (there is
// none in the application). Destroying a Region unmaps it.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"

namespace dsm {

class Region {
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
