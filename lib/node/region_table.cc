#include "node/region_table.h"

#include <utility>

namespace dsm {

MappedRegion* RegionTable::Insert(std::unique_ptr<MappedRegion> r) {
  MappedRegion* raw = r.get();
  regions_[raw->id()] = std::move(r);
  return raw;
}

std::vector<RegionId> RegionTable::ids() const {
  std::vector<RegionId> out;
  out.reserve(regions_.size());
  for (const auto& [id, r] : regions_) out.push_back(id);
  return out;
}

}  // namespace dsm
