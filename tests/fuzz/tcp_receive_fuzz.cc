// libFuzzer target: the TCP transport's receive path, end to end, fed by a fake socket (one
// end of a socketpair handed to TcpTransport as if its listener had accepted it). Input:
// byte 0 picks the mode; the rest is the peer's byte stream.
//   mode 0: a cluster without a key; the bytes go straight to the Hello/frame path.
//   mode 1: a cluster with a key; the bytes go to the admission handshake.
//   mode 2: a cluster with a key; the harness first completes admission as node 2 (it holds
//           the key), then the bytes follow as the frame stream (Hello, messages, garbage).
// Checks: no crash, hang or sanitizer report; without admission nothing is delivered in
// mode 1; every delivered message has the src of the connection's node.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "transport/admission/admission.h"
#include "transport/event_loop.h"
#include "transport/tcp/tcp_transport.h"

namespace {

constexpr char kKey[] = "fuzzing-cluster-key-0123456789";

struct Sink final : dsm::Transport::Handler {
  void OnMessage(dsm::Message&& m) override {
    ++messages;
    if (m.src == 0 || m.src >= 3) std::abort();  // only nodes 1 and 2 may dial node 0
  }
  void OnPeerUp(dsm::NodeId, dsm::Incarnation) override { ++ups; }
  void OnPeerDown(dsm::NodeId, const absl::Status&) override {}
  int messages = 0, ups = 0;
};

std::vector<std::string> Peers() {
  const int base = 20000 + static_cast<int>(getpid() % 10000) * 3;
  return {absl::StrCat("127.0.0.1:", base), absl::StrCat("127.0.0.1:", base + 1),
          absl::StrCat("127.0.0.1:", base + 2)};
}

// Polls until `done`, or until the loop has been idle for a few turns (the socketpair's
// data is in the kernel at once, so idle means the transport has consumed what it will).
template <typename F>
void PollUntil(dsm::EventLoop& loop, F done) {
  for (int idle = 0, turns = 0; idle < 3 && turns < 1000 && !done(); ++turns) {
    idle = loop.Poll(absl::ZeroDuration(), absl::Microseconds(200)) == 0 ? idle + 1 : 0;
  }
}

// Nonblocking read of what the transport sent so far.
std::vector<uint8_t> Drain(int fd) {
  std::vector<uint8_t> out;
  uint8_t buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0;) out.insert(out.end(), buf, buf + n);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static std::unique_ptr<dsm::EventLoop> loop = *dsm::EventLoop::Create();
  const int mode = data[0] % 3;
  dsm::Options o;
  o.node_id = 0;
  o.peers = Peers();
  o.peer_timeout = absl::Seconds(5);
  if (mode != 0) o.cluster_key = kKey;
  auto t = dsm::CreateTransport(o);
  if (!t.ok()) std::abort();
  auto* tcp = static_cast<dsm::TcpTransport*>(t->get());
  Sink sink;
  if (!tcp->Start(loop.get(), &sink).ok()) return 0;  // the port is busy: skip this input
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  tcp->AcceptForTesting(sv[0]);
  PollUntil(*loop, [] { return false; });
  if (mode == 2) {
    auto auth = *dsm::admission::ClusterAuth::Create(kKey, 2, o.peers);
    dsm::admission::Handshake h = dsm::admission::Handshake::Dialer(auth, 0);
    while (!h.done() && !h.failed()) {
      if (!h.output().empty()) {
        if (send(sv[1], h.output().data(), h.output().size(), MSG_NOSIGNAL) < 0) break;
        h.output().clear();
      }
      std::vector<uint8_t> in;
      PollUntil(*loop, [&] {
        std::vector<uint8_t> more = Drain(sv[1]);
        in.insert(in.end(), more.begin(), more.end());
        return in.size() >= h.wanted();
      });
      if (in.empty() || !h.Feed(in).ok()) break;
    }
    if (!h.done()) std::abort();  // the key holder must be admitted
  }
  const uint8_t* p = data + 1;
  size_t left = size - 1;
  while (left > 0) {
    const ssize_t n = send(sv[1], p, left, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) {
      Drain(sv[1]);
      loop->Poll(absl::ZeroDuration(), absl::Milliseconds(1));
      if (n < 0 && errno != EAGAIN) break;
      continue;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  shutdown(sv[1], SHUT_WR);
  PollUntil(*loop, [&] {
    Drain(sv[1]);
    return false;
  });
  if (mode == 1 && (sink.messages != 0 || sink.ups != 0)) std::abort();
  tcp->Shutdown(absl::Now());
  t->reset();
  close(sv[1]);
  return 0;
}
