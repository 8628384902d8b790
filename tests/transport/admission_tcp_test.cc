// Admission over real TCP sockets: hostile clients from 127.0.0.99 (a loopback address of
// its own) against a cluster with a key. No page byte and no state change for a client that
// does not prove the key, the real node still joins, slots held by one source do not keep it
// out, a peer that stops reading is cut off, and the key never reaches the log.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "transport/admission/admission.h"
#include "transport/raw_client.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/transport_test_util.h"

namespace dsm::testing {
namespace {

constexpr char kKey[] = "a-test-cluster-key-of-32-bytes!!";
constexpr uint32_t kOutsider = 0x7f000063;  // 127.0.0.99

Message Hello(NodeId src, size_t cluster_size) {
  Message m;
  m.type = MsgType::kHello;
  m.src = src;
  m.arg = cluster_size;
  return m;
}

std::shared_ptr<const admission::ClusterAuth> AuthFor(const TestCluster& c, NodeId self,
                                                      const std::string& key = kKey) {
  auto a = admission::ClusterAuth::Create(key, self, c.peers());
  EXPECT_TRUE(a.ok()) << a.status();
  return *a;
}

// Redirects this process's stderr (where the log goes) to a file while alive.
class StderrCapture {
 public:
  StderrCapture() {
    char tmpl[] = "/tmp/dsm_stderr_XXXXXX";
    fd_ = mkstemp(tmpl);
    path_ = tmpl;
    saved_ = dup(2);
    dup2(fd_, 2);
  }
  ~StderrCapture() { Restore(); }
  // Restores stderr and returns what was written meanwhile.
  std::string Restore() {
    if (saved_ >= 0) {
      dup2(saved_, 2);
      close(saved_);
      saved_ = -1;
      std::string out;
      char buf[4096];
      lseek(fd_, 0, SEEK_SET);
      for (ssize_t n; (n = read(fd_, buf, sizeof(buf))) > 0;) out.append(buf, n);
      close(fd_);
      unlink(path_.c_str());
      text_ = out;
    }
    return text_;
  }

