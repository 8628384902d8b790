// How the lock and barrier messages (MsgType 40..49, protocol/message.h) pack their fields,
// and their reply codes. The rules these fields must satisfy are enforced by the one
// validation table (protocol/validation.h), next to this packing, so the two cannot drift.
// Header-only and pure: the lock layer packs and unpacks with it, the wire decoder checks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dsm/lock.h"
#include "protocol/message.h"

namespace dsm::lock {

// arg of kLockReply, bits 0..7. Wire values: never renumber.
enum class LockReplyCode : uint8_t {
  kGranted = 1,       // final; bit 8 of arg = previous_holder_died
  kQueued = 2,        // not final: "I will tell you" (a later kLockReply carries the outcome)
  kBusy = 3,          // final; try-lock refused, nothing queued
  kBadRequest = 4,    // final; range outside the region, or a lock id already in use
  kNoSuchRegion = 5,  // final; the arbiter has not mapped the region
  kNotArbiter = 6,    // final; this node does not arbitrate the region's locks
  kShuttingDown = 7,  // final; the region is being unmapped at the arbiter
};
inline constexpr uint8_t kMaxLockReplyCode = 7;

// arg of kBarrierReply, bits 0..7. Wire values: never renumber.
enum class BarrierReplyCode : uint8_t {
  kReleased = 1,      // every member entered this generation
  kNodeDown = 2,      // a member is down (bits 8..15 = its id); the group is broken for good
  kAborted = 3,       // a member gave up (deadline; region = the entered mask), or the
                      // generation was already abandoned (region = 0)
  kBadRequest = 4,    // not the arbiter of this group, or a generation from the future
  kShuttingDown = 5,
};
inline constexpr uint8_t kMaxBarrierReplyCode = 5;

inline constexpr uint64_t kMaxLockLength = (uint64_t{1} << 48) - 1;
inline constexpr size_t kMaxGroupName = kMaxNameLength;
inline constexpr uint64_t kTryFlag = 1;  // the only acquire flag

// --- kLockAcquire arg: len (bits 0..47) | mode (48..51) | flags (52..55) | 0 (56..63).
inline constexpr int kAcquireModeShift = 48;
inline constexpr int kAcquireFlagsShift = 52;
inline constexpr int kAcquireReservedShift = 56;
inline uint64_t PackAcquireArg(uint64_t len, LockMode mode, bool try_lock) {
  return (len & kMaxLockLength) | (uint64_t{static_cast<uint8_t>(mode)} << kAcquireModeShift) |
         (uint64_t{try_lock ? kTryFlag : 0} << kAcquireFlagsShift);
}
inline uint64_t AcquireLen(uint64_t arg) { return arg & kMaxLockLength; }
inline LockMode AcquireMode(uint64_t arg) {
  return static_cast<LockMode>((arg >> kAcquireModeShift) & 0xf);
}
inline uint64_t AcquireFlags(uint64_t arg) { return (arg >> kAcquireFlagsShift) & 0xf; }
inline bool AcquireTry(uint64_t arg) { return (AcquireFlags(arg) & kTryFlag) != 0; }

// --- kLockReply arg: code (bits 0..7) | previous_holder_died (bit 8) | predecessor named
// (bit 9) | 0 (10..15) | predecessor node (16..23) | 0 (24..63).
inline constexpr uint64_t kLockReplyPredFlag = uint64_t{1} << 9;
inline constexpr int kLockReplyPredShift = 16;
// Bits that must be 0 in every kLockReply.
inline constexpr uint64_t kLockReplyReservedMask =
    ~(uint64_t{0x1ff} | kLockReplyPredFlag | (uint64_t{0xff} << kLockReplyPredShift));
inline uint64_t PackLockReply(LockReplyCode code, bool previous_holder_died = false) {
  return uint64_t{static_cast<uint8_t>(code)} | (previous_holder_died ? uint64_t{1} << 8 : 0);
}
// kQueued naming the node whose release will hand the lock over (kLockHandoff).
inline uint64_t PackQueuedWithPredecessor(NodeId predecessor) {
  return PackLockReply(LockReplyCode::kQueued) | kLockReplyPredFlag |
         (uint64_t{predecessor & 0xff} << kLockReplyPredShift);
}
inline LockReplyCode LockReplyCodeOf(uint64_t arg) {
  return static_cast<LockReplyCode>(arg & 0xff);
}
inline bool LockReplyDied(uint64_t arg) { return (arg >> 8) & 1; }
inline bool LockReplyNamesPredecessor(uint64_t arg) { return (arg & kLockReplyPredFlag) != 0; }
inline NodeId LockReplyPredecessor(uint64_t arg) {
  return static_cast<NodeId>((arg >> kLockReplyPredShift) & 0xff);
}

// --- kLockSuccessor arg: successor node (bits 0..7) | previous_holder_died (bit 8) | 0.
// --- kLockPassed arg: successor node (bits 0..7) | 0.   kLockHandoff arg: 0 or 1 (died).
inline uint64_t PackSuccessorArg(NodeId node, bool died) {
  return uint64_t{node & 0xff} | (died ? uint64_t{1} << 8 : 0);
}
inline NodeId SuccessorNode(uint64_t arg) { return static_cast<NodeId>(arg & 0xff); }
inline bool SuccessorDied(uint64_t arg) { return (arg >> 8) & 1; }

// --- kBarrierReply arg: code (bits 0..7) | down node (bits 8..15, kNodeDown only) | 0.
inline constexpr int kBarrierReplyReservedShift = 16;
inline uint64_t PackBarrierReply(BarrierReplyCode code, NodeId down = 0) {
  return uint64_t{static_cast<uint8_t>(code)} |
         (code == BarrierReplyCode::kNodeDown ? uint64_t{down & 0xff} << 8 : 0);
}
inline BarrierReplyCode BarrierReplyCodeOf(uint64_t arg) {
  return static_cast<BarrierReplyCode>(arg & 0xff);
}
inline NodeId BarrierReplyNode(uint64_t arg) { return static_cast<NodeId>((arg >> 8) & 0xff); }

inline bool IsLockMessage(MsgType t) {
  const auto v = static_cast<uint8_t>(t);
  return v >= static_cast<uint8_t>(MsgType::kLockAcquire) &&
         v <= static_cast<uint8_t>(MsgType::kLockPassed);
}

}  // namespace dsm::lock
