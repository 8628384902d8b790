// Three dsm nodes in one process, over the loopback transport and over TCP on 127.0.0.1: the
// coherence guarantee seen through plain loads, stores, atomics and kernel accesses.
//
// Every wait is bounded: polls carry a deadline and a message, and a watchdog aborts the test
// binary naming the step that hung (a thread stuck in a uffd fault cannot be interrupted).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dsm/node.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/cluster_fixture.h"
#include "node/node_test_util.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;

constexpr int kNodes = 3;
constexpr milliseconds kWait{20000};

uint64_t Iters(uint64_t def) {
  const char* e = std::getenv("DSM_TEST_ITERS");
  return e != nullptr ? std::strtoull(e, nullptr, 10) : def;
}

uint64_t* Word(Region* r, uint64_t off) {
  return reinterpret_cast<uint64_t*>(static_cast<uint8_t*>(r->data()) + off);
}
uint8_t* Bytes(Region* r, uint64_t off = 0) { return static_cast<uint8_t*>(r->data()) + off; }

// A fresh temporary directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "dsm-cluster-XXXXXX").string();
    path_ = mkdtemp(t.data()) != nullptr ? t : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

class ClusterTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(absl::StrCat(info->test_suite_name(), ".", info->name()),
                                           std::chrono::seconds(240));
    Start();
  }

  void Start(const std::function<void(Options&)>& tweak = nullptr) {
    Step("starting the cluster");
    absl::StatusOr<std::unique_ptr<LocalCluster>> c =
        LocalCluster::Start(GetParam(), kNodes, tweak);
    if (!c.ok() && c.status().code() == absl::StatusCode::kPermissionDenied && geteuid() != 0) {
      GTEST_SKIP() << "userfaultfd unavailable to this user: " << c.status();
    }
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c);
  }

  void TearDown() override {
    Step("tearing down");
    // Non-home nodes leave first so the homes are there to take write-backs.
    for (auto& set : mapped_) {
      for (int i = static_cast<int>(set.regions.size()) - 1; i >= 0; --i) {
        if (i == static_cast<int>(set.home) || !set.regions[static_cast<size_t>(i)]) continue;
        absl::Status s = set.regions[static_cast<size_t>(i)]->Unmap();
        if (set.must_unmap_cleanly) {
          EXPECT_TRUE(s.ok()) << "Unmap at node " << i << ": " << s;
        }
        set.regions[static_cast<size_t>(i)].reset();
      }
      if (set.home < set.regions.size() && set.regions[set.home]) {
        absl::Status s = set.regions[set.home]->Unmap();
        if (set.must_unmap_cleanly) {
          EXPECT_TRUE(s.ok()) << "Unmap at home: " << s;
        }
      }
    }
    mapped_.clear();
    cluster_.reset();
    watchdog_.reset();
  }

  void Step(std::string what) {
    if (watchdog_) watchdog_->Step(std::move(what));
  }

  // Maps on every node; the regions stay owned by the fixture (index = node id).
  std::vector<Region*> Map(RegionOptions ro, bool must_unmap_cleanly = true) {
    Step("mapping " + ro.name);
    absl::StatusOr<std::vector<std::unique_ptr<Region>>> r = cluster_->MapAll(ro);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    std::vector<Region*> out;
    for (auto& p : *r) out.push_back(p.get());
    mapped_.push_back({ro.home, std::move(*r), must_unmap_cleanly});
    return out;
  }

  Node* node(int i) { return cluster_->node(i); }

  struct Mapped {
    NodeId home;
    std::vector<std::unique_ptr<Region>> regions;
    bool must_unmap_cleanly;
  };
  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<LocalCluster> cluster_;
  std::vector<Mapped> mapped_;
  std::atomic<uint64_t> lost_[kNodes] = {};
};

