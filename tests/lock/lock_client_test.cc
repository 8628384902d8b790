#include "lock/lock_client.h"

#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "lock/test_util.h"
#include "protocol/validation.h"

namespace dsm::lock {
namespace {

using testing::RecordingPort;
constexpr LockMode kS = LockMode::kShared;
constexpr LockMode kX = LockMode::kExclusive;
constexpr NodeId kArbiter = 0;
constexpr RegionId kRegion = 1;

Message Reply(uint64_t id, LockReplyCode code, bool died = false, NodeId from = kArbiter) {
  Message m;
  m.type = MsgType::kLockReply;
  m.src = from;
  m.dst = 2;
  m.region = kRegion;
  m.req_id = id;
  m.arg = PackLockReply(code, died);
  return m;
}

class LockClientTest : public ::testing::Test {
 protected:
  LockClientTest() : client_(LockClient::Config{2}, &port_) {}

  // Starts a request; its outcome lands in results_[returned id].
  uint64_t Start(uint64_t offset, uint64_t len, LockMode mode,
                 absl::Time deadline = absl::InfiniteFuture(), bool try_lock = false,
                 uint64_t region_size = 1 << 20) {
    LockRequest r{offset, len, mode, try_lock, deadline};
    return client_.Acquire(kRegion, kArbiter, region_size, r, now_,
                           [this, next = next_slot_++](absl::StatusOr<LockHandle> h) {
                             ++calls_;
                             results_.resize(std::max(results_.size(), next + 1));
                             results_[next] = std::move(h);
                           });
  }
  std::optional<absl::StatusOr<LockHandle>>& Result(size_t slot) {
    results_.resize(std::max(results_.size(), slot + 1));
    return results_[slot];
  }

  RecordingPort port_;
  LockClient client_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
  size_t next_slot_ = 0;
  int calls_ = 0;
  std::vector<std::optional<absl::StatusOr<LockHandle>>> results_;
};

TEST_F(LockClientTest, AcquireSendsRequestAndGrantDeliversHandle) {
  const uint64_t id = Start(4096, 64, kX);
  EXPECT_NE(id, 0u);
  auto sent = port_.Take();
  ASSERT_EQ(sent.size(), 1u);
  const Message& m = sent[0];
  EXPECT_EQ(m.type, MsgType::kLockAcquire);
  EXPECT_EQ(m.dst, kArbiter);
  EXPECT_EQ(m.src, 2u);
  EXPECT_EQ(m.region, kRegion);
  EXPECT_EQ(m.page, 4096u);
  EXPECT_EQ(m.req_id, id);
  EXPECT_EQ(AcquireLen(m.arg), 64u);
  EXPECT_EQ(AcquireMode(m.arg), kX);
  EXPECT_FALSE(AcquireTry(m.arg));
  EXPECT_TRUE(CheckMessage(m, 4).ok());
  EXPECT_TRUE(client_.is_pending(id));

  client_.OnMessage(Reply(id, LockReplyCode::kQueued), now_);
  EXPECT_FALSE(Result(0).has_value());
  client_.OnMessage(Reply(id, LockReplyCode::kGranted, /*died=*/true), now_);
  ASSERT_TRUE(Result(0).has_value());
  ASSERT_TRUE(Result(0)->ok());
  EXPECT_EQ((*Result(0))->id(), id);
  EXPECT_EQ((*Result(0))->offset(), 4096u);
  EXPECT_EQ((*Result(0))->length(), 64u);
  EXPECT_EQ((*Result(0))->mode(), kX);
  EXPECT_TRUE((*Result(0))->previous_holder_died());
  EXPECT_TRUE(client_.is_held(id));
  // A duplicate grant is ignored; the callback ran once.
  client_.OnMessage(Reply(id, LockReplyCode::kGranted), now_);
  EXPECT_EQ(calls_, 1);

  EXPECT_TRUE(client_.Release(id).ok());
  sent = port_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].type, MsgType::kLockRelease);
  EXPECT_EQ(sent[0].req_id, id);
  EXPECT_TRUE(CheckMessage(sent[0], 4).ok());
  EXPECT_EQ(client_.Release(id).code(), absl::StatusCode::kNotFound);
}

