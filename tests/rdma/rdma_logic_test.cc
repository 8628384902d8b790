// The RDMA transport's logic above the verbs: credit accounting, framing, memlock checks, and
// the whole transport (TCP set-up over 127.0.0.1, real io_uring loops) over the fake verbs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rdma/cluster_harness.h"
#include "rdma/fake_verbs.h"
#include "transport/rdma/flow_control.h"
#include "transport/rdma/framing.h"
#include "transport/rdma/rdma_transport.h"
#include "transport/rdma/verbs.h"
#include "transport/wire.h"

namespace dsm::rdma::testing {
namespace {

using ::testing::HasSubstr;

// ------------------------------------------------------------------ Without a device

// Opening the real device fails with the reason on a host without one, and on a build
// without libibverbs says so; either way a completion status still has a name to report.
TEST(RdmaDevice, AFailedOpenSaysWhyAndStatusesHaveNames) {
  absl::StatusOr<std::unique_ptr<VerbsOps>> v = OpenIbvDevice("", 1, -1);
#if DSM_WITH_RDMA
  if (v.ok()) GTEST_SKIP() << "an RDMA device is present; nothing to check here";
  EXPECT_FALSE(v.status().message().empty());
#else
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("built without RDMA support"));
#endif
  EXPECT_STREQ(WcStatusName(kWcSuccess), "success");
  EXPECT_THAT(std::string(WcStatusName(kWcWrFlushErr)), HasSubstr("Flushed"));
  EXPECT_THAT(std::string(WcStatusName(12)), HasSubstr("retry"));  // IBV_WC_RETRY_EXC_ERR
}

// ------------------------------------------------------------------ FlowControl

TEST(FlowControl, SenderStallsAtZeroCreditsAndResumesOnReturn) {
  FlowControl fc(/*recv_credits=*/3, /*ctrl_reserve=*/1, /*slots=*/2, /*threshold=*/2);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(fc.CanSendInline());
    fc.ConsumeInline();
  }
  EXPECT_FALSE(fc.CanSendInline());
  EXPECT_FALSE(fc.CanSendStaged());
  ASSERT_TRUE(fc.OnReturned(1, 0));
  EXPECT_TRUE(fc.CanSendInline());
  EXPECT_EQ(fc.send_credits(), 1u);
}

TEST(FlowControl, StagedSlotsGoRoundRobinAndNeedSlotCredits) {
  FlowControl fc(8, 1, 2, 4);
  EXPECT_EQ(fc.ConsumeStaged(), 0u);
  EXPECT_EQ(fc.ConsumeStaged(), 1u);
  EXPECT_FALSE(fc.CanSendStaged());  // both slots in use at the peer
  EXPECT_TRUE(fc.CanSendInline());   // receive credits remain
  ASSERT_TRUE(fc.OnReturned(1, 1));
  EXPECT_EQ(fc.ConsumeStaged(), 0u);
}

TEST(FlowControl, ReturningMoreThanOutstandingIsRejected) {
  FlowControl fc(4, 1, 2, 2);
  EXPECT_FALSE(fc.OnReturned(1, 0));
  fc.ConsumeInline();
  EXPECT_FALSE(fc.OnReturned(2, 0));
  EXPECT_FALSE(fc.OnReturned(0, 1));
  EXPECT_TRUE(fc.OnReturned(1, 0));
}

TEST(FlowControl, CreditMessageAtThresholdAndBoundedByReserve) {
  FlowControl fc(8, 1, 2, 3);
  fc.OnProcessed(false);
  fc.OnProcessed(false);
  EXPECT_FALSE(fc.ShouldSendCreditMessage());
  fc.OnProcessed(false);
  EXPECT_TRUE(fc.ShouldSendCreditMessage());
  fc.OnCreditMessagePosted();
  FlowControl::Returns r = fc.TakeReturns();
  EXPECT_EQ(r.credits, 3);
  EXPECT_EQ(r.slots, 0);
  for (int i = 0; i < 3; ++i) fc.OnProcessed(false);
  EXPECT_FALSE(fc.ShouldSendCreditMessage());  // the only reserved buffer is in flight
  fc.OnCreditMessageCompleted();
  EXPECT_TRUE(fc.ShouldSendCreditMessage());
}

