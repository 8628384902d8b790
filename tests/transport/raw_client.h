// A blocking client socket with a receive timeout, speaking raw bytes to a node: the hostile
// or hand-driven peer of the TCP tests. May connect from any loopback address (127.0.0.99 is
// as much loopback as 127.0.0.1, and a distinct source for the per-source limits).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "transport/admission/admission.h"
#include "transport/wire.h"

namespace dsm::testing {

class RawClient {
 public:
  explicit RawClient(uint16_t port, uint32_t source_ipv4 = INADDR_LOOPBACK) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{0, 200 * 1000};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (source_ipv4 != INADDR_LOOPBACK) {
      sockaddr_in s{};
      s.sin_family = AF_INET;
      s.sin_addr.s_addr = htonl(source_ipv4);
      if (bind(fd_, reinterpret_cast<sockaddr*>(&s), sizeof(s)) != 0) return;
    }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  }
  ~RawClient() { close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;
  bool connected() const { return connected_; }
  int fd() const { return fd_; }
  void Write(const std::vector<uint8_t>& b) {
    ASSERT_EQ(send(fd_, b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
  }
  void WriteMsg(Message m) {
    std::vector<uint8_t> b;
    EncodeMessage(m, b);
    Write(b);
  }
  // Reads one whole frame (bounded wait).
  absl::StatusOr<Message> ReadMsg(size_t cluster_size) {
    std::vector<uint8_t> b(kWireHeaderSize);
    if (!ReadFully(b.data(), b.size())) return absl::DeadlineExceededError("no header");
    auto len = PeekFrameLength(absl::MakeConstSpan(b), cluster_size);
    if (!len.ok()) return len.status();
    b.resize(*len);
    if (!ReadFully(b.data() + kWireHeaderSize, *len - kWireHeaderSize)) {
      return absl::DeadlineExceededError("no payload");
    }
    return DecodeMessage(absl::MakeConstSpan(b), cluster_size);
  }
  // Reads exactly n bytes (bounded wait); false on EOF, error or timeout.
  bool ReadFully(uint8_t* p, size_t n) {
    const absl::Time until = absl::Now() + absl::Seconds(20);
    while (n > 0 && absl::Now() < until) {
      ssize_t r = recv(fd_, p, n, 0);
      if (r == 0) return false;
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        return false;
      }
      p += r;
      n -= static_cast<size_t>(r);
    }
    return n == 0;
  }
  // True once the node closed the connection (EOF or reset), within `timeout`; every byte
  // received meanwhile is appended to `received` when given.
  bool WaitClosed(absl::Duration timeout = absl::Seconds(20),
                  std::vector<uint8_t>* received = nullptr) {
    const absl::Time until = absl::Now() + timeout;
    uint8_t buf[4096];
    while (absl::Now() < until) {
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n > 0 && received != nullptr) received->insert(received->end(), buf, buf + n);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
    }
    return false;
  }
  // Runs the dialer's side of the admission handshake as node `self` with `auth` towards
  // node `peer`; returns the handshake (done or failed). `sent` collects the bytes written.
  admission::Handshake Admit(std::shared_ptr<const admission::ClusterAuth> auth, NodeId peer,
                             std::vector<uint8_t>* sent = nullptr) {
    admission::Handshake h = admission::Handshake::Dialer(std::move(auth), peer);
    while (!h.failed()) {
      if (!h.output().empty()) {
        if (sent != nullptr) sent->insert(sent->end(), h.output().begin(), h.output().end());
        if (send(fd_, h.output().data(), h.output().size(), MSG_NOSIGNAL) !=
            static_cast<ssize_t>(h.output().size())) {
          break;
        }
        h.output().clear();
      }
      if (h.done()) break;
      std::vector<uint8_t> in(h.wanted());
      if (!ReadFully(in.data(), in.size())) break;
      if (!h.Feed(absl::MakeConstSpan(in)).ok()) break;
    }
    return h;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

}  // namespace dsm::testing