// An arbiter that never answers a request (not even kQueued) is reported overdue after the
// timeout, so the node declares it down and the request fails instead of waiting forever. A
// queued request is not overdue: waiting for a held lock is what it asked for.
TEST_F(LockClientTest, ArbiterSilentPastTheTimeoutIsReportedOverdue) {
  const absl::Duration timeout = absl::Seconds(10);
  const uint64_t silent = Start(0, 8, kX);
  const uint64_t queued = Start(64, 8, kX);
  client_.OnMessage(Reply(queued, LockReplyCode::kQueued), now_);
  std::vector<NodeId> overdue;
  client_.CollectOverdue(now_ + timeout, timeout, &overdue);
  EXPECT_TRUE(overdue.empty()) << "reported before the timeout";
  client_.CollectOverdue(now_ + timeout + absl::Milliseconds(1), timeout, &overdue);
  EXPECT_EQ(overdue, std::vector<NodeId>{kArbiter});
  client_.OnPeerDown(kArbiter);  // what the node layer then does
  ASSERT_TRUE(Result(0).has_value());
  EXPECT_EQ(Result(0)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(client_.is_pending(silent));
  // Answered (queued) requests alone are never overdue.
  LockClient other(LockClient::Config{2}, &port_);
  LockRequest r{0, 8, kX, false, absl::InfiniteFuture()};
  const uint64_t id = other.Acquire(kRegion, kArbiter, 0, r, now_, [](absl::StatusOr<LockHandle>) {});
  other.OnMessage(Reply(id, LockReplyCode::kQueued), now_);
  overdue.clear();
  other.CollectOverdue(now_ + absl::Hours(1), timeout, &overdue);
  EXPECT_TRUE(overdue.empty());
}

TEST_F(LockClientTest, TryLockBusyIsAborted) {
  const uint64_t id = Start(0, 1, kS, absl::InfiniteFuture(), /*try_lock=*/true);
  EXPECT_TRUE(AcquireTry(port_.Take()[0].arg));
  client_.OnMessage(Reply(id, LockReplyCode::kBusy), now_);
  ASSERT_TRUE(Result(0).has_value());
  EXPECT_EQ(Result(0)->status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(client_.num_pending(), 0u);
}

TEST_F(LockClientTest, DeadlineExpiryCancelsAndIgnoresLateGrant) {
  const uint64_t id = Start(0, 10, kX, now_ + absl::Milliseconds(5));
  port_.Take();
  client_.OnMessage(Reply(id, LockReplyCode::kQueued), now_);
  EXPECT_EQ(client_.NextDeadline(), now_ + absl::Milliseconds(5));
  client_.OnTick(now_ + absl::Milliseconds(4));
  EXPECT_FALSE(Result(0).has_value());
  client_.OnTick(now_ + absl::Milliseconds(5));
  ASSERT_TRUE(Result(0).has_value());
  EXPECT_EQ(Result(0)->status().code(), absl::StatusCode::kDeadlineExceeded);
  auto sent = port_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].type, MsgType::kLockCancel);
  EXPECT_EQ(sent[0].req_id, id);
  EXPECT_EQ(client_.NextDeadline(), absl::InfiniteFuture());
  // The grant crossed the cancel: ignored here (the arbiter releases it on the cancel).
  client_.OnMessage(Reply(id, LockReplyCode::kGranted), now_);
  EXPECT_EQ(calls_, 1);
  EXPECT_EQ(client_.counters().stray_replies, 1u);
  EXPECT_FALSE(client_.is_held(id));
}

TEST_F(LockClientTest, GrantBeforeDeadlineClearsIt) {
  const uint64_t id = Start(0, 10, kX, now_ + absl::Milliseconds(5));
  client_.OnMessage(Reply(id, LockReplyCode::kGranted), now_);
  EXPECT_EQ(client_.NextDeadline(), absl::InfiniteFuture());
  client_.OnTick(now_ + absl::Seconds(1));
  EXPECT_TRUE(client_.is_held(id));
}

