// Admission: the handshake by which two nodes of a cluster prove to each other that they hold
// the cluster key, before either reveals anything else. Used by the TCP transport on every
// connection and by the RDMA transport on its TCP set-up socket.
//
//   auto auth = admission::ResolveAdmission(options);       // key + policy, once at Create
//   if (!auth.ok()) return auth.status();                     // e.g. a non-loopback cluster
//   if (*auth != nullptr) {                                   // null: unauthenticated cluster
//     admission::Handshake h = admission::Handshake::Dialer(*auth, peer);
//     send(h.output()); h.output().clear();
//     ... for received bytes: auto used = h.Feed(bytes); send(h.output()) ...
//     if (h.done()) { /* h.peer() is proven; the frame stream starts after `used` bytes */ }
//   }
//
// Protocol (fixed sizes, little-endian; D = the dialing node, A = the accepting node):
//   1. D -> A  "DSMA" u16 version u16 flags(0) u32 D's id u32 0, nonce_d (32)    48 bytes
//   2. A -> D  "DSMA" u16 version u16 flags(0) nonce_a (32)                       40 bytes
//   3. D -> A  HMAC-SHA256(key, "dsm admission v1 dialer"   | T)                  32 bytes
//   4. A -> D  HMAC-SHA256(key, "dsm admission v1 acceptor" | T)                  32 bytes
//   T = config hash (32) | u32 D's id | u32 A's id | nonce_d | nonce_a
// The config hash is SHA-256 over the cluster size and every peer's address, so nodes
// configured with different peer lists never admit each other. A's id is what D expects at
// the address it dialed, so a node answering at the wrong address fails too. A sends only a
// random nonce before D has proven the key; D sends nothing but its claimed id and a nonce
// before A has. Nonces come from RAND_bytes, so a recorded handshake replayed on a new
// connection fails at step 3 (A's nonce differs); the two directions use different labels,
// so one side's proof cannot be reflected as the other's. Comparison is CRYPTO_memcmp.
//
// What this does not do: payloads after admission are neither encrypted nor authenticated
// per message (see "Security model" in docs/ARCHITECTURE.md).
//
// Thread safety: ClusterAuth is immutable and shared; a Handshake belongs to one connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "dsm/options.h"

namespace dsm::admission {

inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kMacSize = 32;
inline constexpr size_t kHashSize = 32;
inline constexpr size_t kMinKeySize = 16;
inline constexpr size_t kDialerHelloSize = 48;
inline constexpr size_t kAcceptorChallengeSize = 40;
inline constexpr uint32_t kMagic = 0x414d5344;  // "DSMA"
inline constexpr uint16_t kVersion = 1;

// Environment variables a launcher may set instead of Options fields.
inline constexpr char kKeyEnv[] = "DSM_CLUSTER_KEY";
inline constexpr char kKeyFileEnv[] = "DSM_CLUSTER_KEY_FILE";

// The key and the configuration it is bound to. Never printed: it has no operator<<, and the
// key bytes are wiped when the last reference goes.
class ClusterAuth {
 public:
  // `peers` = every node's address as "host:port" (Options::peers, validated).
  static absl::StatusOr<std::shared_ptr<const ClusterAuth>> Create(
      std::string key, NodeId self, const std::vector<std::string>& peers);
  ~ClusterAuth();
  ClusterAuth(const ClusterAuth&) = delete;
  ClusterAuth& operator=(const ClusterAuth&) = delete;

  NodeId self() const { return self_; }
  size_t cluster_size() const { return cluster_size_; }
  const uint8_t* config_hash() const { return config_hash_; }

  enum class Prover { kDialer, kAcceptor };
  // The proof `prover` sends for this pair of ids and nonces.
  void Mac(Prover prover, NodeId dialer, NodeId acceptor, const uint8_t* nonce_d,
           const uint8_t* nonce_a, uint8_t out[kMacSize]) const;

