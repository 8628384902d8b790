// dsmrun: starts N nodes of a dsm program on this host, for development and tests.
//
// What it shows: how a launcher hands a dsm program its place in the cluster through the
// environment (dsm/launch.h): each child gets DSM_NODE_ID, DSM_NUM_NODES and DSM_PEERS (free
// loopback ports picked at start, or --port P, P+1, ...) and DSM_WAIT_FOR_CLUSTER=1 (unless
// set already: Node::Create waits until every node is up), and a program that builds its
// Options with dsm::OptionsFromEnvironment() needs no flags. Across machines use srun or
// mpirun instead; the same program reads their variables (docs/APPLICATIONS.md).
//
// Behaviour: the children share this terminal's stdin, stdout and stderr. When one child
// fails (non-zero exit or a signal) the others get SIGTERM, then SIGKILL after 5 s. With
// --timeout S every child is stopped the same way after S seconds (exit status 124).
// SIGINT and SIGTERM sent to dsmrun are passed on to the children.
//
// Usage: dsmrun -n 3 [--port 7470] [--timeout 60] [--] program [args...]
// Exit status: 0 when every node exited 0; else the first failing node's exit status (128 + N
// for signal N); 2 on bad arguments; 124 on timeout.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int kMaxNodes = 64;
volatile sig_atomic_t g_forward = 0;  // a signal to pass on to the children

void OnSignal(int sig) { g_forward = sig; }

int Usage(const char* why) {
  std::fprintf(stderr,
               "dsmrun: %s\nUsage: dsmrun -n N [--port P] [--timeout S] [--] program [args...]\n",
               why);
  return 2;
}

bool ParseInt(const char* s, long lo, long hi, long* out) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

// Ports the kernel picked for n sockets bound at once (so they are distinct), then released.
// Another process could take one before the child binds it; the child then fails to listen
// and dsmrun reports its error.
bool PickFreePorts(int n, std::vector<int>* ports) {
  std::vector<int> fds;
  bool ok = true;
  for (int i = 0; i < n && ok; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    ok = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
         getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
    if (fd >= 0) fds.push_back(fd);
    if (ok) ports->push_back(ntohs(a.sin_port));
  }
  for (int fd : fds) close(fd);
  return ok;
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  long n = 0, port = 0, timeout_s = 0;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a.rfind("-", 0) != 0) break;
    if (i + 1 >= argc) return Usage(("missing value after " + a).c_str());
    const char* v = argv[++i];
    if (a == "-n" || a == "--nodes") {
      if (!ParseInt(v, 1, kMaxNodes, &n)) return Usage("-n must be 1..64");
    } else if (a == "--port") {
      if (!ParseInt(v, 1, 65535 - kMaxNodes, &port)) return Usage("--port must be 1..65471");
    } else if (a == "--timeout") {
      if (!ParseInt(v, 1, 86400, &timeout_s)) return Usage("--timeout must be 1..86400 s");
    } else {
      return Usage(("unknown option " + a).c_str());
    }
  }
  if (n == 0) return Usage("-n is required");
  if (i >= argc) return Usage("no program given");

  std::vector<int> ports;
  if (port != 0) {
    for (long k = 0; k < n; ++k) ports.push_back(static_cast<int>(port + k));
  } else if (!PickFreePorts(static_cast<int>(n), &ports)) {
    std::fprintf(stderr, "dsmrun: cannot pick free loopback ports: %s\n", std::strerror(errno));
    return 1;
  }
  std::string peers;
  for (int p : ports) peers += (peers.empty() ? "" : ",") + std::string("127.0.0.1:") +
                               std::to_string(p);

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::vector<pid_t> pids;
  for (long id = 0; id < n; ++id) {
    pid_t pid = fork();
    if (pid < 0) {
      std::fprintf(stderr, "dsmrun: fork: %s\n", std::strerror(errno));
      for (pid_t p : pids) kill(p, SIGKILL);
      return 1;
    }
    if (pid == 0) {
      setenv("DSM_NODE_ID", std::to_string(id).c_str(), 1);
      setenv("DSM_NUM_NODES", std::to_string(n).c_str(), 1);
      setenv("DSM_PEERS", peers.c_str(), 1);
      // Node::Create returns once every node is connected (unless the caller chose otherwise).
      setenv("DSM_WAIT_FOR_CLUSTER", "1", 0);
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      execvp(argv[i], argv + i);
      std::fprintf(stderr, "dsmrun: cannot run %s: %s\n", argv[i], std::strerror(errno));
      _exit(127);
    }
    pids.push_back(pid);
  }

  using Clock = std::chrono::steady_clock;
  const Clock::time_point deadline =
      timeout_s > 0 ? Clock::now() + std::chrono::seconds(timeout_s) : Clock::time_point::max();
  Clock::time_point kill_at = Clock::time_point::max();  // SIGKILL the rest after SIGTERM
  int result = 0;
  bool stopping = false;
  size_t running = pids.size();
  auto stop_all = [&](int sig) {
    for (pid_t p : pids) {
      if (p > 0) kill(p, sig);
    }
  };
  while (running > 0) {
    int status = 0;
    pid_t done = waitpid(-1, &status, WNOHANG);
    if (done > 0) {
      for (size_t k = 0; k < pids.size(); ++k) {
        if (pids[k] != done) continue;
        pids[k] = -1;
        --running;
        const int code = ExitCodeOf(status);
        if (code != 0 && result == 0) {
          result = code;
          std::fprintf(stderr, "dsmrun: node %zu exited with status %d; stopping the others\n",
                       k, code);
        }
      }
      continue;
    }
    if (g_forward != 0) {
      stop_all(g_forward);
      g_forward = 0;
    }
    const Clock::time_point now = Clock::now();
    if (!stopping && (result != 0 || now >= deadline)) {
      if (result == 0) {
        std::fprintf(stderr, "dsmrun: timeout after %ld s; stopping every node\n", timeout_s);
        result = 124;
      }
      stopping = true;
      stop_all(SIGTERM);
      kill_at = now + std::chrono::seconds(5);
    }
    if (now >= kill_at) {
      stop_all(SIGKILL);
      kill_at = Clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return result;
}
