// libFuzzer target: the admission handshake state machine (transport/admission), both roles,
// fed the attacker's bytes in attacker-chosen pieces. Input: byte 0 = role (even: acceptor
// node 0, odd: dialer node 2 expecting node 0) and chunking seed; the rest is what the peer
// sends. Checks: no crash or sanitizer report; Feed never consumes more than it was given or
// past the handshake; the acceptor sends nothing but its 40-byte challenge without a valid
// proof, which the fuzzer cannot forge (so it must never report done); once failed it stays
// failed.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "transport/admission/admission.h"

namespace {

const std::vector<std::string> kPeers = {"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"};

bool FixedRandom(uint8_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(i * 37 + 11);
  return true;
}

std::shared_ptr<const dsm::admission::ClusterAuth> Auth(dsm::NodeId self) {
  return *dsm::admission::ClusterAuth::Create("fuzzing-cluster-key-0123456789", self, kPeers);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dsm::admission::Handshake;
  if (size < 1) return 0;
  static const auto acceptor_auth = Auth(0);
  static const auto dialer_auth = Auth(2);
  const bool acceptor = (data[0] & 1) == 0;
  const size_t chunk = 1 + (data[0] >> 1);
  Handshake h = acceptor ? Handshake::Acceptor(acceptor_auth, FixedRandom)
                         : Handshake::Dialer(dialer_auth, 0, FixedRandom);
  size_t sent = h.output().size();
  h.output().clear();
  size_t off = 1;
  while (off < size) {
    const size_t n = std::min(chunk, size - off);
    const bool was_failed = h.failed();
    auto used = h.Feed(absl::MakeConstSpan(data + off, n));
    if (!used.ok()) {
      if (!h.failed()) std::abort();
      break;
    }
    if (was_failed || *used > n) std::abort();
    sent += h.output().size();
    h.output().clear();
    if (h.done()) {
      // Only a dialer can finish against the fuzzer, and only by a proof made with the key.
      if (acceptor) std::abort();
      break;
    }
    if (*used < n) std::abort();  // consumed less without finishing or failing
    off += n;
  }
  if (acceptor && sent > dsm::admission::kAcceptorChallengeSize) std::abort();
  return 0;
}
