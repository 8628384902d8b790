// dsm_bench: page-transfer costs of dsm beside their floors, in one run.
//
// This process is node 0 of a 6-node cluster over the io_uring TCP transport; nodes 1..5 are
// helper processes (this binary with --helper) driven over a pipe each. Node 1 is the home of
// every region; nodes 2..5 are the other sharers / owners. The network path is TCP on
// 127.0.0.1 (`lo`) or, as root, veth pairs between network namespaces (`veth`: each node in
// its own namespace, joined by a bridge). The floors are measured in the same run over the
// same path: a raw TCP server (this binary with --raw-server) in node 1's namespace, and
// local userfaultfd round trips (bench_floors.cc). Every figure reports median_us and p99_us
// of per-operation latencies collected here (manual time = the sum of those latencies).
// The application figures (bench_apps.h) run the examples' kernels on nodes 0-2 of the same
// cluster beside a plain single-process run.
//
// Needs root (userfaultfd here; namespaces for veth). Without userfaultfd it exits 77.
//
// Usage: dsm_bench [--smoke] [--net=lo|veth|both] [--poll_spin_us=N] [benchmark flags]
//        dsm_bench --helper --id I --peers H:P,H:P,...   (internal)
//        dsm_bench --raw-server H:P                      (internal)
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench_apps.h"
#include "bench_common.h"
#include "bench_floors.h"
#include "bench_helper.h"
#include "benchmark/benchmark.h"
#include "dsm/node.h"
#include "node/netns_cluster.h"
#include "node/node_test_util.h"
#include "node/subprocess.h"

namespace dsm::bench {
namespace {

using std::chrono::milliseconds;
using testing::NetnsCluster;
using testing::Subprocess;

constexpr int kNodes = 6;  // 0 = this process, 1 = home, 2..5 = other sharers / owners
constexpr int kHome = 1;
constexpr milliseconds kReplyTimeout{120000};

BenchConfig g_cfg;

const char* NetName(Net n) { return n == Net::kVeth ? "veth" : "lo"; }

// ---- the cluster ----------------------------------------------------------------------------

class Cluster {
 public:
  // The cluster for `net`, started on first use; a cluster for another net is torn down first.
  static absl::StatusOr<Cluster*> Get(Net net);
  static void DestroyCurrent();

  ~Cluster();

  dsm::Node* node() { return node_.get(); }
  int raw_fd() const { return raw_fd_; }
  pid_t helper_pid(int id) { return helpers_[static_cast<size_t>(id)]->pid(); }
  pid_t raw_server_pid() const { return raw_server_->pid(); }
  // Every node process: this one (0), then nodes 1..5 (the home first), for a CpuMeter.
  std::vector<pid_t> node_pids() {
    std::vector<pid_t> v = {0};
    for (int i = 1; i < kNodes; ++i) v.push_back(helper_pid(i));
    return v;
  }

  absl::Status Send(int id, const std::string& cmd) {
    return helpers_[static_cast<size_t>(id)]->SendLine(cmd);
  }
  absl::StatusOr<std::string> Read(int id) {
    Subprocess* h = helpers_[static_cast<size_t>(id)].get();
    absl::StatusOr<std::string> line = h->ReadLine(kReplyTimeout);
    if (!line.ok()) return line.status();
    if (line->rfind("ok", 0) != 0) return absl::InternalError(h->label() + ": " + *line);
    return line;
  }
  absl::StatusOr<std::string> Call(int id, const std::string& cmd) {
    if (absl::Status s = Send(id, cmd); !s.ok()) return s;
    return Read(id);
  }

 private:
  Cluster() = default;
  absl::Status Build(Net net);

  Net net_ = Net::kLoopback;
  std::unique_ptr<NetnsCluster> ns_;
  int saved_ns_fd_ = -1;  // this thread's namespace before entering node 0's
  std::vector<std::unique_ptr<Subprocess>> helpers_;  // index = node id; [0] unused
  std::unique_ptr<Subprocess> raw_server_;
  int raw_fd_ = -1;
  std::unique_ptr<dsm::Node> node_;

