// The admission handshake as a state machine (no sockets), the cluster key's sources and
// policy, and the per-source bounds.
#include "transport/admission/admission.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "transport/admission/limits.h"
#include "transport/transport.h"

namespace dsm::admission {
namespace {

const std::vector<std::string> kPeers = {"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"};
const std::string kKey = "0123456789abcdef-cluster-key";

std::shared_ptr<const ClusterAuth> Auth(NodeId self, const std::string& key = kKey,
                                        const std::vector<std::string>& peers = kPeers) {
  auto a = ClusterAuth::Create(key, self, peers);
  EXPECT_TRUE(a.ok()) << a.status();
  return *a;
}

// Moves bytes between the two sides, `chunk` bytes at a time, until neither has output.
// Returns the first error either side reported.
absl::Status Exchange(Handshake& d, Handshake& a, size_t chunk = 1 << 20) {
  for (int round = 0; round < 16; ++round) {
    bool moved = false;
    for (auto [from, to] : {std::pair{&d, &a}, std::pair{&a, &d}}) {
      std::vector<uint8_t> bytes;
      bytes.swap(from->output());
      for (size_t off = 0; off < bytes.size(); off += chunk) {
        const size_t n = std::min(chunk, bytes.size() - off);
        auto used = to->Feed(absl::MakeConstSpan(bytes.data() + off, n));
        if (!used.ok()) return used.status();
        EXPECT_EQ(*used, n) << "a handshake byte was left unconsumed";
        moved = true;
      }
    }
    if (!moved) break;
  }
  return absl::OkStatus();
}

TEST(Admission, GoodHandshakeAdmitsBothSidesWhateverTheChunking) {
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{48}, size_t{1} << 20}) {
    SCOPED_TRACE(chunk);
    Handshake d = Handshake::Dialer(Auth(2), /*peer=*/0);
    Handshake a = Handshake::Acceptor(Auth(0));
    EXPECT_EQ(d.output().size(), kDialerHelloSize);
    ASSERT_TRUE(Exchange(d, a, chunk).ok());
    EXPECT_TRUE(d.done());
    EXPECT_TRUE(a.done());
    EXPECT_EQ(a.peer(), 2u);
    EXPECT_EQ(d.peer(), 0u);
  }
}

TEST(Admission, WrongKeyFailsAtTheAcceptorWhichRevealedOnlyANonce) {
  Handshake d = Handshake::Dialer(Auth(1, "another key of enough bytes"), 0);
  Handshake a = Handshake::Acceptor(Auth(0));
  std::vector<uint8_t> m1 = d.output();
  d.output().clear();
  ASSERT_TRUE(a.Feed(m1).ok());
  // The acceptor's whole answer before any proof: magic, version, flags and 32 random bytes.
  ASSERT_EQ(a.output().size(), kAcceptorChallengeSize);
  std::vector<uint8_t> m2 = a.output();
  a.output().clear();
  ASSERT_TRUE(d.Feed(m2).ok());
  auto r = a.Feed(d.output());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(a.failed());
  EXPECT_TRUE(a.output().empty()) << "the acceptor answered a failed proof";
  EXPECT_FALSE(absl::StrContains(r.status().message(), kKey));
  // Failed is final.
  EXPECT_FALSE(a.Feed(std::vector<uint8_t>(32, 0)).ok());
}

TEST(Admission, AcceptorWithTheWrongKeyIsRefusedByTheDialer) {
  Handshake d = Handshake::Dialer(Auth(1), 0);
  // The acceptor cannot produce a proof: it fails first, so the dialer gets nothing.
  Handshake a = Handshake::Acceptor(Auth(0, "yet another key, long enough"));
  EXPECT_FALSE(Exchange(d, a).ok());
  EXPECT_FALSE(d.done());
  EXPECT_FALSE(a.done());
  // A forged fourth message (the dialer's own proof reflected) is refused too.
  Handshake d2 = Handshake::Dialer(Auth(1), 0);
  Handshake a2 = Handshake::Acceptor(Auth(0));
  ASSERT_TRUE(a2.Feed(d2.output()).ok());
  d2.output().clear();
  ASSERT_TRUE(d2.Feed(a2.output()).ok());
  std::vector<uint8_t> proof = d2.output();
  EXPECT_FALSE(d2.Feed(proof).ok()) << "the dialer accepted its own proof reflected";
}

