// Shared vocabulary of the coherence layer. Pure logic: nothing in lib/coherence/ performs I/O.
#pragma once

#include <cstdint>
#include <functional>

#include "transport/message.h"

namespace dsm::coherence {

// Per page and node. I: not mapped (access raises a MISSING fault). S: mapped write-protected.
// M: mapped writable, the only valid copy in the cluster.
enum class PageState : uint8_t { kInvalid = 0, kShared = 1, kModified = 2 };

const char* PageStateName(PageState s);

// Which node is home (directory + authoritative copy) of a page.
using HomeFn = std::function<NodeId(PageIndex)>;

}  // namespace dsm::coherence