  static std::unique_ptr<Cluster> current_;
  static std::string failed_;  // a cluster that failed to start is not retried
};

std::unique_ptr<Cluster> Cluster::current_;
std::string Cluster::failed_;

absl::StatusOr<Cluster*> Cluster::Get(Net net) {
  if (current_ && current_->net_ == net) return current_.get();
  DestroyCurrent();
  if (!failed_.empty()) return absl::UnavailableError(failed_);
  std::unique_ptr<Cluster> c(new Cluster());
  if (absl::Status s = c->Build(net); !s.ok()) {
    failed_ = s.ToString();
    return s;
  }
  current_ = std::move(c);
  return current_.get();
}

void Cluster::DestroyCurrent() { current_.reset(); }

absl::Status Cluster::Build(Net net) {
  net_ = net;
  std::vector<std::string> peers;
  std::string raw_addr;
  if (net == Net::kVeth) {
    if (std::string why = NetnsCluster::Unavailable(); !why.empty()) {
      return absl::UnavailableError("veth: " + why);
    }
    absl::StatusOr<std::unique_ptr<NetnsCluster>> n = NetnsCluster::Create(kNodes);
    if (!n.ok()) return n.status();
    ns_ = std::move(*n);
    for (int i = 0; i < kNodes; ++i) peers.push_back(ns_->address(i) + ":7000");
    raw_addr = ns_->address(kHome) + ":7100";
    saved_ns_fd_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (absl::Status s = NetnsCluster::EnterOnThisThread(ns_->ns(0)); !s.ok()) return s;
  } else {
    std::vector<int> ports = testing::PickFreePorts(kNodes + 1);
    for (int i = 0; i < kNodes; ++i) peers.push_back(absl::StrCat("127.0.0.1:", ports[i]));
    raw_addr = absl::StrCat("127.0.0.1:", ports[kNodes]);
  }
  const std::string joined = absl::StrJoin(peers, ",");
  helpers_.resize(kNodes);
  for (int i = 1; i < kNodes; ++i) {
    std::vector<std::string> argv = {g_cfg.self_exe, "--helper", "--id", std::to_string(i),
                                     "--peers", joined};
    if (g_cfg.poll_spin_us >= 0) {
      argv.insert(argv.end(), {"--poll_spin_us", std::to_string(g_cfg.poll_spin_us)});
    }
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
        {.argv = argv, .netns = ns_ ? ns_->ns(i) : "", .label = absl::StrCat("node", i)});
    if (!p.ok()) return p.status();
    helpers_[static_cast<size_t>(i)] = std::move(*p);
  }
  dsm::Options o;
  o.node_id = 0;
  o.peers = peers;
  o.peer_timeout = absl::Milliseconds(5000);
  if (ns_) o.cluster_key = testing::kNamespaceClusterKey;  // as its helpers (subprocess.h)
  if (g_cfg.poll_spin_us >= 0) o.poll_spin = absl::Microseconds(g_cfg.poll_spin_us);
  absl::StatusOr<std::unique_ptr<dsm::Node>> node = dsm::Node::Create(o);
  if (!node.ok()) return node.status();
  node_ = std::move(*node);
  for (int i = 1; i < kNodes; ++i) {
    absl::StatusOr<std::string> line = helpers_[static_cast<size_t>(i)]->ReadLine(kReplyTimeout);
    if (!line.ok()) return line.status();
    if (*line != "ready") return absl::InternalError(absl::StrCat("node", i, ": ", *line));
  }
  absl::StatusOr<std::unique_ptr<Subprocess>> raw = Subprocess::Start(
      {.argv = {g_cfg.self_exe, "--raw-server", raw_addr},
       .netns = ns_ ? ns_->ns(kHome) : "",
       .label = "raw-server"});
  if (!raw.ok()) return raw.status();
  raw_server_ = std::move(*raw);
  absl::StatusOr<std::string> line = raw_server_->ReadLine(kReplyTimeout);
  if (!line.ok()) return line.status();
  if (*line != "ready") return absl::InternalError("raw server: " + *line);
  absl::StatusOr<int> fd = RawConnect(raw_addr);
  if (!fd.ok()) return fd.status();
  raw_fd_ = *fd;
  return absl::OkStatus();
}

Cluster::~Cluster() {
  if (raw_fd_ >= 0) {
    RawRequest q{};
    q.op = RawOp::kQuit;
    (void)SendAll(raw_fd_, &q, sizeof(q));
    close(raw_fd_);
  }
  if (raw_server_) (void)raw_server_->Wait(milliseconds(5000));
  if (node_) (void)node_->Shutdown();
  node_.reset();
  // The home (node 1) leaves last.
  for (int i = kNodes - 1; i >= 1; --i) {
    Subprocess* h = helpers_.size() > static_cast<size_t>(i) ? helpers_[static_cast<size_t>(i)].get()
                                                             : nullptr;
    if (h == nullptr) continue;
    (void)h->SendLine("quit");
    h->CloseStdin();
    (void)h->Wait(milliseconds(15000));
  }
  helpers_.clear();
  if (saved_ns_fd_ >= 0) {
    setns(saved_ns_fd_, CLONE_NEWNET);
    close(saved_ns_fd_);
  }
  ns_.reset();
}

}  // namespace

// The cluster as the application figures (bench_apps.cc) see it.
absl::StatusOr<AppCluster*> GetAppCluster(Net net) {
  class View final : public AppCluster {
   public:
    Cluster* c = nullptr;
    dsm::Node* node() override { return c->node(); }
    std::vector<pid_t> node_pids() override { return c->node_pids(); }
    absl::Status Send(int id, const std::string& cmd) override { return c->Send(id, cmd); }
    absl::StatusOr<std::string> Read(int id) override { return c->Read(id); }
  };
  static View view;
  absl::StatusOr<Cluster*> c = Cluster::Get(net);
  if (!c.ok()) return c.status();
  view.c = *c;
  return &view;
}

namespace {

// A region mapped on node 0 and on some helpers (the home first); unmapped in reverse order.
class SharedRegion {
 public:
  static absl::StatusOr<std::unique_ptr<SharedRegion>> Map(Cluster* c, size_t bytes,
                                                           std::vector<int> helpers,
                                                           bool map_local = true) {
    static int seq = 0;
    auto r = std::unique_ptr<SharedRegion>(new SharedRegion());
    r->c_ = c;
    r->name_ = absl::StrCat("bench", ++seq);
    for (int h : helpers) {
      absl::StatusOr<std::string> ok =
          c->Call(h, absl::StrCat("map ", r->name_, " ", bytes, " ", kHome));
      if (!ok.ok()) return ok.status();
      r->helpers_.push_back(h);
    }
    if (map_local) {
      dsm::RegionOptions ro;
      ro.name = r->name_;
      ro.size = bytes;
      ro.home = kHome;
      absl::StatusOr<std::unique_ptr<dsm::Region>> local = c->node()->MapRegion(ro);
      if (!local.ok()) return local.status();
      r->local_ = std::move(*local);
    }
    return r;
  }

  ~SharedRegion() {
    if (local_) {
      absl::Status s = local_->Unmap();
      if (!s.ok()) std::fprintf(stderr, "dsm_bench: unmap %s: %s\n", name_.c_str(), s.ToString().c_str());
    }
    for (auto it = helpers_.rbegin(); it != helpers_.rend(); ++it) {
      absl::StatusOr<std::string> ok = c_->Call(*it, "unmap " + name_);
      if (!ok.ok()) std::fprintf(stderr, "dsm_bench: %s\n", ok.status().ToString().c_str());
    }
  }

  const std::string& name() const { return name_; }
  volatile uint8_t* base() const { return static_cast<volatile uint8_t*>(local_->data()); }
  dsm::Region* region() const { return local_.get(); }
  volatile uint8_t* page(size_t i) const { return base() + i * kPage; }