 private:
  int fd_ = -1, saved_ = -1;
  std::string path_, text_;
};

// The attack that used to work: an outsider claims the id of a node that has not connected
// yet and asks for a page. Now it gets no byte at all, nothing reaches the handler, it is
// counted, and the real node joins afterwards.
TEST(TcpAdmission, ImpersonationGetsNoBytesChangesNothingAndTheRealNodeJoins) {
  auto c = TestCluster::Create(TransportKind::kTcp, 3, {0, 1}, std::chrono::seconds(20),
                               false, std::chrono::seconds(10), kKey);
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  ASSERT_TRUE(cl.node(0).rec().WaitUp(1));
  const auto before = cl.node(0).transport().counters();

  {  // No key: the old plain Hello, then a GetS.
    RawClient raw(cl.port(0), kOutsider);
    ASSERT_TRUE(raw.connected());
    Message gets;
    gets.type = MsgType::kGetS;
    gets.src = 2;
    std::vector<uint8_t> bytes;
    EncodeMessage(Hello(2, 3), bytes);
    EncodeMessage(gets, bytes);
    raw.Write(bytes);
    std::vector<uint8_t> got;
    EXPECT_TRUE(raw.WaitClosed(absl::Seconds(20), &got));
    EXPECT_TRUE(got.empty()) << "node 0 sent " << got.size() << " bytes to an outsider";
  }
  {  // A wrong key, following the protocol: only the 40-byte nonce challenge comes back.
    RawClient raw(cl.port(0), kOutsider);
    ASSERT_TRUE(raw.connected());
    admission::Handshake h = raw.Admit(AuthFor(cl, 2, "not-the-cluster-key-at-all-32byt"), 0);
    EXPECT_FALSE(h.done());
    std::vector<uint8_t> got;
    EXPECT_TRUE(raw.WaitClosed(absl::Seconds(20), &got));
    EXPECT_TRUE(got.empty()) << "node 0 answered a failed proof";
  }
  EXPECT_TRUE(cl.node(0).rec().WaitUntil([&](const Recorder&) {
    return cl.node(0).transport().counters().admission_failures >= before.admission_failures + 2;
  })) << "failed admissions not counted";
  EXPECT_EQ(cl.node(0).rec().message_count(), 0u);
  EXPECT_EQ(cl.node(0).rec().up_count().count(2), 0u);
  EXPECT_FALSE(cl.node(0).transport().IsUp(2));
  EXPECT_TRUE(cl.node(0).rec().down().empty());

  ASSERT_TRUE(cl.StartNode(2).ok());
  EXPECT_TRUE(cl.WaitAllUp()) << "the real node 2 could not join after the impersonation";
}

// Without a key, or with another one, a real node never comes up in a cluster with a key.
TEST(TcpAdmission, NodeWithoutOrWithAnotherKeyNeverComesUp) {
  for (const char* key : {"", "another-cluster-key-of-32-bytes!"}) {
    SCOPED_TRACE(key);
    auto c = TestCluster::Create(TransportKind::kTcp, 2, {0}, std::chrono::seconds(20), false,
                                 std::chrono::seconds(10), kKey);
    ASSERT_TRUE(c.ok()) << c.status();
    TestCluster& cl = **c;
    TestNode stranger;
    Options o;
    o.node_id = 1;
    o.peers = cl.peers();
    o.cluster_key = key;
    o.connect_timeout = absl::Milliseconds(1500);
    ASSERT_TRUE(stranger.Init(o).ok());
    ASSERT_TRUE(stranger.Start().ok());
    EXPECT_TRUE(stranger.rec().WaitDown(0)) << "never reported node 0 down";
    EXPECT_TRUE(cl.node(0).rec().WaitUntil([&](const Recorder&) {
      return cl.node(0).transport().counters().admission_failures >= 1;
    }));
    EXPECT_TRUE(stranger.rec().up_count().empty());
    EXPECT_TRUE(cl.node(0).rec().up_count().empty());
    stranger.Shutdown(absl::ZeroDuration());
    stranger.Stop();
  }
}

// The bytes of a good handshake, replayed on a new connection, do not admit anyone.
TEST(TcpAdmission, ReplayedHandshakeIsRefused) {
  auto c = TestCluster::Create(TransportKind::kTcp, 3, {0}, std::chrono::seconds(20), false,
                               std::chrono::seconds(10), kKey);
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  std::vector<uint8_t> recorded;
  {
    RawClient good(cl.port(0), kOutsider);
    ASSERT_TRUE(good.connected());
    admission::Handshake h = good.Admit(AuthFor(cl, 2), 0, &recorded);
    ASSERT_TRUE(h.done()) << "the key holder was not admitted";
    good.WriteMsg(Hello(2, 3));    // after admission, the dialer says Hello first
    auto hello = good.ReadMsg(3);  // and node 0 answers with its own
    ASSERT_TRUE(hello.ok()) << hello.status();
    EXPECT_EQ(hello->type, MsgType::kHello);
  }
  const uint64_t failures = cl.node(0).transport().counters().admission_failures;
  RawClient replay(cl.port(0), kOutsider);
  ASSERT_TRUE(replay.connected());
  replay.Write(recorded);
  std::vector<uint8_t> got;
  EXPECT_TRUE(replay.WaitClosed(absl::Seconds(20), &got));
  // At most the fresh challenge (which the close may also discard), never a proof or Hello.
  EXPECT_LE(got.size(), admission::kAcceptorChallengeSize);
  EXPECT_TRUE(cl.node(0).rec().WaitUntil([&](const Recorder&) {
    return cl.node(0).transport().counters().admission_failures > failures;
  }));
  // Only the genuine connection came up; the replay did not.
  EXPECT_EQ(cl.node(0).rec().up_count()[2], 1);
}

// One source holding idle connections gets a few slots, not all of them: the real node
// connects at once instead of after the outsider's connections time out.
TEST(TcpAdmission, IdleConnectionsFromOneSourceDoNotKeepARealNodeOut) {
  // The handshake bound (5 s) outlasts node 2's connect_timeout: it can only join while the
  // outsider still holds its connections.
  auto c = TestCluster::Create(TransportKind::kTcp, 3, {0, 1}, std::chrono::seconds(20), false,
                               std::chrono::seconds(10), kKey);
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  ASSERT_TRUE(cl.node(0).rec().WaitUp(1));
  StderrCapture log;
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 40; ++i) {
    idle.push_back(std::make_unique<RawClient>(cl.port(0), kOutsider));
  }
  ASSERT_TRUE(cl.node(0).rec().WaitUntil([&](const Recorder&) {
    return cl.node(0).transport().counters().connections_refused >= 30;
  })) << "the outsider's connections were not refused";
  // Node 2 starts with a connect_timeout shorter than the handshake bound.
  TestNode& n2 = cl.node(2);
  Options o;
  o.node_id = 2;
  o.peers = cl.peers();
  o.cluster_key = kKey;
  o.connect_timeout = absl::Milliseconds(3000);
  ASSERT_TRUE(n2.Init(o).ok());
  ASSERT_TRUE(n2.Start().ok());
  EXPECT_TRUE(n2.rec().WaitUp(0)) << "node 2 kept out by one source's idle connections";
  EXPECT_TRUE(n2.rec().down().empty());
  const std::string text = log.Restore();
  size_t lines = 0;
  for (size_t p = 0; (p = text.find("refused a connection", p)) != std::string::npos; ++p) ++lines;
  EXPECT_GE(lines, 1u);
  EXPECT_LE(lines, 2u) << "refusals are logged once per source per interval:\n" << text;
  n2.Shutdown(absl::Milliseconds(100));
  n2.Stop();
}

// Node 1 is a raw client that is admitted, says Hello, then never reads: node 0 keeps
// sending pages; it cuts node 1 off instead of queueing without bound.
TEST(TcpAdmission, PeerThatStopsReadingIsCutOffWithTheQueueBounded) {
  auto c = TestCluster::Create(TransportKind::kTcp, 2, {0}, std::chrono::seconds(20), false,
                               std::chrono::milliseconds(500), kKey);
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  RawClient raw(cl.port(0));
  ASSERT_TRUE(raw.connected());
  int small = 64 * 1024;
  setsockopt(raw.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  ASSERT_TRUE(raw.Admit(AuthFor(cl, 1), 0).done());
  raw.WriteMsg(Hello(1, 2));
  ASSERT_TRUE(cl.node(0).rec().WaitUp(1));
  constexpr size_t kGiveUp = size_t{512} << 20;  // far beyond the bound: the cut did not come
  bool down = false;
  while (!down && cl.node(0).transport().counters().bytes_sent < kGiveUp) {
    cl.node(0).Run([&] {
      for (int i = 0; i < 64; ++i) {
        cl.node(0).transport().Send(MakeMsg(MsgType::kData, 1, i, kPageSize));
      }
    });
    usleep(5000);
    down = !cl.node(0).rec().down().empty();
  }
  ASSERT_TRUE(down) << "node 0 queued " << cl.node(0).transport().counters().bytes_sent
                    << " bytes for a peer that reads nothing and never cut it off";
  const auto why = cl.node(0).rec().down().at(1);
  EXPECT_EQ(why.code(), absl::StatusCode::kResourceExhausted) << why;
  EXPECT_TRUE(absl::StrContains(why.message(), "stopped reading")) << why;
  EXPECT_EQ(cl.node(0).transport().counters().send_queue_cutoffs, 1u);
  // What node 0 accepted for node 1 in all: the bound plus what arrived during the stall
  // (at this test's pace, at most ~50 MiB/s over peer_timeout), far from the give-up point.
  EXPECT_LT(cl.node(0).transport().counters().bytes_sent,
            TcpTransport::kSendQueueLimit + (size_t{64} << 20));
}

// A failing handshake's log lines name the source and the reason, never the key (neither the
// cluster's nor the one the peer tried).
TEST(TcpAdmission, KeyNeverAppearsInTheLog) {
  const std::string wrong = "the-wrong-key-of-thirty-two-byte";
  StderrCapture log;
  {
    auto c = TestCluster::Create(TransportKind::kTcp, 2, {0}, std::chrono::seconds(20), false,
                                 std::chrono::seconds(10), kKey);
    ASSERT_TRUE(c.ok()) << c.status();
    TestCluster& cl = **c;
    TestNode stranger;
    Options o;
    o.node_id = 1;
    o.peers = cl.peers();
    o.cluster_key = wrong;
    o.connect_timeout = absl::Milliseconds(800);
    ASSERT_TRUE(stranger.Init(o).ok());
    ASSERT_TRUE(stranger.Start().ok());
    EXPECT_TRUE(stranger.rec().WaitDown(0));
    stranger.Shutdown(absl::ZeroDuration());
    stranger.Stop();
    o.cluster_key = "short";
    TestNode bad;
    EXPECT_FALSE(bad.Init(o).ok());
  }
  const std::string text = log.Restore();
  EXPECT_TRUE(absl::StrContains(text, "admission")) << "nothing logged:\n" << text;
  EXPECT_FALSE(absl::StrContains(text, kKey)) << text;
  EXPECT_FALSE(absl::StrContains(text, wrong)) << text;
}

}  // namespace
}  // namespace dsm::testing

