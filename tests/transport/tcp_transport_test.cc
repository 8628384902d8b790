// TCP only: hostile byte streams close just their connection; Options validation; a quick
// 4 KiB request/response round-trip measurement (printed, never asserted).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "transport/raw_client.h"
#include "transport/transport_test_util.h"
#include "transport/wire.h"

namespace dsm::testing {
namespace {

Message Hello(NodeId src, size_t cluster_size, Incarnation incarnation = 0) {
  Message m;
  m.type = MsgType::kHello;
  m.src = src;
  m.arg = cluster_size;
  m.req_id = incarnation;
  return m;
}

// Checks that the cluster's started nodes still exchange messages.
void ExpectStillServing(TestCluster& c, NodeId from, NodeId to) {
  const size_t before = c.node(to).rec().message_count();
  c.node(from).Send(MakeMsg(MsgType::kGetS, to, Recorder::kUnordered));
  EXPECT_TRUE(c.node(to).rec().WaitMessages(before + 1))
      << "node " << from << " -> " << to << " stopped working";
}

TEST(TcpTransport, GarbageAndBadHellosCloseOnlyThatConnection) {
  auto c = TestCluster::Create(TransportKind::kTcp, 3);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE((*c)->WaitAllUp());
  TestCluster& cl = **c;
  const uint16_t port0 = cl.port(0);

  struct Case {
    const char* what;
    std::vector<uint8_t> bytes;
  };
  std::vector<Case> cases;
  cases.push_back({"random bytes", std::vector<uint8_t>(200, 0xA5)});
  auto enc = [](Message m) {
    std::vector<uint8_t> b;
    EncodeMessage(m, b);
    return b;
  };
  cases.push_back({"Hello claiming an already connected node", enc(Hello(2, 3))});
  cases.push_back({"Hello with the wrong cluster size", enc(Hello(1, 4))});
  cases.push_back({"Hello from a lower node id", enc(Hello(0, 3))});
  cases.push_back({"data before Hello", enc(MakeMsg(MsgType::kGetS, 0, 0))});
  std::vector<uint8_t> bad_magic = enc(Hello(2, 3));
  bad_magic[0] ^= 1;
  cases.push_back({"Hello with a bad magic", bad_magic});
  std::vector<uint8_t> huge = enc(Hello(2, 3));
  huge[12] = huge[13] = huge[14] = huge[15] = 0xff;  // payload_len 4 GiB
  cases.push_back({"Hello announcing a 4 GiB payload", huge});

  // Garbage is counted as a bad message; a well-formed Hello node 0 may not accept (a
  // duplicate id, another cluster size) as a refusal.
  auto rejected = [&cl] {
    const Transport::Counters k = cl.node(0).transport().counters();
    return k.bad_messages + k.hellos_refused;
  };
  uint64_t bad_before = rejected();
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    RawClient raw(port0);
    ASSERT_TRUE(raw.connected());
    raw.Write(k.bytes);
    EXPECT_TRUE(raw.WaitClosed()) << "node 0 kept a connection that sent " << k.what;
    EXPECT_TRUE(cl.node(0).rec().WaitUntil([&](const Recorder&) {
      return rejected() > bad_before;
    })) << "not counted as a bad message or a refusal";
    bad_before = rejected();
    EXPECT_TRUE(cl.node(0).rec().down().empty()) << "a legitimate peer was reported down";
    ExpectStillServing(cl, 0, 2);
    ExpectStillServing(cl, 2, 0);
    ExpectStillServing(cl, 1, 0);
  }
}

// A client that connects and says nothing is closed after peer_timeout (it would otherwise
// hold one of the few slots for connections without Hello for good); the nodes keep working.
// The live nodes' own Hellos must arrive within the same peer_timeout, also on a loaded
// machine: 2 s, not less.
TEST(TcpTransport, AClientThatNeverSaysHelloIsClosed) {
  auto c = TestCluster::Create(TransportKind::kTcp, 2, {}, std::chrono::seconds(20),
                               /*inject_faults=*/false, std::chrono::seconds(2));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE((*c)->WaitAllUp());
  TestCluster& cl = **c;
  const uint64_t bad_before = cl.node(0).transport().counters().bad_messages;
  RawClient silent(cl.port(0));
  ASSERT_TRUE(silent.connected());
  EXPECT_TRUE(silent.WaitClosed()) << "node 0 kept a connection that never said Hello";
  EXPECT_TRUE(cl.node(0).rec().WaitUntil([&](const Recorder&) {
    return cl.node(0).transport().counters().bad_messages > bad_before;
  })) << "not counted as a bad message";
  EXPECT_TRUE(cl.node(0).rec().down().empty()) << "a legitimate peer was reported down";
  ExpectStillServing(cl, 0, 1);
  ExpectStillServing(cl, 1, 0);
}

// Node 1 of a 2-node cluster is a raw socket: after a good Hello, a corrupt frame (or a frame
// with the wrong src) makes node 0 close the connection and report node 1 down once.
TEST(TcpTransport, CorruptFrameFromPeerReportsItDown) {
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant);
    auto c = TestCluster::Create(TransportKind::kTcp, 2, {0});
    ASSERT_TRUE(c.ok()) << c.status();
    TestCluster& cl = **c;
    RawClient raw(cl.port(0));
    ASSERT_TRUE(raw.connected());
    raw.WriteMsg(Hello(1, 2, /*incarnation=*/1000));  // the dialer speaks first
    auto hello = raw.ReadMsg(2);
    ASSERT_TRUE(hello.ok()) << hello.status();
    EXPECT_EQ(hello->type, MsgType::kHello);
    EXPECT_EQ(hello->src, 0u);
    EXPECT_EQ(hello->arg, 2u);
    EXPECT_EQ(hello->page, 0u) << "accepted, not refused";
    EXPECT_EQ(hello->req_id, cl.node(0).transport().incarnation());
    ASSERT_TRUE(cl.node(0).rec().WaitUp(1));
    EXPECT_EQ(cl.node(0).rec().incarnation(1), 1000u);
    Message ok = MakeMsg(MsgType::kData, 0, 7, kPageSize);
    ok.src = 1;
    raw.WriteMsg(ok);
    ASSERT_TRUE(cl.node(0).rec().WaitMessages(1));
    EXPECT_TRUE(cl.node(0).rec().messages()[0].payload_ok);
    std::vector<uint8_t> bad;
    Message next = MakeMsg(MsgType::kGetS, 0, 8);
    next.src = 1;
    if (variant == 0) {  // corrupt version
      EncodeMessage(next, bad);
      bad[4] = 0x77;
    } else if (variant == 1) {  // the wrong src for this connection
      next.src = 0;
      EncodeMessage(next, bad);
    } else {  // a payload illegal for the type
      next.payload.resize(10);
      EncodeMessage(next, bad);
    }
    raw.Write(bad);
    ASSERT_TRUE(cl.node(0).rec().WaitDown(1));
    EXPECT_TRUE(raw.WaitClosed());
    EXPECT_EQ(cl.node(0).transport().counters().bad_messages, 1u);
    EXPECT_EQ(cl.node(0).rec().message_count(), 1u);
    EXPECT_FALSE(cl.node(0).transport().IsUp(1));
    // Down is final for that incarnation: the same one connecting again is refused, and
    // told why.
    RawClient again(cl.port(0));
    ASSERT_TRUE(again.connected());
    again.WriteMsg(Hello(1, 2, 1000));
    auto refusal = again.ReadMsg(2);
    ASSERT_TRUE(refusal.ok()) << refusal.status();
    EXPECT_EQ(refusal->type, MsgType::kHello);
    EXPECT_EQ(refusal->page, static_cast<uint64_t>(Refusal::kStaleIncarnation));
    EXPECT_EQ(refusal->region, 1000u) << "names the incarnation declared down";
    EXPECT_TRUE(again.WaitClosed());
    EXPECT_EQ(cl.node(0).rec().up_count()[1], 1);
    EXPECT_EQ(cl.node(0).transport().counters().hellos_refused, 1u);
  }
}

