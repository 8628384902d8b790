// Local userfaultfd floors: the cost of one MISSING fault answered with UFFDIO_COPY and one
// write-protect fault answered with UFFDIO_WRITEPROTECT, with no network and no dsm code. A
// handler thread serves the faults either busy-polling a non-blocking uffd (the best case
// here) or sleeping in poll() (for comparison).
//
// Composed floors: the same mechanisms chained the way a remote fault or a readahead run
// chains them, still without dsm code, over a raw TCP connection to the bench's raw server
// (another process, busy-polling): they show what the sum of the floors becomes when the
// pieces share this machine's vCPUs at once.
#include "bench_floors.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench_common.h"

namespace dsm::bench {
namespace {

class UffdFloor {
 public:
  // pages: size of the registered anonymous range. busy: handler busy-polls the uffd.
  // fetch_fd >= 0: each MISSING fault first fetches its page from the raw server on that
  // socket (64 B request, 4 KiB reply, busy-polled), as a remote fault would.
  absl::Status Start(size_t pages, bool busy, int fetch_fd = -1) {
    fetch_fd_ = fetch_fd;
    len_ = pages * kPage;
    fd_ = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (fd_ < 0) return absl::ErrnoToStatus(errno, "userfaultfd (root or vm.unprivileged_userfaultfd=1)");
    uffdio_api api{};
    api.api = UFFD_API;
    if (ioctl(fd_, UFFDIO_API, &api) != 0) return absl::ErrnoToStatus(errno, "UFFDIO_API");
    base_ = static_cast<char*>(
        mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base_ == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap");
    uffdio_register reg{};
    reg.range = {reinterpret_cast<uint64_t>(base_), len_};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
    if (ioctl(fd_, UFFDIO_REGISTER, &reg) != 0) return absl::ErrnoToStatus(errno, "UFFDIO_REGISTER");
    std::memset(src_, 'a', sizeof(src_));
    busy_ = busy;
    thread_ = std::thread([this] { Serve(); });
    return absl::OkStatus();
  }

  ~UffdFloor() {
    stop_.store(true);
    if (thread_.joinable()) {
      // Wake a handler sleeping in poll(): fault nothing, just let the poll timeout fire.
      thread_.join();
    }
    if (base_ != nullptr && base_ != MAP_FAILED) munmap(base_, len_);
    if (fd_ >= 0) close(fd_);
  }

  char* base() const { return base_; }
  void set_wp_install(bool on) { wp_install_.store(on); }

  // Installs pages [first, first+n) write-protected, from this thread (one ioctl).
  absl::Status InstallWp(size_t first, size_t n) {
    std::vector<char> src(n * kPage, 'b');
    uffdio_copy c{};
    c.dst = reinterpret_cast<uint64_t>(base_ + first * kPage);
    c.src = reinterpret_cast<uint64_t>(src.data());
    c.len = n * kPage;
    c.mode = UFFDIO_COPY_MODE_WP;
    if (ioctl(fd_, UFFDIO_COPY, &c) != 0) return absl::ErrnoToStatus(errno, "UFFDIO_COPY");
    return absl::OkStatus();
  }

 private:
  void Serve() {
    uffd_msg msg;
    while (!stop_.load(std::memory_order_relaxed)) {
      ssize_t n = read(fd_, &msg, sizeof(msg));
      if (n != sizeof(msg)) {
        if (busy_ && fetch_fd_ >= 0) {
          // Three busy threads (this one, the raw server, the faulting thread once woken) on
          // two vCPUs: without a yield the woken thread may wait a whole time slice (~8 ms
          // medians were seen). The dsm engine's spin yields the same way.
          sched_yield();
        } else if (busy_) {
          CpuRelax();
        } else {
          pollfd p{fd_, POLLIN, 0};
          poll(&p, 1, 50);
        }
        continue;
      }
      if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
      const uint64_t addr = msg.arg.pagefault.address & ~uint64_t{kPage - 1};
      if (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
        uffdio_writeprotect wp{};
        wp.range = {addr, kPage};
        wp.mode = 0;  // clear, and wake
        ioctl(fd_, UFFDIO_WRITEPROTECT, &wp);
      } else {
        if (fetch_fd_ >= 0) {
          RawRequest req{};
          req.op = RawOp::kRtt;
          req.len = kPage;
          if (!SendAll(fetch_fd_, &req, sizeof(req)).ok() ||
              !RecvAllSpin(fetch_fd_, src_, kPage).ok()) {
            fetch_failed_.store(true);
          }
        }
        uffdio_copy c{};
        c.dst = addr;
        c.src = reinterpret_cast<uint64_t>(src_);
        c.len = kPage;
        c.mode = wp_install_.load(std::memory_order_relaxed) ? UFFDIO_COPY_MODE_WP : 0;
        ioctl(fd_, UFFDIO_COPY, &c);
      }
    }
  }

  int fd_ = -1;
  int fetch_fd_ = -1;
  char* base_ = nullptr;
  size_t len_ = 0;
  bool busy_ = true;
  std::atomic<bool> wp_install_{false};
  std::atomic<bool> stop_{false};

 public:
  std::atomic<bool> fetch_failed_{false};

 private:
  std::thread thread_;
  alignas(4096) char src_[kPage];
};

void ReportLatency(benchmark::State& state, Samples& s) {
  state.counters["median_us"] = s.QuantileUs(0.5);
  state.counters["p99_us"] = s.QuantileUs(0.99);
  state.counters["mean_us"] = s.MeanUs();
}

}  // namespace

void ReportCpu(benchmark::State& state, const CpuMeter& m, double ops, CpuMeterKind kind) {
  if (ops <= 0 || m.size() == 0) return;
  state.counters["cpu_us_per_op"] = m.TotalUs() / ops;
  state.counters["cpu_self_us_per_op"] = m.Us(0) / ops;
  if (kind == CpuMeterKind::kFloorWithServer && m.size() > 1) {
    state.counters["cpu_server_us_per_op"] = m.Us(1) / ops;
  }
  if (kind == CpuMeterKind::kCluster && m.size() > 1) {
    state.counters["cpu_home_us_per_op"] = m.Us(1) / ops;
  }
}

namespace {

// Floor: one MISSING fault on a fresh page, answered with UFFDIO_COPY. `busy`: the handler busy-polls.
void BM_FloorUffdMissing(benchmark::State& state, bool busy) {
  const size_t n = static_cast<size_t>(state.max_iterations);
  UffdFloor f;
  if (absl::Status s = f.Start(n, busy); !s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  Samples lat;
  lat.Reserve(n);
  volatile char* p = f.base();
  size_t i = 0;
  char sink = 0;
  CpuMeter cpu({0});  // the faulting thread and the handler thread
  cpu.Resume();
  for (auto _ : state) {
    uint64_t t0 = NowNs();
    sink = static_cast<char>(sink + p[i * kPage]);
    uint64_t t1 = NowNs();
    ++i;
    lat.Add(t1 - t0);
    state.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
  }
  benchmark::DoNotOptimize(sink);
  cpu.Pause();
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kSelf);
}

// Floor: one write-protect fault on a page installed read-only, answered with
// UFFDIO_WRITEPROTECT mode 0. `busy`: the handler busy-polls.
void BM_FloorUffdWp(benchmark::State& state, bool busy) {
  const size_t n = static_cast<size_t>(state.max_iterations);
  UffdFloor f;
  if (absl::Status s = f.Start(n, busy); !s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  for (size_t first = 0; first < n; first += 256) {
    if (absl::Status s = f.InstallWp(first, std::min<size_t>(256, n - first)); !s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
  }
  Samples lat;
  lat.Reserve(n);
  volatile char* p = f.base();
  size_t i = 0;
  CpuMeter cpu({0});  // the faulting thread and the handler thread
  cpu.Resume();
  for (auto _ : state) {
    uint64_t t0 = NowNs();
    p[i * kPage] = 'w';
    uint64_t t1 = NowNs();
    ++i;
    lat.Add(t1 - t0);
    state.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
  }
  cpu.Pause();
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kSelf);
}

}  // namespace

void BM_FloorRemoteFault(benchmark::State& state, int raw_fd, pid_t server_pid) {
  const size_t n = static_cast<size_t>(state.max_iterations);
  // Warm up (the server may be sleeping in poll()), before the handler shares the socket.
  RawRequest warm{};
  warm.op = RawOp::kRtt;
  warm.len = kPage;
  std::vector<char> page(kPage);
  for (int i = 0; i < 100; ++i) {
    if (!SendAll(raw_fd, &warm, sizeof(warm)).ok() || !RecvAllSpin(raw_fd, page.data(), kPage).ok()) {
      state.SkipWithError("raw fetch failed");
      return;
    }
  }
  UffdFloor f;
  if (absl::Status s = f.Start(n, /*busy=*/true, raw_fd); !s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  // Pages in random order, as BM_ReadFault touches them.
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(5);
  std::shuffle(order.begin(), order.end(), rng);
  Samples lat;
  lat.Reserve(n);
  volatile char* p = f.base();
  size_t i = 0;
  char sink = 0;
  CpuMeter cpu({0, server_pid});
  cpu.Resume();
  for (auto _ : state) {
    uint64_t t0 = NowNs();
    sink = static_cast<char>(sink + p[order[i] * kPage]);
    uint64_t t1 = NowNs();
    ++i;
    lat.Add(t1 - t0);
    state.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
  }
  cpu.Pause();
  benchmark::DoNotOptimize(sink);
  if (f.fetch_failed_.load()) {
    state.SkipWithError("raw fetch failed");
    return;
  }
  ReportLatency(state, lat);
  ReportCpu(state, cpu, static_cast<double>(n), CpuMeterKind::kFloorWithServer);
}

void BM_FloorRunInstall(benchmark::State& state, int raw_fd, pid_t server_pid,
                        size_t total_bytes) {
  constexpr size_t kRun = 64 * kPage;
  constexpr size_t kDepth = 4;  // requests in flight, as the readahead window keeps
  const size_t runs = total_bytes / kRun;
  const int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) {
    state.SkipWithError("userfaultfd: run as root");
    return;
  }
  uffdio_api api{};
  api.api = UFFD_API;
  if (ioctl(uffd, UFFDIO_API, &api) != 0) {
    close(uffd);
    state.SkipWithError("UFFDIO_API failed");
    return;
  }
  std::vector<char> buf(kRun);
  RawRequest req{};
  req.op = RawOp::kRtt;
  req.len = kRun;
  CpuMeter cpu({0, server_pid});
  double bytes = 0, secs = 0;
  bool failed = false;
  for (auto _ : state) {
    char* base = static_cast<char*>(mmap(nullptr, runs * kRun, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    uffdio_register reg{};
    reg.range = {reinterpret_cast<uint64_t>(base), runs * kRun};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
    if (base == MAP_FAILED || ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
      failed = true;
      break;
    }
    cpu.Resume();
    uint64_t t0 = NowNs();
    size_t sent = 0;
    for (size_t r = 0; r < runs && !failed; ++r) {
      while (sent < runs && sent < r + kDepth) {
        failed |= !SendAll(raw_fd, &req, sizeof(req)).ok();
        ++sent;
      }
      failed |= !RecvAllSpin(raw_fd, buf.data(), kRun).ok();
      uffdio_copy c{};
      c.dst = reinterpret_cast<uint64_t>(base + r * kRun);
      c.src = reinterpret_cast<uint64_t>(buf.data());
      c.len = kRun;
      c.mode = UFFDIO_COPY_MODE_WP;
      failed |= ioctl(uffd, UFFDIO_COPY, &c) != 0;
    }
    uint64_t dt = NowNs() - t0;
    cpu.Pause();
    munmap(base, runs * kRun);
    bytes += static_cast<double>(runs * kRun);
    secs += static_cast<double>(dt) * 1e-9;
    state.SetIterationTime(static_cast<double>(dt) * 1e-9);
  }
  close(uffd);
  if (failed) {
    state.SkipWithError("run install floor: mmap, register, raw fetch or UFFDIO_COPY failed");
    return;
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["MB_per_s"] = bytes / secs / 1e6;
  ReportCpu(state, cpu, bytes / kPage, CpuMeterKind::kFloorWithServer);  // per page
}

void RegisterFloorBenchmarks(const BenchConfig& cfg) {
  const int64_t n = cfg.smoke ? 200 : 20000;
  for (int busy : {1, 0}) {
    const char* mode = busy ? "busy" : "blocking";
    benchmark::RegisterBenchmark(absl::StrCat("Floor_UffdMissing/", mode).c_str(),
                                 [busy](benchmark::State& st) { BM_FloorUffdMissing(st, busy); })
        ->Iterations(n)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(absl::StrCat("Floor_UffdWp/", mode).c_str(),
                                 [busy](benchmark::State& st) { BM_FloorUffdWp(st, busy); })
        ->Iterations(n)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace dsm::bench