 private:
  SharedRegion() = default;
  Cluster* c_ = nullptr;
  std::string name_;
  std::vector<int> helpers_;
  std::unique_ptr<dsm::Region> local_;
};

// ---- shared bits ----------------------------------------------------------------------------

// What a registered benchmark measures: the network path and up to two arguments.
struct Params {
  Net net = Net::kLoopback;
  int64_t a = 0;
  int64_t b = 0;
  int64_t c = 0;
};

Cluster* GetClusterOrSkip(benchmark::State& state, const Params& p) {
  absl::StatusOr<Cluster*> c = Cluster::Get(p.net);
  if (!c.ok()) {
    state.SkipWithError(c.status().ToString().c_str());
    return nullptr;
  }
  return *c;
}

#define BENCH_CHECK_OK(expr)                              \
  do {                                                    \
    absl::Status _s = (expr);                             \
    if (!_s.ok()) {                                       \
      state.SkipWithError(_s.ToString().c_str());         \
      return;                                             \
    }                                                     \
  } while (0)

void ReportLatency(benchmark::State& state, Samples& s) {
  state.counters["median_us"] = s.QuantileUs(0.5);
  state.counters["p99_us"] = s.QuantileUs(0.99);
  state.counters["mean_us"] = s.MeanUs();
}

std::vector<size_t> Permutation(size_t n, uint64_t seed) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

inline uint64_t TimedRead(volatile uint8_t* p, uint64_t* sink) {
  uint64_t t0 = NowNs();
  *sink += *p;
  return NowNs() - t0;
}
inline uint64_t TimedWrite(volatile uint8_t* p, uint8_t v) {
  uint64_t t0 = NowNs();
  p[2] = v;
  return NowNs() - t0;
}

size_t Iters(const benchmark::State& s) { return static_cast<size_t>(s.max_iterations); }

// ---- floors over the network ----------------------------------------------------------------

// Raw request/response: a 64-byte request, a reply of p.a bytes; both ends busy-poll.
void BM_FloorTcpRtt(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const size_t len = static_cast<size_t>(p.a);
  std::vector<char> buf(len);
  RawRequest req{};
  req.op = RawOp::kRtt;
  req.len = static_cast<uint32_t>(len);
  // Warm up (the server may be sleeping in poll()).
  for (int i = 0; i < 100; ++i) {
    BENCH_CHECK_OK(SendAll(c->raw_fd(), &req, sizeof(req)));
    BENCH_CHECK_OK(RecvAllSpin(c->raw_fd(), buf.data(), len));
  }
  Samples lat;
  lat.Reserve(Iters(state));
  CpuMeter cpu({0, c->raw_server_pid()});
  cpu.Resume();
  for (auto _ : state) {
    uint64_t t0 = NowNs();
    BENCH_CHECK_OK(SendAll(c->raw_fd(), &req, sizeof(req)));
    BENCH_CHECK_OK(RecvAllSpin(c->raw_fd(), buf.data(), len));
    uint64_t dt = NowNs() - t0;
    lat.Add(dt);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  cpu.Pause();
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(Iters(state)), CpuMeterKind::kFloorWithServer);
}

// Raw streaming: the server sends p.a messages of 4 KiB back to back; this side
// busy-polls recv into a 256 KiB buffer. One iteration = one stream.
void BM_FloorTcpStream(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  // p.a bytes in send()s of p.b bytes: 4 KiB (a page per message) or 256 KiB (a readahead
  // run per message); the floor of a scan is the better of the two.
  const size_t chunk = static_cast<size_t>(p.b);
  const uint64_t msgs = static_cast<uint64_t>(p.a) / chunk;
  const size_t total = msgs * chunk;
  std::vector<char> buf(256 << 10);
  RawRequest req{};
  req.op = RawOp::kStream;
  req.len = static_cast<uint32_t>(chunk);
  req.count = msgs;
  double bytes = 0, secs = 0;
  CpuMeter cpu({0, c->raw_server_pid()});
  for (auto _ : state) {
    cpu.Resume();
    uint64_t t0 = NowNs();
    BENCH_CHECK_OK(SendAll(c->raw_fd(), &req, sizeof(req)));
    size_t got = 0;
    while (got < total) {
      ssize_t r = recv(c->raw_fd(), buf.data(), std::min(buf.size(), total - got), MSG_DONTWAIT);
      if (r > 0) {
        got += static_cast<size_t>(r);
      } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        state.SkipWithError("raw stream: recv failed");
        return;
      }
    }
    uint64_t dt = NowNs() - t0;
    cpu.Pause();
    bytes += static_cast<double>(total);
    secs += static_cast<double>(dt) * 1e-9;
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["MB_per_s"] = bytes / secs / 1e6;
  state.counters["pages_per_s"] = bytes / kPage / secs;
  ReportCpu(state, cpu, bytes / kPage, CpuMeterKind::kFloorWithServer);  // per 4 KiB
}

// Composed floors (bench_floors.h) over this cluster's raw-server connection.
void BM_FloorRemoteFaultRaw(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c != nullptr) BM_FloorRemoteFault(state, c->raw_fd(), c->raw_server_pid());
}
void BM_FloorRunInstallRaw(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c != nullptr) {
    BM_FloorRunInstall(state, c->raw_fd(), c->raw_server_pid(), static_cast<size_t>(p.a));
  }
}

// ---- dsm figures ----------------------------------------------------------------------------

// Remote read fault (I -> S): one load of a fresh page homed on node 1, pages in random order
// (so no sequential pattern helps).
void BM_ReadFault(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const size_t n = Iters(state);
  absl::StatusOr<std::unique_ptr<SharedRegion>> r = SharedRegion::Map(c, n * kPage, {kHome});
  BENCH_CHECK_OK(r.status());
  std::vector<size_t> order = Permutation(n, 1);
  Samples lat;
  lat.Reserve(n);
  uint64_t sink = 0;
  size_t i = 0;
  CpuMeter cpu(c->node_pids());
  cpu.Resume();
  for (auto _ : state) {
    uint64_t dt = TimedRead((*r)->page(order[i++]), &sink);
    lat.Add(dt);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  cpu.Pause();
  benchmark::DoNotOptimize(sink);
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kCluster);
}