TEST(TcpTransport, PeerAtTheWrongAddressIsRejected) {
  // Node 1 dials "node 0" but node 2 listens there: the Hello does not match. Node 1 keeps
  // dialing until connect_timeout, then reports node 0 down; this test's listener must be up
  // and accept within that time, also on a loaded machine: 2 s, not less.
  auto c = TestCluster::Create(TransportKind::kTcp, 3, {1}, std::chrono::seconds(2));
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(cl.port(0));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(lfd, 4), 0);
  int fd = accept(lfd, nullptr, nullptr);
  ASSERT_GE(fd, 0);
  std::vector<uint8_t> b;
  EncodeMessage(Hello(2, 3), b);
  ASSERT_EQ(send(fd, b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
  ASSERT_TRUE(cl.node(1).rec().WaitDown(0));
  EXPECT_GE(cl.node(1).transport().counters().bad_messages, 1u);
  EXPECT_TRUE(cl.node(1).rec().up_count().empty());
  close(fd);
  close(lfd);
}

// A second process claiming node 2's id while node 2 is up (another listen address, so its
// bind succeeds) is refused by the nodes it dials, which name the reason; it is told too, and
// reports the duplicate id, not a timeout. The real node 2 keeps working.
TEST(TcpTransport, ASecondProcessWithAnIdThatIsUpIsRefusedAsDuplicate) {
  auto c = TestCluster::Create(TransportKind::kTcp, 3);
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  ASSERT_TRUE(cl.WaitAllUp());
  const Incarnation real = cl.node(0).rec().incarnation(2);
  {  // By hand: the refusal Hello names the reason and the incarnation that is up.
    RawClient raw(cl.port(0));
    ASSERT_TRUE(raw.connected());
    raw.WriteMsg(Hello(2, 3, real + 1));
    auto refusal = raw.ReadMsg(3);
    ASSERT_TRUE(refusal.ok()) << refusal.status();
    EXPECT_EQ(refusal->page, static_cast<uint64_t>(Refusal::kDuplicateId));
    EXPECT_EQ(refusal->region, real);
    EXPECT_TRUE(raw.WaitClosed());
  }
  // A real transport with the same id. Its connect deadline ends its retries.
  std::unique_ptr<TestNode> dup;
  Options o;
  o.peers = cl.peers();
  o.node_id = 2;
  o.transport = TransportKind::kTcp;
  o.connect_timeout = absl::Seconds(2);
  absl::Status started;
  for (int attempt = 0; attempt < 8; ++attempt) {
    o.listen = absl::StrCat("127.0.0.1:", 33000 + (getpid() + attempt * 7) % 20000);
    dup = std::make_unique<TestNode>();
    started = dup->Init(o);
    if (started.ok()) started = dup->Start();
    if (started.ok() || !absl::StrContains(started.message(), "bind")) break;
  }
  ASSERT_TRUE(started.ok()) << started;
  for (NodeId peer : {0u, 1u}) {
    ASSERT_TRUE(dup->rec().WaitDown(peer)) << "node " << peer;
    const absl::Status why = dup->rec().down()[peer];
    EXPECT_TRUE(absl::IsAlreadyExists(why)) << why;
    EXPECT_TRUE(absl::StrContains(why.message(), "duplicate node id")) << why;
  }
  EXPECT_TRUE(dup->rec().up_count().empty());
  EXPECT_GE(cl.node(0).transport().counters().hellos_refused, 2u);
  EXPECT_TRUE(cl.node(0).rec().down().empty()) << "the real node 2 was disturbed";
  EXPECT_EQ(cl.node(0).rec().incarnation(2), real);
  ExpectStillServing(cl, 2, 0);
  ExpectStillServing(cl, 0, 2);
  dup->Shutdown(absl::Milliseconds(100));
  dup->Stop();
}

// A node whose peer list has another length than node 0's is refused at its Hello; both
// sides say "cluster size mismatch" with both sizes, and the odd node reports node 0 down at
// once with that reason instead of waiting for its connect deadline.
TEST(TcpTransport, ClusterSizeMismatchIsRefusedWithBothSizes) {
  auto c = TestCluster::Create(TransportKind::kTcp, 3, {0});
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  TestNode odd;
  Options o;
  o.peers = {cl.peers()[0], cl.peers()[1]};  // 2 entries; node 0 has 3
  o.node_id = 1;
  o.transport = TransportKind::kTcp;
  o.connect_timeout = absl::Seconds(60);
  ASSERT_TRUE(odd.Init(o).ok());
  ASSERT_TRUE(odd.Start().ok());
  ASSERT_TRUE(odd.rec().WaitDown(0));
  const absl::Status why = odd.rec().down()[0];
  EXPECT_TRUE(absl::IsFailedPrecondition(why)) << why << " (not the 60 s connect deadline)";
  EXPECT_TRUE(absl::StrContains(why.message(), "cluster size mismatch")) << why;
  EXPECT_TRUE(absl::StrContains(why.message(), "node 0 has 3")) << why;
  EXPECT_TRUE(absl::StrContains(why.message(), "(1) has 2")) << why;
  EXPECT_EQ(cl.node(0).transport().counters().hellos_refused, 1u);
  EXPECT_TRUE(cl.node(0).rec().up_count().empty());
  odd.Shutdown(absl::Milliseconds(100));
  odd.Stop();
}

// Node 1 dials "node 0", a raw listener. The first answer (incarnation 5) brings node 0 up;
// once that connection closes, node 1 dials node 0 again to find a restarted process. An
// answer from the same incarnation 5 is refused by the dialer, which says why in a refusal
// Hello; a newer incarnation is accepted as a rejoin.
TEST(TcpTransport, TheDialerRefusesAStaleIncarnationAndAcceptsANewerOne) {
  auto c = TestCluster::Create(TransportKind::kTcp, 2, {1});
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(cl.port(0));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(lfd, 4), 0);
  timeval tv{20, 0};
  setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  // Accepts node 1's next dial, reads its Hello, answers as node 0 `incarnation`; returns
  // what node 1 sends back (or an error), then closes.
  auto answer = [&](Incarnation incarnation, bool keep_open) -> absl::StatusOr<Message> {
    int fd = -1;
    const absl::Time until = absl::Now() + absl::Seconds(20);
    while (fd < 0 && absl::Now() < until) {
      fd = accept(lfd, nullptr, nullptr);
      if (fd < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
        return absl::ErrnoToStatus(errno, "accept");
      }
    }
    if (fd < 0) return absl::DeadlineExceededError("node 1 did not dial");
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::vector<uint8_t> hdr(kWireHeaderSize);
    if (recv(fd, hdr.data(), hdr.size(), MSG_WAITALL) != static_cast<ssize_t>(hdr.size())) {
      close(fd);
      return absl::DataLossError("no Hello from node 1");
    }
    auto theirs = DecodeMessage(absl::MakeConstSpan(hdr), 2);
    std::vector<uint8_t> b;
    EncodeMessage(Hello(0, 2, incarnation), b);
    send(fd, b.data(), b.size(), MSG_NOSIGNAL);
    absl::StatusOr<Message> back = absl::NotFoundError("nothing sent back");
    if (!keep_open) {
      std::vector<uint8_t> r(kWireHeaderSize);
      if (recv(fd, r.data(), r.size(), MSG_WAITALL) == static_cast<ssize_t>(r.size())) {
        back = DecodeMessage(absl::MakeConstSpan(r), 2);
      }
    } else {
      back = theirs;
      cl.node(1).rec().WaitUp(0);
    }
    close(fd);
    return back;
  };
  auto first = answer(5, /*keep_open=*/true);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->type, MsgType::kHello);
  EXPECT_EQ(first->req_id, cl.node(1).transport().incarnation());
  ASSERT_TRUE(cl.node(1).rec().WaitDown(0));
  EXPECT_EQ(cl.node(1).rec().incarnation(0), 5u);
  auto stale = answer(5, /*keep_open=*/false);
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_EQ(stale->type, MsgType::kHello);
  EXPECT_EQ(stale->page, static_cast<uint64_t>(Refusal::kStaleIncarnation));
  EXPECT_EQ(stale->region, 5u) << "names the incarnation it declared down";
  EXPECT_EQ(cl.node(1).rec().up_count()[0], 1);
  EXPECT_GE(cl.node(1).transport().counters().hellos_refused, 1u);
  auto fresh = answer(6, /*keep_open=*/true);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ASSERT_TRUE(cl.node(1).rec().WaitUntil([](const Recorder& r) { return r.incarnation(0) == 6; }));
  EXPECT_EQ(cl.node(1).transport().counters().rejoins, 1u);
  close(lfd);
}

