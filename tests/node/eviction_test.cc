// The memory budget end to end: three nodes in one process (loopback and TCP on 127.0.0.1).
// Node 1 keeps a budget of kBudget pages and works through a file-backed region four times
// larger (home: node 0); node 2 writes pages node 1 had evicted. Every byte is checked from
// node 1, from the home and in the file after Sync, and a sampler thread measures node 1's
// resident pages of the mapping with mincore() every few hundred microseconds throughout: it
// must never exceed the budget.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dsm/node.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "node/node_test_util.h"

// Counts C++ heap allocations (process-wide) so the test can report how many the fault and
// eviction path makes per fault. (GCC cannot see that these news and deletes pair up.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<uint64_t> g_allocations{0};
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new[](size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace dsm::testing {
namespace {

constexpr uint64_t kBudget = 256;          // pages (1 MiB)
constexpr uint64_t kPages = 4 * kBudget;   // the region: 4 MiB
constexpr size_t kSize = kPages * kPage;

// Resident pages of [p, p + len) in this process's page tables.
uint64_t Resident(const void* p, size_t len, std::vector<unsigned char>& vec) {
  if (mincore(const_cast<void*>(p), len, vec.data()) != 0) return ~uint64_t{0};
  uint64_t n = 0;
  for (unsigned char c : vec) n += c & 1;
  return n;
}

// Samples node 1's mapping until stopped; records the largest resident count seen.
class Sampler {
 public:
  Sampler(const void* base, size_t len) : base_(base), len_(len), vec_(len / kPage) {
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        const uint64_t r = Resident(base_, len_, vec_);
        samples_.fetch_add(1);
        uint64_t m = max_.load();
        while (r > m && !max_.compare_exchange_weak(m, r)) {
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
  }
  ~Sampler() { Stop(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint64_t max() const { return max_.load(); }
  uint64_t samples() const { return samples_.load(); }

 private:
  const void* base_;
  size_t len_;
  std::vector<unsigned char> vec_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> max_{0}, samples_{0};
  std::thread thread_;
};

class EvictionTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(absl::StrCat(info->name()), std::chrono::seconds(240));
    std::string t = (std::filesystem::temp_directory_path() / "dsm-evict-XXXXXX").string();
    ASSERT_NE(mkdtemp(t.data()), nullptr);
    dir_ = t;
    auto c = LocalCluster::Start(GetParam(), 3, [](Options& o) {
      if (o.node_id == 1) o.cache_budget_bytes = kBudget * kPage;
    });
    if (!c.ok() && c.status().code() == absl::StatusCode::kPermissionDenied && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
  }

  void TearDown() override {
    for (int i : {2, 1, 0}) {
      if (i < static_cast<int>(regions_.size()) && regions_[static_cast<size_t>(i)]) {
        EXPECT_TRUE(regions_[static_cast<size_t>(i)]->Unmap().ok());
      }
    }
    regions_.clear();
    cluster_.reset();
    watchdog_.reset();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  void Step(const std::string& s) { watchdog_->Step(s); }
  uint8_t* At(int node, uint64_t page) {
    return static_cast<uint8_t*>(regions_[static_cast<size_t>(node)]->data()) + page * kPage;
  }
  void ExpectPages(int node, uint64_t first, uint64_t n, uint64_t seed_base) {
    for (uint64_t p = first; p < first + n; ++p) {
      auto bad = CheckPattern(At(node, p), kPage, seed_base + p, 0);
      ASSERT_FALSE(bad.has_value()) << "node " << node << " page " << p << ": " << *bad;
    }
  }

  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<LocalCluster> cluster_;
  std::vector<std::unique_ptr<Region>> regions_;
  std::string dir_;
};

TEST_P(EvictionTest, RegionFourTimesTheBudgetStaysWithinItAndLosesNothing) {
  const std::string file = dir_ + "/backing";
  Step("mapping");
  auto r = cluster_->MapAll({.name = "evict", .size = kSize, .home = 0, .file_path = file});
  ASSERT_TRUE(r.ok()) << r.status();
  regions_ = std::move(*r);
  Node* n1 = cluster_->node(1);
  Sampler sampler(regions_[1]->data(), kSize);
  uint64_t max_stats_resident = 0;
  auto sample_stats = [&] {
    const Stats s = n1->GetStats().value();
    max_stats_resident = std::max(max_stats_resident, s.resident_remote_pages);
    EXPECT_LE(s.resident_remote_pages, kBudget);
    EXPECT_EQ(s.pages_shared + s.pages_modified, s.resident_remote_pages);
  };

  Step("node 1 writes every page (distinct patterns)");
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t p = 0; p < kPages; ++p) {
    FillPattern(At(1, p), kPage, 1000 + p, 0);
    if (p % 128 == 127) sample_stats();
  }
  const double write_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  Step("node 1 reads every page back");
  const Stats before_read = n1->GetStats().value();
  const uint64_t allocs0 = g_allocations.load();
  t0 = std::chrono::steady_clock::now();
  ExpectPages(1, 0, kPages, 1000);
  const double read_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uint64_t allocs = g_allocations.load() - allocs0;
  const Stats after_read = n1->GetStats().value();
  sample_stats();

  Step("node 1 syncs; the file holds every page");
  ASSERT_TRUE(regions_[1]->Sync().ok());
  {
    int fd = open(file.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> buf(kPage);
    for (uint64_t p = 0; p < kPages; ++p) {
      ASSERT_EQ(pread(fd, buf.data(), kPage, static_cast<off_t>(p * kPage)),
                static_cast<ssize_t>(kPage));
      auto bad = CheckPattern(buf.data(), kPage, 1000 + p, 0);
      ASSERT_FALSE(bad.has_value()) << "file page " << p << ": " << *bad;
    }
    close(fd);
  }

  Step("the home reads every page");
  ExpectPages(0, 0, kPages, 1000);

  Step("node 2 writes pages node 1 evicted; node 1 reads them");
  for (uint64_t p = 0; p < kPages; p += 3) FillPattern(At(2, p), kPage, 5000 + p, 0);
  for (uint64_t p = 0; p < kPages; ++p) {
    const uint64_t seed = p % 3 == 0 ? 5000 + p : 1000 + p;
    auto bad = CheckPattern(At(1, p), kPage, seed, 0);
    ASSERT_FALSE(bad.has_value()) << "node 1 page " << p << ": " << *bad;
  }
  Step("node 1 writes everything again while node 2 reads");
  for (uint64_t p = 0; p < kPages; ++p) FillPattern(At(1, p), kPage, 9000 + p, 0);
  ExpectPages(2, 0, kPages, 9000);
  ExpectPages(0, 0, kPages, 9000);
  sample_stats();
  sampler.Stop();

  const Stats s = n1->GetStats().value();
  std::printf("node 1 stats:\n%s", s.ToString().c_str());
  const uint64_t faults = after_read.read_faults - before_read.read_faults;
  std::printf("%llu mincore samples, max resident %llu of budget %llu (stats max %llu)\n"
              "write pass %.1f ms (%.1f us/page), read pass %.1f ms (%.1f us/page, %llu faults)\n"
              "eviction: %llu pages in %llu batches, %llu us total (%.2f us/page)\n"
              "allocations during the read pass: %llu (%.2f per fault, whole process)\n",
              static_cast<unsigned long long>(sampler.samples()),
              static_cast<unsigned long long>(sampler.max()),
              static_cast<unsigned long long>(kBudget),
              static_cast<unsigned long long>(max_stats_resident), write_s * 1e3,
              write_s * 1e6 / kPages, read_s * 1e3, read_s * 1e6 / kPages,
              static_cast<unsigned long long>(faults),
              static_cast<unsigned long long>(s.evictions),
              static_cast<unsigned long long>(s.eviction_batches),
              static_cast<unsigned long long>(s.eviction_time_us),
              s.evictions ? static_cast<double>(s.eviction_time_us) / s.evictions : 0.0,
              static_cast<unsigned long long>(allocs),
              faults ? static_cast<double>(allocs) / faults : 0.0);
  EXPECT_GT(sampler.samples(), 10u);
  EXPECT_LE(sampler.max(), kBudget) << "node 1 held more pages than its budget";
  EXPECT_EQ(s.budget_pages, kBudget);
  EXPECT_GE(s.evictions, 3 * (kPages - kBudget));
  EXPECT_GE(s.eviction_writebacks, kPages - kBudget);
  EXPECT_EQ(s.pages_lost, 0u);
  // The other nodes have no budget: node 2 kept what it touched.
  EXPECT_EQ(cluster_->node(2)->GetStats().value().evictions, 0u);
}

INSTANTIATE_TEST_SUITE_P(Transports, EvictionTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         [](const auto& param_info) {
                           return param_info.param == TransportKind::kTcp ? std::string("Tcp")
                                                                    : std::string("Loopback");
                         });

}  // namespace
}  // namespace dsm::testing
