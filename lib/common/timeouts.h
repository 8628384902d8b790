// Time limits shared by several layers, named once: the engine slack and the liveness
// timeout hierarchy (leases, fencing, blame).
#pragma once

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace dsm {

// Slack on top of a protocol deadline before an application thread stops waiting for the
// engine thread itself. The engine enforces the protocol deadline; this only bounds the wait
// on an engine that is wedged (for example stalled in fdatasync), so no caller hangs forever.
inline constexpr absl::Duration kEngineSlack = absl::Seconds(5);

// How often the engine looks at its timers (leases, overdue answers). Every bound below is
// checked at this granularity, so each margin is at least a few periods.
inline constexpr absl::Duration kLivenessTick = absl::Milliseconds(50);
// The shortest lease a node accepts: the fencing margin (3/8 of the lease, see below) must
// cover several ticks.
inline constexpr absl::Duration kMinLease = absl::Milliseconds(800);

// The timeout hierarchy, derived from Options::peer_timeout (P) and Options::lease_duration
// (L; default P, at least kMinLease). Every node of a cluster must use the same values: the
// ordering below holds between nodes.
//
//   heartbeat      = L / 8   a node sends kHeartbeat to a peer it has sent nothing to for this
//                            long, so a live peer is never silent for longer (plus a tick).
//   fence          = L       a node that has heard nothing from peer H for L declares H down
//                            and fences itself for H: it poisons its copies of pages homed at
//                            H and fails its requests to H.
//   reassign       = L + L/2 a home treats the copies a peer N held as gone (forgets its
//                            Shared copies, loses the pages it held Modified) only once it has
//                            heard nothing from N for this long. N stopped hearing from the
//                            home at most `heartbeat` (+ a tick) before the home stopped
//                            hearing from N, and fences at most a tick after L, so it has
//                            fenced itself a margin of 3L/8 minus two ticks (200 ms at
//                            kMinLease) before the home reassigns.
//   holder         = P       a home whose invalidation or recall is unanswered for P declares
//                            the holder down even if it is not silent (its pages are then
//                            reassigned `reassign` after its last message).
//   requester      = P + reassign + L/2
//                            a requester declares the home down if a request is unanswered for
//                            this long. A home waiting on a slow third node N answers (grant,
//                            or kNack(kPageLost) for a page only N had) once N is reassigned:
//                            at most `holder` + `reassign` (+ ticks) after the request reached
//                            it, and usually `reassign` after N went silent. The requester's
//                            timer is longer by L/2, so a healthy home is never blamed for a
//                            slow third node. (A home that keeps sending heartbeats is never
//                            declared down for silence either.)
struct LivenessTimes {
  absl::Duration heartbeat;
  absl::Duration fence;
  absl::Duration reassign;
  absl::Duration holder;
  absl::Duration requester;
};

// The lease a node runs with: `lease_duration`, or when it is zero `peer_timeout` (at least
// kMinLease).
inline absl::Duration EffectiveLease(absl::Duration peer_timeout, absl::Duration lease_duration) {
  return lease_duration == absl::ZeroDuration() ? std::max(peer_timeout, kMinLease)
                                                : lease_duration;
}

inline LivenessTimes DeriveLivenessTimes(absl::Duration peer_timeout,
                                         absl::Duration lease_duration) {
  const absl::Duration lease = EffectiveLease(peer_timeout, lease_duration);
  LivenessTimes t;
  t.heartbeat = lease / 8;
  t.fence = lease;
  t.reassign = lease + lease / 2;
  t.holder = peer_timeout;
  t.requester = t.holder + t.reassign + lease / 2;
  return t;
}

// Options::peer_timeout and Options::lease_duration as the hierarchy needs them.
inline absl::Status ValidateLiveness(absl::Duration peer_timeout, absl::Duration lease_duration) {
  if (lease_duration < absl::ZeroDuration() ||
      (lease_duration != absl::ZeroDuration() && lease_duration < kMinLease)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.lease_duration ", absl::FormatDuration(lease_duration),
                     " must be 0 (= peer_timeout) or at least ", absl::FormatDuration(kMinLease)));
  }
  if (lease_duration == absl::InfiniteDuration() || peer_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("Options.peer_timeout and lease_duration must be finite");
  }
  return absl::OkStatus();
}

}  // namespace dsm