// The home's own first touch: node 0 maps a fresh region whose home it is (no other node
// maps it) and loads (p.a=0) or stores (p.a=1) one byte of each page, in a random order.
// Nothing crosses the network; the fault still goes through node 0's engine (its Cache asks
// its own Directory), against a plain first touch of well under a microsecond. The floor is
// one userfaultfd MISSING round trip.
void BM_HomeFirstTouch(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const bool write = p.a != 0;
  const size_t n = Iters(state);
  dsm::RegionOptions ro;
  ro.name = absl::StrCat("touch", NowNs());
  ro.size = n * kPage;
  ro.home = 0;
  absl::StatusOr<std::unique_ptr<dsm::Region>> r = c->node()->MapRegion(ro);
  BENCH_CHECK_OK(r.status());
  auto* base = static_cast<volatile uint8_t*>((*r)->data());
  std::vector<size_t> order = Permutation(n, 3);
  Samples lat;
  lat.Reserve(n);
  uint64_t sink = 0;
  size_t i = 0;
  CpuMeter cpu(c->node_pids());
  cpu.Resume();
  for (auto _ : state) {
    volatile uint8_t* page = base + order[i] * kPage;
    const uint64_t dt =
        write ? TimedWrite(page, static_cast<uint8_t>(i)) : TimedRead(page, &sink);
    ++i;
    lat.Add(dt);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  cpu.Pause();
  benchmark::DoNotOptimize(sink);
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kCluster);
  BENCH_CHECK_OK((*r)->Unmap());
}

// Write miss (I -> M, p.a=k other sharers) or upgrade (S -> M, node 0 holds the page
// Shared too; p.b=1). Sharers are nodes 2..k+1; they read a batch of pages (not timed),
// node 0 reads them for an upgrade (not timed), then each store is timed. Home-written
// (p.c=1): the home first writes the batch itself (not timed), so a write miss takes the
// page from the home's writable copy and an upgrade finds the home a sharer (its copy
// write-protected by node 0's read).
void BM_WriteFault(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const int k = static_cast<int>(p.a);
  const bool upgrade = p.b != 0;
  const bool home_written = p.c != 0;
  const size_t n = Iters(state);
  const size_t batch = 64;
  const size_t pages = (n + batch - 1) / batch * batch;
  std::vector<int> participants = {kHome};
  for (int i = 0; i < k; ++i) participants.push_back(2 + i);
  absl::StatusOr<std::unique_ptr<SharedRegion>> r =
      SharedRegion::Map(c, pages * kPage, participants);
  BENCH_CHECK_OK(r.status());
  Samples lat;
  lat.Reserve(n);
  uint64_t sink = 0;
  size_t i = 0;
  CpuMeter cpu(c->node_pids());
  for (auto _ : state) {
    if (i % batch == 0) {
      // Prepare the next batch; manual time and the CPU meter leave this out.
      cpu.Pause();
      if (home_written) {
        BENCH_CHECK_OK(
            c->Call(kHome, absl::StrCat("write ", (*r)->name(), " ", i, " ", batch)).status());
      }
      for (int s = 0; s < k; ++s) {
        BENCH_CHECK_OK(c->Send(2 + s, absl::StrCat("read ", (*r)->name(), " ", i, " ", batch)));
      }
      for (int s = 0; s < k; ++s) BENCH_CHECK_OK(c->Read(2 + s).status());
      if (upgrade) {
        for (size_t q = i; q < i + batch; ++q) sink += *(*r)->page(q);
      }
      cpu.Resume();
    }
    uint64_t dt = TimedWrite((*r)->page(i), static_cast<uint8_t>(i));
    ++i;
    lat.Add(dt);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  cpu.Pause();
  benchmark::DoNotOptimize(sink);
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kCluster);
}

// Recall (p.a = 2): node 2 writes a batch of pages (it holds them Modified), then node 0 reads
// each (home 1 recalls the page from node 2 and forwards it). Home-written (p.a = 1): the home
// itself writes the batch (its own copy is writable), then node 0 reads each: the home
// write-protects its copy and sends it.
void BM_Recall(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const int writer = static_cast<int>(p.a);
  const size_t n = Iters(state);
  const size_t batch = 64;
  const size_t pages = (n + batch - 1) / batch * batch;
  std::vector<int> participants = {kHome};
  if (writer != kHome) participants.push_back(writer);
  absl::StatusOr<std::unique_ptr<SharedRegion>> r =
      SharedRegion::Map(c, pages * kPage, participants);
  BENCH_CHECK_OK(r.status());
  // Loads in a shuffled order inside each batch: a sequential walk would let readahead ask
  // for the pages before they are loaded (it is refused for pages another node holds M, but
  // this measures the recall, not how readahead handles it).
  const std::vector<size_t> order = Permutation(batch, 5);
  Samples lat;
  lat.Reserve(n);
  uint64_t sink = 0;
  size_t i = 0;
  CpuMeter cpu(c->node_pids());
  for (auto _ : state) {
    if (i % batch == 0) {
      cpu.Pause();  // the writer's stores are preparation, not timed
      BENCH_CHECK_OK(
          c->Call(writer, absl::StrCat("write ", (*r)->name(), " ", i, " ", batch)).status());
      cpu.Resume();
    }
    const size_t at = i / batch * batch + order[i % batch];
    ++i;
    uint64_t dt = TimedRead((*r)->page(at), &sink);
    lat.Add(dt);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  cpu.Pause();
  benchmark::DoNotOptimize(sink);
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kCluster);
}

