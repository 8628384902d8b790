#include "common/payload_pool.h"

#include <algorithm>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "protocol/message.h"
#include "transport/wire.h"

namespace dsm {
namespace {

void DrainPool() {
  while (PayloadPoolSizeForTesting() > 0) (void)TakePayloadBuffer(kPayloadPoolMinCapacity);
}

TEST(PayloadPool, TakeGivesAnEmptyBufferWithTheCapacityAsked) {
  DrainPool();
  for (size_t bytes : {size_t{0}, size_t{100}, kPayloadPoolMinCapacity, kMaxPayload}) {
    std::vector<uint8_t> b = TakePayloadBuffer(bytes);
    EXPECT_TRUE(b.empty());
    EXPECT_GE(b.capacity(), bytes);
  }
}

TEST(PayloadPool, ARecycledRunBufferIsHandedOutAgainEmpty) {
  DrainPool();
  std::vector<uint8_t> b = TakePayloadBuffer(kMaxPayload);
  b.assign(kMaxPayload, 0xab);
  const uint8_t* storage = b.data();
  RecyclePayloadBuffer(std::move(b));
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(PayloadPoolSizeForTesting(), 1u);
  std::vector<uint8_t> again = TakePayloadBuffer(kMaxRunPages * kPageSize);
  EXPECT_EQ(again.data(), storage);
  EXPECT_TRUE(again.empty());
  EXPECT_EQ(PayloadPoolSizeForTesting(), 0u);
}

TEST(PayloadPool, ForOverwriteHandsOutTheRecycledBufferAtTheAskedSizeWithoutRewritingIt) {
  DrainPool();
  std::vector<uint8_t> b = TakePayloadBufferForOverwrite(kMaxRunPages * kPageSize);
  EXPECT_EQ(b.size(), kMaxRunPages * kPageSize);  // fresh: zero-filled by the allocation
  EXPECT_EQ(std::count(b.begin(), b.end(), 0), static_cast<std::ptrdiff_t>(b.size()));
  std::fill(b.begin(), b.end(), 0xab);
  const uint8_t* storage = b.data();
  RecyclePayloadBuffer(std::move(b));
  std::vector<uint8_t> again = TakePayloadBufferForOverwrite(16 * kPageSize);
  EXPECT_EQ(again.data(), storage);
  ASSERT_EQ(again.size(), 16 * kPageSize);
  EXPECT_EQ(again[0], 0xab);  // the old bytes: the caller overwrites what it keeps
  // The plain Take still hands a recycled buffer out empty.
  RecyclePayloadBuffer(std::move(again));
  EXPECT_TRUE(TakePayloadBuffer(kPayloadPoolMinCapacity).empty());
}

TEST(PayloadPool, ABufferTooSmallForTheRequestIsNotUsed) {
  DrainPool();
  std::vector<uint8_t> small = TakePayloadBuffer(kPayloadPoolMinCapacity);
  small.shrink_to_fit();
  small.reserve(kPayloadPoolMinCapacity);
  RecyclePayloadBuffer(std::move(small));
  ASSERT_EQ(PayloadPoolSizeForTesting(), 1u);
  std::vector<uint8_t> big = TakePayloadBuffer(kMaxPayload);
  EXPECT_GE(big.capacity(), kMaxPayload);
  EXPECT_EQ(PayloadPoolSizeForTesting(), 1u);  // the small one stays for a smaller request
  DrainPool();
}

TEST(PayloadPool, KeepsAtMostItsBoundAndNeitherTinyNorHugeBuffers) {
  DrainPool();
  std::vector<uint8_t> tiny(100);
  RecyclePayloadBuffer(std::move(tiny));
  std::vector<uint8_t> huge;
  huge.reserve(16 * kMaxPayload);
  RecyclePayloadBuffer(std::move(huge));
  EXPECT_EQ(PayloadPoolSizeForTesting(), 0u);
  for (size_t i = 0; i < kPayloadPoolMax + 3; ++i) {
    std::vector<uint8_t> b;
    b.reserve(kMaxPayload);
    RecyclePayloadBuffer(std::move(b));
  }
  EXPECT_EQ(PayloadPoolSizeForTesting(), kPayloadPoolMax);
  DrainPool();
}

TEST(PayloadPool, EachThreadHasItsOwnPool) {
  DrainPool();
  std::thread([] {
    std::vector<uint8_t> b;
    b.reserve(kMaxPayload);
    RecyclePayloadBuffer(std::move(b));
    EXPECT_EQ(PayloadPoolSizeForTesting(), 1u);
  }).join();
  EXPECT_EQ(PayloadPoolSizeForTesting(), 0u);
}

TEST(PayloadPool, DecodingARunReusesARecycledBuffer) {
  DrainPool();
  Message run;
  run.type = MsgType::kDataRun;
  run.src = 1;
  run.region = 7;
  run.page = 64;
  run.req_id = 9;
  run.arg = kMaxRunPages;
  run.payload.assign(kMaxRunPages * kPageSize, 0x3c);
  std::vector<uint8_t> frame;
  EncodeMessage(run, frame);
  std::vector<uint8_t> spare = TakePayloadBuffer(kMaxPayload);
  const uint8_t* storage = spare.data();
  RecyclePayloadBuffer(std::move(spare));
  auto m = DecodeMessage(frame, /*cluster_size=*/2);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->payload.data(), storage);
  EXPECT_EQ(m->payload, run.payload);
}

}  // namespace
}  // namespace dsm