TEST(FlowControl, AnyDrainedSlotTriggersACreditMessage) {
  FlowControl fc(64, 2, 4, 16);
  EXPECT_EQ(fc.expected_recv_slot(), 0u);
  fc.OnStagedReceived();
  fc.OnProcessed(true);
  EXPECT_EQ(fc.expected_recv_slot(), 1u);
  EXPECT_TRUE(fc.ShouldSendCreditMessage());
  FlowControl::Returns r = fc.TakeReturns();
  EXPECT_EQ(r.credits, 1);
  EXPECT_EQ(r.slots, 1);
  EXPECT_FALSE(fc.ShouldSendCreditMessage());
}

// ------------------------------------------------------------------ framing

TEST(RdmaFraming, HeaderRoundTrips) {
  uint8_t buf[kRdmaHeaderSize + kWireHeaderSize] = {};
  RdmaHeader h;
  h.kind = FrameKind::kStaged;
  h.credits = 513;
  h.slots = 2;
  h.slot = 3;
  h.payload_len = 4096;
  EncodeRdmaHeader(h, buf);
  absl::StatusOr<RdmaHeader> d = DecodeRdmaHeader(absl::MakeConstSpan(buf, sizeof(buf)));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->kind, FrameKind::kStaged);
  EXPECT_EQ(d->credits, 513);
  EXPECT_EQ(d->slots, 2);
  EXPECT_EQ(d->slot, 3);
  EXPECT_EQ(d->payload_len, 4096u);
}

TEST(RdmaFraming, RejectsShortBadMagicUnknownKindAndWrongSizes) {
  uint8_t buf[kRdmaHeaderSize + kWireHeaderSize] = {};
  RdmaHeader h;
  h.kind = FrameKind::kCredit;
  EncodeRdmaHeader(h, buf);
  EXPECT_TRUE(DecodeRdmaHeader(absl::MakeConstSpan(buf, kRdmaHeaderSize)).ok());
  EXPECT_FALSE(DecodeRdmaHeader(absl::MakeConstSpan(buf, kRdmaHeaderSize - 1)).ok());
  EXPECT_FALSE(DecodeRdmaHeader(absl::MakeConstSpan(buf, kRdmaHeaderSize + 1)).ok());
  buf[4] = 9;
  EXPECT_FALSE(DecodeRdmaHeader(absl::MakeConstSpan(buf, kRdmaHeaderSize)).ok());
  h.kind = FrameKind::kStaged;
  h.payload_len = 0;
  EncodeRdmaHeader(h, buf);
  EXPECT_FALSE(DecodeRdmaHeader(absl::MakeConstSpan(buf, sizeof(buf))).ok());
  h.payload_len = kMaxPayload + 1;
  EncodeRdmaHeader(h, buf);
  EXPECT_FALSE(DecodeRdmaHeader(absl::MakeConstSpan(buf, sizeof(buf))).ok());
  h.payload_len = 4096;
  EncodeRdmaHeader(h, buf);
  EXPECT_FALSE(DecodeRdmaHeader(absl::MakeConstSpan(buf, sizeof(buf) - 1)).ok());
  EXPECT_TRUE(DecodeRdmaHeader(absl::MakeConstSpan(buf, sizeof(buf))).ok());
  buf[0] ^= 1;
  EXPECT_FALSE(DecodeRdmaHeader(absl::MakeConstSpan(buf, sizeof(buf))).ok());
}

// ------------------------------------------------------------------ memlock

