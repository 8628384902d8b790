// CreateTransport: picks the backend named by Options::transport after validating Options.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "transport/loopback/loopback_transport.h"
#include "transport/rdma/rdma_transport.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/transport.h"

namespace dsm {

absl::StatusOr<HostPort> ParseHostPort(absl::string_view s) {
  const size_t colon = s.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not host:port"));
  }
  const std::string host(s.substr(0, colon));
  const absl::string_view port_str = s.substr(colon + 1);
  uint32_t port = 0;
  if (!absl::SimpleAtoi(port_str, &port) || port == 0 || port > 65535 ||
      port_str.find_first_not_of("0123456789") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", s, "': port must be a number in 1..65535"));
  }
  HostPort hp;
  hp.port = static_cast<uint16_t>(port);
  if (host.empty()) return absl::InvalidArgumentError(absl::StrCat("'", s, "': empty host"));
  in_addr a{};
  if (inet_pton(AF_INET, host.c_str(), &a) == 1) {
    hp.ipv4 = ntohl(a.s_addr);
    return hp;
  }
  // A host name: resolved once, here, to its first IPv4 address (the nodes of a cluster
  // must agree on addresses, so a name is looked up at start and never again).
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", s, "': cannot resolve host '", host, "' to an IPv4 address: ",
                     rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc)));
  }
  hp.ipv4 = ntohl(reinterpret_cast<const sockaddr_in*>(res->ai_addr)->sin_addr.s_addr);
  freeaddrinfo(res);
  return hp;
}

absl::Status ValidateTransportOptions(const Options& o) {
  if (o.peers.empty()) {
    return absl::InvalidArgumentError("Options.peers is empty: list every node as host:port");
  }
  if (o.peers.size() > kMaxNodes) {
    return absl::InvalidArgumentError(absl::StrCat("Options.peers has ", o.peers.size(),
                                                   " entries; at most ", kMaxNodes));
  }
  if (o.node_id >= o.peers.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Options.node_id ", o.node_id,
                                                   " is not an index into Options.peers (",
                                                   o.peers.size(), " entries)"));
  }
  if (o.connect_timeout.count() < 0) {
    return absl::InvalidArgumentError("Options.connect_timeout is negative");
  }
  if (o.transport == TransportKind::kLoopback) return absl::OkStatus();
  for (size_t i = 0; i < o.peers.size(); ++i) {
    auto hp = ParseHostPort(o.peers[i]);
    if (!hp.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Options.peers[", i, "]: ", hp.status().message()));
    }
  }
  if (!o.listen.empty()) {
    auto hp = ParseHostPort(o.listen);
    if (!hp.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("Options.listen: ", hp.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(const Options& options) {
  if (absl::Status s = ValidateTransportOptions(options); !s.ok()) return s;
  switch (options.transport) {
    case TransportKind::kTcp:
      return CreateTcpTransport(options);
    case TransportKind::kLoopback:
      return CreateLoopbackTransport(options);
    case TransportKind::kRdma:
      return CreateRdmaTransport(options);
  }
  return absl::InvalidArgumentError("Options.transport: unknown transport kind");
}

}  // namespace dsm
