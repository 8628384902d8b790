#include "node/netns_cluster.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

constexpr char kPrefix[] = "dsmt-";

absl::Status Ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv).status();
}

std::atomic<int> g_seq{0};

}  // namespace

std::string NetnsCluster::Unavailable() {
  if (geteuid() != 0) return "needs root to create network namespaces (run as root)";
  absl::StatusOr<std::string> v = RunCommand({"ip", "-V"});
  if (!v.ok()) {
    return "the `ip` tool (iproute2) is missing: apt-get install iproute2 (" +
           std::string(v.status().message()) + ")";
  }
  return "";
}

void NetnsCluster::CleanupStale() {
  absl::StatusOr<std::string> list = RunCommand({"ip", "netns", "list"});
  if (!list.ok()) return;
  for (absl::string_view line : absl::StrSplit(*list, '\n', absl::SkipEmpty())) {
    std::string name(line.substr(0, line.find(' ')));
    if (name.rfind(kPrefix, 0) != 0) continue;
    std::vector<std::string> parts = absl::StrSplit(name, '-');
    int pid = 0;
    if (parts.size() < 3 || !absl::SimpleAtoi(parts[1], &pid) || pid <= 0) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;  // its owner is alive
    (void)Ip({"netns", "del", name});
  }
}

absl::Status NetnsCluster::EnterOnThisThread(const std::string& name) {
  std::string path = "/run/netns/" + name;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, "open " + path);
  int r = setns(fd, CLONE_NEWNET);
  int e = errno;
  close(fd);
  if (r != 0) return absl::ErrnoToStatus(e, "setns " + path);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<NetnsCluster>> NetnsCluster::Create(int n) {
  if (n < 1 || n > 250) return absl::InvalidArgumentError("1..250 hosts");
  CleanupStale();
  auto c = std::unique_ptr<NetnsCluster>(new NetnsCluster());
  int seq = g_seq.fetch_add(1);
  c->subnet_ = (static_cast<int>(getpid()) + seq) % 250 + 1;
  c->prefix_ = absl::StrCat(kPrefix, getpid(), "-", seq);
  absl::Status s = c->Build(n);
  if (!s.ok()) return s;  // the destructor removes what was made
  return c;
}

absl::Status NetnsCluster::Build(int n) {
  std::string br = prefix_ + "-br";
  if (absl::Status s = Ip({"netns", "add", br}); !s.ok()) return s;
  bridge_ns_ = br;
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"-n", br, "link", "set", "lo", "up"},
                                             {"-n", br, "link", "add", "br0", "type", "bridge"},
                                             {"-n", br, "link", "set", "br0", "up"}}) {
    if (absl::Status s = Ip(args); !s.ok()) return s;
  }
  for (int i = 0; i < n; ++i) {
    std::string host = absl::StrCat(prefix_, "-n", i);
    if (absl::Status s = Ip({"netns", "add", host}); !s.ok()) return s;
    hosts_.push_back(host);
    std::string port = absl::StrCat("p", i);
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", br},
             {"-n", br, "link", "set", port, "master", "br0"},
             {"-n", br, "link", "set", port, "up"},
             {"-n", host, "addr", "add", address(i) + "/24", "dev", "eth0"},
             {"-n", host, "link", "set", "lo", "up"},
             {"-n", host, "link", "set", "eth0", "up"}}) {
      if (absl::Status s = Ip(args); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

std::string NetnsCluster::address(int i) const {
  return absl::StrCat("10.77.", subnet_, ".", i + 1);
}

// The bridge's end of the host's veth: the host keeps its address and route, and what it sends
// is silently lost, as on a cut cable (rather than failing at once with "network unreachable").
absl::Status NetnsCluster::SetLinkUp(int i, bool up) {
  return Ip({"-n", bridge_ns_, "link", "set", absl::StrCat("p", i), up ? "up" : "down"});
}

void NetnsCluster::Destroy() {
  for (const std::string& h : hosts_) (void)Ip({"netns", "del", h});
  hosts_.clear();
  if (!bridge_ns_.empty()) (void)Ip({"netns", "del", bridge_ns_});
  bridge_ns_.clear();
}

NetnsCluster::~NetnsCluster() { Destroy(); }

}  // namespace dsm::testing
