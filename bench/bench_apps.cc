// Application figures (bench_apps.h): the drivers on node 0, and the per-node runner that
// node 0 and the helpers share.
//
// One run of an application on k nodes (node ids 0..k-1; node 0, this process, is the home of
// the region and the lock arbiter of the counter table, as in examples/): a fresh region is
// mapped (untimed); every node initializes its share and the nodes meet at a barrier; node 0
// snapshots every node's Stats (Node::GatherStats) and starts the CPU meter (all six node
// processes) and the clock; the nodes meet again, run the kernel (SOR meets after every
// half-step, the others once at the end); node 0 stops the clock and the meter at that last
// barrier and snapshots the Stats again. Untimed from here: the nodes meet once more, the
// others write their Modified pages home (Region::Sync), and node 0 reads the whole region
// and compares it byte for byte with the plain run: the same layout in private memory of this
// process, initialized and computed by the same kernel on one thread, timed the same way, in
// the same benchmark iteration just before the dsm run.
//
// Pages moved (Stats deltas of every node other than the home): pages installed there (data
// from the home, demand or readahead) plus pages sent back to the home (recalls answered,
// write-backs). Upgrades and invalidations move no page and are not counted; faults are.
#include "bench_apps.h"

#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "app_kernels.h"
#include "bench_common.h"
#include "benchmark/benchmark.h"
#include "dsm/lock.h"

namespace dsm::bench {
namespace {

constexpr double kSorOmega = 1.5;
constexpr absl::Duration kAppTimeout = absl::Seconds(60);
constexpr dsm::NodeId kAppHome = 0;

std::atomic<int> g_wrong_results{0};

enum class Kernel { kSor, kMatmul, kCounter };
constexpr const char* kKernelNames[] = {"sor", "matmul", "counter"};

uint64_t RoundUpToPage(uint64_t b) { return (b + kPage - 1) / kPage * kPage; }

// One application run. Node ids are 0..nodes-1.
struct AppRun {
  Kernel kernel = Kernel::kSor;
  uint64_t nodes = 1;
  uint64_t a = 0;  // sor, matmul: n; counter: records (64 bytes each, packed 64 to a page)
  uint64_t b = 0;  // sor: iterations; counter: operations per node; matmul: unused

  uint64_t CounterTableBytes() const { return RoundUpToPage(a * sizeof(app::CounterRecord)); }
  uint64_t CounterReportBytes() const { return RoundUpToPage(a * sizeof(uint32_t)); }
  // The memory of the run, whole pages: the SOR grid; A, B, C; the two counter tables and
  // one report per node (each on pages of its own, as the example's heap places them).
  uint64_t Bytes() const {
    switch (kernel) {
      case Kernel::kSor:
        return app::SorGridBytes(a);
      case Kernel::kMatmul:
        return 3 * app::MatmulMatrixBytes(a);
      case Kernel::kCounter:
        return 2 * CounterTableBytes() + nodes * CounterReportBytes();
    }
    return 0;
  }
};

// Typed views of a run's memory: the region, or the plain run's private copy.
struct AppMemory {
  const AppRun& run;
  uint8_t* base;

