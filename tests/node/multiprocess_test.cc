// dsm nodes as separate processes (node_worker), over TCP on 127.0.0.1 and across network
// namespaces joined by veth: the core scenarios, and a node killed with SIGKILL mid-run.
//
// The test drives each worker with one command per line on its stdin and reads one reply line
// (see node_worker.cc); the counter scenario synchronizes through region memory only. Every read
// of a reply is bounded and names the worker and command on failure.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/netns_cluster.h"
#include "node/node_test_util.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr milliseconds kReply{60000};

enum class Net { kLoopbackTcp, kNamespaces };

struct RegionSpec {
  std::string name = "r";
  uint64_t pages = 16;
  int home = 0;
  std::string file;  // at the home
};

class MultiprocessTest : public ::testing::TestWithParam<Net> {
 protected:
  void SetUp() override {
    if (GetParam() == Net::kNamespaces) {
      if (std::string why = NetnsCluster::Unavailable(); !why.empty()) GTEST_SKIP() << why;
    }
    std::string t = (std::filesystem::temp_directory_path() / "dsm-mp-XXXXXX").string();
    ASSERT_NE(mkdtemp(t.data()), nullptr);
    dir_ = t;
  }

  void TearDown() override {
    Stop();
    net_.reset();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // Starts n workers mapping `spec`; extra arguments go to every worker. Waits for "ready".
  void Start(int n, const RegionSpec& spec, const std::vector<std::string>& extra = {}) {
    spec_ = spec;
    if (GetParam() == Net::kNamespaces && !net_) {
      absl::StatusOr<std::unique_ptr<NetnsCluster>> net = NetnsCluster::Create(n);
      ASSERT_TRUE(net.ok()) << net.status();
      net_ = std::move(*net);
    }
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::vector<std::string> peers;
      if (net_) {
        for (int i = 0; i < n; ++i) peers.push_back(net_->address(i) + ":7000");
      } else {
        for (int port : PickFreePorts(n)) peers.push_back(absl::StrCat("127.0.0.1:", port));
      }
      workers_.clear();
      argv_.clear();
      peers_ = peers;
      for (int i = 0; i < n; ++i) {
        std::vector<std::string> argv = {DSM_NODE_WORKER,
                                         "--id",
                                         std::to_string(i),
                                         "--peers",
                                         absl::StrJoin(peers, ","),
                                         "--region",
                                         spec.name,
                                         "--size",
                                         std::to_string(spec.pages * kPage),
                                         "--home",
                                         std::to_string(spec.home),
                                         "--peer-timeout-ms",
                                         "2000"};
        if (!spec.file.empty()) {  // every node states the backing; the home opens it
          argv.insert(argv.end(), {"--file", spec.file});
        }
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv_.push_back(argv);
        absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
            {.argv = argv, .netns = net_ ? net_->ns(i) : "", .label = absl::StrCat("node", i)});
        ASSERT_TRUE(p.ok()) << p.status();
        workers_.push_back(std::move(*p));
      }
      const WorkersStart started = AwaitWorkersReady(workers_, kReply, /*may_collide=*/!net_);
      if (started.outcome == WorkersStart::kReady) return;
      if (started.outcome == WorkersStart::kUffdUnavailable) {
        GTEST_SKIP() << "userfaultfd unavailable: " << started.errors;
      }
      if (started.outcome == WorkersStart::kFailed) {
        FAIL() << "workers did not start: " << started.errors;
      }
    }
    FAIL() << "ports kept colliding";
  }

  // Kills worker i with SIGKILL and reaps it.
  void Kill(int i) {
    workers_[static_cast<size_t>(i)]->Kill(SIGKILL);
    absl::StatusOr<int> st = workers_[static_cast<size_t>(i)]->Wait(milliseconds(10000));
    ASSERT_TRUE(st.ok()) << st.status();
  }

  // Starts worker i again with the same arguments (the same node id) and waits for "ready":
  // it joined the running cluster and mapped the region.
  void Restart(int i) {
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
        {.argv = argv_[static_cast<size_t>(i)],
         .netns = net_ ? net_->ns(i) : "",
         .label = absl::StrCat("node", i, "'")});
    ASSERT_TRUE(p.ok()) << p.status();
    workers_[static_cast<size_t>(i)] = std::move(*p);
    killed_.erase(i);
    absl::StatusOr<std::string> line = workers_[static_cast<size_t>(i)]->ReadLine(kReply);
    ASSERT_TRUE(line.ok()) << "restarted node " << i << ": " << line.status();
    ASSERT_EQ(*line, "ready") << "restarted node " << i;
  }

  // Runs one more process (not in workers_) with worker i's arguments changed by `edit`,
  // and returns its first line (its "ready" or its error).
  std::string RunExtra(int i, const std::function<void(std::vector<std::string>&)>& edit,
                       std::unique_ptr<Subprocess>* keep) {
    std::vector<std::string> argv = argv_[static_cast<size_t>(i)];
    edit(argv);
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
        {.argv = argv, .netns = net_ ? net_->ns(i) : "", .label = "extra"});
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return "";
    absl::StatusOr<std::string> line = (*p)->ReadLine(kReply);
    EXPECT_TRUE(line.ok()) << line.status();
    *keep = std::move(*p);
    return line.ok() ? *line : "";
  }

  // Sends `cmd` to worker i and returns its reply line ("" and a failure on no reply).
  std::string Call(int i, const std::string& cmd) {
    absl::StatusOr<std::string> r = workers_[static_cast<size_t>(i)]->Call(cmd, kReply);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : "";
  }
  // Sends to several workers first, then collects the replies: the commands run concurrently.
  std::vector<std::string> CallAll(const std::vector<std::pair<int, std::string>>& cmds) {
    for (const auto& [i, c] : cmds) {
      absl::Status s = workers_[static_cast<size_t>(i)]->SendLine(c);
      EXPECT_TRUE(s.ok()) << s;
    }
    std::vector<std::string> out;
    for (const auto& [i, c] : cmds) {
      absl::StatusOr<std::string> r = workers_[static_cast<size_t>(i)]->ReadLine(kReply);
      EXPECT_TRUE(r.ok()) << "command '" << c << "': " << r.status();
      out.push_back(r.ok() ? *r : "");
    }
    return out;
  }

  // Workers leave in order: every non-home first, then the home. Each must say "bye" and exit 0
  // unless it was killed (then it is only reaped).
  void Stop() {
    std::vector<int> order;
    for (int i = 0; i < static_cast<int>(workers_.size()); ++i) {
      if (i != spec_.home) order.push_back(i);
    }
    if (spec_.home < static_cast<int>(workers_.size())) order.push_back(spec_.home);
    for (int i : order) {
      Subprocess* w = workers_[static_cast<size_t>(i)].get();
      if (killed_.count(i)) {
        (void)w->Wait(milliseconds(10000));
        continue;
      }
      (void)w->SendLine("quit");
      absl::StatusOr<std::string> bye = w->ReadLine(kReply);
      EXPECT_TRUE(bye.ok() && *bye == "bye")
          << w->label()
          << " did not leave cleanly: " << (bye.ok() ? *bye : bye.status().ToString());
      absl::StatusOr<int> st = w->Wait(milliseconds(30000));
      ASSERT_TRUE(st.ok()) << st.status();
      if (expect_clean_exit_) {
        EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
            << w->label() << ": " << DescribeWaitStatus(*st) << "\ntranscript:\n"
            << w->transcript();
      }
    }
    workers_.clear();
  }

  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::vector<std::vector<std::string>> argv_;  // each worker's command line
  std::vector<std::string> peers_;
  std::unique_ptr<NetnsCluster> net_;
  std::string dir_;
  RegionSpec spec_;
  std::set<int> killed_;
  bool expect_clean_exit_ = true;
};

