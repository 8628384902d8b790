#include "coherence/refusal.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dsm::coherence {

std::optional<Message> Refusal(const Message& request, ErrorCode why) {
  Message reply{MsgType::kNack,  request.dst, request.src, request.region,
                request.page,    request.req_id, static_cast<uint64_t>(why), {}};
  switch (request.type) {
    case MsgType::kGetS:
    case MsgType::kGetM:
      return reply;
    case MsgType::kGetSRun:
      if (request.arg == 0) return std::nullopt;  // no page waits on it
      reply.type = MsgType::kDataRun;
      reply.arg = std::min<uint64_t>(request.arg, kMaxRunPages);
      return reply;
    case MsgType::kInv:
      reply.type = MsgType::kInvAck;
      reply.arg = 0;
      return reply;
    case MsgType::kRecall:
      reply.type = MsgType::kRecallAck;
      reply.arg = static_cast<uint64_t>(PageState::kInvalid);
      return reply;
    case MsgType::kRegionOpen:
      reply.type = MsgType::kRegionOpenReply;
      return reply;
    case MsgType::kSyncReq:
      reply.type = MsgType::kSyncAck;
      return reply;
    default:
      return std::nullopt;
  }
}

ErrorCode StatusToCode(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return ErrorCode::kOk;
    case absl::StatusCode::kResourceExhausted:
      return ErrorCode::kNoSpace;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return ErrorCode::kPermissionDenied;
    case absl::StatusCode::kDeadlineExceeded:
      return ErrorCode::kTimedOut;
    case absl::StatusCode::kInvalidArgument:
      return ErrorCode::kInvalidRequest;
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnimplemented:
      return ErrorCode::kInternal;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
      return ErrorCode::kUnavailable;
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnknown:
    default:
      return ErrorCode::kIoError;
  }
}

absl::Status CodeToStatus(ErrorCode code, absl::string_view what) {
  switch (code) {
    case ErrorCode::kOk:
      return absl::OkStatus();
    case ErrorCode::kNoSuchRegion:
      return absl::NotFoundError(absl::StrCat(what, ": no such region at the home"));
    case ErrorCode::kSizeMismatch:
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the home maps this region with another size"));
    case ErrorCode::kPageLost:
      return absl::DataLossError(absl::StrCat(what, ": pages lost"));
    case ErrorCode::kIoError:
      return absl::InternalError(absl::StrCat(what, ": I/O error at the home"));
    case ErrorCode::kShuttingDown:
      return absl::UnavailableError(absl::StrCat(what, ": the home is shutting down"));
    case ErrorCode::kNotHome:
      return absl::FailedPreconditionError(absl::StrCat(what, ": not the home"));
    case ErrorCode::kPeerDown:
      return absl::UnavailableError(absl::StrCat(what, ": the node is down"));
    case ErrorCode::kTimedOut:
      return absl::DeadlineExceededError(absl::StrCat(what, ": timed out at the home"));
    case ErrorCode::kNoSpace:
      return absl::ResourceExhaustedError(absl::StrCat(what, ": no space at the home"));
    case ErrorCode::kPermissionDenied:
      return absl::PermissionDeniedError(
          absl::StrCat(what, ": the home may not access its file"));
    case ErrorCode::kInvalidRequest:
      return absl::InvalidArgumentError(absl::StrCat(what, ": the home rejected the request"));
    case ErrorCode::kInternal:
      return absl::InternalError(absl::StrCat(what, ": internal error at the home"));
    case ErrorCode::kUnavailable:
      return absl::UnavailableError(absl::StrCat(what, ": the home cannot serve it now"));
    case ErrorCode::kPeerLeft:
      return absl::UnavailableError(absl::StrCat(what, ": the node has left the cluster"));
  }
  return absl::InternalError(
      absl::StrCat(what, ": unknown error code ", static_cast<uint64_t>(code)));
}

}  // namespace dsm::coherence