  app::SorGrid Grid() const {
    return {reinterpret_cast<double*>(base), run.a, app::SorStride(run.a)};
  }
  double* Matrix(uint64_t i) const {  // 0 = A, 1 = B, 2 = C
    return reinterpret_cast<double*>(base + i * app::MatmulMatrixBytes(run.a));
  }
  app::CounterTables Tables() const {
    return {base, base + run.CounterTableBytes(), sizeof(app::CounterRecord), run.a};
  }
  uint32_t* Report(uint64_t index) const {
    return reinterpret_cast<uint32_t*>(base + 2 * run.CounterTableBytes() +
                                       index * run.CounterReportBytes());
  }
};

// Node `index`'s share of the initialization (all indices together: all of it).
void InitShare(const AppMemory& m, uint64_t index) {
  const AppRun& run = m.run;
  if (run.kernel == Kernel::kSor) {
    const app::RowBlock r = app::SorInitRows(run.a, run.nodes, index);
    app::SorInit(m.Grid(), r.first, r.end);
  } else if (run.kernel == Kernel::kMatmul) {
    const app::RowBlock r = app::MatmulRows(run.a, run.nodes, index);
    app::MatmulFill(m.Matrix(0), m.Matrix(1), run.a, r.first, r.end);
  }  // the counter tables start at zero
}

// Node 0's measurements, taken between the barriers (the helpers pass none).
struct PhaseHooks {
  std::function<absl::Status()> start;  // after the initialization barrier
  std::function<absl::Status()> stop;   // after the kernel's last barrier
};

// Node `index`'s share of `run` on `region` (home node 0), meeting the other nodes at the
// barrier named after the region (module comment).
absl::Status RunShare(dsm::Node& node, dsm::Region& region, const AppRun& run, uint64_t index,
                      const PhaseHooks* hooks) {
  const AppMemory m{run, static_cast<uint8_t*>(region.data())};
  std::vector<dsm::NodeId> members;
  for (uint64_t i = 0; i < run.nodes; ++i) members.push_back(static_cast<dsm::NodeId>(i));
  auto meet = [&] { return node.Barrier(region.name(), members, absl::Now() + kAppTimeout); };
  InitShare(m, index);
  if (absl::Status s = meet(); !s.ok()) return s;
  if (hooks != nullptr) {
    if (absl::Status s = hooks->start(); !s.ok()) return s;
  }
  if (absl::Status s = meet(); !s.ok()) return s;
  switch (run.kernel) {
    case Kernel::kSor: {
      const app::RowBlock r = app::SorRows(run.a, run.nodes, index);
      for (uint64_t it = 0; it < run.b; ++it) {
        for (int colour = 0; colour < 2; ++colour) {
          if (r.first < r.end) app::SorHalfStep(m.Grid(), r.first, r.end, colour, kSorOmega);
          if (absl::Status s = meet(); !s.ok()) return s;
        }
      }
      break;
    }
    case Kernel::kMatmul: {
      const app::RowBlock r = app::MatmulRows(run.a, run.nodes, index);
      app::MatmulMultiply(m.Matrix(0), m.Matrix(1), m.Matrix(2), run.a, r.first, r.end);
      if (absl::Status s = meet(); !s.ok()) return s;
      break;
    }
    case Kernel::kCounter: {
      auto with_lock = [&](void* rec, const auto& update) -> absl::Status {
        const uint64_t offset = static_cast<uint64_t>(static_cast<uint8_t*>(rec) - m.base);
        dsm::LockOptions options;  // as examples/counter_table.cc: the page with the grant
        options.deadline = absl::Now() + kAppTimeout;
        options.with_pages = true;
        absl::StatusOr<dsm::LockGuard> g =
            region.Lock(offset, sizeof(uint64_t), dsm::LockMode::kExclusive, options);
        if (!g.ok()) return g.status();
        update();
        return g->Unlock();
      };
      if (absl::Status s = app::CounterOps(m.Tables(), m.Report(index), index, run.b, with_lock);
          !s.ok()) {
        return s;
      }
      if (absl::Status s = meet(); !s.ok()) return s;
      break;
    }
  }
  if (hooks != nullptr) {
    if (absl::Status s = hooks->stop(); !s.ok()) return s;
  }
  // Untimed, once node 0 has counted: the other nodes write their Modified pages home in
  // runs (Region::Sync), so that node 0 reads the result from its home copy instead of
  // recalling it page by page (which took 0.1-1.3 s a run here).
  if (absl::Status s = meet(); !s.ok()) return s;
  return index == kAppHome ? absl::OkStatus() : region.Sync();
}

// Private anonymous memory, zeroed and page-aligned like a fresh region.
class PrivateMemory {
 public:
  explicit PrivateMemory(size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data_ = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
  }
  ~PrivateMemory() {
    if (data_ != nullptr) munmap(data_, bytes_);
  }
  PrivateMemory(const PrivateMemory&) = delete;
  PrivateMemory& operator=(const PrivateMemory&) = delete;
  uint8_t* data() const { return data_; }

