// The wire codec: every type round-trips; every malformed header or payload is rejected;
// random bytes never crash the decoder.
#include "transport/wire.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "protocol/region_identity.h"

namespace dsm {
namespace {

constexpr size_t kCluster = 4;

Message Make(MsgType t, uint64_t arg, size_t payload_len) {
  Message m;
  m.type = t;
  m.src = 3;
  m.region = 0x0102030405060708ULL;
  m.page = 0xfedcba9876543210ULL;
  m.req_id = 77;
  m.arg = arg;
  m.payload.resize(payload_len);
  for (size_t i = 0; i < payload_len; ++i) m.payload[i] = static_cast<uint8_t>('a' + i % 26);
  return m;
}

Message Lock(MsgType t, uint64_t page, uint64_t arg);

// kRegionOpen with a legal identity word (protocol/region_identity.h).
Message Open(uint64_t size, size_t name_len) {
  Message m = Make(MsgType::kRegionOpen, size, name_len);
  m.page = PackIdentityWord({size, 2, HomePolicy::kFixed, Backing::kFile});
  return m;
}
// kRegionOpenReply: without identity (not mapped there), or with one.
Message OpenReply(bool with_identity) {
  Message m = Make(MsgType::kRegionOpenReply, 0, 0);
  m.page = 0;
  if (with_identity) {
    m.page = PackIdentityWord({1 << 20, 3, HomePolicy::kInterleaved, Backing::kAnonymous});
    m.payload = EncodeRegionSize(1 << 20);
  }
  return m;
}
Message Barrier(MsgType t, uint64_t members, size_t name_len);
Message BarrierReply(uint64_t generation, uint64_t arg);

// One legal message of every declared type (several shapes where a type has several).
std::vector<Message> AllLegal() {
  return {
      Make(MsgType::kHello, kCluster, 0),
      Open(1 << 20, 1),
      Open(1 << 20, 255),
      OpenReply(false),
      OpenReply(true),
      Make(MsgType::kGetS, 0, 0),
      Make(MsgType::kGetM, 0, 0),
      Make(MsgType::kPut, static_cast<uint64_t>(PutKind::kDropClean), 0),
      Make(MsgType::kPut, static_cast<uint64_t>(PutKind::kWritebackDrop), kPageSize),
      Make(MsgType::kPut, static_cast<uint64_t>(PutKind::kWritebackKeep), 2 * kPageSize),
      Make(MsgType::kSyncReq, 0, 0),
      Make(MsgType::kData, static_cast<uint64_t>(Grant::kShared), kPageSize),
      Make(MsgType::kData, static_cast<uint64_t>(Grant::kModified), kPageSize),
      Make(MsgType::kDataRun, kMaxRunPages, kMaxRunPages * kPageSize),
      Make(MsgType::kGetSRun, 1, 0),
      Make(MsgType::kGetSRun, kMaxRunPages, 0),
      Make(MsgType::kDataRun, 5, 0),  // nothing granted
      Make(MsgType::kDataRun, 5, 3 * kPageSize),
      Make(MsgType::kDataRun, kMaxRunPages, kMaxRunPages * kPageSize),
      Make(MsgType::kGrant, static_cast<uint64_t>(Grant::kModified), 0),
      Make(MsgType::kNack, static_cast<uint64_t>(ErrorCode::kPageLost), 0),
      Make(MsgType::kSyncAck, 0, 0),
      Make(MsgType::kInv, 0, 0),
      Make(MsgType::kRecall, static_cast<uint64_t>(RecallKind::kInvalidate), 0),
      Make(MsgType::kInvAck, 0, 0),
      Make(MsgType::kRecallAck, 1, 0),
      Make(MsgType::kRecallAck, 2, kPageSize),
      Lock(MsgType::kLockAcquire, 0, 100 | (uint64_t{2} << 48) | (uint64_t{1} << 52)),
      Lock(MsgType::kLockReply, 0, 1 | (1 << 8)),
      Lock(MsgType::kLockRelease, 0, 0),
      Lock(MsgType::kLockCancel, 0, 0),
      Lock(MsgType::kLockReply, 0, 2 | (1 << 9) | (3 << 16)),  // kQueued, predecessor 3
      Lock(MsgType::kLockSuccessor, 12, 3 | (1 << 8)),  // successor node 3, lock 12, died
      Lock(MsgType::kLockHandoff, 12, 1),
      Lock(MsgType::kLockPassed, 12, 3),
      Barrier(MsgType::kBarrierEnter, 0b1010, 5),
      Barrier(MsgType::kBarrierCancel, 0b1000, 255),
      BarrierReply(7, 2 | (2 << 8)),  // kNodeDown, node 2
      BarrierReply(7, 3),             // kAborted
  };
}

// Lock messages carry no region page (page = byte offset for kLockAcquire).
Message Lock(MsgType t, uint64_t page, uint64_t arg) {
  Message m = Make(t, arg, 0);
  m.page = page;
  return m;
}
Message Barrier(MsgType t, uint64_t members, size_t name_len) {
  Message m = Make(t, members, name_len);
  m.region = 0;
  return m;
}
Message BarrierReply(uint64_t generation, uint64_t arg) {
  Message m = Lock(MsgType::kBarrierReply, generation, arg);
  m.region = 0;
  return m;
}

std::vector<uint8_t> Encode(const Message& m) {
  std::vector<uint8_t> out;
  EncodeMessage(m, out);
  return out;
}

absl::Status DecodeStatus(const std::vector<uint8_t>& b) {
  return DecodeMessage(absl::MakeConstSpan(b), kCluster).status();
}

TEST(Wire, EveryTypeRoundTrips) {
  for (const Message& m : AllLegal()) {
    SCOPED_TRACE(DebugString(m));
    ASSERT_TRUE(ValidateMessage(m, kCluster).ok());
    std::vector<uint8_t> b = Encode(m);
    ASSERT_EQ(b.size(), kWireHeaderSize + m.payload.size());
    auto len = PeekFrameLength(absl::MakeConstSpan(b), kCluster);
    ASSERT_TRUE(len.ok()) << len.status();
    EXPECT_EQ(*len, b.size());
    auto d = DecodeMessage(absl::MakeConstSpan(b), kCluster);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->type, m.type);
    EXPECT_EQ(d->src, m.src);
    EXPECT_EQ(d->region, m.region);
    EXPECT_EQ(d->page, m.page);
    EXPECT_EQ(d->req_id, m.req_id);
    EXPECT_EQ(d->arg, m.arg);
    EXPECT_EQ(d->payload, m.payload);
  }
}

TEST(Wire, HeaderIsLittleEndianAtFixedOffsets) {
  Message m = Make(MsgType::kGetS, 0x1122334455667788ULL, 0);
  std::vector<uint8_t> b = Encode(m);
  const uint8_t magic[4] = {0x44, 0x53, 0x4d, 0x31};  // "DSM1"
  EXPECT_EQ(std::memcmp(b.data(), magic, 4), 0);
  EXPECT_EQ(b[4], kWireVersion);
  EXPECT_EQ(b[5], 0);
  EXPECT_EQ(b[6], static_cast<uint8_t>(MsgType::kGetS));
  EXPECT_EQ(b[7], 0);
  EXPECT_EQ(b[8], 3);
  EXPECT_EQ(b[16], 0x08);  // region low byte first
  EXPECT_EQ(b[23], 0x01);
  EXPECT_EQ(b[40], 0x88);  // arg
  EXPECT_EQ(b[47], 0x11);
}

TEST(Wire, PeekNeedsAWholeHeader) {
  std::vector<uint8_t> b = Encode(Make(MsgType::kData, 1, kPageSize));
  for (size_t n = 0; n < kWireHeaderSize; ++n) {
    auto len = PeekFrameLength(absl::MakeConstSpan(b.data(), n), kCluster);
    ASSERT_TRUE(len.ok());
    EXPECT_EQ(*len, 0u);
  }
  auto len = PeekFrameLength(absl::MakeConstSpan(b.data(), kWireHeaderSize), kCluster);
  ASSERT_TRUE(len.ok());
  EXPECT_EQ(*len, kWireHeaderSize + kPageSize);
}

TEST(Wire, RejectsTruncatedHeaderAndPayload) {
  std::vector<uint8_t> b = Encode(Make(MsgType::kData, 1, kPageSize));
  for (size_t n : {size_t{0}, size_t{1}, kWireHeaderSize - 1, kWireHeaderSize,
                   kWireHeaderSize + kPageSize - 1}) {
    EXPECT_FALSE(DecodeMessage(absl::MakeConstSpan(b.data(), n), kCluster).ok()) << n;
  }
  b.push_back(0);  // one byte too many
  EXPECT_FALSE(DecodeStatus(b).ok());
}

TEST(Wire, RejectsBadMagicVersionFlags) {
  const std::vector<uint8_t> good = Encode(Make(MsgType::kGetS, 0, 0));
  for (size_t i : {0, 1, 2, 3, 4, 5, 7}) {
    std::vector<uint8_t> b = good;
    b[i] ^= 0x40;
    EXPECT_FALSE(DecodeStatus(b).ok()) << "byte " << i;
    EXPECT_FALSE(PeekFrameLength(absl::MakeConstSpan(b), kCluster).ok()) << "byte " << i;
  }
}

TEST(Wire, RejectsUndeclaredTypes) {
  std::vector<uint8_t> b = Encode(Make(MsgType::kGetS, 0, 0));
  std::vector<int> declared;
  for (const Message& m : AllLegal()) declared.push_back(static_cast<int>(m.type));
  for (int t = 0; t < 256; ++t) {
    if (std::find(declared.begin(), declared.end(), t) != declared.end()) continue;
    b[6] = static_cast<uint8_t>(t);
    EXPECT_FALSE(DecodeStatus(b).ok()) << "type " << t;
  }
}

TEST(Wire, RejectsSrcOutsideCluster) {
  Message m = Make(MsgType::kGetS, 0, 0);
  m.src = kCluster;
  EXPECT_FALSE(DecodeStatus(Encode(m)).ok());
  EXPECT_FALSE(ValidateMessage(m, kCluster).ok());
  m.src = 0xffffffff;
  EXPECT_FALSE(DecodeStatus(Encode(m)).ok());
  m.src = 0;
  EXPECT_TRUE(DecodeStatus(Encode(m)).ok());
  // A cluster size outside 1..kMaxNodes is the caller's bug, never accepted.
  EXPECT_FALSE(DecodeMessage(absl::MakeConstSpan(Encode(m)), 0).ok());
  EXPECT_FALSE(DecodeMessage(absl::MakeConstSpan(Encode(m)), kMaxNodes + 1).ok());
}

TEST(Wire, RejectsOversizedPayloadLenWithoutReadingIt) {
  std::vector<uint8_t> b = Encode(Make(MsgType::kData, 1, kPageSize));
  b.resize(kWireHeaderSize);
  for (uint32_t len : {uint32_t{kMaxPayload + 1}, uint32_t{0x7fffffff}, uint32_t{0xffffffff}}) {
    b[12] = len & 0xff;
    b[13] = (len >> 8) & 0xff;
    b[14] = (len >> 16) & 0xff;
    b[15] = (len >> 24) & 0xff;
    EXPECT_FALSE(PeekFrameLength(absl::MakeConstSpan(b), kCluster).ok()) << len;
  }
}

TEST(Wire, RejectsPayloadSizeIllegalForType) {
  const uint64_t shared = static_cast<uint64_t>(Grant::kShared);
  std::vector<Message> bad = {
      Make(MsgType::kHello, kCluster, 1),
      Make(MsgType::kGetS, 0, 1),
      Make(MsgType::kGetM, 0, kPageSize),
      Make(MsgType::kInv, 0, 8),
      Make(MsgType::kInvAck, 0, 8),
      Open(kPageSize, 0),
      Open(kPageSize, 256),
      Make(MsgType::kData, shared, 0),
      Make(MsgType::kData, shared, kPageSize - 1),
      Make(MsgType::kData, shared, kPageSize + 1),
      Make(MsgType::kData, shared, (kMaxRunPages + 1) * kPageSize),
      Make(MsgType::kData, 0, kPageSize),  // no such grant
      Make(MsgType::kGetSRun, 0, 0),                      // empty run
      Make(MsgType::kGetSRun, kMaxRunPages + 1, 0),       // longer than a message carries
      Make(MsgType::kGetSRun, 4, kPageSize),              // a request carries no data
      Make(MsgType::kDataRun, 0, 0),
      Make(MsgType::kDataRun, 2, 3 * kPageSize),          // more pages than asked for
      Make(MsgType::kDataRun, 4, kPageSize + 1),          // not whole pages
      Make(MsgType::kDataRun, kMaxRunPages + 1, kPageSize),
      Make(MsgType::kGrant, 7, 0),
      Make(MsgType::kRecallAck, 0, 100),
      Make(MsgType::kPut, static_cast<uint64_t>(PutKind::kDropClean), kPageSize),
      Make(MsgType::kPut, static_cast<uint64_t>(PutKind::kWritebackDrop), 0),
      Make(MsgType::kPut, 99, 0),
      Make(MsgType::kRecall, 0, 0),
      Lock(MsgType::kLockAcquire, 0, 0 | (uint64_t{1} << 48)),             // len 0
      Lock(MsgType::kLockAcquire, 0, 1 | (uint64_t{3} << 48)),             // mode 3
      Lock(MsgType::kLockAcquire, 0, 1 | (uint64_t{1} << 48) | (uint64_t{2} << 52)),  // flag
      Lock(MsgType::kLockAcquire, 0, 1 | (uint64_t{1} << 48) | (uint64_t{1} << 56)),
      Lock(MsgType::kLockAcquire, UINT64_MAX, 1 | (uint64_t{1} << 48)),    // wraps
      Make(MsgType::kLockAcquire, 1 | (uint64_t{1} << 48), 1),             // payload
      [] {  // lock id 0
        Message m = Lock(MsgType::kLockAcquire, 0, 1 | (uint64_t{1} << 48));
        m.req_id = 0;
        return m;
      }(),
      Lock(MsgType::kLockReply, 0, 0),
      Lock(MsgType::kLockReply, 0, 10),
      Lock(MsgType::kLockReply, 0, 1 | (1 << 9)),
      Lock(MsgType::kLockReply, 5, 1),
      Lock(MsgType::kLockRelease, 0, 1),
      Lock(MsgType::kLockCancel, 1, 0),
      Barrier(MsgType::kBarrierEnter, 0, 5),
      Barrier(MsgType::kBarrierEnter, 0b0001, 5),  // src 3 not a member
      Barrier(MsgType::kBarrierEnter, 0b11000, 5),  // bit 4 >= cluster size
      Barrier(MsgType::kBarrierEnter, 0b1000, 0),
      Barrier(MsgType::kBarrierCancel, 0b1000, 256),
      Make(MsgType::kBarrierEnter, 0b1000, 5),  // region != 0
      BarrierReply(0, 0),
      BarrierReply(0, 6),
      BarrierReply(0, 2 | (4 << 8)),  // down node outside the cluster
      BarrierReply(0, 3 | (1 << 16)),
      BarrierReply(0, 3 | (1 << 8)),  // a node id without kNodeDown
      Lock(MsgType::kBarrierReply, 0, 1),  // region != 0 without kAborted
      Lock(MsgType::kBarrierReply, 0, 3),  // kAborted: entered mask outside the cluster
      Lock(MsgType::kLockReply, 0, 8),     // codes 8 and 9 are not declared
      Lock(MsgType::kLockReply, 0, 9),
      Lock(MsgType::kLockReply, 0, 2 | (1 << 8)),  // previous_holder_died without a grant
      Lock(MsgType::kLockReply, 0, 2 | (3 << 16)),  // a predecessor without its flag
      Lock(MsgType::kLockReply, 0, 2 | (1 << 9) | (4 << 16)),  // outside the cluster
      Lock(MsgType::kLockSuccessor, 0, 3),          // successor lock id 0
      Lock(MsgType::kLockSuccessor, 12, 4),         // successor node outside the cluster
      Lock(MsgType::kLockSuccessor, 12, 3 | (1 << 9)),
      Lock(MsgType::kLockHandoff, 0, 0),            // predecessor lock id 0
      Lock(MsgType::kLockHandoff, 12, 2),
      Lock(MsgType::kLockPassed, 12, 4),
      Lock(MsgType::kLockPassed, 12, 3 | (1 << 8)),
  };
  for (const Message& m : bad) {
    SCOPED_TRACE(DebugString(m));
    EXPECT_FALSE(ValidateMessage(m, kCluster).ok());
    std::vector<uint8_t> b = Encode(m);
    EXPECT_FALSE(DecodeStatus(b).ok());
    // Peek already knows: a stream parser never waits for an illegal payload.
    if (m.payload.size() <= kMaxPayload) {
      EXPECT_FALSE(PeekFrameLength(absl::MakeConstSpan(b), kCluster).ok());
    }
  }
  for (Message nul : {Open(kPageSize, 5), Barrier(MsgType::kBarrierEnter, 8, 5)}) {
    nul.payload[2] = 0;
    EXPECT_FALSE(DecodeStatus(Encode(nul)).ok());
    EXPECT_FALSE(ValidateMessage(nul, kCluster).ok());
  }
}

// Random bytes, and legal frames with random bytes flipped: the decoder either rejects them or
// returns a message that encodes back to the same bytes.
TEST(Wire, RandomGarbageNeverCrashes) {
  const std::vector<Message> legal = AllLegal();
  size_t accepted = 0;
  for (uint32_t seed = 0; seed < 20000; ++seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> b;
    if (seed % 2 == 0) {
      b.resize(rng() % 200);
      for (auto& x : b) x = static_cast<uint8_t>(rng());
      if (seed % 4 == 0 && b.size() >= 8) {  // make the magic and version right more often
        const std::vector<uint8_t> hdr = Encode(legal[0]);
        std::memcpy(b.data(), hdr.data(), 6);
      }
    } else {
      b = Encode(legal[rng() % legal.size()]);
      const int flips = 1 + static_cast<int>(rng() % 3);
      for (int i = 0; i < flips; ++i) b[rng() % b.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
      if (rng() % 4 == 0) b.resize(rng() % (b.size() + 1));
    }
    auto len = PeekFrameLength(absl::MakeConstSpan(b), kCluster);
    auto d = DecodeMessage(absl::MakeConstSpan(b), kCluster);
    if (d.ok()) {
      ++accepted;
      ASSERT_TRUE(len.ok());
      EXPECT_EQ(*len, b.size());
      EXPECT_TRUE(ValidateMessage(*d, kCluster).ok());
      EXPECT_EQ(Encode(*d), b) << "seed " << seed;
    }
  }
  // Some of the mutated frames stay legal (a flipped page number); most do not.
  EXPECT_GT(accepted, 0u);
  EXPECT_LT(accepted, 20000u);
}

}  // namespace
}  // namespace dsm
