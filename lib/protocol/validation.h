// The rules every message must satisfy, as one table (validation.cc, kRules): per MsgType the
// legal payload sizes, the fields that must be zero or non-zero, and the checks of its arg
// layout (grant, kinds, run lengths, the lock and barrier packing of protocol/lock_fields.h).
// The wire decoder (transport/wire.h) applies it to every frame before a Message exists, and
// transports apply it to every Message they send; nothing else validates messages.
//
// Example:
//   MessageFields f = ...;  // from a wire header
//   if (Violation v = FindViolation(f, cluster_size); v != Violation::kNone) reject(v);
//
// Thread safety: pure functions of their arguments.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "protocol/message.h"

namespace dsm {

// The fields the rules look at; all of them are in the wire header. `type` is the raw byte
// (a type this build does not declare is a violation, not undefined behaviour).
struct MessageFields {
  uint8_t type = 0;
  uint32_t src = 0;
  uint64_t payload_len = 0;
  RegionId region = 0;
  PageIndex page = 0;
  uint64_t req_id = 0;
  uint64_t arg = 0;
};

// Each rule of message.h, named. A rejected message names the first rule it breaks.
enum class Violation : uint8_t {
  kNone = 0,
  kClusterSize,         // the caller's cluster size is outside 1..kMaxNodes
  kSrcOutsideCluster,   // src >= cluster size
  kPayloadTooLarge,     // payload_len > kMaxPayload
  kUnknownType,         // a type this build does not declare
  kPayloadSize,         // payload_len illegal for the type (and its arg where it matters)
  kRegionNotZero,       // barrier messages carry no region (but kAborted's entered mask)
  kPageNotZero,         // kLockReply / kLockRelease / kLockCancel carry no page
  kArgNotZero,          // kLockRelease / kLockCancel carry no arg
  kReqIdZero,           // a lock id is never 0 (req_id; page of 47..49)
  kBadGrant,            // kData / kGrant: arg is not a Grant
  kBadPutKind,          // kPut: arg is not a PutKind
  kBadRecallKind,       // kRecall: arg is not a RecallKind
  kBadRunLength,        // kGetSRun / kDataRun: arg outside 1..kMaxRunPages; kStatsReply:
                        // arg outside 1..kMaxStatsFields
  kLockLengthZero,      // kLockAcquire: len 0
  kBadLockMode,         // kLockAcquire: mode not shared (1) or exclusive (2)
  kBadLockFlags,        // kLockAcquire: a flag other than try, or bits 56..63 set
  kLockRangeOverflow,   // kLockAcquire: offset + len overflows 2^64
  kBadLockReplyCode,    // kLockReply: code outside 1..kMaxLockReplyCode
  kLockReplyReserved,   // kLockReply: bits 10..15 or 24..63 set; kLockSuccessor: arg bits
                        // 9..63, kLockPassed: 8..63, kLockHandoff: arg > 1
  kDiedWithoutGrant,    // kLockReply: previous_holder_died with a code other than kGranted
  kBadMemberMask,       // kBarrierEnter/Cancel: empty, names a node >= cluster, lacks src
  kBadBarrierReplyCode,  // kBarrierReply: code outside 1..kMaxBarrierReplyCode
  kBarrierReplyReserved,  // kBarrierReply: bits 16..63 set
  kNodeWithoutNodeDown,  // kBarrierReply: a node id with a code other than kNodeDown
  kDownNodeOutsideCluster,  // kBarrierReply: kNodeDown names a node >= cluster size
  kNameHasNul,          // kRegionOpen / kBarrierEnter / kBarrierCancel: a NUL in the name
  kBadGoodbyeKind,      // kGoodbye: arg is not a GoodbyeKind
  kBadRegionIdentity,   // kRegionOpen(Reply): page is not an identity word (region_identity.h)
  kBadRegionSize,       // kRegionOpen arg / kRegionOpenReply payload: not a whole number of
                        // pages, or zero
  kPredecessorWithoutQueued,  // kLockReply: a predecessor named with a code other than
                              // kQueued, or a predecessor node without the flag
  kNodeOutsideCluster,  // kLockReply predecessor / kLockSuccessor / kLockPassed successor
                        // node >= cluster size
  kCount,               // not a rule: the number of values
};

const char* ViolationName(Violation v);

// The first rule of the table `f` breaks, or kNone. Never allocates.
Violation FindViolation(const MessageFields& f, size_t cluster_size);

// The payload content rules (names hold no NUL byte; a kRegionOpenReply size is whole pages);
// the size was checked by FindViolation.
Violation FindPayloadViolation(MsgType type, absl::Span<const uint8_t> payload);

// InvalidArgument naming the violated rule and the message's fields; OK for kNone.
absl::Status ViolationStatus(Violation v, const MessageFields& f);

// Every rule for a whole Message (header fields and payload).
absl::Status CheckMessage(const Message& m, size_t cluster_size);

}  // namespace dsm