TEST(RdmaMemlock, TooLowLimitGivesAnActionableError) {
  absl::Status s = CheckMemlock(10 << 20, 64 << 10, /*has_cap_ipc_lock=*/false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("ulimit -l unlimited"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("LimitMEMLOCK"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("/etc/security/limits.conf"));
  EXPECT_TRUE(CheckMemlock(10 << 20, 64 << 10, /*has_cap_ipc_lock=*/true).ok());
  EXPECT_TRUE(CheckMemlock(10 << 20, ~uint64_t{0}, false).ok());
  EXPECT_TRUE(CheckMemlock(1 << 20, 8 << 20, false).ok());
}

TEST(RdmaMemlock, RegisteredBytesGrowWithPeers) {
  RdmaTuning t;
  EXPECT_EQ(RdmaRegisteredBytes(t, 1), 0u);
  EXPECT_EQ(RdmaRegisteredBytes(t, 3), 2 * RdmaRegisteredBytes(t, 2));
  EXPECT_GE(RdmaRegisteredBytes(t, 2), 2 * t.staging_slots * kMaxPayload);
}

// ------------------------------------------------------------------ the fake itself

TEST(FakeVerbs, EnforcesQpStateOrder) {
  FakeFabric fabric;
  auto a = fabric.NewDevice("fake0");
  ASSERT_TRUE(a->CreateCq(16).ok());
  absl::StatusOr<uint32_t> q = a->CreateQp(4, 4);
  ASSERT_TRUE(q.ok());
  EXPECT_FALSE(a->ModifyToRts(*q, 0).ok());  // RESET -> RTS is illegal
  SendWr w;
  EXPECT_FALSE(a->PostSend(*q, absl::MakeConstSpan(&w, 1)).ok());
  EXPECT_TRUE(a->ModifyToInit(*q).ok());
  QpEndpoint nowhere;
  nowhere.qp_num = 0xdead;
  EXPECT_FALSE(a->ModifyToRtr(*q, nowhere).ok());
  EXPECT_EQ(fabric.StateHistory(*q),
            (std::vector<FakeQpState>{FakeQpState::kReset, FakeQpState::kInit}));
}

// ------------------------------------------------------------------ transport over the fake

class RdmaOverFake : public ::testing::Test {
 protected:
  void MakeCluster(size_t n, const RdmaTuning& tuning,
                   std::chrono::milliseconds connect_timeout = std::chrono::seconds(10),
                   std::vector<bool> start = {}, std::vector<std::string> keys = {}) {
    addrs_ = FreeLoopbackAddresses(n);
    for (size_t i = 0; i < n; ++i) {
      auto node = std::make_unique<TestNode>();
      Options o;
      o.node_id = static_cast<NodeId>(i);
      o.peers = addrs_;
      o.transport = TransportKind::kRdma;
      o.connect_timeout = absl::FromChrono(connect_timeout);
      if (!keys.empty()) o.cluster_key = keys[i];
      auto loop = EventLoop::Create();
      ASSERT_TRUE(loop.ok()) << loop.status();
      node->loop = std::move(*loop);
      auto t = CreateRdmaTransportWithVerbs(o, tuning, fabric_.NewDevice("fake" + std::to_string(i)));
      ASSERT_TRUE(t.ok()) << t.status();
      node->transport = std::move(*t);
      nodes_.push_back(std::move(node));
    }
    for (size_t i = 0; i < n; ++i) {
      if (!start.empty() && !start[i]) {
        nodes_[i]->transport.reset();
        continue;
      }
      ASSERT_TRUE(nodes_[i]->transport->Start(nodes_[i]->loop.get(), &nodes_[i]->rec).ok());
    }
  }

  bool AllUp() {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      for (size_t j = 0; j < nodes_.size(); ++j) {
        if (i != j && !nodes_[i]->transport->IsUp(static_cast<NodeId>(j))) return false;
      }
    }
    return true;
  }

  // The QP of node `from` connected to node `to` (the fake knows who is wired to whom).
  uint32_t QpBetween(size_t from, size_t to) {
    // QPs are created per node in peer order; node i's QPs are numbers [i*(n-1), (i+1)*(n-1)).
    std::vector<uint32_t> all = fabric_.Qps();
    const size_t n = nodes_.size();
    size_t k = to < from ? to : to - 1;
    return all[from * (n - 1) + k];
  }

  void TearDown() override {
    for (auto& n : nodes_) {
      if (n->transport) n->transport->Shutdown(absl::Now() + absl::Seconds(1));
    }
    nodes_.clear();
  }

  FakeFabric fabric_;  // outlives the nodes (declared first, destroyed last)
  std::vector<std::string> addrs_;
  std::vector<std::unique_ptr<TestNode>> nodes_;
};

TEST_F(RdmaOverFake, EveryPairComesUpThroughInitRtrRts) {
  MakeCluster(3, RdmaTuning{});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  for (auto& n : nodes_) {
    EXPECT_EQ(n->rec.up.size(), 2u);
    for (auto& [peer, count] : n->rec.up) EXPECT_EQ(count, 1) << "peer " << peer;
    EXPECT_TRUE(n->rec.down.empty());
    // Each peer's Hello carried its own incarnation.
    for (auto& [peer, inc] : n->rec.incarnations) {
      EXPECT_EQ(inc, nodes_[peer]->transport->incarnation()) << "peer " << peer;
      EXPECT_NE(inc, 0u);
    }
  }
  const std::vector<FakeQpState> want = {FakeQpState::kReset, FakeQpState::kInit,
                                         FakeQpState::kRtr, FakeQpState::kRts};
  for (uint32_t qpn : fabric_.Qps()) {
    EXPECT_EQ(fabric_.StateHistory(qpn), want) << "qp " << qpn;
    EXPECT_EQ(fabric_.RemoteOf(fabric_.RemoteOf(qpn)), qpn);  // wired pairwise
  }
  EXPECT_EQ(fabric_.rejected_posts(), 0u);
}

TEST_F(RdmaOverFake, AllPairsFifoWithInlineAndStagedPayloads) {
  MakeCluster(3, RdmaTuning{});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  const size_t sizes[] = {0, 100, kPageSize, 3 * kPageSize, kMaxRunPages * kPageSize};
  constexpr uint64_t kPerPair = 150;
  for (uint64_t seq = 0; seq < kPerPair; ++seq) {
    for (size_t i = 0; i < 3; ++i) {
      for (size_t j = 0; j < 3; ++j) {
        if (i == j) continue;
        nodes_[i]->transport->Send(TestMessage(static_cast<NodeId>(j), seq, sizes[seq % 5]));
      }
    }
  }
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    for (auto& n : nodes_) {
      if (n->rec.messages.size() < 2 * kPerPair) return false;
    }
    return true;
  }));
  for (size_t j = 0; j < 3; ++j) {
    std::map<NodeId, uint64_t> next;
    for (const Message& m : nodes_[j]->rec.messages) {
      EXPECT_EQ(m.dst, j);
      EXPECT_EQ(m.req_id, next[m.src]++) << "out of order from node " << m.src;
      EXPECT_EQ(m.payload.size(), sizes[m.req_id % 5]);
      EXPECT_TRUE(PayloadIntact(m)) << DebugString(m);
    }
    RdmaCounters c = GetRdmaCounters(*nodes_[j]->transport);
    EXPECT_GT(c.staged_sent, 0u);
    EXPECT_GT(c.inline_sent, 0u);
    EXPECT_EQ(nodes_[j]->transport->counters().bad_messages, 0u);
  }
  // Page payloads went by RDMA WRITE into the receivers' staging slots.
  EXPECT_GE(fabric_.writes_delivered(), 3u * 2 * (3 * kPerPair / 5));
  EXPECT_EQ(fabric_.rnr_waits(), 0u);
  EXPECT_EQ(fabric_.rejected_posts(), 0u);
}