TEST_P(ClusterTest, EveryNodeReadsWhatTheHomeWrote) {
  auto r = Map({.name = "share", .size = 16 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  Step("home fills 16 pages");
  FillPattern(r[0]->data(), 16 * kPage, 1, 0);
  Step("nodes 1 and 2 read every page at once");
  std::optional<std::string> bad[kNodes];
  RunParallel({[&] { bad[1] = CheckPattern(r[1]->data(), 16 * kPage, 1, 0); },
               [&] { bad[2] = CheckPattern(r[2]->data(), 16 * kPage, 1, 0); }});
  EXPECT_FALSE(bad[1]) << "node 1: " << *bad[1];
  EXPECT_FALSE(bad[2]) << "node 2: " << *bad[2];
  Step("home reads again with two sharers");
  bad[0] = CheckPattern(r[0]->data(), 16 * kPage, 1, 0);
  EXPECT_FALSE(bad[0]) << "home: " << *bad[0];
  EXPECT_GE(node(1)->GetStats().value().read_faults, 1u);
  EXPECT_GE(node(2)->GetStats().value().read_faults, 1u);
}

TEST_P(ClusterTest, AWriteByOneNodeIsReadByAll) {
  auto r = Map({.name = "w1", .size = 8 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  Step("node 1 writes pages 2..5");
  FillPattern(Bytes(r[1], 2 * kPage), 4 * kPage, 7, 2 * kPage);
  Step("every node reads them");
  for (int i = 0; i < kNodes; ++i) {
    auto bad = CheckPattern(Bytes(r[static_cast<size_t>(i)], 2 * kPage), 4 * kPage, 7, 2 * kPage);
    EXPECT_FALSE(bad) << "node " << i << ": " << *bad;
  }
  Step("untouched pages read as zero everywhere");
  for (int i = 0; i < kNodes; ++i) {
    for (uint64_t off : {uint64_t{0}, 7 * kPage + 100}) {
      EXPECT_EQ(*Bytes(r[static_cast<size_t>(i)], off), 0) << "node " << i << " offset " << off;
    }
  }
}

TEST_P(ClusterTest, WritePromotesASharedPageAndOtherSharersSeeTheNewValue) {
  auto r = Map({.name = "promo", .size = 4 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  for (int writer : {2, 0, 1}) {
    SCOPED_TRACE(absl::StrCat("writer node ", writer));
    Step(absl::StrCat("all read page 1 (writer ", writer, ")"));
    uint64_t before = *Word(r[0], kPage);
    for (int i = 0; i < kNodes; ++i) {
      EXPECT_EQ(*Word(r[static_cast<size_t>(i)], kPage), before) << "node " << i;
    }
    uint64_t upgrades = node(writer)->GetStats().value().upgrade_faults;
    Step(absl::StrCat("node ", writer, " writes the shared page"));
    uint64_t v = 1000 + static_cast<uint64_t>(writer);
    *Word(r[static_cast<size_t>(writer)], kPage) = v;
    *Word(r[static_cast<size_t>(writer)], kPage + 8) = v + 1;
    EXPECT_GE(node(writer)->GetStats().value().upgrade_faults, upgrades + 1)
        << "a write to a Shared page should be a write-protect (upgrade) fault";
    Step("the other sharers read the new value");
    for (int i = 0; i < kNodes; ++i) {
      EXPECT_EQ(*Word(r[static_cast<size_t>(i)], kPage), v) << "node " << i;
      EXPECT_EQ(*Word(r[static_cast<size_t>(i)], kPage + 8), v + 1) << "node " << i;
    }
  }
}

// The home writes pages itself; another node then write-misses some (the home's writable
// copy is taken in place) and reads then upgrades the others (the home's write-protected
// copy is dropped in place): each writer sees every byte the home wrote, and the home then
// sees the writers' stores.
TEST_P(ClusterTest, RemoteWritesToPagesTheHomeWroteSeeTheHomesData) {
  auto r = Map({.name = "homewrite", .size = 8 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    const uint64_t seed = 40 + static_cast<uint64_t>(round);
    Step(absl::StrCat("home fills 8 pages, round ", round));
    FillPattern(r[0]->data(), 8 * kPage, seed, 0);
    Step("node 1 write-misses pages 0..3, node 2 reads pages 4..7");
    uint64_t upgrades = node(2)->GetStats().value().upgrade_faults;
    for (uint64_t pg = 0; pg < 4; ++pg) *Bytes(r[1], pg * kPage + kPage - 1) ^= 0xff;
    auto bad2 = CheckPattern(Bytes(r[2], 4 * kPage), 4 * kPage, seed, 4 * kPage);
    EXPECT_FALSE(bad2) << "node 2: " << *bad2;
    Step("node 2 upgrades pages 4..7");
    for (uint64_t pg = 4; pg < 8; ++pg) *Bytes(r[2], pg * kPage + kPage - 1) ^= 0xff;
    EXPECT_GE(node(2)->GetStats().value().upgrade_faults, upgrades + 4);
    Step("each writer sees the home's bytes, and the home the writers' stores");
    for (uint64_t pg = 0; pg < 8; ++pg) {
      Region* writer = pg < 4 ? r[1] : r[2];
      Bytes(writer, pg * kPage + kPage - 1)[0] ^= 0xff;  // back to the home's byte
      for (Region* reader : {writer, r[0]}) {
        auto bad = CheckPattern(Bytes(reader, pg * kPage), kPage, seed, pg * kPage);
        EXPECT_FALSE(bad) << "page " << pg << (reader == r[0] ? " at the home: " : ": ")
                          << *bad;
      }
    }
  }
  for (int n = 0; n < kNodes; ++n) {
    EXPECT_EQ(node(n)->GetStats().value().pages_lost, 0u) << "node " << n;
  }
}

TEST_P(ClusterTest, PingPongWritesToOnePage) {
  auto r = Map({.name = "pingpong", .size = 2 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  const uint64_t rounds = Iters(20000) / 40;  // 500 moves per player by default
  // Word 0: turn counter; word 1: payload written before the turn is passed. A player whose
  // turn has come must see the payload of the other player's last move (TSO across nodes).
  std::string err[2];
  auto player = [&](int me, Region* reg) {
    for (uint64_t k = 0; k < rounds; ++k) {
      uint64_t want = 2 * k + static_cast<uint64_t>(me);
      PollResult p = PollWord(
          Word(reg, 0), [want](uint64_t x) { return x == want; }, kWait);
      if (!p.ok) {
        err[me] = absl::StrCat("round ", k, ": turn stuck at ", p.last, ", want ", want);
        return;
      }
      uint64_t payload = __atomic_load_n(Word(reg, 8), __ATOMIC_ACQUIRE);
      if (payload != want) {
        err[me] = absl::StrCat("round ", k, ": payload ", payload, " != ", want);
        return;
      }
      __atomic_store_n(Word(reg, 8), want + 1, __ATOMIC_RELEASE);
      __atomic_store_n(Word(reg, 0), want + 1, __ATOMIC_RELEASE);
    }
  };
  Step("nodes 1 and 2 ping-pong");
  RunParallel({[&] { player(0, r[1]); }, [&] { player(1, r[2]); }});
  EXPECT_EQ(err[0], "") << "player on node 1";
  EXPECT_EQ(err[1], "") << "player on node 2";
  EXPECT_EQ(*Word(r[0], 0), 2 * rounds);
  EXPECT_EQ(*Word(r[0], 8), 2 * rounds);
}

// threads x nodes atomic increments; `offs` are the counters' offsets.
void RunIncrements(const std::vector<Region*>& r, const std::vector<uint64_t>& offs, int threads,
                   uint64_t iters) {
  std::vector<std::function<void()>> fns;
  // Every thread first faults the counters in, then all start together, so they contend.
  std::latch go(static_cast<std::ptrdiff_t>(r.size()) * threads);
  for (Region* reg : r) {
    for (int t = 0; t < threads; ++t) {
      fns.push_back([=, &go] {
        for (uint64_t off : offs) (void)__atomic_load_n(Word(reg, off), __ATOMIC_ACQUIRE);
        go.arrive_and_wait();
        for (uint64_t i = 0; i < iters; ++i) {
          for (uint64_t off : offs) __atomic_fetch_add(Word(reg, off), 1, __ATOMIC_RELAXED);
        }
      });
    }
  }
  RunParallel(fns);
}

TEST_P(ClusterTest, AtomicIncrementsOnTwoCountersInOnePageAreExact) {
  auto r = Map({.name = "ctr1", .size = 4 * kPage, .home = 1});
  ASSERT_EQ(r.size(), 3u);
  const uint64_t iters = Iters(20000);
  Step("3 nodes x 2 threads increment two counters in page 1");
  RunIncrements(r, {kPage + 0, kPage + 8}, 2, iters);
  Step("every node reads the totals");
  for (int i = 0; i < kNodes; ++i) {
    EXPECT_EQ(*Word(r[static_cast<size_t>(i)], kPage), kNodes * 2 * iters) << "node " << i;
    EXPECT_EQ(*Word(r[static_cast<size_t>(i)], kPage + 8), kNodes * 2 * iters) << "node " << i;
  }
}

TEST_P(ClusterTest, AtomicIncrementsOnCountersInSeparatePagesAreExact) {
  auto r = Map({.name = "ctr2", .size = 4 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  const uint64_t iters = Iters(20000);
  Step("3 nodes x 2 threads increment counters on pages 1 and 3");
  RunIncrements(r, {kPage, 3 * kPage + 64}, 2, iters);
  for (int i = 0; i < kNodes; ++i) {
    EXPECT_EQ(*Word(r[static_cast<size_t>(i)], kPage), kNodes * 2 * iters) << "node " << i;
    EXPECT_EQ(*Word(r[static_cast<size_t>(i)], 3 * kPage + 64), kNodes * 2 * iters) << "node " << i;
  }
}

TEST_P(ClusterTest, KernelReadIntoARemotePageAndWriteFromOne) {
  auto r = Map({.name = "kio", .size = 8 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  Step("home fills every page");
  FillPattern(r[0]->data(), 8 * kPage, 1, 0);

  Step("node 1: read(2) from a pipe into page 2, which it has never touched");
  const uint64_t off = 2 * kPage + 1000;
  const size_t len = 300;
  std::vector<uint8_t> src(len);
  FillPattern(src.data(), len, 9, off);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(write(p[1], src.data(), len), static_cast<ssize_t>(len));
  ASSERT_EQ(read(p[0], Bytes(r[1], off), len), static_cast<ssize_t>(len))
      << "read(2) into region memory failed: " << strerror(errno);
  close(p[0]);
  close(p[1]);
  for (int i = 0; i < kNodes; ++i) {
    SCOPED_TRACE(absl::StrCat("node ", i));
    EXPECT_EQ(std::nullopt, CheckPattern(Bytes(r[static_cast<size_t>(i)], off), len, 9, off));
    EXPECT_EQ(std::nullopt,
              CheckPattern(Bytes(r[static_cast<size_t>(i)], 2 * kPage), 1000, 1, 2 * kPage))
        << "bytes before the read(2) range changed";
    EXPECT_EQ(std::nullopt, CheckPattern(Bytes(r[static_cast<size_t>(i)], off + len),
                                         3 * kPage - off - len, 1, off + len))
        << "bytes after the read(2) range changed";
  }

  Step("node 2: read(2) from a file across the page 4/5 boundary");
  TempDir dir;
  std::string path = dir.file("src");
  const uint64_t off2 = 4 * kPage + 3000;
  const size_t len2 = 5000;  // ends inside page 5
  {
    std::vector<uint8_t> buf(len2);
    FillPattern(buf.data(), len2, 11, off2);
    int fd = open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, buf.data(), len2, 0), static_cast<ssize_t>(len2));
    ASSERT_EQ(pread(fd, Bytes(r[2], off2), len2, 0), static_cast<ssize_t>(len2))
        << "pread(2) into region memory failed: " << strerror(errno);
    close(fd);
  }
  EXPECT_EQ(std::nullopt, CheckPattern(Bytes(r[0], off2), len2, 11, off2)) << "home";
  EXPECT_EQ(std::nullopt, CheckPattern(Bytes(r[1], off2), len2, 11, off2)) << "node 1";

  Step("node 1: write(2) into a pipe from pages that node 2 holds writable");
  FillPattern(Bytes(r[2], 6 * kPage), kPage, 13, 6 * kPage);  // node 2 now holds page 6 M
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(write(p[1], Bytes(r[1], off2), len2), static_cast<ssize_t>(len2))
      << "write(2) from region memory failed: " << strerror(errno);
  std::vector<uint8_t> back(len2);
  ASSERT_EQ(read(p[0], back.data(), len2), static_cast<ssize_t>(len2));
  EXPECT_EQ(std::nullopt, CheckPattern(back.data(), len2, 11, off2));
  ASSERT_EQ(write(p[1], Bytes(r[1], 6 * kPage), kPage), static_cast<ssize_t>(kPage));
  ASSERT_EQ(read(p[0], back.data(), kPage), static_cast<ssize_t>(kPage));
  EXPECT_EQ(std::nullopt, CheckPattern(back.data(), kPage, 13, 6 * kPage));
  close(p[0]);
  close(p[1]);

  Step("node 2: read(2) into a page it holds Shared (write-protect fault from the kernel)");
  ASSERT_EQ(*Bytes(r[2], 7 * kPage), PatternByte(1, 7 * kPage));  // now Shared at node 2
  ASSERT_EQ(pipe(p), 0);
  FillPattern(src.data(), len, 15, 7 * kPage);
  ASSERT_EQ(write(p[1], src.data(), len), static_cast<ssize_t>(len));
  ASSERT_EQ(read(p[0], Bytes(r[2], 7 * kPage), len), static_cast<ssize_t>(len)) << strerror(errno);
  close(p[0]);
  close(p[1]);
  EXPECT_EQ(std::nullopt, CheckPattern(Bytes(r[0], 7 * kPage), len, 15, 7 * kPage)) << "home";
}

TEST_P(ClusterTest, SyncLeavesTheRightBytesInTheHomeFile) {
  TempDir dir;
  std::string path = dir.file("backing");
  // The file starts with 6 pages of pattern 3; the region is 8 pages, so the home extends it.
  {
    std::vector<uint8_t> buf(6 * kPage);
    FillPattern(buf.data(), buf.size(), 3, 0);
    int fd = open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, buf.data(), buf.size()), static_cast<ssize_t>(buf.size()));
    close(fd);
  }
  auto r = Map({.name = "file", .size = 8 * kPage, .home = 0, .file_path = path});
  ASSERT_EQ(r.size(), 3u);
  Step("node 1 reads the file's contents through its mapping");
  EXPECT_EQ(std::nullopt, CheckPattern(r[1]->data(), 6 * kPage, 3, 0));
  EXPECT_EQ(*Bytes(r[1], 7 * kPage + 5), 0) << "the extension must read as zeros";

  Step("node 1 writes pages 2 and 7, node 2 writes page 4 and the home page 5; all Sync()");
  FillPattern(Bytes(r[1], 2 * kPage), kPage, 4, 2 * kPage);
  FillPattern(Bytes(r[1], 7 * kPage), kPage, 4, 7 * kPage);
  FillPattern(Bytes(r[2], 4 * kPage), 100, 5, 4 * kPage);  // part of a page
  FillPattern(Bytes(r[0], 5 * kPage), kPage, 6, 5 * kPage);
  for (int i : {1, 2, 0}) {
    absl::Status s = r[static_cast<size_t>(i)]->Sync();
    EXPECT_TRUE(s.ok()) << "Sync at node " << i << ": " << s;
  }

  Step("pread the home's file");
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_GE(st.st_size, static_cast<off_t>(8 * kPage)) << "the home must extend the file";
  std::vector<uint8_t> file(8 * kPage);
  ASSERT_EQ(pread(fd, file.data(), file.size(), 0), static_cast<ssize_t>(file.size()));
  close(fd);
  const uint8_t* f = file.data();
  EXPECT_EQ(std::nullopt, CheckPattern(f, 2 * kPage, 3, 0)) << "pages 0-1 (untouched)";
  EXPECT_EQ(std::nullopt, CheckPattern(f + 2 * kPage, kPage, 4, 2 * kPage)) << "page 2 (node 1)";
  EXPECT_EQ(std::nullopt, CheckPattern(f + 3 * kPage, kPage, 3, 3 * kPage)) << "page 3 (untouched)";
  EXPECT_EQ(std::nullopt, CheckPattern(f + 4 * kPage, 100, 5, 4 * kPage)) << "page 4 head (node 2)";
  EXPECT_EQ(std::nullopt, CheckPattern(f + 4 * kPage + 100, kPage - 100, 3, 4 * kPage + 100))
      << "page 4 tail (file)";
  EXPECT_EQ(std::nullopt, CheckPattern(f + 5 * kPage, kPage, 6, 5 * kPage)) << "page 5 (home)";
  EXPECT_EQ(std::count(f + 6 * kPage, f + 7 * kPage, 0), static_cast<long>(kPage))
      << "page 6 (extension, untouched)";
  EXPECT_EQ(std::nullopt, CheckPattern(f + 7 * kPage, kPage, 4, 7 * kPage)) << "page 7 (node 1)";
}

TEST_P(ClusterTest, InterleavedHomesSpreadPagesAndStayCoherent) {
  auto r = Map(
      {.name = "inter", .size = 12 * kPage, .home = 0, .home_policy = HomePolicy::kInterleaved});
  ASSERT_EQ(r.size(), 3u);
  Step("each node writes its own word of every page, all at once");
  std::vector<std::function<void()>> fns;
  for (int n = 0; n < kNodes; ++n) {
    fns.push_back([&, n] {
      for (uint64_t pg = 0; pg < 12; ++pg) {
        __atomic_store_n(Word(r[static_cast<size_t>(n)], pg * kPage + 8 * n), (n + 1) * 1000 + pg,
                         __ATOMIC_RELEASE);
      }
    });
  }
  RunParallel(fns);
  Step("every node reads every word");
  for (int reader = 0; reader < kNodes; ++reader) {
    for (uint64_t pg = 0; pg < 12; ++pg) {
      for (int n = 0; n < kNodes; ++n) {
        EXPECT_EQ(*Word(r[static_cast<size_t>(reader)], pg * kPage + 8 * n),
                  static_cast<uint64_t>((n + 1) * 1000) + pg)
            << "reader " << reader << " page " << pg << " writer " << n;
      }
    }
  }
  for (int n = 0; n < kNodes; ++n) {
    EXPECT_GE(node(n)->GetStats().value().home_requests_served, 1u)
        << "node " << n << " is home of 4 pages others wrote; it served none";
  }
}

TEST_P(ClusterTest, LargeRegionTouchedSparsely) {
  const size_t size = size_t{64} << 20;
  auto r = Map({.name = "large", .size = size, .home = 1});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_GE(r[0]->size(), size);
  Step("node 0 writes one word per MiB");
  for (uint64_t mib = 0; mib < 64; ++mib) *Word(r[0], mib << 20) = mib * 7 + 1;
  *Word(r[0], size - 8) = 0xfeed;
  Step("node 2 and the home read them");
  uint64_t installed_before = node(2)->GetStats().value().pages_installed;
  for (int reader : {2, 1}) {
    for (uint64_t mib = 0; mib < 64; ++mib) {
      EXPECT_EQ(*Word(r[static_cast<size_t>(reader)], mib << 20), mib * 7 + 1)
          << "node " << reader << " MiB " << mib;
    }
    EXPECT_EQ(*Word(r[static_cast<size_t>(reader)], size - 8), 0xfeedu);
  }
  EXPECT_EQ(*Word(r[2], (5 << 20) + kPage), 0u);
  uint64_t installed = node(2)->GetStats().value().pages_installed - installed_before;
  EXPECT_GE(installed, 65u);
  EXPECT_LT(installed, size / kPage / 4) << "a sparse touch should not pull in the region";
}

TEST_P(ClusterTest, StatsCountWhatHappened) {
  auto r = Map({.name = "stats", .size = 8 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  Stats h0 = node(0)->GetStats().value(), s1 = node(1)->GetStats().value();
  Step("node 1 reads 4 pages, then writes one");
  for (uint64_t pg = 0; pg < 4; ++pg) EXPECT_EQ(*Bytes(r[1], pg * kPage), 0);
  *Bytes(r[1], 2 * kPage) = 1;
  Stats h1 = node(0)->GetStats().value(), s2 = node(1)->GetStats().value();
  EXPECT_GE(s2.read_faults, s1.read_faults + 1);
  EXPECT_GE(s2.write_faults, s1.write_faults + 1);
  EXPECT_GE(s2.upgrade_faults, s1.upgrade_faults + 1);
  EXPECT_GE(s2.pages_installed, s1.pages_installed + 4);
  EXPECT_GE(s2.requests_sent, s1.requests_sent + 2);
  EXPECT_GE(s2.messages_sent, s2.requests_sent);
  EXPECT_GE(s2.bytes_received, s1.bytes_received + 4 * kPage);
  EXPECT_GE(s2.pages_modified, 1u);
  EXPECT_GE(s2.pages_shared + s2.pages_modified, 4u);
  EXPECT_GE(h1.home_requests_served, h0.home_requests_served + 2);
  for (int n = 0; n < kNodes; ++n) {
    Stats s = node(n)->GetStats().value();
    EXPECT_EQ(s.bad_messages, 0u) << "node " << n;
    EXPECT_EQ(s.peers_down, 0u) << "node " << n;
    EXPECT_EQ(s.pages_lost, 0u) << "node " << n;
  }
  std::string dump = s2.ToString();
  EXPECT_THAT(dump, ::testing::HasSubstr("read_faults"));
}

TEST_P(ClusterTest, ManyThreadsFaultingOnePageShareOneRequest) {
  auto r = Map({.name = "coalesce", .size = 64 * kPage, .home = 0});
  ASSERT_EQ(r.size(), 3u);
  FillPattern(r[0]->data(), 64 * kPage, 21, 0);
  Step("4 threads of node 1 read the same 64 pages at once");
  std::vector<std::function<void()>> fns;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    fns.push_back([&] {
      if (CheckPattern(r[1]->data(), 64 * kPage, 21, 0)) bad++;
    });
  }
  RunParallel(fns);
  EXPECT_EQ(bad.load(), 0);
  Stats s = node(1)->GetStats().value();
  EXPECT_LE(s.requests_sent, 64u + 8u) << "faults on the same page should share one request\n" << s.ToString();
}

TEST_P(ClusterTest, APeerThatLeavesEndsInSigbusAndTheOthersKeepWorking) {
  // Re-start with a short peer timeout so lost pages are declared quickly, and count the pages
  // each node reports lost.
  cluster_.reset();
  Start([this](Options& o) {
    o.peer_timeout = absl::Milliseconds(1500);
    NodeId id = o.node_id;
    o.on_pages_lost = [this, id](const std::string&, uint64_t, uint64_t n) { lost_[id] += n; };
  });
  // Larger than the readahead window past the reader's stop (page 128 + 256): pages the
  // reader reaches after node 2 is gone were never fetched.
  constexpr int kDoomedPages = 1024;
  constexpr int kReaderStop = 128;
  auto doomed = Map({.name = "doomed", .size = kDoomedPages * kPage, .home = 2},
                    /*must_unmap_cleanly=*/false);
  auto alive = Map({.name = "alive", .size = 4 * kPage, .home = 0});
  ASSERT_EQ(doomed.size(), 3u);
  ASSERT_EQ(alive.size(), 3u);
  Step("nodes 0 and 1 take copies from home 2");
  EXPECT_EQ(*Bytes(doomed[0], 0), 0);
  *Bytes(doomed[1], kPage) = 5;
  EXPECT_EQ(*Word(alive[2], 0), 0u);

  Step("node 0 keeps faulting new pages while node 2 leaves");
  std::atomic<bool> started{false}, left{false};
  std::atomic<int> sigbus_page{-1};
  std::thread reader([&] {
    for (int pg = 2; pg < kDoomedPages; ++pg) {
      if (pg == kReaderStop) {
        // Its readahead may still be in flight while node 2 leaves; the pages after that are
        // not fetched before node 2 is gone (bounded wait: a hung leave fails below).
        auto until = std::chrono::steady_clock::now() + kWait;
        while (!left && std::chrono::steady_clock::now() < until) std::this_thread::yield();
      }
      volatile uint8_t* p = Bytes(doomed[0], static_cast<uint64_t>(pg) * kPage);
      if (RaisesSigbus([&] { (void)*p; })) {
        sigbus_page = pg;
        return;
      }
      started = true;
    }
  });
  auto deadline = std::chrono::steady_clock::now() + kWait;
  while (!started && sigbus_page < 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  // Node 2 leaves: its regions go first, as the API requires, then the node.
  Step("node 2 unmaps its regions");
  for (auto& m : mapped_) {
    if (m.regions.size() > 2 && m.regions[2]) {
      absl::Status s = m.regions[2]->Unmap();
      if (m.must_unmap_cleanly) {
        EXPECT_TRUE(s.ok()) << "node 2 Unmap: " << s;
      }
      m.regions[2].reset();
    }
  }
  Step("node 2 shuts down");
  EXPECT_TRUE(cluster_->StopNode(2).ok());
  left = true;
  Step("node 0's reader ends (a page it had not fetched yet raises SIGBUS)");
  reader.join();
  EXPECT_GE(sigbus_page.load(), 2) << "node 0 read every page of a region whose home left";

  Step("node 1 touches a page it never had: SIGBUS, reported lost");
  volatile uint8_t* p = Bytes(doomed[1], (kDoomedPages - 1) * kPage);
  EXPECT_TRUE(RaisesSigbus([&] { (void)*p; })) << "read of a lost page";
  EXPECT_TRUE(RaisesSigbus([&] { *p = 1; })) << "write of a lost page";
  EXPECT_GE(node(1)->GetStats().value().pages_lost, 1u);
  EXPECT_GE(lost_[1].load(), 1u) << "on_pages_lost was not called at node 1";
  EXPECT_GE(lost_[0].load(), 1u) << "on_pages_lost was not called at node 0";

  Step("nodes 0 and 1 keep working on a region homed at node 0");
  *Word(alive[1], kPage) = 77;
  EXPECT_EQ(*Word(alive[0], kPage), 77u);
  *Word(alive[0], 2 * kPage) = 78;
  EXPECT_EQ(*Word(alive[1], 2 * kPage), 78u);
}

std::string TransportName(const ::testing::TestParamInfo<TransportKind>& info) {
  return info.param == TransportKind::kTcp ? "Tcp" : "Loopback";
}

INSTANTIATE_TEST_SUITE_P(Transports, ClusterTest,
                         ::testing::Values(TransportKind::kLoopback, TransportKind::kTcp),
                         TransportName);

}  // namespace
}  // namespace dsm::testing
