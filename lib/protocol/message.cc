#include "protocol/message.h"

#include "absl/strings/str_format.h"

namespace dsm {

const char* MsgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kHello: return "Hello";
    case MsgType::kRegionOpen: return "RegionOpen";
    case MsgType::kRegionOpenReply: return "RegionOpenReply";
    case MsgType::kGetS: return "GetS";
    case MsgType::kGetM: return "GetM";
    case MsgType::kPut: return "Put";
    case MsgType::kSyncReq: return "SyncReq";
    case MsgType::kGetSRun: return "GetSRun";
    case MsgType::kData: return "Data";
    case MsgType::kGrant: return "Grant";
    case MsgType::kNack: return "Nack";
    case MsgType::kSyncAck: return "SyncAck";
    case MsgType::kDataRun: return "DataRun";
    case MsgType::kInv: return "Inv";
    case MsgType::kRecall: return "Recall";
    case MsgType::kInvAck: return "InvAck";
    case MsgType::kRecallAck: return "RecallAck";
    case MsgType::kLockAcquire: return "LockAcquire";
    case MsgType::kLockReply: return "LockReply";
    case MsgType::kLockRelease: return "LockRelease";
    case MsgType::kLockCancel: return "LockCancel";
    case MsgType::kLockSuccessor: return "LockSuccessor";
    case MsgType::kLockHandoff: return "LockHandoff";
    case MsgType::kLockPassed: return "LockPassed";
    case MsgType::kBarrierEnter: return "BarrierEnter";
    case MsgType::kBarrierReply: return "BarrierReply";
    case MsgType::kBarrierCancel: return "BarrierCancel";
    case MsgType::kStatsRequest: return "StatsRequest";
    case MsgType::kStatsReply: return "StatsReply";
    case MsgType::kGoodbye: return "Goodbye";
    case MsgType::kHeartbeat: return "Heartbeat";
  }
  return "Unknown";
}

std::string DebugString(const Message& m) {
  return absl::StrFormat("%s(%u) %u->%u region=%u page=%u req=%u arg=%u payload=%u",
                         MsgTypeName(m.type), static_cast<unsigned>(m.type), m.src, m.dst,
                         m.region, m.page, m.req_id, m.arg, m.payload.size());
}

}  // namespace dsm
