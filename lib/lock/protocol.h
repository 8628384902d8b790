// The lock and barrier messages (MsgType 40..46, see transport/message.h): how their fields
// are packed, the reply codes, and ValidateLockMessage(), the checks a decoder must apply.
// Header-only, so the wire decoder can use it without linking the lock layer.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/node_set.h"
#include "dsm/lock.h"
#include "transport/message.h"

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
  kAborted = 3,       // a member gave up (deadline), or the generation was already abandoned
  kBadRequest = 4,    // not the arbiter of this group, or a generation from the future
  kShuttingDown = 5,
};
inline constexpr uint8_t kMaxBarrierReplyCode = 5;

inline constexpr uint64_t kMaxLockLength = (uint64_t{1} << 48) - 1;
inline constexpr size_t kMaxGroupName = 255;
inline constexpr uint64_t kTryFlag = 1;  // the only acquire flag

// --- kLockAcquire arg: len (bits 0..47) | mode (48..51) | flags (52..55) | 0 (56..63).
inline uint64_t PackAcquireArg(uint64_t len, LockMode mode, bool try_lock) {
  return (len & kMaxLockLength) | (uint64_t{static_cast<uint8_t>(mode)} << 48) |
         (uint64_t{try_lock ? kTryFlag : 0} << 52);
}
inline uint64_t AcquireLen(uint64_t arg) { return arg & kMaxLockLength; }
inline LockMode AcquireMode(uint64_t arg) { return static_cast<LockMode>((arg >> 48) & 0xf); }
inline bool AcquireTry(uint64_t arg) { return ((arg >> 52) & kTryFlag) != 0; }

// --- kLockReply arg: code (bits 0..7) | previous_holder_died (bit 8).
inline uint64_t PackLockReply(LockReplyCode code, bool previous_holder_died = false) {
  return uint64_t{static_cast<uint8_t>(code)} | (previous_holder_died ? uint64_t{1} << 8 : 0);
}
inline LockReplyCode LockReplyCodeOf(uint64_t arg) {
  return static_cast<LockReplyCode>(arg & 0xff);
}
inline bool LockReplyDied(uint64_t arg) { return (arg >> 8) & 1; }

// --- kBarrierReply arg: code (bits 0..7) | down node (bits 8..15, kNodeDown only).
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
  return v >= 40 && v <= 46;
}

// The checks a decoder must apply to messages 40..46 (on top of its generic header checks).
// `m.src` must already be known to be < cluster_size. Returns InvalidArgument naming the
// violated rule. Messages of other types: OK (not ours).
inline absl::Status ValidateLockMessage(const Message& m, size_t cluster_size) {
  auto bad = [&](const char* what) {
    return absl::InvalidArgumentError(
        absl::StrFormat("lock message type %d from node %d: %s", static_cast<int>(m.type),
                        m.src, what));
  };
  auto check_group = [&]() -> absl::Status {
    if (m.payload.empty() || m.payload.size() > kMaxGroupName) {
      return bad("group name must be 1..255 bytes");
    }
    if (std::memchr(m.payload.data(), 0, m.payload.size()) != nullptr) {
      return bad("group name holds a NUL byte");
    }
    if (m.arg == 0) return bad("empty member mask");
    if ((m.arg & ~FirstNodes(cluster_size)) != 0) {
      return bad("member mask names a node >= cluster size");
    }
    if (!InNodeSet(m.arg, m.src)) return bad("sender is not a member");
    if (m.region != 0) return bad("region must be 0");
    return absl::OkStatus();
  };
  switch (m.type) {
    case MsgType::kLockAcquire: {
      if (!m.payload.empty()) return bad("payload must be empty");
      if ((m.arg >> 56) != 0) return bad("reserved bits 56..63 set");
      if (((m.arg >> 52) & 0xf & ~kTryFlag) != 0) return bad("unknown flags");
      const LockMode mode = AcquireMode(m.arg);
      if (mode != LockMode::kShared && mode != LockMode::kExclusive) return bad("bad mode");
      const uint64_t len = AcquireLen(m.arg);
      if (len == 0) return bad("length 0");
      if (m.page > UINT64_MAX - len) return bad("offset + length overflows");
      if (m.req_id == 0) return bad("lock id 0");
      return absl::OkStatus();
    }
    case MsgType::kLockReply: {
      if (!m.payload.empty()) return bad("payload must be empty");
      if ((m.arg >> 9) != 0) return bad("reserved bits set");
      const uint8_t code = m.arg & 0xff;
      if (code < 1 || code > kMaxLockReplyCode) return bad("unknown reply code");
      if (LockReplyDied(m.arg) && LockReplyCodeOf(m.arg) != LockReplyCode::kGranted) {
        return bad("previous_holder_died without a grant");
      }
      if (m.page != 0) return bad("page must be 0");
      return absl::OkStatus();
    }
    case MsgType::kLockRelease:
    case MsgType::kLockCancel:
      if (!m.payload.empty()) return bad("payload must be empty");
      if (m.page != 0 || m.arg != 0) return bad("page and arg must be 0");
      return absl::OkStatus();
    case MsgType::kBarrierEnter:
    case MsgType::kBarrierCancel:
      return check_group();
    case MsgType::kBarrierReply: {
      if (!m.payload.empty()) return bad("payload must be empty");
      if ((m.arg >> 16) != 0) return bad("reserved bits set");
      const uint8_t code = m.arg & 0xff;
      if (code < 1 || code > kMaxBarrierReplyCode) return bad("unknown reply code");
      if (BarrierReplyCodeOf(m.arg) != BarrierReplyCode::kNodeDown && (m.arg >> 8) != 0) {
        return bad("node id without kNodeDown");
      }
      if (BarrierReplyCodeOf(m.arg) == BarrierReplyCode::kNodeDown &&
          BarrierReplyNode(m.arg) >= cluster_size) {
        return bad("down node >= cluster size");
      }
      if (m.region != 0) return bad("region must be 0");
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();
  }
}

}  // namespace dsm::lock