TEST(Admission, DifferentPeerListOrWrongNodeAtTheAddressFails) {
  std::vector<std::string> other = kPeers;
  other[2] = "127.0.0.1:7999";
  Handshake d = Handshake::Dialer(Auth(2, kKey, other), 0);
  Handshake a = Handshake::Acceptor(Auth(0));
  EXPECT_FALSE(Exchange(d, a).ok());
  EXPECT_FALSE(a.done());
  // Node 2 dials the address of node 0, but node 1 answers there (same key and peers).
  Handshake d2 = Handshake::Dialer(Auth(2), 0);
  Handshake a2 = Handshake::Acceptor(Auth(1));
  EXPECT_FALSE(Exchange(d2, a2).ok());
  EXPECT_FALSE(a2.done());
}

TEST(Admission, ReplayedDialerBytesFailOnANewConnection) {
  Handshake d = Handshake::Dialer(Auth(2), 0);
  Handshake a = Handshake::Acceptor(Auth(0));
  std::vector<uint8_t> recorded = d.output();  // step 1
  ASSERT_TRUE(a.Feed(d.output()).ok());
  d.output().clear();
  ASSERT_TRUE(d.Feed(a.output()).ok());
  a.output().clear();
  recorded.insert(recorded.end(), d.output().begin(), d.output().end());  // step 3
  ASSERT_TRUE(a.Feed(d.output()).ok());
  ASSERT_TRUE(a.done());
  // The same bytes to a fresh acceptor: its nonce differs, so the proof does not verify.
  Handshake again = Handshake::Acceptor(Auth(0));
  auto r = again.Feed(recorded);
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(again.done());
}

TEST(Admission, AcceptorRefusesIdsThatMayNotDialItAndGarbage) {
  for (NodeId claimed : {NodeId{0}, NodeId{1}, NodeId{3}, NodeId{1000}}) {
    SCOPED_TRACE(claimed);
    Handshake d = Handshake::Dialer(Auth(claimed >= 3 ? 2 : claimed), 1);
    std::vector<uint8_t> m1 = d.output();
    m1[8] = static_cast<uint8_t>(claimed);
    m1[9] = static_cast<uint8_t>(claimed >> 8);
    Handshake a = Handshake::Acceptor(Auth(1));
    EXPECT_FALSE(a.Feed(m1).ok());
    EXPECT_TRUE(a.output().empty());
  }
  Handshake a = Handshake::Acceptor(Auth(0));
  EXPECT_FALSE(a.Feed(std::vector<uint8_t>(kDialerHelloSize, 0xA5)).ok());
  EXPECT_TRUE(a.output().empty());
}

TEST(Admission, FeedStopsAtTheEndOfTheHandshake) {
  Handshake d = Handshake::Dialer(Auth(1), 0);
  Handshake a = Handshake::Acceptor(Auth(0));
  ASSERT_TRUE(a.Feed(d.output()).ok());
  d.output().clear();
  ASSERT_TRUE(d.Feed(a.output()).ok());
  a.output().clear();
  std::vector<uint8_t> m3 = d.output();
  d.output().clear();
  m3.insert(m3.end(), {1, 2, 3});  // the start of the frame stream
  auto used = a.Feed(m3);
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(*used, kMacSize);
  EXPECT_TRUE(a.done());
  std::vector<uint8_t> m4 = a.output();
  m4.insert(m4.end(), {9, 9});
  used = d.Feed(m4);
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(*used, kMacSize);
  EXPECT_TRUE(d.done());
  EXPECT_EQ(d.wanted(), 0u);
}

