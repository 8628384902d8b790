// One mapped region's share of a node's Stats: its cache's counters (faults, readahead,
// coherence messages as requester), its directory's (as home), and its resident pages.
#pragma once

#include "dsm/stats.h"
#include "region/mapped_region.h"

namespace dsm {

// Engine thread (the region's cache and directory are the engine's).
Stats RegionStats(MappedRegion& r);

}  // namespace dsm
