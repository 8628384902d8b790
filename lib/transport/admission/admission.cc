#include "transport/admission/admission.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "transport/transport.h"

namespace dsm::admission {
namespace {

constexpr char kDialerLabel[] = "dsm admission v1 dialer";
constexpr char kAcceptorLabel[] = "dsm admission v1 acceptor";
constexpr char kConfigLabel[] = "dsm cluster v1";

void Put(std::vector<uint8_t>& o, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) o.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t Get(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Reads a key file; drops one trailing newline (echo and editors add one).
absl::StatusOr<std::string> ReadKeyFile(const std::string& path, const char* source) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return absl::FailedPreconditionError(absl::StrCat("cluster key file ", path, " (from ",
                                                      source, "): cannot be read: ",
                                                      std::strerror(errno)));
  }
  std::ostringstream s;
  s << f.rdbuf();
  std::string key = s.str();
  if (!key.empty() && key.back() == '\n') key.pop_back();
  if (!key.empty() && key.back() == '\r') key.pop_back();
  return key;
}

absl::StatusOr<std::string> Checked(std::string key, const std::string& source) {
  if (key.size() < kMinKeySize) {
    const size_t n = key.size();
    OPENSSL_cleanse(key.data(), key.size());
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster key from ", source, " is ", n, " bytes; at least ", kMinKeySize,
        " are needed (e.g. `openssl rand -hex 32`)"));
  }
  return key;
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> ConfigHash(const std::vector<std::string>& peers) {
  std::vector<uint8_t> in(kConfigLabel, kConfigLabel + sizeof(kConfigLabel));
  Put(in, peers.size(), 4);
  for (size_t i = 0; i < peers.size(); ++i) {
    auto hp = ParseHostPort(peers[i]);
    if (!hp.ok()) return hp.status();
    Put(in, hp->ipv4, 4);
    Put(in, hp->port, 2);
  }
  std::vector<uint8_t> out(kHashSize);
  unsigned int len = 0;
  if (EVP_Digest(in.data(), in.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != kHashSize) {
    return absl::InternalError("SHA-256 of the cluster configuration failed (libcrypto)");
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const ClusterAuth>> ClusterAuth::Create(
    std::string key, NodeId self, const std::vector<std::string>& peers) {
  if (key.size() < kMinKeySize) return Checked(std::move(key), "the caller").status();
  auto hash = ConfigHash(peers);
  if (!hash.ok()) return hash.status();
  std::shared_ptr<ClusterAuth> a(new ClusterAuth(std::move(key), self, peers.size()));
  std::memcpy(a->config_hash_, hash->data(), kHashSize);
  return std::shared_ptr<const ClusterAuth>(std::move(a));
}

ClusterAuth::ClusterAuth(std::string key, NodeId self, size_t cluster_size)
    : key_(std::move(key)), self_(self), cluster_size_(cluster_size) {}

ClusterAuth::~ClusterAuth() { OPENSSL_cleanse(key_.data(), key_.size()); }

void ClusterAuth::Mac(Prover prover, NodeId dialer, NodeId acceptor, const uint8_t* nonce_d,
                      const uint8_t* nonce_a, uint8_t out[kMacSize]) const {
  const char* label = prover == Prover::kDialer ? kDialerLabel : kAcceptorLabel;
  std::vector<uint8_t> t(label, label + std::strlen(label) + 1);
  t.insert(t.end(), config_hash_, config_hash_ + kHashSize);
  Put(t, dialer, 4);
  Put(t, acceptor, 4);
  t.insert(t.end(), nonce_d, nonce_d + kNonceSize);
  t.insert(t.end(), nonce_a, nonce_a + kNonceSize);
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), t.data(), t.size(), out,
           &len) == nullptr ||
      len != kMacSize) {
    // Cannot happen with a working libcrypto; a random value makes the peer refuse us rather
    // than admitting anything.
    OpenSslRandom(out, kMacSize);
  }
}