TEST(Admission, ConfigHashNormalizesAddressesAndBindsOrder) {
  auto a = ConfigHash({"127.0.0.1:7000", "localhost:7001"});
  auto b = ConfigHash({"localhost:7000", "127.0.0.1:7001"});
  auto c = ConfigHash({"127.0.0.1:7001", "127.0.0.1:7000"});
  auto d = ConfigHash({"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_NE(*a, *d);
}

class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    char tmpl[] = "/tmp/dsm_key_XXXXXX";
    const int fd = mkstemp(tmpl);
    path_ = tmpl;
    EXPECT_EQ(write(fd, contents.data(), contents.size()),
              static_cast<ssize_t>(contents.size()));
    close(fd);
  }
  ~TempFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ClusterKey, SourcesInOrderOfPrecedence) {
  TempFile opt_file("key-from-options-file\n");
  TempFile env_file("key-from-environment-file");
  std::map<std::string, std::string> env = {{kKeyEnv, "key-from-environment"},
                                            {kKeyFileEnv, env_file.path()}};
  GetEnvFn getenv_fn = [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  Options o;
  o.cluster_key = "key-from-options-field";
  o.cluster_key_file = opt_file.path();
  EXPECT_EQ(*LoadClusterKey(o, getenv_fn), "key-from-options-field");
  o.cluster_key.clear();
  EXPECT_EQ(*LoadClusterKey(o, getenv_fn), "key-from-options-file");  // newline dropped
  o.cluster_key_file.clear();
  EXPECT_EQ(*LoadClusterKey(o, getenv_fn), "key-from-environment");
  env.erase(kKeyEnv);
  EXPECT_EQ(*LoadClusterKey(o, getenv_fn), "key-from-environment-file");
  env.clear();
  EXPECT_EQ(*LoadClusterKey(o, getenv_fn), "");
}

TEST(ClusterKey, ErrorsNameTheSourceButNeverTheKey) {
  GetEnvFn none = [](const char*) -> const char* { return nullptr; };
  Options o;
  o.cluster_key = "short-secret";
  auto r = LoadClusterKey(o, none);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "Options.cluster_key"));
  EXPECT_FALSE(absl::StrContains(r.status().message(), "short-secret"));
  o.cluster_key.clear();
  o.cluster_key_file = "/nonexistent/dsm.key";
  r = LoadClusterKey(o, none);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "/nonexistent/dsm.key"));
  TempFile short_file("tiny-secret\n");
  o.cluster_key_file = short_file.path();
  r = LoadClusterKey(o, none);
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(absl::StrContains(r.status().message(), "tiny-secret"));
}

TEST(ClusterKey, NonLoopbackClusterWithoutKeyRefusesToStartAndSaysHow) {
  GetEnvFn none = [](const char*) -> const char* { return nullptr; };
  Options o;
  o.peers = {"127.0.0.1:7000", "10.1.2.3:7000"};
  auto r = ResolveAdmission(o, none);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  for (const char* hint : {"Options.peers[1]", "Options.cluster_key", "cluster_key_file",
                           kKeyEnv, kKeyFileEnv, "insecure_no_cluster_key"}) {
    EXPECT_TRUE(absl::StrContains(r.status().message(), hint)) << hint << ": " << r.status();
  }
  // Through the factory (the environment of this process has no key).
  if (std::getenv(kKeyEnv) == nullptr && std::getenv(kKeyFileEnv) == nullptr) {
    auto t = CreateTransport(o);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition) << t.status();
    o.transport = TransportKind::kRdma;
    t = CreateTransport(o);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition) << t.status();
    o.transport = TransportKind::kTcp;
  }
  o.cluster_key = kKey;
  r = ResolveAdmission(o, none);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(*r, nullptr);
  o.cluster_key.clear();
  o.insecure_no_cluster_key = true;
  r = ResolveAdmission(o, none);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, nullptr);
  o.insecure_no_cluster_key = false;
  o.peers = {"127.0.0.1:7000", "localhost:7001", "127.0.0.99:7002"};
  r = ResolveAdmission(o, none);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, nullptr) << "an all-loopback cluster without a key runs as before";
}

TEST(SourceLimits, SlotsPerSourceCountTheNodesThatDialFromIt) {
  const std::vector<uint32_t> ips = {0x7f000001, 0x0a000002, 0x7f000001, 0x7f000001};
  EXPECT_EQ(PerSourceSlots(ips, 0, 0x7f000001), kPerSourceSlack + 2);
  EXPECT_EQ(PerSourceSlots(ips, 2, 0x7f000001), kPerSourceSlack + 1);
  EXPECT_EQ(PerSourceSlots(ips, 0, 0x0a000002), kPerSourceSlack + 1);
  EXPECT_EQ(PerSourceSlots(ips, 0, 0x7f000063), kPerSourceSlack);
}

TEST(SourceLimits, OneLinePerSourcePerIntervalWithACount) {
  RateLimitedLog log(absl::Seconds(10));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t count = 0;
  EXPECT_TRUE(log.Note(1, t0, &count));
  EXPECT_EQ(count, 1u);
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(log.Note(1, t0 + absl::Milliseconds(i), &count));
  EXPECT_TRUE(log.Note(2, t0, &count)) << "another source has its own line";
  EXPECT_TRUE(log.Note(1, t0 + absl::Seconds(10), &count));
  EXPECT_EQ(count, 1001u);
  // Many sources: memory stays bounded.
  for (uint32_t s = 10; s < 10 + 4 * RateLimitedLog::kMaxSources; ++s) log.Note(s, t0, &count);
  EXPECT_LE(log.sources(), RateLimitedLog::kMaxSources + 1);
}

}  // namespace
}  // namespace dsm::admission