TEST_F(RdmaOverFake, SenderStallsAtZeroCreditsAndResumesWhenTheReceiverRuns) {
  RdmaTuning t;
  t.recv_credits = 4;
  t.ctrl_reserve = 1;
  t.staging_slots = 2;
  t.credit_threshold = 2;
  MakeCluster(2, t);
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  nodes_[1]->polled = false;  // node 1's engine thread is busy: it reposts nothing
  constexpr uint64_t kCount = 40;
  for (uint64_t seq = 0; seq < kCount; ++seq) {
    nodes_[0]->transport->Send(TestMessage(1, seq, seq % 3 == 0 ? kPageSize : 0));
  }
  Pump(nodes_, absl::Milliseconds(50));
  EXPECT_GE(GetRdmaCounters(*nodes_[0]->transport).credit_stalls, 1u);
  // No more SENDs reached node 1 than it had receive buffers for.
  EXPECT_LE(fabric_.sends_delivered(), 2u * (4 + 1) + 4);
  EXPECT_TRUE(nodes_[1]->rec.messages.empty());
  nodes_[1]->polled = true;
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[1]->rec.messages.size() == kCount; }));
  for (uint64_t i = 0; i < kCount; ++i) {
    EXPECT_EQ(nodes_[1]->rec.messages[i].req_id, i);
    EXPECT_TRUE(PayloadIntact(nodes_[1]->rec.messages[i]));
  }
  // One-way traffic: credits came back in credit-only messages; normal sends never hit RNR.
  EXPECT_GT(GetRdmaCounters(*nodes_[1]->transport).credit_messages_sent, 0u);
  EXPECT_EQ(fabric_.rnr_waits(), 0u);
}