// Over loopback the hub knows every registered node: a second transport with a registered id,
// or a peer list of another length, fails Start with that reason.
TEST(LoopbackTransport, DuplicateIdAndClusterSizeMismatchFailStartWithTheReason) {
  auto c = TestCluster::Create(TransportKind::kLoopback, 3);
  ASSERT_TRUE(c.ok()) << c.status();
  TestCluster& cl = **c;
  ASSERT_TRUE(cl.WaitAllUp());
  Options o = cl.node(1).options;
  TestNode dup;
  ASSERT_TRUE(dup.Init(o).ok());
  absl::Status s = dup.Start();
  EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "duplicate node id")) << s;
  dup.Stop();
  o.peers.push_back("d");
  o.node_id = 3;
  TestNode odd;
  ASSERT_TRUE(odd.Init(o).ok());
  s = odd.Start();
  EXPECT_TRUE(absl::StrContains(s.message(), "cluster size mismatch")) << s;
  odd.Stop();
  EXPECT_TRUE(cl.node(0).rec().down().empty()) << "the cluster was disturbed";
  ExpectStillServing(cl, 1, 0);
}

TEST(TransportFactory, ValidatesOptions) {
  Options o;
  o.peers = {};
  EXPECT_TRUE(absl::StrContains(CreateTransport(o).status().message(), "Options.peers"));
  o.peers = {"127.0.0.1:7000", "127.0.0.1:7001"};
  o.node_id = 2;
  EXPECT_TRUE(absl::StrContains(CreateTransport(o).status().message(), "Options.node_id"));
  o.node_id = 1;
  for (const char* bad : {"127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "host.example:7000",
                          "127.0.0.1:70a", ":7000", "127.0.0.1:+7"}) {
    o.peers[0] = bad;
    auto t = CreateTransport(o);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(t.status().message(), "Options.peers[0]")) << t.status();
  }
  o.peers[0] = "localhost:7000";
  o.listen = "0.0.0.0:x";
  EXPECT_TRUE(absl::StrContains(CreateTransport(o).status().message(), "Options.listen"));
  o.listen = "0.0.0.0:7001";
  EXPECT_TRUE(CreateTransport(o).ok());
  o.peers.assign(kMaxNodes + 1, "127.0.0.1:7000");
  EXPECT_FALSE(CreateTransport(o).ok());
  o.peers = {"127.0.0.1:7000"};
  o.node_id = 0;
  o.transport = TransportKind::kRdma;  // valid options: any failure is about the device
  if (auto r = CreateTransport(o); !r.ok()) {
    EXPECT_NE(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  }
  o.transport = TransportKind::kLoopback;
  o.peers = {"a", "b"};  // loopback needs no addresses
  EXPECT_TRUE(CreateTransport(o).ok());
  auto hp = ParseHostPort("10.1.2.3:65535");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->ipv4, 0x0a010203u);
  EXPECT_EQ(hp->port, 65535);
  // Names resolve (localhost is in every /etc/hosts); an empty host or port does not parse.
  hp = ParseHostPort("localhost:7000");
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->ipv4, 0x7f000001u);
  EXPECT_FALSE(ParseHostPort(":7000").ok());
  EXPECT_FALSE(ParseHostPort("localhost:").ok());
}