 private:
  ClusterAuth(std::string key, NodeId self, size_t cluster_size);
  std::string key_;
  const NodeId self_;
  const size_t cluster_size_;
  uint8_t config_hash_[kHashSize] = {};
};

// SHA-256 over "dsm cluster v1", the cluster size and each peer's parsed IPv4 address and
// port, in node-id order (so "localhost:7000" and "127.0.0.1:7000" hash alike).
absl::StatusOr<std::vector<uint8_t>> ConfigHash(const std::vector<std::string>& peers);

// Where the key comes from, first match wins: options.cluster_key, options.cluster_key_file,
// $DSM_CLUSTER_KEY, $DSM_CLUSTER_KEY_FILE. Empty string = no key anywhere. Errors name the
// source (a file that cannot be read, a key shorter than kMinKeySize) but never the key.
using GetEnvFn = std::function<const char*(const char*)>;
absl::StatusOr<std::string> LoadClusterKey(const Options& options, const GetEnvFn& getenv);

// The policy: a ClusterAuth when a key is found; nullptr (unauthenticated) when there is no
// key and every peer is a loopback address, or when options.insecure_no_cluster_key is set
// (logged as a WARNING); otherwise FailedPrecondition saying how to set a key. For kLoopback
// (in-process) transports: always nullptr.
absl::StatusOr<std::shared_ptr<const ClusterAuth>> ResolveAdmission(
    const Options& options, const GetEnvFn& getenv = nullptr);

// Fills `out` with random bytes; false on failure.
using RandomFn = std::function<bool(uint8_t* out, size_t n)>;
bool OpenSslRandom(uint8_t* out, size_t n);

// One side of one connection's handshake: a state machine fed the bytes received and
// producing the bytes to send.
//
// Invariants: output() holds only what the protocol above allows in the current state (A's
// proof only after D's proof verified); Feed() consumes exactly the handshake's bytes and
// nothing after them (those are the frame stream's); once failed, it stays failed and
// consumes nothing more; done() and failed() are never both true.
class Handshake {
 public:
  // `peer` = the node expected at the dialed address. Output: step 1.
  static Handshake Dialer(std::shared_ptr<const ClusterAuth> auth, NodeId peer,
                          const RandomFn& random = OpenSslRandom);
  // Accepts a dialer whose id is above this node's (the mesh's dialing rule).
  static Handshake Acceptor(std::shared_ptr<const ClusterAuth> auth,
                            const RandomFn& random = OpenSslRandom);

  // Consumes up to in.size() bytes, at most up to the end of the handshake; returns how many,
  // or the reason the peer is refused (then failed()). Appends what to send to output().
  absl::StatusOr<size_t> Feed(absl::Span<const uint8_t> in);
  // Bytes the caller must send, in order; the caller clears what it took.
  std::vector<uint8_t>& output() { return out_; }
  // Bytes still needed to finish the current step (0 once done or failed).
  size_t wanted() const;
  bool done() const { return state_ == State::kDone; }
  bool failed() const { return state_ == State::kFailed; }
  // The proven peer (once done); the claimed one before.
  NodeId peer() const { return peer_; }
  bool dialer() const { return dialer_; }

 private:
  enum class State { kWaitHello, kWaitChallenge, kWaitDialerProof, kWaitAcceptorProof, kDone,
                     kFailed };
  Handshake(std::shared_ptr<const ClusterAuth> auth, bool dialer, State s)
      : auth_(std::move(auth)), dialer_(dialer), state_(s) {}
  absl::Status Step();
  absl::Status Fail(absl::Status why);

  std::shared_ptr<const ClusterAuth> auth_;
  bool dialer_;
  State state_;
  NodeId peer_ = 0;
  uint8_t nonce_d_[kNonceSize] = {};
  uint8_t nonce_a_[kNonceSize] = {};
  std::vector<uint8_t> in_;  // the current step's bytes so far
  std::vector<uint8_t> out_;
  RandomFn random_;
};

}  // namespace dsm::admission