namespace dsm::testing {
namespace {

struct UpCounter final : Transport::Handler {
  void OnMessage(Message&&) override {}
  void OnPeerUp(NodeId, Incarnation) override { ++ups; }
  void OnPeerDown(NodeId, const absl::Status&) override { ++downs; }
  int ups = 0, downs = 0;
};

// Not a timed assertion: prints the median time from the dialing node's Start() until both
// nodes report each other up (TCP connect + admission + Hello), with and without a key, both
// loops polled by this thread without sleeping.
TEST(TcpAdmission, MeasureConnectionSetupWithAndWithoutKey) {
  for (const char* key : {"", kKey}) {
    std::vector<double> us;
    std::mt19937 rng(std::random_device{}());
    for (int i = 0; i < 60; ++i) {
      const int base = 20000 + static_cast<int>(rng() % 12000);
      auto l0 = EventLoop::Create(), l1 = EventLoop::Create();
      ASSERT_TRUE(l0.ok() && l1.ok());
      UpCounter h0, h1;
      Options o;
      o.peers = {absl::StrCat("127.0.0.1:", base), absl::StrCat("127.0.0.1:", base + 1)};
      o.cluster_key = key;
      o.node_id = 0;
      auto t0 = CreateTransport(o);
      o.node_id = 1;
      auto t1 = CreateTransport(o);
      ASSERT_TRUE(t0.ok() && t1.ok());
      if (!(*t0)->Start(l0->get(), &h0).ok()) continue;  // port taken: another sample
      const auto start = std::chrono::steady_clock::now();
      if (!(*t1)->Start(l1->get(), &h1).ok()) continue;
      const absl::Time until = absl::Now() + absl::Seconds(10);
      while ((h0.ups == 0 || h1.ups == 0) && absl::Now() < until) {
        (*l0)->Poll(absl::ZeroDuration(), absl::ZeroDuration());
        (*l1)->Poll(absl::ZeroDuration(), absl::ZeroDuration());
      }
      const auto end = std::chrono::steady_clock::now();
      ASSERT_EQ(h0.ups, 1);
      ASSERT_EQ(h1.ups, 1);
      us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
      (*t1)->Shutdown(absl::Now());
      (*t0)->Shutdown(absl::Now());
    }
    ASSERT_FALSE(us.empty());
    std::sort(us.begin(), us.end());
    std::printf("TCP connection set-up (connect, %s, Hello both ways): median %.0f us, p90 %.0f "
                "us (n=%zu)\n",
                *key ? "admission with HMAC-SHA256" : "no key", us[us.size() / 2],
                us[us.size() * 9 / 10], us.size());
  }
}

}  // namespace
}  // namespace dsm::testing
