#include "protocol/validation.h"

#include <cstring>
#include <iterator>

#include "absl/strings/str_format.h"
#include "common/node_set.h"
#include "protocol/lock_fields.h"
#include "protocol/region_identity.h"

namespace dsm {
namespace {

// What the payload of a type may be.
enum class PayloadRule : uint8_t {
  kEmpty,           // no payload
  kName,            // 1..255 bytes, no NUL
  kOnePage,         // exactly one page
  kPageRun,         // 1..kMaxRunPages whole pages
  kEmptyOrPageRun,  // nothing, or a page run
  kRunPrefix,       // whole pages, at most arg of them (kDataRun)
  kByPutKind,       // kDropClean: nothing; write-backs: a page run
  kArgWords,        // exactly arg 8-byte words (kStatsReply)
  kEmptyOrSize,     // nothing, or one little-endian uint64 (kRegionOpenReply: the size)
};

// Fields a type requires to be zero, or non-zero.
enum FieldRule : uint8_t {
  kAnyFields = 0,
  kZeroRegion = 1,
  kZeroPage = 2,
  kZeroArg = 4,
  kNonZeroReqId = 8,
};

// The layout checks of a type's arg (and the fields it relates to); nullptr: any arg.
using ArgRule = Violation (*)(const MessageFields& f, size_t cluster_size);

struct Rule {
  MsgType type;
  PayloadRule payload;
  uint8_t fields;
  ArgRule arg;
};

bool IsPageRun(uint64_t len) {
  return len >= kPageSize && len % kPageSize == 0 && len / kPageSize <= kMaxRunPages;
}

Violation GrantArg(const MessageFields& f, size_t) {
  return f.arg == static_cast<uint64_t>(Grant::kShared) ||
                 f.arg == static_cast<uint64_t>(Grant::kModified)
             ? Violation::kNone
             : Violation::kBadGrant;
}

Violation PutKindArg(const MessageFields& f, size_t) {
  return f.arg >= static_cast<uint64_t>(PutKind::kDropClean) &&
                 f.arg <= static_cast<uint64_t>(PutKind::kWritebackKeep)
             ? Violation::kNone
             : Violation::kBadPutKind;
}

Violation RecallKindArg(const MessageFields& f, size_t) {
  return f.arg == static_cast<uint64_t>(RecallKind::kDowngrade) ||
                 f.arg == static_cast<uint64_t>(RecallKind::kInvalidate)
             ? Violation::kNone
             : Violation::kBadRecallKind;
}

Violation GoodbyeKindArg(const MessageFields& f, size_t) {
  return f.arg == static_cast<uint64_t>(GoodbyeKind::kFinalizeReady) ||
                 f.arg == static_cast<uint64_t>(GoodbyeKind::kLeaving)
             ? Violation::kNone
             : Violation::kBadGoodbyeKind;
}

Violation RunLengthArg(const MessageFields& f, size_t) {
  return f.arg >= 1 && f.arg <= kMaxRunPages ? Violation::kNone : Violation::kBadRunLength;
}

Violation LockAcquireArg(const MessageFields& f, size_t) {
  const uint64_t len = lock::AcquireLen(f.arg);
  const LockMode mode = lock::AcquireMode(f.arg);
  if (len == 0) return Violation::kLockLengthZero;
  if (mode != LockMode::kShared && mode != LockMode::kExclusive) return Violation::kBadLockMode;
  if ((lock::AcquireFlags(f.arg) & ~lock::kTryFlag) != 0 ||
      (f.arg >> lock::kAcquireReservedShift) != 0) {
    return Violation::kBadLockFlags;
  }
  if (f.page > UINT64_MAX - len) return Violation::kLockRangeOverflow;
  return Violation::kNone;
}

Violation LockReplyArg(const MessageFields& f, size_t cluster_size) {
  const uint64_t code = f.arg & 0xff;
  if (code < 1 || code > lock::kMaxLockReplyCode) return Violation::kBadLockReplyCode;
  if ((f.arg & lock::kLockReplyReservedMask) != 0) return Violation::kLockReplyReserved;
  if (lock::LockReplyDied(f.arg) &&
      lock::LockReplyCodeOf(f.arg) != lock::LockReplyCode::kGranted) {
    return Violation::kDiedWithoutGrant;
  }
  if (lock::LockReplyNamesPredecessor(f.arg)) {
    if (lock::LockReplyCodeOf(f.arg) != lock::LockReplyCode::kQueued) {
      return Violation::kPredecessorWithoutQueued;
    }
    if (lock::LockReplyPredecessor(f.arg) >= cluster_size) return Violation::kNodeOutsideCluster;
  } else if (lock::LockReplyPredecessor(f.arg) != 0) {
    return Violation::kPredecessorWithoutQueued;
  }
  return Violation::kNone;
}

// kLockSuccessor (died bit allowed) and kLockPassed: page = the successor's lock id, arg's
// low byte its node.
Violation SuccessorArg(const MessageFields& f, size_t cluster_size, bool died_allowed) {
  if (f.page == 0) return Violation::kReqIdZero;
  if ((f.arg >> (died_allowed ? 9 : 8)) != 0) return Violation::kLockReplyReserved;
  return lock::SuccessorNode(f.arg) < cluster_size ? Violation::kNone
                                                    : Violation::kNodeOutsideCluster;
}
Violation LockSuccessorArg(const MessageFields& f, size_t cluster_size) {
  return SuccessorArg(f, cluster_size, /*died_allowed=*/true);
}
Violation LockPassedArg(const MessageFields& f, size_t cluster_size) {
  return SuccessorArg(f, cluster_size, /*died_allowed=*/false);
}
// kLockHandoff: page = the releaser's lock id; arg = previous_holder_died (0 or 1).
Violation LockHandoffArg(const MessageFields& f, size_t) {
  if (f.page == 0) return Violation::kReqIdZero;
  return f.arg <= 1 ? Violation::kNone : Violation::kLockReplyReserved;
}

Violation MemberMaskArg(const MessageFields& f, size_t cluster_size) {
  const uint64_t members = f.arg;
  if (members == 0 || (members & ~FirstNodes(cluster_size)) != 0 ||
      !InNodeSet(members, f.src)) {
    return Violation::kBadMemberMask;
  }
  return Violation::kNone;
}

Violation StatsFieldsArg(const MessageFields& f, size_t) {
  return f.arg >= 1 && f.arg <= kMaxStatsFields ? Violation::kNone : Violation::kBadRunLength;
}

Violation BarrierReplyArg(const MessageFields& f, size_t cluster_size) {
  const uint64_t code = f.arg & 0xff;
  if (code < 1 || code > lock::kMaxBarrierReplyCode) return Violation::kBadBarrierReplyCode;
  if ((f.arg >> lock::kBarrierReplyReservedShift) != 0) return Violation::kBarrierReplyReserved;
  // region: 0, or with kAborted the members that had entered (a mask within the cluster).
  if (f.region != 0 && (lock::BarrierReplyCodeOf(f.arg) != lock::BarrierReplyCode::kAborted ||
                        (f.region & ~FirstNodes(cluster_size)) != 0)) {
    return Violation::kRegionNotZero;
  }
  if (lock::BarrierReplyCodeOf(f.arg) != lock::BarrierReplyCode::kNodeDown) {
    return (f.arg >> 8) != 0 ? Violation::kNodeWithoutNodeDown : Violation::kNone;
  }
  return lock::BarrierReplyNode(f.arg) < cluster_size ? Violation::kNone
                                                       : Violation::kDownNodeOutsideCluster;
}

bool IsRegionSize(uint64_t size) { return size != 0 && size % kPageSize == 0; }

// kRegionOpen: arg = the size in bytes, page = the opener's identity word.
Violation RegionOpenArg(const MessageFields& f, size_t cluster_size) {
  if (!IsRegionSize(f.arg)) return Violation::kBadRegionSize;
  if (!UnpackIdentityWord(f.page, f.arg, cluster_size)) return Violation::kBadRegionIdentity;
  return Violation::kNone;
}

// kRegionOpenReply: with the answerer's size (payload), page is its identity word; without,
// page is 0.
Violation RegionOpenReplyArg(const MessageFields& f, size_t cluster_size) {
  if (f.payload_len == 0) return f.page == 0 ? Violation::kNone : Violation::kPageNotZero;
  if (f.payload_len == sizeof(uint64_t)) {
    return UnpackIdentityWord(f.page, kPageSize, cluster_size) ? Violation::kNone
                                                               : Violation::kBadRegionIdentity;
  }
  return Violation::kNone;  // the payload rule rejects any other length
}

// The table: one row per declared MsgType (message.h states each rule in words). A type
// without a row is rejected as unknown, so a new MsgType must be added here to be sent.
constexpr Rule kRules[] = {
    {MsgType::kHello, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kRegionOpen, PayloadRule::kName, kAnyFields, RegionOpenArg},
    {MsgType::kRegionOpenReply, PayloadRule::kEmptyOrSize, kAnyFields, RegionOpenReplyArg},
    {MsgType::kGetS, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kGetM, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kPut, PayloadRule::kByPutKind, kAnyFields, PutKindArg},
    {MsgType::kSyncReq, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kGetSRun, PayloadRule::kEmpty, kAnyFields, RunLengthArg},
    {MsgType::kData, PayloadRule::kOnePage, kAnyFields, GrantArg},
    {MsgType::kGrant, PayloadRule::kEmpty, kAnyFields, GrantArg},
    {MsgType::kNack, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kSyncAck, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kDataRun, PayloadRule::kRunPrefix, kAnyFields, RunLengthArg},
    {MsgType::kInv, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kRecall, PayloadRule::kEmpty, kAnyFields, RecallKindArg},
    {MsgType::kInvAck, PayloadRule::kEmpty, kAnyFields, nullptr},
    {MsgType::kRecallAck, PayloadRule::kEmptyOrPageRun, kAnyFields, nullptr},
    {MsgType::kLockAcquire, PayloadRule::kEmpty, kNonZeroReqId, LockAcquireArg},
    {MsgType::kLockReply, PayloadRule::kEmpty, kZeroPage, LockReplyArg},
    {MsgType::kLockRelease, PayloadRule::kEmpty, kZeroPage | kZeroArg, nullptr},
    {MsgType::kLockCancel, PayloadRule::kEmpty, kZeroPage | kZeroArg, nullptr},
    {MsgType::kLockSuccessor, PayloadRule::kEmpty, kNonZeroReqId, LockSuccessorArg},
    {MsgType::kLockHandoff, PayloadRule::kEmpty, kNonZeroReqId, LockHandoffArg},
    {MsgType::kLockPassed, PayloadRule::kEmpty, kNonZeroReqId, LockPassedArg},
    {MsgType::kBarrierEnter, PayloadRule::kName, kZeroRegion, MemberMaskArg},
    {MsgType::kBarrierReply, PayloadRule::kEmpty, kAnyFields, BarrierReplyArg},
    {MsgType::kBarrierCancel, PayloadRule::kName, kZeroRegion, MemberMaskArg},
    {MsgType::kStatsRequest, PayloadRule::kEmpty, kZeroRegion | kZeroPage | kZeroArg | kNonZeroReqId,
     nullptr},
    {MsgType::kStatsReply, PayloadRule::kArgWords, kZeroRegion | kZeroPage | kNonZeroReqId,
     StatsFieldsArg},
    {MsgType::kGoodbye, PayloadRule::kEmpty, kZeroRegion | kZeroPage, GoodbyeKindArg},
    {MsgType::kHeartbeat, PayloadRule::kEmpty, kZeroRegion | kZeroPage | kZeroArg, nullptr},
};

// Type byte -> 1 + its row in kRules; 0 for a type without a row.
struct RuleIndex {
  uint8_t row[256] = {};
};
constexpr RuleIndex MakeRuleIndex() {
  RuleIndex index;
  for (size_t i = 0; i < std::size(kRules); ++i) {
    index.row[static_cast<uint8_t>(kRules[i].type)] = static_cast<uint8_t>(i + 1);
  }
  return index;
}
constexpr RuleIndex kRuleIndex = MakeRuleIndex();
// Each type has one row: two MsgTypes given the same wire value would share (and hide) one.
constexpr bool EveryRowIndexed() {
  for (size_t i = 0; i < std::size(kRules); ++i) {
    if (kRuleIndex.row[static_cast<uint8_t>(kRules[i].type)] != i + 1) return false;
  }
  return true;
}
static_assert(EveryRowIndexed(), "two rows of kRules have the same MsgType value");

bool PayloadSizeOk(PayloadRule rule, const MessageFields& f) {
  const uint64_t len = f.payload_len;
  switch (rule) {
    case PayloadRule::kEmpty: return len == 0;
    case PayloadRule::kName: return len >= 1 && len <= kMaxNameLength;
    case PayloadRule::kOnePage: return len == kPageSize;
    case PayloadRule::kPageRun: return IsPageRun(len);
    case PayloadRule::kEmptyOrPageRun: return len == 0 || IsPageRun(len);
    case PayloadRule::kRunPrefix:
      // Fewer pages than asked for is legal (a prefix was granted), more is not.
      return len % kPageSize == 0 && len / kPageSize <= f.arg;
    case PayloadRule::kByPutKind:
      return f.arg == static_cast<uint64_t>(PutKind::kDropClean) ? len == 0 : IsPageRun(len);
    case PayloadRule::kArgWords:
      return f.arg <= kMaxStatsFields && len == f.arg * 8;
    case PayloadRule::kEmptyOrSize: return len == 0 || len == sizeof(uint64_t);
  }
  return false;
}

}  // namespace

const char* ViolationName(Violation v) {
  switch (v) {
    case Violation::kNone: return "no violation";
    case Violation::kClusterSize: return "cluster size outside 1..kMaxNodes";
    case Violation::kSrcOutsideCluster: return "src >= cluster size";
    case Violation::kPayloadTooLarge: return "payload_len > kMaxPayload";
    case Violation::kUnknownType: return "unknown message type";
    case Violation::kPayloadSize: return "payload_len illegal for the type";
    case Violation::kRegionNotZero:
      return "region must be 0 (kBarrierReply kAborted: a node mask within the cluster)";
    case Violation::kPageNotZero: return "page must be 0";
    case Violation::kArgNotZero: return "arg must be 0";
    case Violation::kReqIdZero: return "lock id 0";
    case Violation::kBadGrant: return "arg is not a Grant";
    case Violation::kBadPutKind: return "arg is not a PutKind";
    case Violation::kBadRecallKind: return "arg is not a RecallKind";
    case Violation::kBadRunLength:
      return "run length outside 1..kMaxRunPages (kStatsReply: counters outside 1..kMaxStatsFields)";
    case Violation::kLockLengthZero: return "lock length 0";
    case Violation::kBadLockMode: return "lock mode not shared or exclusive";
    case Violation::kBadLockFlags: return "unknown lock flags or reserved bits";
    case Violation::kLockRangeOverflow: return "lock offset + length overflows";
    case Violation::kBadLockReplyCode: return "unknown lock reply code";
    case Violation::kLockReplyReserved: return "lock reply reserved bits set";
    case Violation::kDiedWithoutGrant: return "previous_holder_died without a grant";
    case Violation::kPredecessorWithoutQueued:
      return "lock reply names a predecessor without kQueued (or a node without the flag)";
    case Violation::kNodeOutsideCluster: return "named lock node >= cluster size";
    case Violation::kBadMemberMask: return "bad member mask";
    case Violation::kBadBarrierReplyCode: return "unknown barrier reply code";
    case Violation::kBarrierReplyReserved: return "barrier reply reserved bits set";
    case Violation::kNodeWithoutNodeDown: return "node id without kNodeDown";
    case Violation::kDownNodeOutsideCluster: return "down node >= cluster size";
    case Violation::kNameHasNul: return "name holds a NUL byte";
    case Violation::kBadGoodbyeKind: return "arg is not a GoodbyeKind";
    case Violation::kBadRegionIdentity: return "not a region identity word";
    case Violation::kBadRegionSize: return "region size not a positive whole number of pages";
    case Violation::kCount: break;
  }
  return "unknown violation";
}

Violation FindViolation(const MessageFields& f, size_t cluster_size) {
  if (cluster_size == 0 || cluster_size > kMaxNodes) return Violation::kClusterSize;
  if (f.src >= cluster_size) return Violation::kSrcOutsideCluster;
  if (f.payload_len > kMaxPayload) return Violation::kPayloadTooLarge;
  const uint8_t row = kRuleIndex.row[f.type];
  if (row == 0) return Violation::kUnknownType;
  const Rule& rule = kRules[row - 1];
  if ((rule.fields & kZeroRegion) != 0 && f.region != 0) return Violation::kRegionNotZero;
  if ((rule.fields & kZeroPage) != 0 && f.page != 0) return Violation::kPageNotZero;
  if ((rule.fields & kZeroArg) != 0 && f.arg != 0) return Violation::kArgNotZero;
  if ((rule.fields & kNonZeroReqId) != 0 && f.req_id == 0) return Violation::kReqIdZero;
  if (rule.arg != nullptr) {
    if (Violation v = rule.arg(f, cluster_size); v != Violation::kNone) return v;
  }
  if (!PayloadSizeOk(rule.payload, f)) return Violation::kPayloadSize;
  return Violation::kNone;
}

Violation FindPayloadViolation(MsgType type, absl::Span<const uint8_t> payload) {
  const uint8_t row = kRuleIndex.row[static_cast<uint8_t>(type)];
  if (row == 0) return Violation::kNone;
  const PayloadRule rule = kRules[row - 1].payload;
  if (rule == PayloadRule::kName && std::memchr(payload.data(), 0, payload.size()) != nullptr) {
    return Violation::kNameHasNul;
  }
  if (rule == PayloadRule::kEmptyOrSize && payload.size() == sizeof(uint64_t) &&
      !IsRegionSize(DecodeRegionSize(payload))) {
    return Violation::kBadRegionSize;
  }
  return Violation::kNone;
}

absl::Status ViolationStatus(Violation v, const MessageFields& f) {
  if (v == Violation::kNone) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s (type %u): %s; src=%u region=%u page=%u req=%u arg=0x%x payload_len=%u",
      MsgTypeName(static_cast<MsgType>(f.type)), f.type, ViolationName(v), f.src, f.region,
      f.page, f.req_id, f.arg, f.payload_len));
}

absl::Status CheckMessage(const Message& m, size_t cluster_size) {
  const MessageFields f{static_cast<uint8_t>(m.type), m.src, m.payload.size(), m.region,
                        m.page, m.req_id, m.arg};
  Violation v = FindViolation(f, cluster_size);
  if (v == Violation::kNone) v = FindPayloadViolation(m.type, absl::MakeConstSpan(m.payload));
  return ViolationStatus(v, f);
}

}  // namespace dsm
