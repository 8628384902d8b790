// What a node answers when it cannot serve a request, and how the wire's ErrorCode relates to
// absl::Status. One place decides, so the engine (unknown region, not the home, peer down) and
// the Directory (not the home, closing, lost page, unreadable page) always answer alike.
//
// Pure functions; any thread.
#pragma once

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "coherence/types.h"

namespace dsm::coherence {

// The answer to `request` when it cannot be served for reason `why`, from request.dst to
// request.src (same region, page and req_id); nullopt if the request type needs no answer
// (write-backs, acks, answers, stale grants). Per type:
//  - kGetS, kGetM:     kNack, arg = why (the page fails at the requester).
//  - kGetSRun:         kDataRun granting nothing, arg = pages asked for (clamped to
//                      kMaxRunPages; nullopt for 0 pages): a refused speculation never loses a
//                      page, the requester asks for the pages it needs one by one.
//  - kInv:             kInvAck (a node holds nothing of a region it cannot serve).
//  - kRecall:          kRecallAck, arg = kInvalid, no data (likewise).
//  - kRegionOpen:      kRegionOpenReply, arg = why (kOk: the same reply accepts it).
//  - kSyncReq:         kSyncAck, arg = why (kOk: the same reply confirms it).
std::optional<Message> Refusal(const Message& request, ErrorCode why);

// The wire code for a failed operation's status (kOk for OK). Statuses from file I/O
// (absl::ErrnoToStatus) land on the code that tells the requester what went wrong:
//   DataLoss, NotFound, AlreadyExists, FailedPrecondition, OutOfRange, Unknown -> kIoError;
//   ResourceExhausted -> kNoSpace; PermissionDenied, Unauthenticated -> kPermissionDenied;
//   DeadlineExceeded -> kTimedOut; InvalidArgument -> kInvalidRequest;
//   Internal, Unimplemented -> kInternal; Unavailable, Cancelled, Aborted -> kUnavailable.
ErrorCode StatusToCode(const absl::Status& s);

// The status an application sees for a code a peer answered; `what` prefixes the message.
absl::Status CodeToStatus(ErrorCode code, absl::string_view what);

}  // namespace dsm::coherence
