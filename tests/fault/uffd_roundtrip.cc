// uffd_roundtrip: round-trip latency of a userfaultfd fault served by another thread.
//
// An application thread touches fresh pages of a registered anonymous region; a handler
// thread answers each MISSING fault with UFFDIO_COPY (or each write-protect fault with
// UFFDIO_WRITEPROTECT mode 0). The handler either blocks in poll(2) or busy-polls read(2) on
// the non-blocking uffd. Both threads are pinned: same CPU or different CPUs. Prints medians
// and p90 in microseconds; asserts nothing.
//
// Needs Linux 5.7+ (write-protect), root or vm.unprivileged_userfaultfd=1; exits 77 otherwise.
// Usage: uffd_roundtrip [faults per configuration, default 20000]
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "fault/userfaultfd.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kPage = 4096;

void Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

struct Result {
  double median_us;
  double p90_us;
};

Result Summarize(std::vector<double>& ns) {
  std::sort(ns.begin(), ns.end());
  return {ns[ns.size() / 2] / 1000.0, ns[ns.size() * 9 / 10] / 1000.0};
}

enum class Fault { kMissing, kWriteProtect, kNoUffd };

// Returns per-fault round-trip times in ns.
std::vector<double> Run(dsm::Userfaultfd& uffd, Fault fault, bool busy, int app_cpu,
                        int handler_cpu, size_t n) {
  char* region = static_cast<char*>(mmap(nullptr, n * kPage, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (region == MAP_FAILED) std::abort();
  madvise(region, n * kPage, MADV_NOHUGEPAGE);
  static char src[kPage] __attribute__((aligned(4096)));
  memset(src, 1, sizeof(src));
  std::vector<double> ns;
  ns.reserve(n);

  if (fault == Fault::kNoUffd) {
    Pin(app_cpu);
    for (size_t i = 0; i < n; ++i) {
      auto t0 = Clock::now();
      *static_cast<volatile char*>(region + i * kPage) = 1;
      ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
    }
    munmap(region, n * kPage);
    return ns;
  }

  if (!uffd.Register(region, n * kPage).ok()) std::abort();
  if (fault == Fault::kWriteProtect) {
    for (size_t i = 0; i < n; ++i) {
      if (!uffd.Copy(region + i * kPage, src, kPage, /*write_protect=*/true).ok()) std::abort();
    }
  }
  std::atomic<bool> stop{false};
  std::thread handler([&] {
    Pin(handler_cpu);
    dsm::FaultEvent ev[16];
    while (!stop.load(std::memory_order_relaxed)) {
      if (!busy) {
        pollfd p{uffd.fd(), POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
      }
      absl::StatusOr<size_t> got = uffd.ReadEvents(absl::MakeSpan(ev));
      if (!got.ok()) std::abort();
      for (size_t i = 0; i < *got; ++i) {
        void* a = reinterpret_cast<void*>(ev[i].address);
        absl::Status s = ev[i].kind == dsm::FaultEvent::Kind::kMissing
                             ? uffd.Copy(a, src, kPage, false)
                             : uffd.WriteProtect(a, kPage, false);
        if (!s.ok()) std::abort();
      }
    }
  });
  Pin(app_cpu);
  usleep(1000);
  for (size_t i = 0; i < n; ++i) {
    volatile char* p = region + i * kPage;
    auto t0 = Clock::now();
    if (fault == Fault::kMissing) {
      (void)*p;
    } else {
      *p = 2;
    }
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
  }
  stop = true;
  handler.join();
  (void)uffd.Unregister(region, n * kPage);
  munmap(region, n * kPage);
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 20000;
  absl::StatusOr<std::unique_ptr<dsm::Userfaultfd>> uffd = dsm::Userfaultfd::Open();
  if (!uffd.ok()) {
    std::fprintf(stderr, "skip: %s\n", uffd.status().ToString().c_str());
    return 77;
  }
  const int cpus = static_cast<int>(std::thread::hardware_concurrency());
  const int other = cpus > 1 ? 1 : 0;
  struct Config {
    const char* name;
    Fault fault;
    bool busy;
    int handler_cpu;
  };
  const Config configs[] = {
      {"first touch, no uffd (floor)", Fault::kNoUffd, false, 0},
      {"MISSING+COPY, blocking poll, same CPU", Fault::kMissing, false, 0},
      {"MISSING+COPY, blocking poll, other CPU", Fault::kMissing, false, other},
      {"MISSING+COPY, busy-poll read, other CPU", Fault::kMissing, true, other},
      {"WP+WRITEPROTECT(0), blocking poll, same CPU", Fault::kWriteProtect, false, 0},
      {"WP+WRITEPROTECT(0), blocking poll, other CPU", Fault::kWriteProtect, false, other},
      {"WP+WRITEPROTECT(0), busy-poll read, other CPU", Fault::kWriteProtect, true, other},
  };
  std::printf("%zu faults per configuration, %d CPUs, app thread on CPU 0\n", n, cpus);
  for (const Config& c : configs) {
    if (c.busy && other == 0) continue;  // spinning on the app's only CPU measures the scheduler
    std::vector<double> ns = Run(**uffd, c.fault, c.busy, 0, c.handler_cpu, n);
    Result r = Summarize(ns);
    std::printf("%-48s median %7.2f us   p90 %7.2f us\n", c.name, r.median_us, r.p90_us);
  }
  return 0;
}
