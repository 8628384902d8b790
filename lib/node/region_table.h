// RegionTable: the regions mapped on this node. It owns each MappedRegion (and with it the
// region's Cache, Directory and home storage) and finds a region by id (messages) or by a
// faulting address (userfaultfd events).
//
// Thread safety: engine thread only; no locks.
//
// Invariants:
//  - At most one MappedRegion per RegionId; the id is RegionIdFromName(name).
//  - Regions never overlap (each is its own mapping), so an address lies in at most one.
//  - A pointer handed out stays valid until Erase(id) or Clear(); nothing else frees a region.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "region/mapped_region.h"

namespace dsm {

class RegionTable {
 public:
  RegionTable() = default;
  RegionTable(const RegionTable&) = delete;
  RegionTable& operator=(const RegionTable&) = delete;

  MappedRegion* Find(RegionId id) const {
    auto it = regions_.find(id);
    return it == regions_.end() ? nullptr : it->second.get();
  }
  // The region whose mapping contains `addr`, or nullptr (a region being unmapped). On the
  // fault path: a scan, nodes map few regions.
  MappedRegion* FindByAddress(uintptr_t addr) const {
    for (const auto& [id, r] : regions_) {
      if (r->Contains(addr)) return r.get();
    }
    return nullptr;
  }
  bool contains(RegionId id) const { return regions_.contains(id); }
  size_t size() const { return regions_.size(); }

  // Takes `r`, whose id must not be in the table yet; returns it.
  MappedRegion* Insert(std::unique_ptr<MappedRegion> r);
  // Unregisters and unmaps the region (no-op if absent).
  void Erase(RegionId id) { regions_.erase(id); }
  void Clear() { regions_.clear(); }
  std::vector<RegionId> ids() const;

  // Calls fn(MappedRegion&) for every region; fn must not insert or erase.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const auto& [id, r] : regions_) fn(*r);
  }

 private:
  absl::flat_hash_map<RegionId, std::unique_ptr<MappedRegion>> regions_;
};

}  // namespace dsm