// Ping-pong: node 0 and node 2 alternately increment word 0 of one page homed on node 1.
// One iteration = node 0's store until node 2's answer is visible here: two hand-offs.
void BM_PingPong(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const size_t n = Iters(state);
  absl::StatusOr<std::unique_ptr<SharedRegion>> r = SharedRegion::Map(c, kPage, {kHome, 2});
  BENCH_CHECK_OK(r.status());
  BENCH_CHECK_OK(c->Send(2, absl::StrCat("pong ", (*r)->name(), " ", n)));
  auto* word = reinterpret_cast<uint64_t*>(const_cast<uint8_t*>((*r)->base()));
  Samples lat;
  lat.Reserve(n);
  uint64_t round = 0;
  CpuMeter cpu(c->node_pids());
  cpu.Resume();
  for (auto _ : state) {
    uint64_t t0 = NowNs();
    __atomic_store_n(word, 2 * round + 1, __ATOMIC_RELEASE);
    uint64_t spins = 0;
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) != 2 * round + 2) {
      if (++spins % 64 == 0) sched_yield();
      CpuRelax();
    }
    uint64_t dt = NowNs() - t0;
    ++round;
    lat.Add(dt);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  cpu.Pause();
  BENCH_CHECK_OK(c->Read(2).status());
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kCluster);  // per round
  state.counters["handoff_median_us"] = state.counters["median_us"] / 2;
}

// Scans of a remote region (p.a pages, home 1): one load per page, sequential
// (p.b=0) or in random order (1). One iteration = one whole scan of a fresh mapping.
void BM_Scan(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const size_t pages = static_cast<size_t>(p.a);
  const bool random = p.b != 0;
  std::vector<size_t> order = random ? Permutation(pages, 7) : std::vector<size_t>();
  Samples lat;
  lat.Reserve(pages * Iters(state));
  double secs = 0, bytes = 0;
  uint64_t sink = 0;
  CpuMeter cpu(c->node_pids());
  for (auto _ : state) {
    absl::StatusOr<std::unique_ptr<SharedRegion>> r = SharedRegion::Map(c, pages * kPage, {kHome});
    BENCH_CHECK_OK(r.status());
    volatile uint8_t* base = (*r)->base();
    cpu.Resume();
    uint64_t t0 = NowNs();
    uint64_t prev = t0;
    for (size_t i = 0; i < pages; ++i) {
      sink += base[(random ? order[i] : i) * kPage];
      uint64_t now = NowNs();
      lat.Add(now - prev);
      prev = now;
    }
    uint64_t dt = prev - t0;
    cpu.Pause();
    secs += static_cast<double>(dt) * 1e-9;
    bytes += static_cast<double>(pages * kPage);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  benchmark::DoNotOptimize(sink);
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["MB_per_s"] = bytes / secs / 1e6;
  state.counters["pages_per_s"] = bytes / kPage / secs;
  ReportLatency(state, lat);
  ReportCpu(state, cpu, bytes / kPage, CpuMeterKind::kCluster);  // per page
}

// p.a application threads fault at once, each on its own fresh pages (random order):
// reads (p.b=0) or write misses (1). One iteration = every thread faults 64 pages.
void BM_FaultThreads(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const size_t threads = static_cast<size_t>(p.a);
  const bool write = p.b != 0;
  constexpr size_t kPerThread = 64;
  const size_t pages = Iters(state) * threads * kPerThread;
  absl::StatusOr<std::unique_ptr<SharedRegion>> r = SharedRegion::Map(c, pages * kPage, {kHome});
  BENCH_CHECK_OK(r.status());
  std::vector<size_t> order = Permutation(pages, 3);
  Samples lat;
  lat.Reserve(pages);
  double secs = 0, faults = 0;
  size_t batch = 0;
  CpuMeter cpu(c->node_pids());
  for (auto _ : state) {
    std::atomic<bool> go{false};
    std::vector<Samples> per(threads);
    std::vector<uint64_t> end(threads);
    std::vector<std::thread> ts;
    for (size_t t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        per[t].Reserve(kPerThread);
        const size_t* mine = &order[(batch * threads + t) * kPerThread];
        while (!go.load(std::memory_order_acquire)) CpuRelax();
        uint64_t sink = 0;
        for (size_t j = 0; j < kPerThread; ++j) {
          volatile uint8_t* pg = (*r)->page(mine[j]);
          per[t].Add(write ? TimedWrite(pg, 1) : TimedRead(pg, &sink));
        }
        end[t] = NowNs();
        benchmark::DoNotOptimize(sink);
      });
    }
    // Let the threads reach the start line (they spin; creation is not timed).
    usleep(2000);
    cpu.Resume();  // the threads spin at the start line: counted from here, as the time is
    uint64_t t0 = NowNs();
    go.store(true, std::memory_order_release);
    for (auto& t : ts) t.join();
    cpu.Pause();
    uint64_t dt = *std::max_element(end.begin(), end.end()) - t0;
    for (auto& s : per) lat.Append(s);
    secs += static_cast<double>(dt) * 1e-9;
    faults += static_cast<double>(threads * kPerThread);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
    ++batch;
  }
  state.SetItemsProcessed(static_cast<int64_t>(faults));
  state.counters["faults_per_s"] = faults / secs;
  ReportLatency(state, lat);
  ReportCpu(state, cpu, faults, CpuMeterKind::kCluster);
}

// ---- locks ---------------------------------------------------------------------------------