TEST_F(RdmaOverFake, BuffersAndSlotsAreRecycledFarBeyondTheirCount) {
  RdmaTuning t;
  t.recv_credits = 4;
  t.ctrl_reserve = 1;
  t.staging_slots = 2;
  t.credit_threshold = 2;
  MakeCluster(2, t);
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  constexpr uint64_t kCount = 500;
  // Both directions at once, so credits also ride piggybacked.
  for (uint64_t seq = 0; seq < kCount; ++seq) {
    nodes_[0]->transport->Send(TestMessage(1, seq, seq % 2 ? 2 * kPageSize : 10));
    nodes_[1]->transport->Send(TestMessage(0, seq, seq % 2 ? 0 : kPageSize));
  }
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    return nodes_[0]->rec.messages.size() == kCount && nodes_[1]->rec.messages.size() == kCount;
  }));
  for (auto& n : nodes_) {
    for (uint64_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(n->rec.messages[i].req_id, i);
      ASSERT_TRUE(PayloadIntact(n->rec.messages[i]));
    }
  }
  EXPECT_EQ(fabric_.rejected_posts(), 0u);
}

TEST_F(RdmaOverFake, ErrorCompletionReportsPeerDownOnBothSides) {
  MakeCluster(3, RdmaTuning{});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  constexpr int kRetryExcErr = 12;  // IBV_WC_RETRY_EXC_ERR
  fabric_.FailNextSend(QpBetween(0, 1), kRetryExcErr);
  nodes_[0]->transport->Send(TestMessage(1, 0, 0));
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    return nodes_[0]->rec.down.count(1) && nodes_[1]->rec.down.count(0);
  }));
  EXPECT_EQ(nodes_[0]->rec.down[1].code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(nodes_[0]->rec.down[1].message()), HasSubstr("retry"));
  EXPECT_FALSE(nodes_[0]->transport->IsUp(1));
  EXPECT_EQ(fabric_.State(QpBetween(0, 1)), FakeQpState::kError);
  // Later sends to it are dropped; the others keep working.
  nodes_[0]->transport->Send(TestMessage(1, 1, 0));
  nodes_[0]->transport->Send(TestMessage(2, 7, kPageSize));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return !nodes_[2]->rec.messages.empty(); }));
  EXPECT_EQ(nodes_[2]->rec.messages[0].req_id, 7u);
  Pump(nodes_, absl::Milliseconds(20));
  EXPECT_TRUE(nodes_[1]->rec.messages.empty());
  EXPECT_EQ(nodes_[0]->rec.down_count[1], 1);  // reported once despite flushed completions
  EXPECT_EQ(nodes_[1]->rec.down_count[0], 1);
  EXPECT_TRUE(nodes_[0]->transport->IsUp(2));
}

TEST_F(RdmaOverFake, FlushedWorkAfterALinkBreakIsReportedOnce) {
  MakeCluster(2, RdmaTuning{});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  fabric_.BreakQp(QpBetween(1, 0));  // every posted receive completes with WR_FLUSH_ERR
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[1]->rec.down.count(0) > 0; }));
  Pump(nodes_, absl::Milliseconds(20));
  EXPECT_EQ(nodes_[1]->rec.down_count[0], 1);
  EXPECT_THAT(std::string(nodes_[1]->rec.down[0].message()), HasSubstr("Flushed"));
  EXPECT_GT(GetRdmaCounters(*nodes_[1]->transport).error_completions, 1u);
}

