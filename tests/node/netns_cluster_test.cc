// The namespace helper: hosts get their addresses, reach each other over the bridge, and
// everything is gone after destruction.
#include "node/netns_cluster.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;

TEST(NetnsCluster, HostsHaveAddressesAndReachEachOther) {
  if (std::string why = NetnsCluster::Unavailable(); !why.empty()) GTEST_SKIP() << why;
  absl::StatusOr<std::unique_ptr<NetnsCluster>> net = NetnsCluster::Create(3);
  ASSERT_TRUE(net.ok()) << net.status();
  std::vector<std::string> names;
  for (int i = 0; i < 3; ++i) {
    names.push_back((*net)->ns(i));
    absl::StatusOr<std::string> addr =
        RunCommand({"ip", "-n", (*net)->ns(i), "-o", "addr", "show", "dev", "eth0"});
    ASSERT_TRUE(addr.ok()) << addr.status();
    EXPECT_THAT(*addr, ::testing::HasSubstr((*net)->address(i) + "/24"));
  }

  // A listener in host 2, a client in host 0: one thread each, moved into its namespace.
  int port = 7100;
  int listen_fd = -1;
  std::string server_error, client_error, received;
  std::thread server([&] {
    if (absl::Status s = NetnsCluster::EnterOnThisThread((*net)->ns(2)); !s.ok()) {
      server_error = s.ToString();
      return;
    }
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, (*net)->address(2).c_str(), &a.sin_addr);
    if (bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
        listen(listen_fd, 1) != 0) {
      server_error = std::string("bind/listen: ") + strerror(errno);
    }
  });
  server.join();
  ASSERT_EQ(server_error, "");
  std::thread client([&] {
    if (absl::Status s = NetnsCluster::EnterOnThisThread((*net)->ns(0)); !s.ok()) {
      client_error = s.ToString();
      return;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, (*net)->address(2).c_str(), &a.sin_addr);
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      client_error = std::string("connect: ") + strerror(errno);
    } else if (write(fd, "hello", 5) != 5) {
      client_error = "write";
    }
    close(fd);
  });
  client.join();
  ASSERT_EQ(client_error, "");
  timeval tv{10, 0};
  setsockopt(listen_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  int conn = accept(listen_fd, nullptr, nullptr);
  ASSERT_GE(conn, 0) << strerror(errno);
  setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[8] = {};
  EXPECT_EQ(read(conn, buf, sizeof(buf)), 5);
  EXPECT_STREQ(buf, "hello");
  close(conn);
  close(listen_fd);

  // A process started in a namespace sees that namespace's address.
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start({.argv = {"/bin/sh", "-c", "exec ip -o addr show dev eth0"},
                         .netns = (*net)->ns(1),
                         .label = "ip-in-ns1"});
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<std::string> line = (*p)->ReadLine(milliseconds(10000));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_THAT(*line, ::testing::HasSubstr((*net)->address(1) + "/24"));
  absl::StatusOr<int> st = (*p)->Wait(milliseconds(10000));
  ASSERT_TRUE(st.ok()) << st.status();

  net->reset();
  absl::StatusOr<std::string> list = RunCommand({"ip", "netns", "list"});
  ASSERT_TRUE(list.ok()) << list.status();
  for (const std::string& n : names) EXPECT_THAT(*list, ::testing::Not(::testing::HasSubstr(n)));
}

}  // namespace
}  // namespace dsm::testing