 private:
  size_t bytes_;
  uint8_t* data_;
};

// What one run measured: wall time and CPU of the timed phase, and the cluster's traffic.
struct Measured {
  double wall_ns = 0;
  double cpu_us = 0;
  double pages = 0;
  double faults = 0;
};

uint64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// The plain run: the whole kernel on `mem` (zeroed, run.Bytes() long) on this thread. Its
// CPU is this thread's alone: the kernel's own work, which is also its wall time whenever
// the thread has a vCPU to itself.
absl::StatusOr<Measured> RunPlain(const AppRun& run, uint8_t* mem) {
  const AppMemory m{run, mem};
  for (uint64_t i = 0; i < run.nodes; ++i) InitShare(m, i);
  const uint64_t c0 = ThreadCpuNs();
  const uint64_t t0 = NowNs();
  if (run.kernel == Kernel::kSor) {
    app::SorSweeps(m.Grid(), run.b, kSorOmega);
  } else if (run.kernel == Kernel::kMatmul) {
    app::MatmulMultiply(m.Matrix(0), m.Matrix(1), m.Matrix(2), run.a, 0, run.a);
  } else {
    for (uint64_t i = 0; i < run.nodes; ++i) {
      absl::Status s = app::CounterOps(m.Tables(), m.Report(i), i, run.b, app::NoLock{});
      if (!s.ok()) return s;
    }
  }
  const uint64_t t1 = NowNs();
  return Measured{static_cast<double>(t1 - t0), static_cast<double>(ThreadCpuNs() - c0) / 1e3, 0,
                  0};
}

// Faults of every node, and pages moved (module comment), between two snapshots.
void AddTraffic(const dsm::ClusterStats& before, const dsm::ClusterStats& after, Measured* m) {
  for (size_t id = 0; id < after.nodes.size() && id < before.nodes.size(); ++id) {
    const dsm::Stats d = after.nodes[id] - before.nodes[id];
    m->faults += static_cast<double>(d.read_faults + d.write_faults);
    if (id != kAppHome) {
      m->pages += static_cast<double>(d.pages_installed + d.recalls_received + d.writebacks_sent);
    }
  }
}

absl::StatusOr<dsm::ClusterStats> Snapshot(dsm::Node* node) {
  absl::StatusOr<dsm::ClusterStats> s = node->GatherStats(absl::Now() + absl::Seconds(10));
  if (s.ok() && !s->missing.empty()) {
    return absl::UnavailableError(absl::StrCat("node ", s->missing[0], " sent no Stats"));
  }
  return s;
}

// A fresh region for one run: home node 0, mapped on node 0 first, then on helpers
// 1..nodes-1; unmapped by the helpers first, the home last.
class AppRegion {
 public:
  static absl::StatusOr<std::unique_ptr<AppRegion>> Map(AppCluster* c, const AppRun& run) {
    static int seq = 0;
    std::unique_ptr<AppRegion> r(new AppRegion(c));
    dsm::RegionOptions ro;
    ro.name = absl::StrCat("app", ++seq);
    ro.size = run.Bytes();
    ro.home = kAppHome;
    absl::StatusOr<std::unique_ptr<dsm::Region>> local = c->node()->MapRegion(ro);
    if (!local.ok()) return local.status();
    r->local_ = std::move(*local);
    for (int h = 1; h < static_cast<int>(run.nodes); ++h) {
      if (absl::Status s = c->Send(h, absl::StrCat("map ", ro.name, " ", ro.size, " ", kAppHome));
          !s.ok()) {
        return s;
      }
      if (absl::StatusOr<std::string> ok = c->Read(h); !ok.ok()) return ok.status();
      r->helpers_.push_back(h);
    }
    return r;
  }
  ~AppRegion() {
    for (auto it = helpers_.rbegin(); it != helpers_.rend(); ++it) {
      absl::Status s = c_->Send(*it, "unmap " + local_->name());
      if (s.ok()) s = c_->Read(*it).status();
      if (!s.ok()) std::fprintf(stderr, "dsm_bench: unmap: %s\n", s.ToString().c_str());
    }
    if (absl::Status s = local_->Unmap(); !s.ok()) {
      std::fprintf(stderr, "dsm_bench: unmap: %s\n", s.ToString().c_str());
    }
  }
  dsm::Region* region() const { return local_.get(); }