TEST_P(MultiprocessTest, EveryNodeReadsWhatTheHomeWrote) {
  Start(3, {.name = "share"});
  EXPECT_EQ(Call(0, "fill 0 16 1"), "ok");
  for (const std::string& r : CallAll({{1, "check 0 16 1"}, {2, "check 0 16 1"}})) {
    EXPECT_EQ(r, "ok");
  }
  EXPECT_EQ(Call(0, "check 0 16 1"), "ok");
}

TEST_P(MultiprocessTest, AWriteByOneNodeIsReadByAll) {
  Start(3, {.name = "w1"});
  EXPECT_EQ(Call(1, "fill 2 4 7"), "ok");
  for (const std::string& r : CallAll({{0, "check 2 4 7"}, {2, "check 2 4 7"}})) {
    EXPECT_EQ(r, "ok");
  }
  EXPECT_EQ(Call(2, "read64 0"), "ok 0");
}

TEST_P(MultiprocessTest, WritePromotesASharedPageAndOtherSharersSeeIt) {
  Start(3, {.name = "promo"});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Call(i, "read64 4096"), "ok 0") << "node " << i;
  EXPECT_EQ(Call(2, "write64 4096 1002"), "ok");
  EXPECT_THAT(Call(2, "stats"), HasSubstr("upgrade_faults=1"));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Call(i, "read64 4096"), "ok 1002") << "node " << i;
  EXPECT_EQ(Call(0, "write64 4096 1000"), "ok");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Call(i, "read64 4096"), "ok 1000") << "node " << i;
}