TEST_F(RdmaOverFake, CorruptMessageClosesOnlyThatConnection) {
  MakeCluster(3, RdmaTuning{});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  // Byte 16 + 0 is the wire magic of the inline frame.
  fabric_.CorruptNextSend(QpBetween(2, 0), kRdmaHeaderSize);
  nodes_[2]->transport->Send(TestMessage(0, 1, 0));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[0]->rec.down.count(2) > 0; }));
  EXPECT_EQ(nodes_[0]->transport->counters().bad_messages, 1u);
  EXPECT_EQ(nodes_[0]->rec.down[2].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(nodes_[0]->rec.messages.empty());
  nodes_[1]->transport->Send(TestMessage(0, 3, kPageSize));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[0]->rec.messages.size() == 1; }));
  EXPECT_TRUE(nodes_[0]->transport->IsUp(1));
}

TEST_F(RdmaOverFake, CorruptStagedLengthIsRejected) {
  MakeCluster(2, RdmaTuning{});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  // Byte 12 of the RDMA header: the staged payload length.
  fabric_.CorruptNextSend(QpBetween(0, 1), 12);
  nodes_[0]->transport->Send(TestMessage(1, 1, kPageSize));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[1]->rec.down.count(0) > 0; }));
  EXPECT_EQ(nodes_[1]->transport->counters().bad_messages, 1u);
  EXPECT_TRUE(nodes_[1]->rec.messages.empty());
}

// With a cluster key, the set-up socket first runs the admission handshake; then everything
// works as without one.
TEST_F(RdmaOverFake, ClusterWithAKeyComesUpAndCarriesMessages) {
  const std::string key = "rdma-test-cluster-key-0123456789";
  MakeCluster(3, RdmaTuning{}, std::chrono::seconds(10), {}, {key, key, key});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  nodes_[2]->transport->Send(TestMessage(0, 1, kPageSize));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[0]->rec.messages.size() == 1; }));
  EXPECT_TRUE(PayloadIntact(nodes_[0]->rec.messages[0]));
  for (auto& n : nodes_) EXPECT_EQ(n->transport->counters().admission_failures, 0u);
}

// A client without the key that sends the old set-up handshake (claiming node 1) gets no
// byte back (no node id, no QP number, no memory key), is counted, and creates no QP
// connection; a node with another key never comes up.
TEST_F(RdmaOverFake, SetUpSocketRevealsNothingWithoutTheKey) {
  const std::string key = "rdma-test-cluster-key-0123456789";
  MakeCluster(2, RdmaTuning{}, std::chrono::milliseconds(1500), {true, true},
              {key, "another-rdma-cluster-key-0123456"});
  const std::string& addr = addrs_[0];
  const uint16_t port = static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1)));
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  uint8_t old_handshake[96] = {0x44, 0x53, 0x4d, 0x48, 1, 0, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0};
  ASSERT_EQ(send(fd, old_handshake, sizeof(old_handshake), MSG_NOSIGNAL), 96);
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    return nodes_[0]->transport->counters().admission_failures >= 2;  // the client, node 1
  }));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[1]->rec.down.count(0) > 0; }));
  uint8_t buf[256];
  ssize_t got = 0;
  for (ssize_t r; (r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0;) got += r;
  EXPECT_EQ(got, 0) << "node 0 answered a client that proved nothing";
  close(fd);
  EXPECT_TRUE(nodes_[0]->rec.up.empty());
  EXPECT_TRUE(nodes_[1]->rec.up.empty());
  for (uint32_t qpn : fabric_.Qps()) {
    const std::vector<FakeQpState> h = fabric_.StateHistory(qpn);
    EXPECT_EQ(std::count(h.begin(), h.end(), FakeQpState::kRtr), 0) << "qp " << qpn;
  }
}

// Idle set-up connections from one source get a few slots; the rest are refused at once and
// counted, and the nodes still come up.
TEST_F(RdmaOverFake, IdleSetUpConnectionsFromOneSourceAreBounded) {
  MakeCluster(3, RdmaTuning{});
  const std::string& addr = addrs_[0];
  const uint16_t port = static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1)));
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000063);  // 127.0.0.99
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)), 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    idle.push_back(fd);
  }
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    return AllUp() && nodes_[0]->transport->counters().connections_refused >= 18;
  })) << "refused " << nodes_[0]->transport->counters().connections_refused;
  for (int fd : idle) close(fd);
}