 private:
  explicit AppRegion(AppCluster* c) : c_(c) {}
  AppCluster* c_;
  std::unique_ptr<dsm::Region> local_;
  std::vector<int> helpers_;
};

// How many 8-byte words of the region differ from the plain run's memory, and the first.
std::string CompareWithPlain(const AppRun& run, const uint8_t* dsm_mem, const uint8_t* plain) {
  uint64_t wrong = 0, first = 0;
  for (uint64_t off = 0; off < run.Bytes(); off += 8) {
    if (std::memcmp(dsm_mem + off, plain + off, 8) != 0 && wrong++ == 0) first = off;
  }
  if (wrong == 0) return "";
  return absl::StrCat(kKernelNames[static_cast<int>(run.kernel)], " on ", run.nodes,
                      " node(s): ", wrong, " of ", run.Bytes() / 8,
                      " words differ from the plain run (the first at byte ", first, ")");
}

// One dsm run (module comment), after the plain run has filled `plain`; checks the result.
absl::StatusOr<Measured> RunDsm(AppCluster* c, const AppRun& run, const uint8_t* plain) {
  absl::StatusOr<std::unique_ptr<AppRegion>> r = AppRegion::Map(c, run);
  if (!r.ok()) return r.status();
  dsm::Region* region = (*r)->region();
  const std::string args = absl::StrCat(kKernelNames[static_cast<int>(run.kernel)], " ");
  absl::Status first_error;
  std::vector<int> sent;
  for (int h = 1; h < static_cast<int>(run.nodes); ++h) {
    first_error = c->Send(h, absl::StrCat("app ", region->name(), " ", args, h, " ", run.nodes, " ",
                                          run.a, " ", run.b));
    if (!first_error.ok()) break;
    sent.push_back(h);
  }
  Measured m;
  CpuMeter cpu(c->node_pids());
  absl::StatusOr<dsm::ClusterStats> before, after;
  uint64_t t0 = 0;
  PhaseHooks hooks{[&]() -> absl::Status {
                     before = Snapshot(c->node());
                     cpu.Resume();
                     t0 = NowNs();
                     return before.status();
                   },
                   [&]() -> absl::Status {
                     m.wall_ns = static_cast<double>(NowNs() - t0);
                     cpu.Pause();
                     after = Snapshot(c->node());
                     return after.status();
                   }};
  if (first_error.ok()) first_error = RunShare(*c->node(), *region, run, 0, &hooks);
  for (int h : sent) {  // every reply is read, so the pipes stay in step
    absl::Status s = c->Read(h).status();
    if (first_error.ok()) first_error = s;
  }
  if (!first_error.ok()) return first_error;
  AddTraffic(*before, *after, &m);
  m.cpu_us = cpu.TotalUs();
  if (std::string wrong = CompareWithPlain(run, static_cast<const uint8_t*>(region->data()), plain);
      !wrong.empty()) {
    g_wrong_results.fetch_add(1);
    return absl::DataLossError(wrong);
  }
  return m;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct AppParams {
  Net net = Net::kLoopback;
  AppRun run;
};

// One iteration = the plain run, then the dsm run; manual time = the dsm run's wall time.
// Counters, medians over the iterations, per run: wall_ms (dsm), plain_ms (the plain run's
// wall), plain_cpu_ms (its CPU), speedup = plain_cpu_ms / wall_ms (above 1: faster than one
// process; the plain run's CPU stands for its wall on an idle vCPU, since on this shared VM
// its wall mostly measures the other tenants: 1.5-2.5x its CPU under load), speedup_wall =
// plain_ms / wall_ms, cpu_ms (all node processes), pages_moved, faults, and
// extra_cpu_us_per_page = (cpu_ms - plain_cpu_ms) per page moved: the CPU the run spent
// beyond the kernel's own work (faults, barriers, locks, the engines' busy-poll), per page.
void BM_App(benchmark::State& state, const AppParams& p) {
  absl::StatusOr<AppCluster*> c = GetAppCluster(p.net);
  if (!c.ok()) {
    state.SkipWithError(c.status().ToString().c_str());
    return;
  }
  const AppRun& run = p.run;
  std::vector<double> wall, plain_wall, cpu, plain_cpu, pages, faults, extra;
  for (auto _ : state) {
    PrivateMemory plain_mem(run.Bytes());
    absl::StatusOr<Measured> plain = plain_mem.data() != nullptr
                                         ? RunPlain(run, plain_mem.data())
                                         : absl::ResourceExhaustedError("mmap of the plain run");
    absl::StatusOr<Measured> d = plain.ok() ? RunDsm(*c, run, plain_mem.data()) : plain.status();
    if (!d.ok()) {
      state.SkipWithError(d.status().ToString().c_str());
      return;
    }
    state.SetIterationTime(d->wall_ns * 1e-9);
    wall.push_back(d->wall_ns / 1e6);
    plain_wall.push_back(plain->wall_ns / 1e6);
    cpu.push_back(d->cpu_us / 1e3);
    plain_cpu.push_back(plain->cpu_us / 1e3);
    pages.push_back(d->pages);
    faults.push_back(d->faults);
    if (d->pages > 0) extra.push_back((d->cpu_us - plain->cpu_us) / d->pages);
  }
  state.counters["nodes"] = static_cast<double>(run.nodes);
  state.counters["wall_ms"] = Median(wall);
  state.counters["plain_ms"] = Median(plain_wall);
  state.counters["speedup"] = Median(plain_cpu) / Median(wall);
  state.counters["speedup_wall"] = Median(plain_wall) / Median(wall);
  state.counters["cpu_ms"] = Median(cpu);
  state.counters["plain_cpu_ms"] = Median(plain_cpu);
  state.counters["pages_moved"] = Median(pages);
  state.counters["faults"] = Median(faults);
  if (!extra.empty()) state.counters["extra_cpu_us_per_page"] = Median(extra);
  if (run.kernel == Kernel::kSor) {
    state.counters["pages_per_iteration"] = Median(pages) / static_cast<double>(run.b);
  }
  if (run.kernel == Kernel::kCounter) {
    const double ops = static_cast<double>(run.b * run.nodes);
    state.counters["us_per_op"] = Median(wall) * 1e3 / ops;
    state.counters["cpu_us_per_op"] = Median(cpu) * 1e3 / ops;
  }
  state.counters["size_a"] = static_cast<double>(run.a);
  state.counters["size_b"] = static_cast<double>(run.b);
}

}  // namespace

int AppWrongResults() { return g_wrong_results.load(); }

std::string RunAppCommand(dsm::Node& node, dsm::Region& region,
                          const std::vector<std::string>& args) {
  AppRun run;
  uint64_t index = 0;
  const auto kernel =
      std::find(std::begin(kKernelNames), std::end(kKernelNames), args.size() > 2 ? args[2] : "");
  if (args.size() != 7 || kernel == std::end(kKernelNames) || !absl::SimpleAtoi(args[3], &index) ||
      !absl::SimpleAtoi(args[4], &run.nodes) || !absl::SimpleAtoi(args[5], &run.a) ||
      !absl::SimpleAtoi(args[6], &run.b) || index >= run.nodes) {
    return "err usage: app <region> sor|matmul|counter <index> <nodes> <a> <b>";
  }
  run.kernel = static_cast<Kernel>(kernel - std::begin(kKernelNames));
  if (region.size() < run.Bytes()) return "err the region is smaller than the run";
  absl::Status s = RunShare(node, region, run, index, nullptr);
  return s.ok() ? "ok" : "err app: " + s.ToString();
}

void RegisterAppBenchmarks(const BenchConfig& cfg) {
  const bool smoke = cfg.smoke;
  struct Spec {
    const char* name;
    Kernel kernel;
    uint64_t a, b;
    int64_t iterations;
  };
  // SOR: 1024 x 1024 doubles with the boundary (2 pages a row), 10 iterations; matmul:
  // 512 x 512 (512 pages a matrix); the counter table: 256 packed records (4 pages a table),
  // 500 operations per node. Few runs each (scripts/bench.sh repeats every figure and reports
  // the median): with their untimed set-up and check, the nine take 10-20 s per network and
  // repetition on the shared 2-vCPU VM. Smoke: tiny sizes, one run each.
  const Spec specs[] = {
      {"App_Sor", Kernel::kSor, smoke ? 62u : 1022u, smoke ? 2u : 10u, smoke ? 1 : 2},
      {"App_Matmul", Kernel::kMatmul, smoke ? 64u : 512u, 0, 1},
      {"App_CounterTable", Kernel::kCounter, smoke ? 64u : 256u, smoke ? 32u : 500u, 1},
  };
  for (Net net : cfg.nets) {
    for (const Spec& s : specs) {
      for (uint64_t nodes = 1; nodes <= 3; ++nodes) {
        AppParams p{net, {s.kernel, nodes, s.a, s.b}};
        const std::string name =
            absl::StrCat(s.name, "/", net == Net::kVeth ? "veth" : "lo", "/nodes:", nodes);
        benchmark::RegisterBenchmark(name.c_str(), [p](benchmark::State& st) { BM_App(st, p); })
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond)
            ->Iterations(s.iterations);
      }
    }
  }
}

}  // namespace dsm::bench