// Ping-pong between two TCP transports: node 0 sends GetS, node 1 answers from its handler
// with a 4 KiB Data frame, node 0 sends the next GetS from its handler.
class PingPong final : public Transport::Handler {
 public:
  PingPong(NodeId self, int iters) : self_(self), iters_(iters) {}
  Transport* transport = nullptr;
  std::vector<double> rtt_us;
  std::atomic<bool> done{false};
  std::atomic<bool> failed{false};

  void OnPeerUp(NodeId, Incarnation) override {
    if (self_ == 0) Ping();
  }
  void OnPeerDown(NodeId, const absl::Status&) override {
    failed = true;
    done = true;
  }
  void OnMessage(Message&& m) override {
    if (self_ == 1) {
      transport->Send(MakeMsg(MsgType::kData, 0, m.page, kPageSize));
      return;
    }
    rtt_us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - sent_)
            .count());
    if (static_cast<int>(rtt_us.size()) == iters_) {
      done = true;
      return;
    }
    Ping();
  }

 private:
  void Ping() {
    sent_ = std::chrono::steady_clock::now();
    transport->Send(MakeMsg(MsgType::kGetS, 1, rtt_us.size()));
  }
  const NodeId self_;
  const int iters_;
  std::chrono::steady_clock::time_point sent_;
};

