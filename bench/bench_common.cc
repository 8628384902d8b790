#include "bench_common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dsm::bench {

double Samples::QuantileUs(double q) {
  if (ns_.empty()) return 0;
  if (!sorted_) {
    std::sort(ns_.begin(), ns_.end());
    sorted_ = true;
  }
  size_t i = static_cast<size_t>(q * static_cast<double>(ns_.size() - 1) + 0.5);
  return static_cast<double>(ns_[std::min(i, ns_.size() - 1)]) / 1000.0;
}

double Samples::MeanUs() const {
  if (ns_.empty()) return 0;
  long double s = std::accumulate(ns_.begin(), ns_.end(), 0.0L);
  return static_cast<double>(s / static_cast<long double>(ns_.size()) / 1000.0L);
}

CpuMeter::CpuMeter(std::vector<pid_t> pids) {
  for (pid_t pid : pids) {
    clockid_t c = CLOCK_PROCESS_CPUTIME_ID;
    if (pid != 0 && clock_getcpuclockid(pid, &c) != 0) c = -1;  // unreadable: counts 0
    clocks_.push_back(c);
  }
  at_resume_.assign(clocks_.size(), 0);
  counted_ns_.assign(clocks_.size(), 0);
}

std::vector<uint64_t> CpuMeter::Read() const {
  std::vector<uint64_t> v(clocks_.size(), 0);
  for (size_t i = 0; i < clocks_.size(); ++i) {
    timespec ts{};
    if (clocks_[i] != -1 && clock_gettime(clocks_[i], &ts) == 0) {
      v[i] = static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
    }
  }
  return v;
}

void CpuMeter::Resume() {
  if (running_) return;
  at_resume_ = Read();
  running_ = true;
}

void CpuMeter::Pause() {
  if (!running_) return;
  const std::vector<uint64_t> now = Read();
  for (size_t i = 0; i < now.size(); ++i) {
    // 0 = the process could not be read (gone): count nothing for this interval.
    if (now[i] >= at_resume_[i] && now[i] != 0) counted_ns_[i] += now[i] - at_resume_[i];
  }
  running_ = false;
}

double CpuMeter::TotalUs() const {
  double t = 0;
  for (size_t i = 0; i < counted_ns_.size(); ++i) t += Us(i);
  return t;
}

bool SplitHostPort(const std::string& hp, std::string* host, int* port) {
  size_t c = hp.rfind(':');
  if (c == std::string::npos) return false;
  *host = hp.substr(0, c);
  return absl::SimpleAtoi(hp.substr(c + 1), port);
}

namespace {

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

absl::StatusOr<sockaddr_in> Resolve(const std::string& host_port) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(host_port, &host, &port)) {
    return absl::InvalidArgumentError("bad host:port " + host_port);
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
    return absl::InvalidArgumentError("bad IPv4 address " + host);
  }
  return a;
}

// Between empty polls: a pause, and every 16th time a sched_yield. When a third busy thread
// shares the two vCPUs (another process, or a thread this one is waiting for), a spinner that
// never yields can hold its vCPU for a whole time slice: medians of ~8 ms were measured.
void PollPause(uint64_t* empty) {
  if (++*empty % 16 == 0) {
    sched_yield();
  } else {
    CpuRelax();
  }
}

// Receives exactly len bytes: spins on MSG_DONTWAIT while requests keep coming, blocks in
// poll() after kRawIdleSpinNs of quiet so an idle server uses no CPU. Returns false at EOF.
bool ServerRecv(int fd, void* buf, size_t len) {
  size_t got = 0;
  uint64_t empty = 0;
  uint64_t quiet_since = NowNs();
  while (got < len) {
    ssize_t n = recv(fd, static_cast<char*>(buf) + got, len - got, MSG_DONTWAIT);
    if (n > 0) {
      got += static_cast<size_t>(n);
      quiet_since = NowNs();
      continue;
    }
    if (n == 0) return false;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    if (NowNs() - quiet_since > kRawIdleSpinNs) {
      pollfd p{fd, POLLIN, 0};
      poll(&p, 1, 1000);
      quiet_since = NowNs();
    } else {
      PollPause(&empty);
    }
  }
  return true;
}

}  // namespace

absl::Status SendAll(int fd, const void* buf, size_t len) {
  size_t sent = 0;
  while (sent < len) {
    ssize_t n = send(fd, static_cast<const char*>(buf) + sent, len - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "send");
    }
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status RecvAllSpin(int fd, void* buf, size_t len) {
  size_t got = 0;
  uint64_t empty = 0;
  while (got < len) {
    ssize_t n = recv(fd, static_cast<char*>(buf) + got, len - got, MSG_DONTWAIT);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n == 0) {
      return absl::UnavailableError("raw server closed the connection");
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return absl::ErrnoToStatus(errno, "recv");
    } else {
      PollPause(&empty);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> RawConnect(const std::string& host_port) {
  absl::StatusOr<sockaddr_in> a = Resolve(host_port);
  if (!a.ok()) return a.status();
  for (int attempt = 0;; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
    if (connect(fd, reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) == 0) {
      SetNoDelay(fd);
      return fd;
    }
    int e = errno;
    close(fd);
    if (attempt > 200) return absl::ErrnoToStatus(e, "connect " + host_port);
    usleep(10000);
  }
}

int RunRawServer(const std::string& host_port) {
  absl::StatusOr<sockaddr_in> a = Resolve(host_port);
  if (!a.ok()) {
    std::cout << "err " << a.status() << std::endl;
    return 2;
  }
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(lfd, reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) != 0 || listen(lfd, 4) != 0) {
    std::cout << "err bind/listen " << host_port << ": " << strerror(errno) << std::endl;
    return 1;
  }
  std::cout << "ready" << std::endl;
  int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return 1;
  SetNoDelay(fd);
  std::vector<char> buf(1 << 20, 'x');
  RawRequest req{};
  while (ServerRecv(fd, &req, sizeof(req))) {
    if (req.op == RawOp::kQuit) break;
    size_t len = std::min<size_t>(req.len, buf.size());
    if (req.op == RawOp::kRtt) {
      if (!SendAll(fd, buf.data(), len).ok()) break;
    } else if (req.op == RawOp::kStream) {
      bool ok = true;
      for (uint64_t i = 0; i < req.count && ok; ++i) ok = SendAll(fd, buf.data(), len).ok();
      if (!ok) break;
    }
  }
  close(fd);
  close(lfd);
  return 0;
}

absl::StatusOr<MemUsage> ReadMemUsage(pid_t pid) {
  std::string path = pid == 0 ? "/proc/self/statm" : absl::StrCat("/proc/", pid, "/statm");
  std::ifstream f(path);
  uint64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return absl::InternalError("cannot read " + path);
  const uint64_t pg = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return MemUsage{resident * pg, size * pg};
}

}  // namespace dsm::bench
