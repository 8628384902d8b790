// coherence::Refusal (one answer per request type) and the ErrorCode <-> Status mapping.
#include "coherence/refusal.h"

#include <vector>

#include "gtest/gtest.h"

namespace dsm::coherence {
namespace {

Message Request(MsgType t, uint64_t arg = 0) {
  return Message{t, /*src=*/3, /*dst=*/1, /*region=*/77, /*page=*/12, /*req_id=*/99, arg, {}};
}

void ExpectReplyHeader(const Message& reply) {
  EXPECT_EQ(reply.src, 1u);
  EXPECT_EQ(reply.dst, 3u);
  EXPECT_EQ(reply.region, 77u);
  EXPECT_EQ(reply.page, 12u);
  EXPECT_EQ(reply.req_id, 99u);
  EXPECT_TRUE(reply.payload.empty());
}

TEST(Refusal, EachRequestTypeGetsItsOwnAnswer) {
  for (MsgType t : {MsgType::kGetS, MsgType::kGetM}) {
    auto r = Refusal(Request(t), ErrorCode::kNotHome);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->type, MsgType::kNack);
    EXPECT_EQ(r->arg, uint64_t(ErrorCode::kNotHome));
    ExpectReplyHeader(*r);
  }
  auto run = Refusal(Request(MsgType::kGetSRun, 16), ErrorCode::kShuttingDown);
  ASSERT_TRUE(run.has_value());
  EXPECT_EQ(run->type, MsgType::kDataRun);  // nothing granted, nothing lost
  EXPECT_EQ(run->arg, 16u);
  ExpectReplyHeader(*run);
  EXPECT_EQ(Refusal(Request(MsgType::kGetSRun, 1000), ErrorCode::kNotHome)->arg, kMaxRunPages);
  EXPECT_FALSE(Refusal(Request(MsgType::kGetSRun, 0), ErrorCode::kNotHome).has_value());
  auto inv = Refusal(Request(MsgType::kInv), ErrorCode::kNoSuchRegion);
  ASSERT_TRUE(inv.has_value());
  EXPECT_EQ(inv->type, MsgType::kInvAck);
  ExpectReplyHeader(*inv);
  auto recall = Refusal(Request(MsgType::kRecall, uint64_t(RecallKind::kInvalidate)),
                        ErrorCode::kNoSuchRegion);
  ASSERT_TRUE(recall.has_value());
  EXPECT_EQ(recall->type, MsgType::kRecallAck);
  EXPECT_EQ(recall->arg, uint64_t(PageState::kInvalid));
  ExpectReplyHeader(*recall);
  auto open = Refusal(Request(MsgType::kRegionOpen), ErrorCode::kSizeMismatch);
  ASSERT_TRUE(open.has_value());
  EXPECT_EQ(open->type, MsgType::kRegionOpenReply);
  EXPECT_EQ(open->arg, uint64_t(ErrorCode::kSizeMismatch));
  auto sync = Refusal(Request(MsgType::kSyncReq), ErrorCode::kNoSpace);
  ASSERT_TRUE(sync.has_value());
  EXPECT_EQ(sync->type, MsgType::kSyncAck);
  EXPECT_EQ(sync->arg, uint64_t(ErrorCode::kNoSpace));
}

TEST(Refusal, AnswersAcksAndWriteBacksGetNone) {
  for (MsgType t : {MsgType::kPut, MsgType::kInvAck, MsgType::kRecallAck, MsgType::kData,
                    MsgType::kDataRun, MsgType::kGrant, MsgType::kNack, MsgType::kSyncAck,
                    MsgType::kRegionOpenReply, MsgType::kHello, MsgType::kLockAcquire}) {
    EXPECT_FALSE(Refusal(Request(t), ErrorCode::kNotHome).has_value()) << int(t);
  }
}

TEST(ErrorCodes, StatusesMapToTheCodeThatSaysWhatWentWrong) {
  EXPECT_EQ(StatusToCode(absl::OkStatus()), ErrorCode::kOk);
  EXPECT_EQ(StatusToCode(absl::ErrnoToStatus(ENOSPC, "write")), ErrorCode::kNoSpace);
  EXPECT_EQ(StatusToCode(absl::ErrnoToStatus(EDQUOT, "write")), ErrorCode::kNoSpace);
  EXPECT_EQ(StatusToCode(absl::ErrnoToStatus(EACCES, "open")), ErrorCode::kPermissionDenied);
  EXPECT_EQ(StatusToCode(absl::ErrnoToStatus(EIO, "fdatasync")), ErrorCode::kIoError);
  EXPECT_EQ(StatusToCode(absl::ErrnoToStatus(ENOENT, "open")), ErrorCode::kIoError);
  EXPECT_EQ(StatusToCode(absl::DeadlineExceededError("x")), ErrorCode::kTimedOut);
  EXPECT_EQ(StatusToCode(absl::InvalidArgumentError("x")), ErrorCode::kInvalidRequest);
  EXPECT_EQ(StatusToCode(absl::InternalError("x")), ErrorCode::kInternal);
  EXPECT_EQ(StatusToCode(absl::UnavailableError("x")), ErrorCode::kUnavailable);
  EXPECT_EQ(StatusToCode(absl::DataLossError("x")), ErrorCode::kIoError);
}

TEST(ErrorCodes, EveryCodeHasItsStatusAndTheNewCodesRoundTrip) {
  EXPECT_TRUE(CodeToStatus(ErrorCode::kOk, "op").ok());
  for (ErrorCode c : {ErrorCode::kTimedOut, ErrorCode::kNoSpace, ErrorCode::kPermissionDenied,
                      ErrorCode::kInvalidRequest, ErrorCode::kInternal,
                      ErrorCode::kUnavailable}) {
    EXPECT_EQ(StatusToCode(CodeToStatus(c, "op")), c) << uint64_t(c);
  }
  for (uint64_t v = 1; v <= uint64_t(ErrorCode::kPeerLeft); ++v) {
    absl::Status s = CodeToStatus(static_cast<ErrorCode>(v), "op");
    EXPECT_FALSE(s.ok()) << v;
    EXPECT_EQ(s.message().find("unknown error code"), absl::string_view::npos) << v;
  }
  EXPECT_NE(CodeToStatus(static_cast<ErrorCode>(200), "op").message().find("unknown"),
            absl::string_view::npos);
  EXPECT_TRUE(absl::IsUnavailable(CodeToStatus(ErrorCode::kPeerDown, "op")));
  EXPECT_TRUE(absl::IsDataLoss(CodeToStatus(ErrorCode::kPageLost, "op")));
}

}  // namespace
}  // namespace dsm::coherence
