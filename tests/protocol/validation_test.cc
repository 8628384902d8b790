// The validation table, rule by rule, through the wire decoder: for every rule of
// protocol/message.h one frame that satisfies it and one that breaks only it, both written as
// raw bytes (not with EncodeMessage), so a rule the decoder stops enforcing fails here.
#include "protocol/validation.h"

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "protocol/lock_fields.h"
#include "protocol/region_identity.h"
#include "transport/wire.h"

namespace dsm {
namespace {

constexpr size_t kCluster = 4;

// A frame's header fields, written byte by byte in the layout of transport/wire.h.
struct Frame {
  uint8_t type = static_cast<uint8_t>(MsgType::kGetS);
  uint32_t src = 1;
  uint64_t region = 7;
  uint64_t page = 0;
  uint64_t req_id = 1;
  uint64_t arg = 0;
  std::string payload;
  // Overrides the header's payload_len (the payload itself stays as given).
  int64_t claimed_len = -1;
};

void Le(std::vector<uint8_t>& b, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

std::vector<uint8_t> Bytes(const Frame& f) {
  std::vector<uint8_t> b(48 + f.payload.size());
  Le(b, 0, 0x314d5344, 4);  // "DSM1"
  Le(b, 4, 1, 2);           // version
  b[6] = f.type;
  b[7] = 0;  // flags
  Le(b, 8, f.src, 4);
  Le(b, 12, f.claimed_len >= 0 ? static_cast<uint64_t>(f.claimed_len) : f.payload.size(), 4);
  Le(b, 16, f.region, 8);
  Le(b, 24, f.page, 8);
  Le(b, 32, f.req_id, 8);
  Le(b, 40, f.arg, 8);
  if (!f.payload.empty()) std::memcpy(b.data() + 48, f.payload.data(), f.payload.size());
  return b;
}

uint8_t T(MsgType t) { return static_cast<uint8_t>(t); }
std::string Pages(size_t n) { return std::string(n * kPageSize, 'p'); }

uint64_t Acquire(uint64_t len, uint64_t mode, uint64_t flags) {
  return len | (mode << lock::kAcquireModeShift) | (flags << lock::kAcquireFlagsShift);
}

// A legal identity word: home 2, fixed, file-backed.
const uint64_t kIdentity = PackIdentityWord({4096, 2, HomePolicy::kFixed, Backing::kFile});

Frame Open(uint64_t identity, uint64_t size = 4096) {
  return Frame{T(MsgType::kRegionOpen), 1, 7, identity, 9, size, "region"};
}
std::string SizePayload(uint64_t size) {
  const std::vector<uint8_t> b = EncodeRegionSize(size);
  return std::string(b.begin(), b.end());
}
Frame OpenReply(uint64_t identity, const std::string& payload) {
  return Frame{T(MsgType::kRegionOpenReply), 1, 7, identity, 9, 0, payload};
}

Frame LockAcquire(uint64_t arg) {
  return Frame{T(MsgType::kLockAcquire), 1, 7, 4096, 5, arg, ""};
}
Frame LockReply(uint64_t arg) { return Frame{T(MsgType::kLockReply), 1, 7, 0, 5, arg, ""}; }
Frame BarrierReply(uint64_t arg) {
  return Frame{T(MsgType::kBarrierReply), 1, 0, 3, 5, arg, ""};
}
Frame BarrierEnter(uint64_t members) {
  return Frame{T(MsgType::kBarrierEnter), 1, 0, 3, 5, members, "group"};
}

struct Case {
  Violation rule;
  Frame good;
  Frame bad;
  size_t bad_cluster = kCluster;  // only kClusterSize varies it
  bool payload_content = false;   // a rule on the payload's bytes: Peek cannot know it
};

std::vector<Case> Cases() {
  using V = Violation;
  Frame get_s{T(MsgType::kGetS), 1, 7, 3, 9, 0, ""};
  std::vector<Case> c;
  c.push_back({V::kClusterSize, get_s, get_s, 0});
  c.push_back({V::kClusterSize, get_s, get_s, kMaxNodes + 1});
  {
    Frame bad = get_s;
    bad.src = kCluster;
    c.push_back({V::kSrcOutsideCluster, get_s, bad});
  }
  {
    Frame good{T(MsgType::kDataRun), 1, 7, 3, 9, kMaxRunPages, Pages(kMaxRunPages)};
    Frame bad = good;
    bad.payload = std::string(kMaxPayload + 1, 'p');
    c.push_back({V::kPayloadTooLarge, good, bad});
  }
  {
    Frame bad = get_s;
    bad.type = 15;  // between kGetSRun and kData: not declared
    c.push_back({V::kUnknownType, get_s, bad});
    bad.type = 59;  // between kHeartbeat and the RDMA control: not declared
    c.push_back({V::kUnknownType, get_s, bad});
  }
  {
    Frame bad = get_s;
    bad.payload = "x";
    c.push_back({V::kPayloadSize, get_s, bad});
    Frame data{T(MsgType::kData), 1, 7, 3, 9, 1, Pages(1)};
    Frame half = data;
    half.payload.resize(kPageSize / 2);
    c.push_back({V::kPayloadSize, data, half});
    Frame two = data;  // kData carries one page; runs travel as kDataRun
    two.payload = Pages(2);
    c.push_back({V::kPayloadSize, data, two});
    Frame run{T(MsgType::kDataRun), 1, 7, 3, 9, 2, Pages(2)};
    Frame longer = run;
    longer.payload = Pages(3);
    c.push_back({V::kPayloadSize, run, longer});
    Frame name{T(MsgType::kRegionOpen), 1, 7, kIdentity, 9, 4096,
               std::string(kMaxNameLength, 'n')};
    Frame long_name = name;
    long_name.payload += "n";
    c.push_back({V::kPayloadSize, name, long_name});
    Frame clean{T(MsgType::kPut), 1, 7, 3, 0, static_cast<uint64_t>(PutKind::kDropClean), ""};
    Frame clean_with_data = clean;
    clean_with_data.payload = Pages(1);
    c.push_back({V::kPayloadSize, clean, clean_with_data});
    Frame barrier = BarrierEnter(0b0011);
    Frame no_name = barrier;
    no_name.payload.clear();
    c.push_back({V::kPayloadSize, barrier, no_name});
    Frame with_payload = LockReply(1);
    with_payload.payload = "x";
    c.push_back({V::kPayloadSize, LockReply(1), with_payload});
    // kRegionOpenReply: nothing, or exactly one 8-byte size.
    c.push_back({V::kPayloadSize, OpenReply(kIdentity, SizePayload(4096)),
                 OpenReply(kIdentity, SizePayload(4096) + "x")});
    c.push_back({V::kPayloadSize, OpenReply(0, ""), OpenReply(0, "1234")});
  }
  {
    Frame bad = BarrierEnter(0b0011);
    bad.region = 1;
    c.push_back({V::kRegionNotZero, BarrierEnter(0b0011), bad});
    Frame reply_bad = BarrierReply(1);
    reply_bad.region = 1;
    c.push_back({V::kRegionNotZero, BarrierReply(1), reply_bad});
  }
  {
    Frame bad = LockReply(1);
    bad.page = 1;
    c.push_back({V::kPageNotZero, LockReply(1), bad});
    Frame release{T(MsgType::kLockRelease), 1, 7, 0, 5, 0, ""};
    Frame release_bad = release;
    release_bad.page = 4096;
    c.push_back({V::kPageNotZero, release, release_bad});
    // A reply without the answerer's size carries no identity either.
    c.push_back({V::kPageNotZero, OpenReply(0, ""), OpenReply(kIdentity, "")});
  }
  {
    Frame release{T(MsgType::kLockRelease), 1, 7, 0, 5, 0, ""};
    Frame cancel{T(MsgType::kLockCancel), 1, 7, 0, 5, 0, ""};
    Frame bad = release;
    bad.arg = 1;
    c.push_back({V::kArgNotZero, release, bad});
    bad = cancel;
    bad.arg = 1;
    c.push_back({V::kArgNotZero, cancel, bad});
  }
  {
    // A heartbeat carries nothing but its sender.
    Frame beat{T(MsgType::kHeartbeat), 1, 0, 0, 0, 0, ""};
    Frame bad = beat;
    bad.arg = 1;
    c.push_back({V::kArgNotZero, beat, bad});
    bad = beat;
    bad.page = 1;
    c.push_back({V::kPageNotZero, beat, bad});
    bad = beat;
    bad.region = 1;
    c.push_back({V::kRegionNotZero, beat, bad});
    bad = beat;
    bad.payload = "x";
    c.push_back({V::kPayloadSize, beat, bad});
  }
  {
    Frame bad = LockAcquire(Acquire(1, 1, 0));
    bad.req_id = 0;
    c.push_back({V::kReqIdZero, LockAcquire(Acquire(1, 1, 0)), bad});
  }
  {
    Frame grant{T(MsgType::kGrant), 1, 7, 3, 9, static_cast<uint64_t>(Grant::kModified), ""};
    Frame bad = grant;
    bad.arg = 3;
    c.push_back({V::kBadGrant, grant, bad});
  }
  {
    Frame put{T(MsgType::kPut), 1, 7, 3, 0, static_cast<uint64_t>(PutKind::kWritebackKeep),
              Pages(2)};
    Frame bad = put;
    bad.arg = 4;
    c.push_back({V::kBadPutKind, put, bad});
  }
  {
    Frame recall{T(MsgType::kRecall), 1, 7, 3, 9, static_cast<uint64_t>(RecallKind::kInvalidate),
                 ""};
    Frame bad = recall;
    bad.arg = 3;
    c.push_back({V::kBadRecallKind, recall, bad});
  }
  {
    Frame bye{T(MsgType::kGoodbye), 1, 0, 0, 0, static_cast<uint64_t>(GoodbyeKind::kLeaving), ""};
    Frame bad = bye;
    bad.arg = 3;
    c.push_back({V::kBadGoodbyeKind, bye, bad});
    bad.arg = 0;
    c.push_back({V::kBadGoodbyeKind, bye, bad});
    Frame ready = bye;
    ready.arg = static_cast<uint64_t>(GoodbyeKind::kFinalizeReady);
    bad = ready;
    bad.region = 7;
    c.push_back({V::kRegionNotZero, ready, bad});
    bad = ready;
    bad.page = 1;
    c.push_back({V::kPageNotZero, ready, bad});
    bad = ready;
    bad.payload = "x";
    c.push_back({V::kPayloadSize, ready, bad});
  }
  {
    Frame run{T(MsgType::kGetSRun), 1, 7, 3, 9, kMaxRunPages, ""};
    Frame bad = run;
    bad.arg = kMaxRunPages + 1;
    c.push_back({V::kBadRunLength, run, bad});
    bad.arg = 0;
    c.push_back({V::kBadRunLength, run, bad});
  }
  {
    // Statistics: a request carries only its id; a reply exactly arg counters.
    const Frame request{T(MsgType::kStatsRequest), 1, 0, 0, 5, 0, ""};
    Frame no_id = request;
    no_id.req_id = 0;
    c.push_back({V::kReqIdZero, request, no_id});
    Frame with_arg = request;
    with_arg.arg = 1;
    c.push_back({V::kArgNotZero, request, with_arg});
    const Frame reply{T(MsgType::kStatsReply), 1, 0, 0, 5, 2, std::string(16, 'x')};
    Frame short_reply = reply;
    short_reply.payload.resize(8);
    c.push_back({V::kPayloadSize, reply, short_reply});
    Frame no_fields = reply;
    no_fields.arg = 0;
    no_fields.payload.clear();
    c.push_back({V::kBadRunLength, reply, no_fields});
    Frame with_page = reply;
    with_page.page = 1;
    c.push_back({V::kPageNotZero, reply, with_page});
  }
  c.push_back({V::kLockLengthZero, LockAcquire(Acquire(1, 1, 0)), LockAcquire(Acquire(0, 1, 0))});
  c.push_back({V::kBadLockMode, LockAcquire(Acquire(1, 2, 0)), LockAcquire(Acquire(1, 3, 0))});
  c.push_back({V::kBadLockMode, LockAcquire(Acquire(1, 1, 0)), LockAcquire(Acquire(1, 0, 0))});
  c.push_back({V::kBadLockFlags, LockAcquire(Acquire(1, 1, 1)), LockAcquire(Acquire(1, 1, 2))});
  c.push_back({V::kBadLockFlags, LockAcquire(Acquire(1, 1, 0)),
               LockAcquire(Acquire(1, 1, 0) | (uint64_t{1} << 56))});
  {
    Frame good = LockAcquire(Acquire(1, 1, 0));
    good.page = UINT64_MAX - 1;  // the last byte
    Frame bad = good;
    bad.page = UINT64_MAX;
    c.push_back({V::kLockRangeOverflow, good, bad});
  }
  c.push_back({V::kBadLockReplyCode, LockReply(lock::kMaxLockReplyCode),
               LockReply(lock::kMaxLockReplyCode + 1)});
  c.push_back({V::kBadLockReplyCode, LockReply(1), LockReply(9)});
  c.push_back({V::kBadLockReplyCode, LockReply(1), LockReply(0)});
  c.push_back({V::kLockReplyReserved, LockReply(1 | (1 << 8)), LockReply(1 | (1 << 10))});
  c.push_back({V::kLockReplyReserved, LockReply(lock::PackQueuedWithPredecessor(3)),
               LockReply(lock::PackQueuedWithPredecessor(3) | (uint64_t{1} << 24))});
  // A predecessor only with kQueued, and only with its flag; within the cluster.
  c.push_back({V::kPredecessorWithoutQueued, LockReply(lock::PackQueuedWithPredecessor(3)),
               LockReply(lock::PackQueuedWithPredecessor(3) - 1)});
  c.push_back({V::kPredecessorWithoutQueued, LockReply(2), LockReply(2 | (3 << 16))});
  c.push_back({V::kNodeOutsideCluster, LockReply(lock::PackQueuedWithPredecessor(3)),
               LockReply(lock::PackQueuedWithPredecessor(kCluster))});
  {
    // kLockSuccessor / kLockHandoff / kLockPassed: page = the other lock's id (non-zero).
    Frame hint{T(MsgType::kLockSuccessor), 1, 7, 8, 5, lock::PackSuccessorArg(3, true), ""};
    Frame handoff{T(MsgType::kLockHandoff), 1, 7, 8, 5, 1, ""};
    Frame passed{T(MsgType::kLockPassed), 1, 7, 8, 5, 3, ""};
    for (const Frame& good : {hint, handoff, passed}) {
      Frame bad = good;
      bad.page = 0;
      c.push_back({V::kReqIdZero, good, bad});
      bad = good;
      bad.req_id = 0;
      c.push_back({V::kReqIdZero, good, bad});
      bad = good;
      bad.payload = "x";
      c.push_back({V::kPayloadSize, good, bad});
    }
    Frame bad = hint;
    bad.arg = lock::PackSuccessorArg(kCluster, false);
    c.push_back({V::kNodeOutsideCluster, hint, bad});
    bad.arg = hint.arg | (1 << 9);
    c.push_back({V::kLockReplyReserved, hint, bad});
    bad = passed;
    bad.arg = kCluster;
    c.push_back({V::kNodeOutsideCluster, passed, bad});
    bad.arg = 3 | (1 << 8);  // the arbiter computes the died flag itself
    c.push_back({V::kLockReplyReserved, passed, bad});
    bad = handoff;
    bad.arg = 2;
    c.push_back({V::kLockReplyReserved, handoff, bad});
  }
  c.push_back({V::kDiedWithoutGrant, LockReply(1 | (1 << 8)), LockReply(2 | (1 << 8))});
  c.push_back({V::kBadMemberMask, BarrierEnter(0b0010), BarrierEnter(0b0001)});  // src 1 absent
  c.push_back({V::kBadMemberMask, BarrierEnter(0b1010), BarrierEnter(0b11010)});  // node 4
  c.push_back({V::kBadMemberMask, BarrierEnter(0b0010), BarrierEnter(0)});
  c.push_back({V::kBadBarrierReplyCode, BarrierReply(lock::kMaxBarrierReplyCode),
               BarrierReply(lock::kMaxBarrierReplyCode + 1)});
  c.push_back({V::kBadBarrierReplyCode, BarrierReply(1), BarrierReply(0)});
  c.push_back({V::kBarrierReplyReserved, BarrierReply(2 | (3 << 8)), BarrierReply(1 | (1 << 16))});
  c.push_back({V::kNodeWithoutNodeDown, BarrierReply(2 | (1 << 8)), BarrierReply(3 | (1 << 8))});
  c.push_back({V::kDownNodeOutsideCluster, BarrierReply(2 | (3 << 8)), BarrierReply(2 | (4 << 8))});
  {
    // region: only kAborted carries one (the entered members), and only within the cluster.
    Frame aborted = BarrierReply(3);
    aborted.region = 0b0101;
    Frame released = BarrierReply(1);
    released.region = 0b0101;
    Frame outside = BarrierReply(3);
    outside.region = 0b10000;
    c.push_back({V::kRegionNotZero, aborted, released});
    c.push_back({V::kRegionNotZero, aborted, outside});
  }
  {
    // The identity word: home < cluster size, policy 1..2, backing 1..2, bits 24..63 zero,
    // and never 0 (the layout before identities).
    const uint64_t interleaved_anon =
        PackIdentityWord({4096, 3, HomePolicy::kInterleaved, Backing::kAnonymous});
    for (uint64_t bad : {uint64_t{0}, (kIdentity & ~uint64_t{0xff}) | kCluster,
                         (kIdentity & ~uint64_t{0xff00}) | (3 << 8),
                         kIdentity & ~uint64_t{0xff00}, (kIdentity & ~uint64_t{0xff0000}) | (3 << 16),
                         kIdentity & ~uint64_t{0xff0000}, kIdentity | (uint64_t{1} << 24),
                         kIdentity | (uint64_t{1} << 63)}) {
      c.push_back({V::kBadRegionIdentity, Open(interleaved_anon), Open(bad)});
      c.push_back({V::kBadRegionIdentity, OpenReply(kIdentity, SizePayload(8192)),
                   OpenReply(bad, SizePayload(8192))});
    }
    // Sizes are whole pages, never zero: in kRegionOpen's arg and kRegionOpenReply's payload.
    c.push_back({V::kBadRegionSize, Open(kIdentity, 8192), Open(kIdentity, 0)});
    c.push_back({V::kBadRegionSize, Open(kIdentity, 8192), Open(kIdentity, 4095)});
    Case zero{V::kBadRegionSize, OpenReply(kIdentity, SizePayload(1 << 20)),
              OpenReply(kIdentity, SizePayload(0))};
    zero.payload_content = true;
    c.push_back(zero);
    Case partial = zero;
    partial.bad = OpenReply(kIdentity, SizePayload(4097));
    c.push_back(partial);
  }
  {
    Frame open{T(MsgType::kRegionOpen), 1, 7, kIdentity, 9, 4096, "abc"};
    Frame bad = open;
    bad.payload[1] = '\0';
    c.push_back({V::kNameHasNul, open, bad, kCluster, true});
    Frame cancel = BarrierEnter(0b0010);
    cancel.type = T(MsgType::kBarrierCancel);
    Frame cancel_bad = cancel;
    cancel_bad.payload[0] = '\0';
    c.push_back({V::kNameHasNul, cancel, cancel_bad, kCluster, true});
  }
  return c;
}

std::string Describe(const Case& k) {
  return std::string(ViolationName(k.rule)) + " (type " + std::to_string(k.bad.type) + ")";
}

TEST(Validation, EveryRuleAcceptsItsGoodFrameAndRejectsItsBadOneThroughTheDecoder) {
  for (const Case& k : Cases()) {
    SCOPED_TRACE(Describe(k));
    const std::vector<uint8_t> good = Bytes(k.good);
    auto decoded = DecodeMessage(absl::MakeConstSpan(good), kCluster);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_TRUE(ValidateMessage(*decoded, kCluster).ok());

    const std::vector<uint8_t> bad = Bytes(k.bad);
    auto rejected = DecodeMessage(absl::MakeConstSpan(bad), k.bad_cluster);
    ASSERT_FALSE(rejected.ok());
    EXPECT_TRUE(absl::IsInvalidArgument(rejected.status()));
    // Rejected for this rule, not for another one the frame happens to break.
    EXPECT_NE(rejected.status().message().find(ViolationName(k.rule)), std::string::npos)
        << rejected.status();
    // Header rules are known before the payload arrives: a stream parser never waits for it.
    if (!k.payload_content) {
      EXPECT_FALSE(PeekFrameLength(absl::MakeConstSpan(bad), k.bad_cluster).ok());
    }
  }
}

TEST(Validation, EveryRuleOfTheTableHasAWireTest) {
  std::set<Violation> covered;
  for (const Case& k : Cases()) covered.insert(k.rule);
  for (int v = 1; v < static_cast<int>(Violation::kCount); ++v) {
    EXPECT_TRUE(covered.count(static_cast<Violation>(v)) == 1)
        << ViolationName(static_cast<Violation>(v)) << " has no accepted/rejected frame pair";
  }
}

// What the lock layer packs, the table accepts: every reply code, both modes, the try flag.
TEST(Validation, TheLockPackingPassesTheTable) {
  for (uint8_t code = 1; code <= lock::kMaxLockReplyCode; ++code) {
    const auto c = static_cast<lock::LockReplyCode>(code);
    Message m{MsgType::kLockReply, 1, 0, 7, 0, 5, lock::PackLockReply(c), {}};
    EXPECT_TRUE(CheckMessage(m, kCluster).ok()) << code;
    EXPECT_EQ(lock::LockReplyCodeOf(m.arg), c);
    m.arg = lock::PackLockReply(c, /*previous_holder_died=*/true);
    EXPECT_EQ(CheckMessage(m, kCluster).ok(), c == lock::LockReplyCode::kGranted) << code;
  }
  for (NodeId pred = 0; pred < kCluster; ++pred) {
    Message m{MsgType::kLockReply, 1, 0, 7, 0, 5, lock::PackQueuedWithPredecessor(pred), {}};
    EXPECT_TRUE(CheckMessage(m, kCluster).ok()) << pred;
    EXPECT_EQ(lock::LockReplyCodeOf(m.arg), lock::LockReplyCode::kQueued);
    EXPECT_TRUE(lock::LockReplyNamesPredecessor(m.arg));
    EXPECT_EQ(lock::LockReplyPredecessor(m.arg), pred);
    for (bool died : {false, true}) {
      Message h{MsgType::kLockSuccessor, 1, 0, 7, 9, 5, lock::PackSuccessorArg(pred, died), {}};
      EXPECT_TRUE(CheckMessage(h, kCluster).ok());
      EXPECT_EQ(lock::SuccessorNode(h.arg), pred);
      EXPECT_EQ(lock::SuccessorDied(h.arg), died);
    }
  }
  for (uint8_t code = 1; code <= lock::kMaxBarrierReplyCode; ++code) {
    const auto c = static_cast<lock::BarrierReplyCode>(code);
    Message m{MsgType::kBarrierReply, 1, 0, 0, 3, 5, lock::PackBarrierReply(c, 3), {}};
    EXPECT_TRUE(CheckMessage(m, kCluster).ok()) << code;
    EXPECT_EQ(lock::BarrierReplyCodeOf(m.arg), c);
  }
  for (LockMode mode : {LockMode::kShared, LockMode::kExclusive}) {
    for (bool try_lock : {false, true}) {
      const uint64_t arg = lock::PackAcquireArg(lock::kMaxLockLength, mode, try_lock);
      Message m{MsgType::kLockAcquire, 1, 0, 7, 0, 5, arg, {}};
      EXPECT_TRUE(CheckMessage(m, kCluster).ok());
      EXPECT_EQ(lock::AcquireMode(arg), mode);
      EXPECT_EQ(lock::AcquireTry(arg), try_lock);
      EXPECT_EQ(lock::AcquireLen(arg), lock::kMaxLockLength);
    }
  }
}

// A frame whose header claims more payload than it carries is never decoded.
TEST(Validation, ClaimedLengthMustMatchTheFrame) {
  Frame f{T(MsgType::kData), 1, 7, 3, 9, 1, Pages(1)};
  f.claimed_len = 2 * kPageSize;
  EXPECT_FALSE(DecodeMessage(absl::MakeConstSpan(Bytes(f)), kCluster).ok());
}

}  // namespace
}  // namespace dsm