TEST_P(MultiprocessTest, PingPongWritesToOnePage) {
  Start(3, {.name = "pingpong"});
  std::vector<std::string> r =
      CallAll({{1, "pingpong 0 0 1000 30000"}, {2, "pingpong 0 1 1000 30000"}});
  EXPECT_EQ(r[0], "ok") << "player on node 1";
  EXPECT_EQ(r[1], "ok") << "player on node 2";
  EXPECT_EQ(Call(0, "read64 0"), "ok 2000");
  EXPECT_EQ(Call(0, "read64 8"), "ok 2000");
}

TEST_P(MultiprocessTest, AtomicIncrementsFromEveryProcessAreExact) {
  // The counter scenario meets at barriers in region memory; no parent involvement until the
  // totals are checked.
  const char* iters = std::getenv("DSM_TEST_ITERS");
  uint64_t n = iters != nullptr ? std::strtoull(iters, nullptr, 10) : 20000;
  Start(3, {.name = "counters", .pages = 4, .home = 1},
        {"--scenario", "counter", "--threads", "2", "--iters", std::to_string(n)});
  std::string want = absl::StrCat("ok totals=", 6 * n, ",", 6 * n, ",", 6 * n, ",", 6 * n);
  for (auto& w : workers_) {
    absl::StatusOr<std::string> r = w->ReadLine(kReply);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, want) << w->label();
  }
}

TEST_P(MultiprocessTest, KernelReadIntoARemotePageAndWriteFromOne) {
  Start(3, {.name = "kio", .pages = 8});
  EXPECT_EQ(Call(0, "fill 0 8 1"), "ok");
  const uint64_t off = 2 * kPage + 1000;
  EXPECT_EQ(Call(1, absl::StrCat("kread ", off, " 300 9")), "ok");
  EXPECT_EQ(Call(2, absl::StrCat("kwrite ", off, " 300 9")), "ok");
  EXPECT_EQ(Call(1, absl::StrCat("kread ", 4 * kPage + 3000, " 5000 11")), "ok")
      << "read(2) across a page boundary";
  EXPECT_EQ(Call(0, absl::StrCat("kwrite ", 4 * kPage + 3000, " 5000 11")), "ok");
  EXPECT_EQ(Call(2, "check 6 2 1"), "ok") << "pages nobody wrote keep the home's bytes";
}

TEST_P(MultiprocessTest, SyncLeavesTheRightBytesInTheHomeFile) {
  std::string path = dir_ + "/backing";
  Start(3, {.name = "file", .pages = 8, .file = path});
  EXPECT_EQ(Call(1, "fill 2 1 4"), "ok");
  EXPECT_EQ(Call(2, "fill 5 2 5"), "ok");
  EXPECT_EQ(Call(1, "sync"), "ok");
  EXPECT_EQ(Call(2, "sync"), "ok");
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << "the home did not create " << path;
  std::vector<uint8_t> f(8 * kPage);
  ASSERT_EQ(pread(fd, f.data(), f.size(), 0), static_cast<ssize_t>(f.size()))
      << "the file should have been extended to the region size";
  close(fd);
  EXPECT_EQ(std::count(f.begin(), f.begin() + 2 * kPage, 0), static_cast<long>(2 * kPage));
  EXPECT_FALSE(CheckPattern(f.data() + 2 * kPage, kPage, 4, 2 * kPage)) << "page 2 (node 1)";
  EXPECT_FALSE(CheckPattern(f.data() + 5 * kPage, 2 * kPage, 5, 5 * kPage)) << "pages 5-6";
  EXPECT_EQ(Call(0, "check 2 1 4"), "ok");
}