// Uncontended lock + unlock: node 0 takes an exclusive lock of bytes [0, 64) of a region whose
// lock arbiter (the home of page 0) is node 1, and releases it; no other node locks. median_us
// is the pair; lock_median_us and unlock_median_us are its halves, as the application thread
// sees them (Region::Lock returns at the grant; LockGuard::Unlock returns when the release is
// handed over).
void BM_LockUnlock(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const size_t n = Iters(state);
  absl::StatusOr<std::unique_ptr<SharedRegion>> r = SharedRegion::Map(c, kPage, {kHome});
  BENCH_CHECK_OK(r.status());
  dsm::Region* region = (*r)->region();
  for (int i = 0; i < 20; ++i) {  // the arbiter creates the region's table at the first one
    absl::StatusOr<dsm::LockGuard> g = region->Lock(0, 64, dsm::LockMode::kExclusive);
    BENCH_CHECK_OK(g.status());
    BENCH_CHECK_OK(g->Unlock());
  }
  Samples lat, lock_lat, unlock_lat;
  lat.Reserve(n);
  lock_lat.Reserve(n);
  unlock_lat.Reserve(n);
  CpuMeter cpu(c->node_pids());
  cpu.Resume();
  for (auto _ : state) {
    const uint64_t t0 = NowNs();
    absl::StatusOr<dsm::LockGuard> g = region->Lock(0, 64, dsm::LockMode::kExclusive);
    const uint64_t t1 = NowNs();
    BENCH_CHECK_OK(g.status());
    BENCH_CHECK_OK(g->Unlock());
    const uint64_t t2 = NowNs();
    lock_lat.Add(t1 - t0);
    unlock_lat.Add(t2 - t1);
    lat.Add(t2 - t0);
    state.SetIterationTime(static_cast<double>(t2 - t0) * 1e-9);
  }
  cpu.Pause();
  ReportLatency(state, lat);
  state.counters["lock_median_us"] = lock_lat.QuantileUs(0.5);
  state.counters["unlock_median_us"] = unlock_lat.QuantileUs(0.5);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kCluster);
}

// Runs `cmd` on helpers 2..nodes (one line each, replies read at the end) while node 0 runs
// `own(k)` for its iterations; every node does Iters(state) operations. Reports per-operation
// wall time over all nodes (per_op_us: the loop's wall time, from node 0's start until the last
// node finished, divided by every node's operations), node 0's per-operation latencies
// (median_us, p99_us) and CPU per operation of all node processes.
template <typename Op>
void RunOnNodes(benchmark::State& state, Cluster* c, int nodes, const std::string& cmd, Op own) {
  const size_t n = Iters(state);
  Samples lat;
  lat.Reserve(n);
  CpuMeter cpu(c->node_pids());
  for (int h = 2; h <= nodes; ++h) BENCH_CHECK_OK(c->Send(h, cmd));
  cpu.Resume();
  const uint64_t t0 = NowNs();
  size_t k = 0;
  for (auto _ : state) {
    const uint64_t a = NowNs();
    BENCH_CHECK_OK(own(k++));
    const uint64_t dt = NowNs() - a;
    lat.Add(dt);
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  for (int h = 2; h <= nodes; ++h) BENCH_CHECK_OK(c->Read(h).status());
  const uint64_t wall = NowNs() - t0;
  cpu.Pause();
  const double ops = static_cast<double>(n) * nodes;
  ReportLatency(state, lat);
  state.counters["per_op_us"] = static_cast<double>(wall) / 1000.0 / ops;
  state.counters["ops_per_s"] = ops / (static_cast<double>(wall) * 1e-9);
  ReportCpu(state, cpu, ops, CpuMeterKind::kCluster);
}

// Hand-off: p.a nodes (node 0 and helpers 2..p.a) each lock and unlock bytes [0, 64) of one
// region exclusively, in a loop, at once; arbiter node 1. Each grant after the first waits for
// another node's release, so per_op_us is the cost of one hand-off.
void BM_LockHandoff(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const int nodes = static_cast<int>(p.a);
  std::vector<int> participants = {kHome};
  for (int h = 2; h <= nodes; ++h) participants.push_back(h);
  absl::StatusOr<std::unique_ptr<SharedRegion>> r = SharedRegion::Map(c, kPage, participants);
  BENCH_CHECK_OK(r.status());
  dsm::Region* region = (*r)->region();
  for (int h = 2; h <= nodes; ++h) {  // warm up every node's path to the arbiter
    BENCH_CHECK_OK(c->Call(h, absl::StrCat("lockloop ", (*r)->name(), " 0 64 10")).status());
  }
  absl::StatusOr<dsm::Stats> before = c->node()->GetStats();
  BENCH_CHECK_OK(before.status());
  RunOnNodes(state, c, nodes, absl::StrCat("lockloop ", (*r)->name(), " 0 64 ", Iters(state)),
             [region](size_t) -> absl::Status {
               absl::StatusOr<dsm::LockGuard> g = region->Lock(0, 64, dsm::LockMode::kExclusive);
               if (!g.ok()) return g.status();
               return g->Unlock();
             });
  // The share of node 0's grants handed over directly by the previous holder (one message).
  absl::StatusOr<dsm::Stats> after = c->node()->GetStats();
  BENCH_CHECK_OK(after.status());
  const uint64_t grants = after->locks_granted - before->locks_granted;
  state.counters["direct_share"] =
      grants == 0 ? 0.0
                  : static_cast<double>(after->lock_handoffs - before->lock_handoffs) /
                        static_cast<double>(grants);
}

// The counter table's lock phase (examples/counter_table.cc): p.a nodes (node 0 and helpers
// 2..p.a) each increment p.b random 64-byte records under an exclusive lock of the record's
// first 8 bytes, at once; the region (home and arbiter node 1) holds nothing else, so records
// share pages and most operations move a page too. Node 0 checks the sum afterwards. p.c=1:
// every lock is granted with its page (LockOptions::with_pages).
void BM_CounterTable(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const int nodes = static_cast<int>(p.a);
  const uint64_t records = static_cast<uint64_t>(p.b);
  std::vector<int> participants = {kHome};
  for (int h = 2; h <= nodes; ++h) participants.push_back(h);
  absl::StatusOr<std::unique_ptr<SharedRegion>> r =
      SharedRegion::Map(c, (records * 64 + kPage - 1) / kPage * kPage, participants);
  BENCH_CHECK_OK(r.status());
  dsm::Region* region = (*r)->region();
  auto* words = reinterpret_cast<volatile uint64_t*>(const_cast<uint8_t*>((*r)->base()));
  dsm::LockOptions options;
  options.with_pages = p.c != 0;
  RunOnNodes(state, c, nodes,
             absl::StrCat("counter ", (*r)->name(), " ", records, " ", Iters(state),
                          options.with_pages ? " pages" : ""),
             [&](size_t k) -> absl::Status {
               const uint64_t rec = CounterRecord(0, k, records);
               absl::StatusOr<dsm::LockGuard> g =
                   region->Lock(rec * 64, 8, dsm::LockMode::kExclusive, options);
               if (!g.ok()) return g.status();
               words[rec * 8] = words[rec * 8] + 1;
               return g->Unlock();
             });
  uint64_t sum = 0;
  for (uint64_t i = 0; i < records; ++i) sum += words[i * 8];
  if (sum != Iters(state) * static_cast<uint64_t>(nodes)) {
    state.SkipWithError(absl::StrCat("counter table: sum ", sum, ", expected ",
                                     Iters(state) * static_cast<uint64_t>(nodes)).c_str());
  }
}

// Per-page bookkeeping: map a 64 GiB region without touching it and report the growth of
// resident memory per 4 KiB page: p.a=0: node 0 is not the home (node 1 is; its growth is
// reported too); 1: node 0 is the home (no other node maps it).
void BM_Bookkeeping(benchmark::State& state, const Params& p) {
  Cluster* c = GetClusterOrSkip(state, p);
  if (c == nullptr) return;
  const bool local_home = p.a != 0;
  const size_t bytes = size_t{64} << 30;
  const double pages = static_cast<double>(bytes / kPage);
  for (auto _ : state) {
    absl::StatusOr<MemUsage> before = ReadMemUsage();
    absl::StatusOr<MemUsage> home_before = ReadMemUsage(c->helper_pid(kHome));
    BENCH_CHECK_OK(before.status());
    BENCH_CHECK_OK(home_before.status());
    uint64_t t0 = NowNs();
    std::unique_ptr<dsm::Region> local;
    std::unique_ptr<SharedRegion> shared;
    if (local_home) {
      dsm::RegionOptions ro;
      ro.name = absl::StrCat("bk", NowNs());
      ro.size = bytes;
      ro.home = 0;
      absl::StatusOr<std::unique_ptr<dsm::Region>> r = c->node()->MapRegion(ro);
      BENCH_CHECK_OK(r.status());
      local = std::move(*r);
    } else {
      absl::StatusOr<std::unique_ptr<SharedRegion>> r = SharedRegion::Map(c, bytes, {kHome});
      BENCH_CHECK_OK(r.status());
      shared = std::move(*r);
    }
    uint64_t dt = NowNs() - t0;
    BENCH_CHECK_OK(c->node()->GetStats().status());  // let the engine settle after a map
    absl::StatusOr<MemUsage> after = ReadMemUsage();
    absl::StatusOr<MemUsage> home_after = ReadMemUsage(c->helper_pid(kHome));
    BENCH_CHECK_OK(after.status());
    BENCH_CHECK_OK(home_after.status());
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
    auto per_page = [pages](uint64_t a, uint64_t b) {
      return (static_cast<double>(b) - static_cast<double>(a)) / pages;
    };
    state.counters["rss_bytes_per_page"] = per_page(before->resident_bytes, after->resident_bytes);
    state.counters["virt_bytes_per_page"] = per_page(before->virtual_bytes, after->virtual_bytes) -
                                            static_cast<double>(kPage);  // minus the region itself
    if (!local_home) {
      state.counters["home_rss_bytes_per_page"] =
          per_page(home_before->resident_bytes, home_after->resident_bytes);
    }
    state.counters["map_ms"] = static_cast<double>(dt) / 1e6;
    if (local) BENCH_CHECK_OK(local->Unmap());
  }
}

}  // namespace

