// uffd_roundtrip: round-trip latency of a userfaultfd fault served by another thread.
//
// An application thread touches fresh pages of a registered anonymous region; a handler
// thread answers each MISSING fault with UFFDIO_COPY (or each write-protect fault with
// UFFDIO_WRITEPROTECT mode 0). The handler either blocks in poll(2) or busy-polls read(2) on
// the non-blocking uffd. Both threads are pinned: same CPU or different CPUs. Prints medians
// and p90 in microseconds (never judged: they depend on the machine).
//
// What it checks, per configuration: each touched page faulted exactly once (one event, of
// the expected kind, at the page's address), and afterwards every byte of every page is what
// the handler copied in (a per-page pattern) plus the application's own store. Exits 1 with
// the first mismatch.
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
#include <optional>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
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

// The content the handler gives page `page`: differs per page and per byte.
void FillPage(char* dst, size_t page) {
  for (size_t j = 0; j < kPage; ++j) dst[j] = static_cast<char>((page * 7 + j * 13 + 1) & 0xff);
}

constexpr char kStored = 0x5a;  // what the application writes to byte 0 in write-protect runs

// Every byte of pages [0, n) is FillPage's, except byte 0 of each page in write-protect runs
// (the application's store). Prints the first mismatch.
bool VerifyPages(const char* region, size_t n, Fault fault) {
  char want[kPage];
  for (size_t i = 0; i < n; ++i) {
    FillPage(want, i);
    if (fault == Fault::kWriteProtect) want[0] = kStored;
    if (memcmp(region + i * kPage, want, kPage) != 0) {
      size_t j = 0;
      while (region[i * kPage + j] == want[j]) ++j;
      std::fprintf(stderr, "page %zu byte %zu: %d, expected %d\n", i, j, region[i * kPage + j],
                   want[j]);
      return false;
    }
  }
  return true;
}

// Per-fault round-trip times in ns, or nullopt (with the reason printed) when a fault was not
// served as expected.
std::optional<std::vector<double>> Run(dsm::Userfaultfd& uffd, Fault fault, bool busy,
                                       int app_cpu, int handler_cpu, size_t n) {
  char* region = static_cast<char*>(mmap(nullptr, n * kPage, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (region == MAP_FAILED) std::abort();
  madvise(region, n * kPage, MADV_NOHUGEPAGE);
  alignas(4096) static char src[kPage];
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
      FillPage(src, i);
      if (!uffd.Copy(region + i * kPage, src, kPage, /*write_protect=*/true).ok()) std::abort();
    }
  }
  const dsm::FaultEvent::Kind want_kind = fault == Fault::kMissing
                                              ? dsm::FaultEvent::Kind::kMissing
                                              : dsm::FaultEvent::Kind::kWriteProtect;
  std::vector<int> served(n, 0);  // written by the handler thread until it is joined
  std::atomic<bool> stop{false};
  absl::Notification handler_pinned;
  std::thread handler([&] {
    Pin(handler_cpu);
    handler_pinned.Notify();
    dsm::FaultEvent ev[16];
    while (!stop.load(std::memory_order_relaxed)) {
      if (!busy) {
        pollfd p{uffd.fd(), POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
      }
      absl::StatusOr<size_t> got = uffd.ReadEvents(absl::MakeSpan(ev));
      if (!got.ok()) std::abort();
      for (size_t i = 0; i < *got; ++i) {
        char* a = reinterpret_cast<char*>(ev[i].address & ~uint64_t{kPage - 1});
        if (a < region || a >= region + n * kPage || ev[i].kind != want_kind) {
          // Unserved, the application thread would wait for this fault forever.
          std::fprintf(stderr, "unexpected fault event at %p (kind %d)\n", static_cast<void*>(a),
                       static_cast<int>(ev[i].kind));
          std::abort();
        }
        const size_t page = static_cast<size_t>(a - region) / kPage;
        ++served[page];
        absl::Status s;
        if (ev[i].kind == dsm::FaultEvent::Kind::kMissing) {
          FillPage(src, page);
          s = uffd.Copy(a, src, kPage, false);
        } else {
          s = uffd.WriteProtect(a, kPage, false);
        }
        if (!s.ok()) std::abort();
      }
    }
  });
  Pin(app_cpu);
  // Start measuring once the handler runs on its CPU: its migration is not part of a fault.
  handler_pinned.WaitForNotification();
  std::vector<char> read(n);
  for (size_t i = 0; i < n; ++i) {
    volatile char* p = region + i * kPage;
    auto t0 = Clock::now();
    if (fault == Fault::kMissing) {
      read[i] = *p;
    } else {
      *p = kStored;
    }
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
  }
  stop = true;
  handler.join();
  bool ok = true;
  for (size_t i = 0; i < n && ok; ++i) {
    if (served[i] != 1) {
      std::fprintf(stderr, "page %zu: %d fault events, expected 1\n", i, served[i]);
      ok = false;
    }
    char want[kPage];
    FillPage(want, i);
    if (fault == Fault::kMissing && read[i] != want[0]) {
      std::fprintf(stderr, "page %zu: the faulting load returned %d, expected %d\n", i, read[i],
                   want[0]);
      ok = false;
    }
  }
  ok = ok && VerifyPages(region, n, fault);
  (void)uffd.Unregister(region, n * kPage);
  munmap(region, n * kPage);
  if (!ok) return std::nullopt;
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
    std::optional<std::vector<double>> ns = Run(**uffd, c.fault, c.busy, 0, c.handler_cpu, n);
    if (!ns.has_value()) {
      std::printf("%-48s FAILED: faults not served as expected\n", c.name);
      return 1;
    }
    Result r = Summarize(*ns);
    std::printf("%-48s median %7.2f us   p90 %7.2f us\n", c.name, r.median_us, r.p90_us);
  }
  return 0;
}