absl::StatusOr<std::string> LoadClusterKey(const Options& o, const GetEnvFn& getenv_fn) {
  auto env = [&](const char* name) -> const char* {
    return getenv_fn ? getenv_fn(name) : std::getenv(name);
  };
  if (!o.cluster_key.empty()) return Checked(o.cluster_key, "Options.cluster_key");
  if (!o.cluster_key_file.empty()) {
    auto k = ReadKeyFile(o.cluster_key_file, "Options.cluster_key_file");
    if (!k.ok()) return k.status();
    return Checked(std::move(*k), absl::StrCat("Options.cluster_key_file ", o.cluster_key_file));
  }
  if (const char* v = env(kKeyEnv); v != nullptr && *v != '\0') return Checked(v, kKeyEnv);
  if (const char* v = env(kKeyFileEnv); v != nullptr && *v != '\0') {
    auto k = ReadKeyFile(v, kKeyFileEnv);
    if (!k.ok()) return k.status();
    return Checked(std::move(*k), absl::StrCat(kKeyFileEnv, " file ", v));
  }
  return std::string();
}

absl::StatusOr<std::shared_ptr<const ClusterAuth>> ResolveAdmission(const Options& o,
                                                                     const GetEnvFn& getenv_fn) {
  if (o.transport == TransportKind::kLoopback) return nullptr;
  auto key = LoadClusterKey(o, getenv_fn);
  if (!key.ok()) return key.status();
  if (!key->empty()) return ClusterAuth::Create(std::move(*key), o.node_id, o.peers);
  if (o.insecure_no_cluster_key) {
    DSM_LOG(WARNING) << "node " << o.node_id
                     << ": Options.insecure_no_cluster_key is set: this cluster runs WITHOUT "
                        "authentication; anyone who can reach its ports can read and change "
                        "its memory";
    return nullptr;
  }
  for (size_t i = 0; i < o.peers.size(); ++i) {
    auto hp = ParseHostPort(o.peers[i]);
    if (!hp.ok()) return hp.status();
    if ((hp->ipv4 >> 24) != 127) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Options.peers[", i, "] (", o.peers[i],
          ") is not a loopback address, so the cluster needs a key: set the same secret of at "
          "least ", kMinKeySize, " bytes on every node in Options.cluster_key, in a file named "
          "by Options.cluster_key_file, or in the environment as ", kKeyEnv, " or ",
          kKeyFileEnv, " (e.g. `openssl rand -hex 32 > cluster.key`); or set "
          "Options.insecure_no_cluster_key on a network you trust"));
    }
  }
  return nullptr;
}

bool OpenSslRandom(uint8_t* out, size_t n) { return RAND_bytes(out, static_cast<int>(n)) == 1; }

Handshake Handshake::Dialer(std::shared_ptr<const ClusterAuth> auth, NodeId peer,
                            const RandomFn& random) {
  Handshake h(std::move(auth), /*dialer=*/true, State::kWaitChallenge);
  h.random_ = random;
  h.peer_ = peer;
  if (!h.random_(h.nonce_d_, kNonceSize)) {
    h.state_ = State::kFailed;
    return h;
  }
  Put(h.out_, kMagic, 4);
  Put(h.out_, kVersion, 2);
  Put(h.out_, 0, 2);
  Put(h.out_, h.auth_->self(), 4);
  Put(h.out_, 0, 4);
  h.out_.insert(h.out_.end(), h.nonce_d_, h.nonce_d_ + kNonceSize);
  return h;
}

Handshake Handshake::Acceptor(std::shared_ptr<const ClusterAuth> auth, const RandomFn& random) {
  Handshake h(std::move(auth), /*dialer=*/false, State::kWaitHello);
  h.random_ = random;
  return h;
}

size_t Handshake::wanted() const {
  size_t step = 0;
  switch (state_) {
    case State::kWaitHello:
      step = kDialerHelloSize;
      break;
    case State::kWaitChallenge:
      step = kAcceptorChallengeSize;
      break;
    case State::kWaitDialerProof:
    case State::kWaitAcceptorProof:
      step = kMacSize;
      break;
    case State::kDone:
    case State::kFailed:
      return 0;
  }
  return step - in_.size();
}