TEST_P(MultiprocessTest, AKilledNodeEndsInSigbusForItsPagesAndNoHang) {
  Start(3, {.name = "kill", .pages = 64});
  EXPECT_EQ(Call(1, "fill 10 10 5"), "ok");  // node 1 holds pages 10-19 Modified, alone
  EXPECT_EQ(Call(0, "fill 30 1 6"), "ok");
  EXPECT_EQ(Call(2, "check 30 1 6"), "ok");
  // Nodes 1 and 2 fight over a counter page; node 1 dies in the middle.
  ASSERT_TRUE(workers_[2]->SendLine("hammer 8192 20000000").ok());
  ASSERT_TRUE(workers_[1]->SendLine("hammer 8192 20000000").ok());
  for (int i : {2, 1}) {
    absl::StatusOr<std::string> s = workers_[static_cast<size_t>(i)]->ReadLine(kReply);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(*s, "started") << "node " << i;
  }
  workers_[1]->Kill(SIGKILL);
  killed_.insert(1);
  absl::StatusOr<int> st = workers_[1]->Wait(milliseconds(10000));
  ASSERT_TRUE(st.ok()) << st.status();

  // The survivor's loop ends either way (finished, or its counter page was lost), bounded.
  absl::StatusOr<std::string> h = workers_[2]->ReadLine(kReply);
  ASSERT_TRUE(h.ok()) << "node 2 hung after node 1 died: " << h.status();
  EXPECT_THAT(*h, ::testing::AnyOf(StartsWith("ok "), StartsWith("sigbus after ")));

  // Pages whose only copy was on node 1 are lost: accesses raise SIGBUS, everywhere.
  EXPECT_EQ(Call(2, absl::StrCat("probe ", 10 * kPage, " r")), "sigbus");
  EXPECT_EQ(Call(0, absl::StrCat("probe ", 11 * kPage, " r")), "sigbus");
  EXPECT_EQ(Call(2, absl::StrCat("probe ", 12 * kPage, " w")), "sigbus");
  EXPECT_THAT(Call(2, "stats"), ::testing::Not(HasSubstr("pages_lost=0 ")));
  // Everything else keeps working between the survivors.
  EXPECT_EQ(Call(2, "check 30 1 6"), "ok");
  EXPECT_EQ(Call(2, "fill 31 1 7"), "ok");
  EXPECT_EQ(Call(0, "check 31 1 7"), "ok");
  EXPECT_EQ(Call(0, "write64 40 99"), "ok");
  EXPECT_EQ(Call(2, "read64 40"), "ok 99");
  // Survivors may report the lost pages in their exit status; only their liveness matters.
  expect_clean_exit_ = false;
}

// A node killed with SIGKILL and started again with the same id rejoins the running cluster:
// its MapRegion succeeds, it reads what it had synced before it died and what the others
// wrote while it was gone, and its new writes are read by the others. Five rounds.
TEST_P(MultiprocessTest, AKilledNodeRestartedWithItsIdRejoinsAndReadsTheLatestData) {
  Start(3, {.name = "rejoin", .pages = 16});
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    const int mine = 100 + round, theirs = 200 + round, again = 300 + round;
    EXPECT_EQ(Call(1, absl::StrCat("fill 2 2 ", mine)), "ok");
    EXPECT_EQ(Call(1, "sync"), "ok");  // at the home now: survives the kill
    ASSERT_NO_FATAL_FAILURE(Kill(1));
    // Written while node 1 is gone.
    EXPECT_EQ(Call(2, absl::StrCat("fill 4 2 ", theirs)), "ok");
    EXPECT_EQ(Call(0, absl::StrCat("write64 8 ", round + 1)), "ok");
    ASSERT_NO_FATAL_FAILURE(Restart(1));
    EXPECT_EQ(Call(1, absl::StrCat("check 2 2 ", mine)), "ok");
    EXPECT_EQ(Call(1, absl::StrCat("check 4 2 ", theirs)), "ok");
    EXPECT_EQ(Call(1, "read64 8"), absl::StrCat("ok ", round + 1));
    EXPECT_EQ(Call(1, absl::StrCat("fill 6 1 ", again)), "ok");
    for (const std::string& r : CallAll({{0, absl::StrCat("check 6 1 ", again)},
                                         {2, absl::StrCat("check 6 1 ", again)}})) {
      EXPECT_EQ(r, "ok");
    }
    EXPECT_EQ(Call(2, "write64 8 77"), "ok");
    EXPECT_EQ(Call(1, "read64 8"), "ok 77") << "the rejoined node sees a later write";
  }
}

