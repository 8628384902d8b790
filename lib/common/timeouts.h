// Time limits shared by several layers, named once.
#pragma once

#include "absl/time/time.h"

namespace dsm {

// Slack on top of a protocol deadline before an application thread stops waiting for the
// engine thread itself. The engine enforces the protocol deadline; this only bounds the wait
// on an engine that is wedged (for example stalled in fdatasync), so no caller hangs forever.
inline constexpr absl::Duration kEngineSlack = absl::Seconds(5);

}  // namespace dsm