absl::StatusOr<size_t> Handshake::Feed(absl::Span<const uint8_t> in) {
  size_t used = 0;
  while (used < in.size() && !done() && !failed()) {
    const size_t take = std::min(wanted(), in.size() - used);
    in_.insert(in_.end(), in.begin() + used, in.begin() + used + take);
    used += take;
    if (wanted() > 0) break;
    if (absl::Status s = Step(); !s.ok()) return s;
    in_.clear();
  }
  if (failed()) return absl::PermissionDeniedError("admission: handshake already failed");
  return used;
}

absl::Status Handshake::Fail(absl::Status why) {
  state_ = State::kFailed;
  in_.clear();
  out_.clear();
  return why;
}

absl::Status Handshake::Step() {
  const uint8_t* p = in_.data();
  uint8_t mac[kMacSize];
  switch (state_) {
    case State::kWaitHello: {  // acceptor: D's id and nonce
      if (Get(p, 4) != kMagic) {
        return Fail(absl::PermissionDeniedError(
            "admission: not a dsm admission handshake (a peer without a cluster key, or not "
            "dsm)"));
      }
      if (Get(p + 4, 2) != kVersion || Get(p + 6, 2) != 0 || Get(p + 12, 4) != 0) {
        return Fail(absl::PermissionDeniedError("admission: unsupported handshake version"));
      }
      const uint64_t id = Get(p + 8, 4);
      if (id <= auth_->self() || id >= auth_->cluster_size()) {
        return Fail(absl::PermissionDeniedError(absl::StrCat(
            "admission: a peer claiming node id ", id, " dialed node ", auth_->self(),
            " (only higher ids of this cluster dial it)")));
      }
      peer_ = static_cast<NodeId>(id);
      std::memcpy(nonce_d_, p + 16, kNonceSize);
      if (!random_(nonce_a_, kNonceSize)) {
        return Fail(absl::InternalError("admission: RAND_bytes failed"));
      }
      Put(out_, kMagic, 4);
      Put(out_, kVersion, 2);
      Put(out_, 0, 2);
      out_.insert(out_.end(), nonce_a_, nonce_a_ + kNonceSize);
      state_ = State::kWaitDialerProof;
      return absl::OkStatus();
    }
    case State::kWaitChallenge: {  // dialer: A's nonce
      if (Get(p, 4) != kMagic || Get(p + 4, 2) != kVersion || Get(p + 6, 2) != 0) {
        return Fail(absl::PermissionDeniedError(absl::StrCat(
            "admission: node ", peer_, "'s address answered with something other than a dsm "
            "admission challenge (does it have a cluster key?)")));
      }
      std::memcpy(nonce_a_, p + 8, kNonceSize);
      auth_->Mac(ClusterAuth::Prover::kDialer, auth_->self(), peer_, nonce_d_, nonce_a_, mac);
      out_.insert(out_.end(), mac, mac + kMacSize);
      state_ = State::kWaitAcceptorProof;
      return absl::OkStatus();
    }
    case State::kWaitDialerProof: {  // acceptor: D's proof
      auth_->Mac(ClusterAuth::Prover::kDialer, peer_, auth_->self(), nonce_d_, nonce_a_, mac);
      if (CRYPTO_memcmp(mac, p, kMacSize) != 0) {
        return Fail(absl::PermissionDeniedError(absl::StrCat(
            "admission: a peer claiming node id ", peer_,
            " did not prove the cluster key (different key or peer list, or not a member)")));
      }
      auth_->Mac(ClusterAuth::Prover::kAcceptor, peer_, auth_->self(), nonce_d_, nonce_a_, mac);
      out_.insert(out_.end(), mac, mac + kMacSize);
      state_ = State::kDone;
      return absl::OkStatus();
    }
    case State::kWaitAcceptorProof: {  // dialer: A's proof
      auth_->Mac(ClusterAuth::Prover::kAcceptor, auth_->self(), peer_, nonce_d_, nonce_a_, mac);
      if (CRYPTO_memcmp(mac, p, kMacSize) != 0) {
        return Fail(absl::PermissionDeniedError(absl::StrCat(
            "admission: the node at node ", peer_,
            "'s address did not prove the cluster key (different key or peer list, or not "
            "node ",
            peer_, ")")));
      }
      state_ = State::kDone;
      return absl::OkStatus();
    }
    case State::kDone:
    case State::kFailed:
      break;
  }
  return absl::OkStatus();
}

}  // namespace dsm::admission