TEST_F(RdmaOverFake, UnreachablePeerIsReportedDownAfterConnectTimeout) {
  MakeCluster(2, RdmaTuning{}, std::chrono::milliseconds(300), {true, false});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[0]->rec.down.count(1) > 0; },
                        absl::Seconds(5)));
  EXPECT_EQ(nodes_[0]->rec.down[1].code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(nodes_[0]->rec.up.empty());
}

TEST_F(RdmaOverFake, ShutdownOfOneNodeIsSeenAsPeerDownByTheOthers) {
  MakeCluster(3, RdmaTuning{});
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  nodes_[1]->transport->Send(TestMessage(0, 5, kPageSize));
  nodes_[1]->transport->Shutdown(absl::Now() + absl::Seconds(1));  // flushes first
  nodes_[1]->transport.reset();
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    return nodes_[0]->rec.down.count(1) && nodes_[2]->rec.down.count(1);
  }));
  ASSERT_EQ(nodes_[0]->rec.messages.size(), 1u);
  EXPECT_EQ(nodes_[0]->rec.messages[0].req_id, 5u);
  EXPECT_TRUE(nodes_[0]->transport->IsUp(2));
}

TEST_F(RdmaOverFake, MessageToSelfGoesThroughTheLoop) {
  MakeCluster(2, RdmaTuning{});
  nodes_[0]->transport->Send(TestMessage(0, 9, kPageSize));
  EXPECT_TRUE(nodes_[0]->rec.messages.empty());  // never re-entrant
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[0]->rec.messages.size() == 1; }));
  EXPECT_EQ(nodes_[0]->rec.messages[0].src, 0u);
  EXPECT_TRUE(PayloadIntact(nodes_[0]->rec.messages[0]));
}

TEST_F(RdmaOverFake, RoceEndpointsRouteByGid) {
  addrs_ = FreeLoopbackAddresses(2);
  for (int i = 0; i < 2; ++i) {
    auto node = std::make_unique<TestNode>();
    Options o;
    o.node_id = static_cast<NodeId>(i);
    o.peers = addrs_;
    node->loop = std::move(*EventLoop::Create());
    auto t = CreateRdmaTransportWithVerbs(
        o, RdmaTuning{}, fabric_.NewDevice("roce" + std::to_string(i), LinkLayer::kEthernet));
    ASSERT_TRUE(t.ok()) << t.status();
    node->transport = std::move(*t);
    ASSERT_TRUE(node->transport->Start(node->loop.get(), &node->rec).ok());
    nodes_.push_back(std::move(node));
  }
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return AllUp(); }));
  nodes_[0]->transport->Send(TestMessage(1, 1, kPageSize));
  ASSERT_TRUE(PumpUntil(nodes_, [&] { return nodes_[1]->rec.messages.size() == 1; }));
}

TEST_F(RdmaOverFake, MismatchedGeometryIsRefusedAtSetUp) {
  addrs_ = FreeLoopbackAddresses(2);
  for (int i = 0; i < 2; ++i) {
    auto node = std::make_unique<TestNode>();
    Options o;
    o.node_id = static_cast<NodeId>(i);
    o.peers = addrs_;
    o.connect_timeout = absl::Seconds(20);  // the refusal, not a timeout, must end it
    RdmaTuning t;
    t.recv_credits = i == 0 ? 64 : 32;
    node->loop = std::move(*EventLoop::Create());
    node->transport = std::move(
        *CreateRdmaTransportWithVerbs(o, t, fabric_.NewDevice(absl::StrCat("g", i))));
    ASSERT_TRUE(node->transport->Start(node->loop.get(), &node->rec).ok());
    nodes_.push_back(std::move(node));
  }
  // Node 1 connects; node 0 (the acceptor) refuses its handshake and closes the socket.
  ASSERT_TRUE(PumpUntil(nodes_, [&] {
    return nodes_[0]->rec.down.count(1) > 0 && nodes_[1]->rec.down.count(0) > 0;
  }));
  EXPECT_THAT(std::string(nodes_[0]->rec.down[1].message()), HasSubstr("geometry"));
  EXPECT_TRUE(nodes_[0]->rec.up.empty());
  EXPECT_TRUE(nodes_[1]->rec.up.empty());
}

}  // namespace
}  // namespace dsm::rdma::testing