TEST_F(LockClientTest, ArbiterDownFailsPendingAndLosesHeld) {
  const uint64_t held = Start(0, 10, kX);
  const uint64_t queued = Start(0, 10, kX);
  const uint64_t sent_only = Start(100, 10, kS);
  client_.OnMessage(Reply(held, LockReplyCode::kGranted), now_);
  client_.OnMessage(Reply(queued, LockReplyCode::kQueued), now_);
  port_.Take();
  client_.OnPeerDown(kArbiter);
  EXPECT_EQ(Result(1)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Result(2)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_.num_pending(), 0u);
  EXPECT_EQ(client_.Release(held).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_.Release(held).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(port_.Take().empty());  // nothing is sent to a down arbiter
  // Later requests to that arbiter fail at once.
  Start(0, 1, kS);
  EXPECT_EQ(Result(3)->status().code(), absl::StatusCode::kUnavailable);
  (void)sent_only;
}

TEST_F(LockClientTest, ReleaseOfPendingRequestCancelsIt) {
  const uint64_t id = Start(0, 10, kX);
  port_.Take();
  EXPECT_TRUE(client_.Release(id).ok());
  EXPECT_EQ(Result(0)->status().code(), absl::StatusCode::kCancelled);
  auto sent = port_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].type, MsgType::kLockCancel);
}

TEST_F(LockClientTest, ImmediateErrorsAreDeliveredBeforeAcquireReturns) {
  Start(0, 0, kX);                                    // empty
  Start((1 << 20) - 1, 2, kX);                        // past the region
  Start(UINT64_MAX, 2, kX, absl::InfiniteFuture(), false, 0);  // overflow
  Start(0, 1, kX, now_);                              // deadline passed
  EXPECT_EQ(calls_, 4);
  EXPECT_EQ(Result(0)->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Result(1)->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Result(2)->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Result(3)->status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(port_.Take().empty());
}

TEST_F(LockClientTest, ReplyFromAnotherNodeIsIgnored) {
  const uint64_t id = Start(0, 10, kX);
  client_.OnMessage(Reply(id, LockReplyCode::kGranted, false, /*from=*/3), now_);
  EXPECT_FALSE(Result(0).has_value());
  EXPECT_TRUE(client_.is_pending(id));
}

TEST_F(LockClientTest, ErrorCodesMapToDocumentedStatuses) {
  const LockReplyCode codes[] = {LockReplyCode::kBadRequest, LockReplyCode::kNoSuchRegion,
                                 LockReplyCode::kNotArbiter, LockReplyCode::kShuttingDown};
  const absl::StatusCode want[] = {
      absl::StatusCode::kInvalidArgument, absl::StatusCode::kFailedPrecondition,
      absl::StatusCode::kInternal, absl::StatusCode::kUnavailable};
  for (int i = 0; i < 4; ++i) {
    const uint64_t id = Start(0, 1, kS);
    client_.OnMessage(Reply(id, codes[i]), now_);
    EXPECT_EQ(Result(i)->status().code(), want[i]) << i;
  }
}

TEST_F(LockClientTest, ForgetRegionAndFailAll) {
  const uint64_t held = Start(0, 10, kX);
  const uint64_t pending = Start(0, 10, kX);
  client_.OnMessage(Reply(held, LockReplyCode::kGranted), now_);
  port_.Take();
  client_.ForgetRegion(kRegion);
  EXPECT_EQ(Result(1)->status().code(), absl::StatusCode::kUnavailable);
  auto sent = port_.Take();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].type, MsgType::kLockRelease);
  EXPECT_EQ(sent[0].req_id, held);
  EXPECT_EQ(sent[1].type, MsgType::kLockCancel);
  EXPECT_EQ(sent[1].req_id, pending);
  EXPECT_EQ(client_.num_held() + client_.num_pending(), 0u);

  Start(0, 10, kX);
  client_.FailAll(absl::UnavailableError("shutting down"));
  EXPECT_EQ(Result(2)->status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(LockClientTest, CallbackMayStartAndReleaseReentrantly) {
  uint64_t inner = 0;
  LockRequest r{0, 10, kX, false, absl::InfiniteFuture()};
  const uint64_t outer = client_.Acquire(kRegion, kArbiter, 0, r, now_,
                                         [&](absl::StatusOr<LockHandle> h) {
    ASSERT_TRUE(h.ok());
    EXPECT_TRUE(client_.Release(h->id()).ok());
    inner = client_.Acquire(kRegion, kArbiter, 0, r, now_, [](absl::StatusOr<LockHandle>) {});
  });
  client_.OnMessage(Reply(outer, LockReplyCode::kGranted), now_);
  EXPECT_TRUE(client_.is_pending(inner));
  EXPECT_FALSE(client_.is_held(outer));
}

}  // namespace
}  // namespace dsm::lock