void RegisterClusterBenchmarks(const BenchConfig& cfg) {
  const bool smoke = cfg.smoke;
  const int64_t lat_iters = smoke ? 64 : 4000;
  const int64_t wr_iters = smoke ? 64 : 2000;
  const int64_t scan_pages = smoke ? 1024 : (256 << 20) / 4096;  // 4 MiB / 256 MiB
  using Fn = void (*)(benchmark::State&, const Params&);
  auto reg = [](const std::string& name, Fn fn, Params p, int64_t iters) {
    return benchmark::RegisterBenchmark(name.c_str(),
                                        [fn, p](benchmark::State& st) { fn(st, p); })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond)
        ->Iterations(iters);
  };
  for (Net net : cfg.nets) {
    const std::string sfx = std::string("/") + NetName(net);
    reg("Floor_TcpRtt4K" + sfx, BM_FloorTcpRtt, {net, 4096}, smoke ? 200 : 20000);
    reg("Floor_TcpRtt64" + sfx, BM_FloorTcpRtt, {net, 64}, smoke ? 200 : 20000);
    const int64_t stream_bytes = (smoke ? 4 : 256) << 20;
    reg("Floor_TcpStream" + sfx, BM_FloorTcpStream, {net, stream_bytes, 4096}, smoke ? 1 : 5);
    reg("Floor_TcpStreamRun" + sfx, BM_FloorTcpStream, {net, stream_bytes, 256 << 10},
        smoke ? 1 : 5);
    reg("Floor_RemoteFaultRaw" + sfx, BM_FloorRemoteFaultRaw, {net}, smoke ? 200 : 20000);
    reg("Floor_RunInstallRaw" + sfx, BM_FloorRunInstallRaw, {net, stream_bytes}, smoke ? 1 : 3);
    reg("ReadFault" + sfx, BM_ReadFault, {net}, lat_iters);
    reg("HomeFirstTouchRead" + sfx, BM_HomeFirstTouch, {net, 0}, lat_iters);
    reg("HomeFirstTouchWrite" + sfx, BM_HomeFirstTouch, {net, 1}, lat_iters);
    for (int k : {0, 1, 2, 4}) {
      reg(absl::StrCat("WriteMiss", sfx, "/k:", k), BM_WriteFault, {net, k, 0}, wr_iters);
      reg(absl::StrCat("Upgrade", sfx, "/k:", k), BM_WriteFault, {net, k, 1}, wr_iters);
    }
    reg("Recall" + sfx, BM_Recall, {net, 2}, wr_iters);
    reg("ReadFaultHomeWritten" + sfx, BM_Recall, {net, kHome}, wr_iters);
    reg("WriteMissHomeWritten" + sfx, BM_WriteFault, {net, 0, 0, 1}, wr_iters);
    reg("UpgradeHomeWritten" + sfx, BM_WriteFault, {net, 0, 1, 1}, wr_iters);
    reg("PingPong" + sfx, BM_PingPong, {net}, wr_iters);
    reg("SeqScan" + sfx, BM_Scan, {net, scan_pages, 0}, smoke ? 1 : 3);
    reg("RandScan" + sfx, BM_Scan, {net, scan_pages, 1}, smoke ? 1 : 3);
    for (int t : {1, 2, 4}) {
      reg(absl::StrCat("ReadFaultThreads", sfx, "/threads:", t), BM_FaultThreads, {net, t, 0},
          smoke ? 2 : 40);
      reg(absl::StrCat("WriteMissThreads", sfx, "/threads:", t), BM_FaultThreads, {net, t, 1},
          smoke ? 2 : 40);
    }
    reg("LockUnlock" + sfx, BM_LockUnlock, {net}, lat_iters);
    for (int nodes : {2, 3}) {
      reg(absl::StrCat("LockHandoff", sfx, "/nodes:", nodes), BM_LockHandoff, {net, nodes},
          wr_iters);
    }
    for (int nodes : {1, 3}) {
      reg(absl::StrCat("CounterTable", sfx, "/nodes:", nodes), BM_CounterTable,
          {net, nodes, 256}, smoke ? 64 : 1000);
      reg(absl::StrCat("CounterTableWithPages", sfx, "/nodes:", nodes), BM_CounterTable,
          {net, nodes, 256, 1}, smoke ? 64 : 1000);
    }
    reg("Bookkeeping" + sfx + "/nonhome", BM_Bookkeeping, {net, 0}, 1);
    reg("Bookkeeping" + sfx + "/home", BM_Bookkeeping, {net, 1}, 1);
  }
}

}  // namespace dsm::bench

