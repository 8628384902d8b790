// dsmrun: starts N nodes of a dsm program on this host, for development and tests.
//
// What it shows: how a launcher hands a dsm program its place in the cluster through the
// environment (dsm/launch.h): each child gets DSM_NODE_ID, DSM_NUM_NODES and DSM_PEERS (free
// loopback ports picked at start, or --port P, P+1, ...) and DSM_WAIT_FOR_CLUSTER=1 (unless
// set already: Node::Create waits until every node is up), and a program that builds its
// Options with dsm::OptionsFromEnvironment() needs no flags. Across machines use srun or
// mpirun instead; the same program reads their variables (docs/APPLICATIONS.md).
//
// --netns (root, iproute2): each node runs in a network namespace of its own, joined to the
// others by veth pairs on a bridge (10.78.S.1, 10.78.S.2, ... on port --port or 7470), so the
// nodes talk over a real (virtual) network as on separate hosts; a cluster key is generated
// for them unless DSM_CLUSTER_KEY or DSM_CLUSTER_KEY_FILE is set. The namespaces
// (dsmrun-<pid>-*) are removed when the run ends, and those of dsmrun processes that died
// are removed at the next start.
//
// Behaviour: the children share this terminal's stdin, stdout and stderr. When one child
// fails (non-zero exit or a signal) the others get SIGTERM, then SIGKILL after 5 s. With
// --timeout S every child is stopped the same way after S seconds (exit status 124).
// SIGINT and SIGTERM sent to dsmrun are passed on to the children.
//
// Usage: dsmrun -n 3 [--port 7470] [--timeout 60] [--netns] [--] program [args...]
// Exit status: 0 when every node exited 0; else the first failing node's exit status (128 + N
// for signal N); 2 on bad arguments; 124 on timeout.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
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
               "dsmrun: %s\nUsage: dsmrun -n N [--port P] [--timeout S] [--netns] [--] program "
               "[args...]\n",
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

// Runs `ip args...` quietly; true on exit status 0.
bool Ip(const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>("ip"));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, STDOUT_FILENO);
    execvp("ip", argv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// One network namespace per node on a bridge (see the top comment). Removed by Destroy().
class Netns {
 public:
  static constexpr const char* kPrefix = "dsmrun-";

  // Namespaces left by dsmrun processes that no longer exist.
  static void CleanupStale() {
    DIR* d = opendir("/run/netns");
    if (d == nullptr) return;
    std::vector<std::string> stale;
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind(kPrefix, 0) != 0) continue;
      const long pid = std::strtol(name.c_str() + std::strlen(kPrefix), nullptr, 10);
      if (pid > 0 && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
        stale.push_back(name);
      }
    }
    closedir(d);
    for (const std::string& name : stale) Ip({"netns", "del", name});
  }

  bool Build(int n) {
    subnet_ = static_cast<int>(getpid()) % 250 + 1;
    const std::string prefix = std::string(kPrefix) + std::to_string(getpid());
    bridge_ = prefix + "-br";
    if (!Ip({"netns", "add", bridge_})) {
      bridge_.clear();
      return false;
    }
    if (!Ip({"-n", bridge_, "link", "set", "lo", "up"}) ||
        !Ip({"-n", bridge_, "link", "add", "br0", "type", "bridge"}) ||
        !Ip({"-n", bridge_, "link", "set", "br0", "up"})) {
      return false;
    }
    for (int i = 0; i < n; ++i) {
      const std::string host = prefix + "-n" + std::to_string(i);
      if (!Ip({"netns", "add", host})) return false;
      hosts_.push_back(host);
      const std::string port = "p" + std::to_string(i);
      if (!Ip({"-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns",
               bridge_}) ||
          !Ip({"-n", bridge_, "link", "set", port, "master", "br0"}) ||
          !Ip({"-n", bridge_, "link", "set", port, "up"}) ||
          !Ip({"-n", host, "addr", "add", Address(i) + "/24", "dev", "eth0"}) ||
          !Ip({"-n", host, "link", "set", "lo", "up"}) ||
          !Ip({"-n", host, "link", "set", "eth0", "up"})) {
        return false;
      }
    }
    return true;
  }

  std::string Address(int i) const {
    return "10.78." + std::to_string(subnet_) + "." + std::to_string(i + 1);
  }
  const std::string& host(int i) const { return hosts_[static_cast<size_t>(i)]; }

  // In the child, before exec: moves the process into node i's namespace.
  bool Enter(int i) const {
    const std::string path = "/run/netns/" + host(i);
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const bool ok = setns(fd, CLONE_NEWNET) == 0;
    close(fd);
    return ok;
  }

  void Destroy() {
    for (const std::string& h : hosts_) Ip({"netns", "del", h});
    hosts_.clear();
    if (!bridge_.empty()) Ip({"netns", "del", bridge_});
    bridge_.clear();
  }

 private:
  int subnet_ = 0;
  std::string bridge_;
  std::vector<std::string> hosts_;
};

// 32 random bytes as hex, for a cluster that has no key of its own.
std::string RandomKey() {
  unsigned char b[32] = {};
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  bool ok = fd >= 0 && read(fd, b, sizeof(b)) == static_cast<ssize_t>(sizeof(b));
  if (fd >= 0) close(fd);
  if (!ok) return "";
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s += kHex[c >> 4];
    s += kHex[c & 15];
  }
  return s;
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  long n = 0, port = 0, timeout_s = 0;
  bool netns = false;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a.rfind("-", 0) != 0) break;
    if (a == "--netns") {
      netns = true;
      continue;
    }
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
  std::string peers;
  Netns net;
  std::string key;
  if (netns) {
    if (geteuid() != 0) {
      std::fprintf(stderr, "dsmrun: --netns needs root (it creates network namespaces)\n");
      return 1;
    }
    Netns::CleanupStale();
    if (!net.Build(static_cast<int>(n))) {
      std::fprintf(stderr, "dsmrun: cannot create the network namespaces with `ip` (iproute2 "
                           "installed? running as root?)\n");
      net.Destroy();
      return 1;
    }
    for (long k = 0; k < n; ++k) {
      peers += (peers.empty() ? "" : ",") + net.Address(static_cast<int>(k)) + ":" +
               std::to_string(port != 0 ? port : 7470);
    }
    // Off loopback a cluster needs a key (dsm/options.h); one for this run unless given.
    if (std::getenv("DSM_CLUSTER_KEY") == nullptr &&
        std::getenv("DSM_CLUSTER_KEY_FILE") == nullptr) {
      key = RandomKey();
      if (key.empty()) {
        std::fprintf(stderr, "dsmrun: cannot read /dev/urandom for a cluster key\n");
        net.Destroy();
        return 1;
      }
    }
  } else {
    if (port != 0) {
      for (long k = 0; k < n; ++k) ports.push_back(static_cast<int>(port + k));
    } else if (!PickFreePorts(static_cast<int>(n), &ports)) {
      std::fprintf(stderr, "dsmrun: cannot pick free loopback ports: %s\n", std::strerror(errno));
      return 1;
    }
    for (int p : ports) peers += (peers.empty() ? "" : ",") + std::string("127.0.0.1:") +
                                 std::to_string(p);
  }

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
      net.Destroy();
      return 1;
    }
    if (pid == 0) {
      if (netns && !net.Enter(static_cast<int>(id))) {
        std::fprintf(stderr, "dsmrun: node %ld: cannot enter its network namespace: %s\n", id,
                     std::strerror(errno));
        _exit(127);
      }
      if (!key.empty()) setenv("DSM_CLUSTER_KEY", key.c_str(), 1);
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
  net.Destroy();
  return result;
}
