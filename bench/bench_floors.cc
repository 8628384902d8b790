// Local userfaultfd floors: the cost of one MISSING fault answered with UFFDIO_COPY and one
// write-protect fault answered with UFFDIO_WRITEPROTECT, with no network and no dsm code. A
// handler thread serves the faults either busy-polling a non-blocking uffd (the best case
// here) or sleeping in poll() (for comparison).
#include "bench_floors.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "bench_common.h"

namespace dsm::bench {
namespace {

class UffdFloor {
 public:
  // pages: size of the registered anonymous range. busy: handler busy-polls the uffd.
  // wp_install: MISSING faults are answered with UFFDIO_COPY_MODE_WP.
  absl::Status Start(size_t pages, bool busy) {
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
        if (busy_) {
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
  char* base_ = nullptr;
  size_t len_ = 0;
  bool busy_ = true;
  std::atomic<bool> wp_install_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
  alignas(4096) char src_[kPage];
};

void ReportLatency(benchmark::State& state, Samples& s) {
  state.counters["median_us"] = s.QuantileUs(0.5);
  state.counters["p99_us"] = s.QuantileUs(0.99);
  state.counters["mean_us"] = s.MeanUs();
}

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
  for (auto _ : state) {
    uint64_t t0 = NowNs();
    sink = static_cast<char>(sink + p[i * kPage]);
    uint64_t t1 = NowNs();
    ++i;
    lat.Add(t1 - t0);
    state.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
  }
  benchmark::DoNotOptimize(sink);
  ReportLatency(state, lat);
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
  for (auto _ : state) {
    uint64_t t0 = NowNs();
    p[i * kPage] = 'w';
    uint64_t t1 = NowNs();
    ++i;
    lat.Add(t1 - t0);
    state.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
  }
  ReportLatency(state, lat);
}

}  // namespace

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
