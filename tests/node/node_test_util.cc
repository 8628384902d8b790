#include "node/node_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace dsm::testing {

void FillPattern(void* p, size_t len, uint64_t seed, uint64_t base_offset) {
  auto* b = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < len; ++i) b[i] = PatternByte(seed, base_offset + i);
}

std::optional<std::string> CheckPattern(const void* p, size_t len, uint64_t seed,
                                        uint64_t base_offset) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < len; ++i) {
    uint8_t want = PatternByte(seed, base_offset + i);
    if (b[i] != want) {
      return absl::StrCat("byte at offset ", base_offset + i, " (page ", (base_offset + i) / kPage,
                          ") is ", b[i], ", want ", want, " (seed ", seed, ")");
    }
  }
  return std::nullopt;
}

std::vector<int> PickFreePorts(int n) {
  std::vector<int> fds, ports;
  for (int i = 0; i < n; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      if (fd >= 0) close(fd);
      ports.push_back(0);
      continue;
    }
    fds.push_back(fd);
    ports.push_back(ntohs(a.sin_port));
  }
  for (int fd : fds) close(fd);
  return ports;
}

namespace {

thread_local sigjmp_buf* t_jump = nullptr;

void OnSigbus(int sig, siginfo_t*, void*) {
  if (t_jump != nullptr) siglongjmp(*t_jump, 1);
  signal(sig, SIG_DFL);
  raise(sig);
}

void InstallSigbusHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, nullptr);
  });
}

}  // namespace

bool RaisesSigbus(const std::function<void()>& fn) {
  InstallSigbusHandler();
  sigjmp_buf buf;
  if (sigsetjmp(buf, 1) != 0) {
    t_jump = nullptr;
    return true;
  }
  t_jump = &buf;
  fn();
  t_jump = nullptr;
  return false;
}

PollResult PollWord(const uint64_t* word, const std::function<bool(uint64_t)>& pred,
                    std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  uint64_t v = 0;
  for (int spins = 0;; ++spins) {
    v = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    if (pred(v)) return {true, v};
    if (std::chrono::steady_clock::now() >= deadline) return {false, v};
    // Spin briefly, then back off: on 2 vCPUs a busy poller starves the engine threads that
    // must run for the value to change (sched_yield does not give them the CPU under CFS).
    if (spins < 64) {
      __builtin_ia32_pause();
    } else {
      struct timespec ts = {0, 20000};
      nanosleep(&ts, nullptr);
    }
  }
}

}  // namespace dsm::testing