// A second process started with node 1's id (listening elsewhere, so its bind succeeds) while
// node 1 runs: its MapRegion fails and says "duplicate node id"; the cluster is undisturbed.
TEST_P(MultiprocessTest, ASecondProcessWithARunningNodesIdIsRefusedAsDuplicate) {
  Start(3, {.name = "dup"});
  EXPECT_EQ(Call(0, "fill 0 1 3"), "ok");
  std::unique_ptr<Subprocess> extra;
  const std::string listen =
      net_ ? net_->address(1) + ":7001" : absl::StrCat("127.0.0.1:", PickFreePorts(1)[0]);
  std::string line = RunExtra(
      1, [&](std::vector<std::string>& a) {
        a.insert(a.end(), {"--listen", listen, "--connect-timeout-ms", "3000"});
      },
      &extra);
  EXPECT_THAT(line, StartsWith("err map: "));
  EXPECT_THAT(line, HasSubstr("duplicate node id"));
  if (extra) (void)extra->Wait(milliseconds(30000));
  EXPECT_EQ(Call(1, "check 0 1 3"), "ok");
  EXPECT_EQ(Call(1, "write64 64 5"), "ok");
  EXPECT_EQ(Call(2, "read64 64"), "ok 5");
}

// A process whose peer list is shorter than the running cluster's (node 0 and one address of
// its own, as node 1): refused by node 0 at its Hello; its MapRegion fails at once and says
// "cluster size mismatch" with both sizes (with a cluster key: refused at admission, and
// reported as such at its connect deadline). The cluster is undisturbed.
TEST_P(MultiprocessTest, AProcessWithAnotherClusterSizeIsRefusedWithBothSizes) {
  Start(3, {.name = "size"});
  std::unique_ptr<Subprocess> extra;
  const std::string own =
      net_ ? net_->address(1) + ":7003" : absl::StrCat("127.0.0.1:", PickFreePorts(1)[0]);
  std::string line = RunExtra(
      1, [&](std::vector<std::string>& a) {
        for (size_t k = 0; k + 1 < a.size(); ++k) {
          if (a[k] == "--peers") a[k + 1] = peers_[0] + "," + own;
        }
        a.insert(a.end(), {"--connect-timeout-ms", "3000"});
      },
      &extra);
  EXPECT_THAT(line, StartsWith("err map: "));
  if (net_) {
    // A cluster with a key binds the peer list into admission, and node 0 says nothing to a
    // dialer that has not proven it: the dialer names what can differ.
    EXPECT_THAT(line, HasSubstr("during admission: the cluster key or the peer list (2 entries"));
  } else {
    EXPECT_THAT(line, HasSubstr("cluster size mismatch: node 0 has 3"));
    EXPECT_THAT(line, HasSubstr("(1) has 2"));
  }
  if (extra) (void)extra->Wait(milliseconds(30000));
  EXPECT_EQ(Call(1, "write64 64 6"), "ok");
  EXPECT_EQ(Call(0, "read64 64"), "ok 6");
}

std::string NetName(const ::testing::TestParamInfo<Net>& info) {
  return info.param == Net::kLoopbackTcp ? "TcpLoopback" : "NetnsVeth";
}

INSTANTIATE_TEST_SUITE_P(Networks, MultiprocessTest,
                         ::testing::Values(Net::kLoopbackTcp, Net::kNamespaces), NetName);

}  // namespace
}  // namespace dsm::testing