namespace {

bool TakeFlag(int* argc, char** argv, const std::string& name, std::string* value) {
  for (int i = 1; i < *argc; ++i) {
    std::string a = argv[i];
    bool match = a == "--" + name || a.rfind("--" + name + "=", 0) == 0;
    if (!match) continue;
    *value = a.size() > name.size() + 2 ? a.substr(name.size() + 3) : "1";
    for (int j = i; j + 1 < *argc; ++j) argv[j] = argv[j + 1];
    --*argc;
    return true;
  }
  return false;
}

int HelperMain(int argc, char** argv) {
  dsm::bench::HelperArgs a;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--id") {
      a.id = static_cast<uint32_t>(std::stoul(v));
    } else if (k == "--peers") {
      a.peers = absl::StrSplit(v, ',', absl::SkipEmpty());
    } else if (k == "--poll_spin_us") {
      a.poll_spin_us = std::stoll(v);
    }
  }
  return dsm::bench::RunHelper(a);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "--helper") return HelperMain(argc, argv);
  if (argc >= 3 && std::string(argv[1]) == "--raw-server") {
    return dsm::bench::RunRawServer(argv[2]);
  }
  dsm::bench::BenchConfig& cfg = dsm::bench::g_cfg;
  std::string v;
  cfg.smoke = TakeFlag(&argc, argv, "smoke", &v);
  std::string net = "lo";
  TakeFlag(&argc, argv, "net", &net);
  if (TakeFlag(&argc, argv, "poll_spin_us", &v)) cfg.poll_spin_us = std::stoll(v);
  char exe[4096];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) {
    std::perror("readlink /proc/self/exe");
    return 1;
  }
  cfg.self_exe.assign(exe, static_cast<size_t>(len));

  // Skip cleanly (77) where userfaultfd is not available to us.
  int probe = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (probe < 0) {
    std::printf("dsm_bench: SKIP: userfaultfd unavailable (%s); run as root or set "
                "vm.unprivileged_userfaultfd=1\n", std::strerror(errno));
    return 77;
  }
  close(probe);
  const bool root = geteuid() == 0;
  if (net == "lo" || net == "both") cfg.nets.push_back(dsm::bench::Net::kLoopback);
  if (net == "veth" || net == "both") {
    if (root) {
      cfg.nets.push_back(dsm::bench::Net::kVeth);
    } else {
      std::printf("dsm_bench: veth variant skipped: needs root for network namespaces\n");
    }
  }
  if (cfg.nets.empty()) cfg.nets.push_back(dsm::bench::Net::kLoopback);

  dsm::bench::RegisterFloorBenchmarks(cfg);
  dsm::bench::RegisterClusterBenchmarks(cfg);
  dsm::bench::RegisterAppBenchmarks(cfg);
  benchmark::AddCustomContext("dsm_smoke", cfg.smoke ? "1" : "0");
  const int64_t effective_spin =
      cfg.poll_spin_us >= 0 ? cfg.poll_spin_us
                            : absl::ToInt64Microseconds(dsm::Options{}.poll_spin);
  benchmark::AddCustomContext("dsm_poll_spin_us", std::to_string(effective_spin));
  benchmark::AddCustomContext("dsm_poll_spin_is_default", cfg.poll_spin_us < 0 ? "1" : "0");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  dsm::bench::Cluster::DestroyCurrent();
  benchmark::Shutdown();
  // A wrong application result is an error row in a full run; the smoke test fails on it.
  if (cfg.smoke && dsm::bench::AppWrongResults() > 0) {
    std::fprintf(stderr, "dsm_bench: %d application run(s) computed a wrong result\n",
                 dsm::bench::AppWrongResults());
    return 1;
  }
  return 0;
}
