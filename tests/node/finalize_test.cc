// Leaving the cluster in order, with nodes as processes (node_worker over TCP on 127.0.0.1):
// Node::Finalize with interleaved and fixed homes, repeated, counting every SIGBUS, lost page
// and WARNING/ERROR log line (each must be zero); a file-backed region read back after
// Finalize holds every node's writes; a node missing from Finalize ends in a bounded error that
// names it, and the node left behind sees the others as left (INFO), not failed; a node that
// fails instead is named at once.
//
// DSM_FINALIZE_RUNS sets how many times the repeated tests run (default 8).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/node_test_util.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr milliseconds kReply{60000};
constexpr int kNodes = 3;
constexpr uint64_t kPagesPerNode = 8;  // node i writes pages [8i, 8i + 8): every home gets some
constexpr uint64_t kPages = kNodes * kPagesPerNode;

int Runs() {
  int n = 8;
  if (const char* env = std::getenv("DSM_FINALIZE_RUNS")) {
    if (!absl::SimpleAtoi(env, &n) || n < 1) n = 8;
  }
  return n;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// What went wrong in one node's log: WARNING and ERROR lines (the log prefixes them "W" / "E"
// and a time), and the worker's own report of lost pages.
struct LogCount {
  int warnings = 0, errors = 0, lost = 0;
  std::string bad_lines;
};
LogCount CountLog(const std::string& text) {
  LogCount c;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const bool stamped = line.size() > 3 && isdigit(static_cast<unsigned char>(line[1])) &&
                         isdigit(static_cast<unsigned char>(line[2])) && line[3] == ':';
    const bool warning = stamped && line[0] == 'W';
    const bool error = stamped && line[0] == 'E';
    const bool lost = line.find("lost") != std::string::npos;
    c.warnings += warning;
    c.errors += error;
    c.lost += lost;
    if (warning || error || lost) c.bad_lines += line + "\n";
  }
  return c;
}

class FinalizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (std::filesystem::temp_directory_path() / "dsm-fin-XXXXXX").string();
    ASSERT_NE(mkdtemp(t.data()), nullptr);
    dir_ = t;
  }
  void TearDown() override {
    workers_.clear();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string LogPath(int i) const { return absl::StrCat(dir_, "/node", i, ".log"); }

  // Starts kNodes workers mapping region "r" of kPages pages. `policy`: "fixed" (home `home`,
  // file-backed at `file` if not empty) or "interleaved" (anonymous).
  void Start(const std::string& policy, int home, const std::string& file) {
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::vector<std::string> peers;
      for (int port : PickFreePorts(kNodes)) peers.push_back(absl::StrCat("127.0.0.1:", port));
      workers_.clear();
      for (int i = 0; i < kNodes; ++i) {
        std::vector<std::string> argv = {
            DSM_NODE_WORKER, "--id", std::to_string(i), "--peers", absl::StrJoin(peers, ","),
            "--region", "r", "--size", std::to_string(kPages * kPage), "--home",
            std::to_string(home), "--policy", policy, "--peer-timeout-ms", "5000",
            "--log-file", LogPath(i)};
        if (!file.empty()) argv.insert(argv.end(), {"--file", file});  // every node states it
        absl::StatusOr<std::unique_ptr<Subprocess>> p =
            Subprocess::Start({.argv = argv,
                               .label = absl::StrCat("node", i),
                               .env = {"DSM_LOG_LEVEL=INFO"}});
        ASSERT_TRUE(p.ok()) << p.status();
        workers_.push_back(std::move(*p));
      }
      const WorkersStart started = AwaitWorkersReady(workers_, kReply, /*may_collide=*/true);
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

  std::string Call(int i, const std::string& cmd) {
    absl::StatusOr<std::string> r = workers_[static_cast<size_t>(i)]->Call(cmd, kReply);
    EXPECT_TRUE(r.ok()) << "node" << i << " '" << cmd << "': " << r.status();
    return r.ok() ? *r : "";
  }
  void Send(int i, const std::string& cmd) {
    absl::Status s = workers_[static_cast<size_t>(i)]->SendLine(cmd);
    EXPECT_TRUE(s.ok()) << s;
  }
  std::string Read(int i) {
    absl::StatusOr<std::string> r = workers_[static_cast<size_t>(i)]->ReadLine(kReply);
    EXPECT_TRUE(r.ok()) << "node" << i << ": " << r.status();
    return r.ok() ? *r : "";
  }

  // Every node writes its own pages, with seed 100 + its id.
  void FillAll() {
    for (int i = 0; i < kNodes; ++i) {
      Send(i, absl::StrCat("fill ", i * kPagesPerNode, " ", kPagesPerNode, " ", 100 + i));
    }
    for (int i = 0; i < kNodes; ++i) EXPECT_EQ(Read(i), "ok") << "node" << i << " fill";
  }

  // "quit" to every worker; each says "bye" and exits 0 (not by a signal). Returns how many
  // did not.
  int QuitAll() {
    int bad = 0;
    for (int i = 0; i < kNodes; ++i) {
      Subprocess* w = workers_[static_cast<size_t>(i)].get();
      (void)w->SendLine("quit");
      absl::StatusOr<std::string> bye = w->ReadLine(kReply);
      EXPECT_TRUE(bye.ok() && *bye == "bye")
          << w->label() << ": " << (bye.ok() ? *bye : bye.status().ToString());
      absl::StatusOr<int> st = w->Wait(milliseconds(30000));
      const bool clean = st.ok() && WIFEXITED(*st) && WEXITSTATUS(*st) == 0;
      EXPECT_TRUE(clean) << w->label() << ": "
                         << (st.ok() ? DescribeWaitStatus(*st) : st.status().ToString())
                         << "\nlog:\n" << ReadFile(LogPath(i));
      bad += !clean;
    }
    workers_.clear();
    return bad;
  }

  // Adds every node's log counts to the totals; reports the offending lines.
  void CountLogs(int run, LogCount* total) {
    for (int i = 0; i < kNodes; ++i) {
      LogCount c = CountLog(ReadFile(LogPath(i)));
      EXPECT_EQ(c.warnings + c.errors + c.lost, 0)
          << "run " << run << " node" << i << ":\n" << c.bad_lines;
      total->warnings += c.warnings;
      total->errors += c.errors;
      total->lost += c.lost;
    }
  }

  std::string dir_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
};

// The exit that used to fail: node 0 reads results homed at nodes 1 and 2 while they are
// already finishing. Finalize keeps them serving until node 0 has finished too.
TEST_F(FinalizeTest, InterleavedHomesExitWithoutSigbusLostPagesOrWarnings) {
  const int runs = Runs();
  int sigbus = 0, failed_finalize = 0, unclean_exits = 0;
  LogCount total;
  for (int run = 0; run < runs && !HasFatalFailure(); ++run) {
    Start("interleaved", 0, "");
    if (HasFatalFailure() || IsSkipped()) return;
    FillAll();
    Send(1, "finalize 30000");
    Send(2, "finalize 30000");
    for (int i = 1; i < kNodes; ++i) {  // results homed everywhere, read while 1 and 2 leave
      const std::string r =
          Call(0, absl::StrCat("check ", i * kPagesPerNode, " ", kPagesPerNode, " ", 100 + i));
      sigbus += r == "sigbus";
      EXPECT_EQ(r, "ok") << "run " << run;
    }
    Send(0, "finalize 30000");
    for (int i = 0; i < kNodes; ++i) {
      const std::string r = Read(i);
      failed_finalize += r != "ok";
      EXPECT_EQ(r, "ok") << "run " << run << " node" << i;
    }
    unclean_exits += QuitAll();
    CountLogs(run, &total);
  }
  std::printf("%d runs: %d SIGBUS, %d failed Finalize, %d unclean exits, %d WARNING, %d ERROR, "
              "%d lost-page lines\n",
              runs, sigbus, failed_finalize, unclean_exits, total.warnings, total.errors,
              total.lost);
  EXPECT_EQ(sigbus + failed_finalize + unclean_exits, 0);
  EXPECT_EQ(total.warnings + total.errors + total.lost, 0);
}

// Every node writes pages of a file-backed region homed at one node (a different one each
// run); after Finalize the home's file holds every node's writes.
TEST_F(FinalizeTest, FileBackedRegionHoldsEveryNodesWritesAfterFinalize) {
  const int runs = Runs();
  LogCount total;
  for (int run = 0; run < runs && !HasFatalFailure(); ++run) {
    const int home = run % kNodes;
    const std::string file = absl::StrCat(dir_, "/region-", run, ".dat");
    Start("fixed", home, file);
    if (HasFatalFailure() || IsSkipped()) return;
    FillAll();
    for (int i = 0; i < kNodes; ++i) Send(i, "finalize 30000");
    for (int i = 0; i < kNodes; ++i) EXPECT_EQ(Read(i), "ok") << "run " << run << " node" << i;
    EXPECT_EQ(QuitAll(), 0);
    const std::string data = ReadFile(file);
    ASSERT_EQ(data.size(), kPages * kPage) << "run " << run;
    for (int i = 0; i < kNodes; ++i) {
      const uint64_t off = i * kPagesPerNode * kPage;
      std::optional<std::string> bad =
          CheckPattern(data.data() + off, kPagesPerNode * kPage, 100 + i, off);
      EXPECT_FALSE(bad.has_value()) << "run " << run << ", home " << home << ", node " << i
                                    << "'s pages in the file: " << *bad;
    }
    CountLogs(run, &total);
  }
  EXPECT_EQ(total.warnings + total.errors + total.lost, 0);
}

// Node 2 never calls Finalize: nodes 0 and 1 end within their deadline with an error naming
// it, and still leave. Node 2 sees them leave (INFO, no WARNING), and a request that needs
// the departed home fails at once, saying so.
TEST_F(FinalizeTest, ANodeMissingFromFinalizeIsNamedInABoundedError) {
  Start("fixed", 0, "");
  if (HasFatalFailure() || IsSkipped()) return;
  FillAll();
  Send(0, "finalize 1500");
  Send(1, "finalize 1500");
  for (int i = 0; i < 2; ++i) {
    const std::string r = Read(i);
    EXPECT_THAT(r, StartsWith("err DEADLINE_EXCEEDED")) << "node" << i;
    EXPECT_THAT(r, HasSubstr("node(s) 2 did not arrive")) << "node" << i;
  }
  // Nodes 0 and 1 are shut down; node 2 learns it from their goodbyes (per-pair FIFO: each
  // arrives before the connection closes). Poll its log until both are recorded.
  std::string log2;
  for (int i = 0; i < 200; ++i) {
    log2 = ReadFile(LogPath(2));
    if (log2.find("node 0 left the cluster") != std::string::npos &&
        log2.find("node 1 left the cluster") != std::string::npos) {
      break;
    }
    usleep(50 * 1000);
  }
  EXPECT_THAT(log2, HasSubstr("node 0 left the cluster"));
  EXPECT_THAT(log2, HasSubstr("node 1 left the cluster"));
  // Sync needs the home (node 0): refused at once, naming the reason.
  const std::string sync = Call(2, "sync");
  EXPECT_THAT(sync, StartsWith("err UNAVAILABLE"));
  EXPECT_THAT(sync, HasSubstr("has left the cluster"));
  for (int i = 0; i < kNodes; ++i) {
    LogCount c = CountLog(ReadFile(LogPath(i)));
    EXPECT_EQ(c.warnings + c.errors, 0) << "node" << i << ":\n" << c.bad_lines;
  }
  // Node 2's own exit: Unmap needs the departed home too; it is not judged here.
  for (auto& w : workers_) (void)w->SendLine("quit");
  for (auto& w : workers_) (void)w->Wait(milliseconds(30000));
  workers_.clear();
}

// Node 2 (not a home: with interleaved homes the write-back to it would fail first, naming
// it too) is killed before it calls Finalize: the others do not wait for their deadline; each
// ends with Unavailable naming node 2 (a failure, not a departure).
TEST_F(FinalizeTest, ANodeThatFailsIsNamedWithoutWaitingForTheDeadline) {
  Start("fixed", 0, "");
  if (HasFatalFailure() || IsSkipped()) return;
  FillAll();
  workers_[2]->Kill(SIGKILL);
  (void)workers_[2]->Wait(milliseconds(10000));
  Send(0, "finalize 600000");
  Send(1, "finalize 600000");
  for (int i = 0; i < 2; ++i) {
    const std::string r = Read(i);  // bounded by kReply (60 s), far below the 600 s deadline
    EXPECT_THAT(r, StartsWith("err UNAVAILABLE")) << "node" << i;
    EXPECT_THAT(r, HasSubstr("node(s) 2 failed")) << "node" << i;
  }
  for (int i = 0; i < 2; ++i) (void)workers_[static_cast<size_t>(i)]->SendLine("quit");
  for (int i = 0; i < 2; ++i) (void)workers_[static_cast<size_t>(i)]->Wait(milliseconds(30000));
  workers_.clear();
}

}  // namespace
}  // namespace dsm::testing