// Not a timed assertion: prints the median round trip (48-byte request, 4 KiB answer) through
// the TCP transport between two EventLoops on two threads, busy-polling and sleeping.
TEST(TcpTransport, Measure4KiBRequestResponseRoundTrip) {
  constexpr int kIters = 10000;
  // 200 us is Options::poll_spin's default. On an oversubscribed machine a spinning thread
  // loses its CPU for whole scheduler slices, so the spinning figure needs an idle machine.
  for (int64_t spin_us : {int64_t{200}, int64_t{0}}) {
    std::vector<std::unique_ptr<EventLoop>> loops;
    std::vector<std::unique_ptr<Transport>> ts;
    std::vector<std::unique_ptr<PingPong>> hs;
    std::mt19937 rng(std::random_device{}());
    bool started = false;
    for (int attempt = 0; attempt < 8 && !started; ++attempt) {
      ts.clear();  // before their loops
      hs.clear();
      loops.clear();
      const int base = 20000 + static_cast<int>(rng() % 12000);
      started = true;
      for (NodeId i = 0; i < 2; ++i) {
        Options o;
        o.node_id = i;
        o.peers = {absl::StrCat("127.0.0.1:", base), absl::StrCat("127.0.0.1:", base + 1)};
        loops.push_back(*EventLoop::Create());
        ts.push_back(*CreateTransport(o));
        hs.push_back(std::make_unique<PingPong>(i, kIters));
        hs[i]->transport = ts[i].get();
        if (!ts[i]->Start(loops[i].get(), hs[i].get()).ok()) {
          started = false;
          break;
        }
      }
    }
    ASSERT_TRUE(started);
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i) {
      threads.emplace_back([&, i] {
        const absl::Time until = absl::Now() + absl::Seconds(10);
        while (!hs[0]->done && absl::Now() < until) {
          loops[i]->Poll(absl::Microseconds(spin_us), absl::Milliseconds(2));
        }
      });
    }
    for (auto& t : threads) t.join();
    // A measurement, not a timed test: a slow machine just gets fewer samples.
    ASSERT_FALSE(hs[0]->failed);
    std::vector<double>& r = hs[0]->rtt_us;
    ASSERT_GT(r.size(), 0u) << "no round trip completed within 10 s";
    std::sort(r.begin(), r.end());
    std::printf("TCP 4 KiB request/response RTT, poll spin %lld us: median %.1f us, p90 %.1f us "
                "(n=%zu)\n",
                static_cast<long long>(spin_us), r[r.size() / 2], r[r.size() * 9 / 10], r.size());
    for (auto& t : ts) t->Shutdown(absl::Now() + absl::Milliseconds(50));
  }
}

}  // namespace
}  // namespace dsm::testing
