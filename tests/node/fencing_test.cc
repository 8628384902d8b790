// Self-fencing with real processes (node_worker over TCP): a node holding Shared and Modified
// copies is stopped (SIGSTOP) or cut off (its veth taken down, in network namespaces) while
// the others write; once it runs or is reachable again, every read it makes returns the
// latest value or raises SIGBUS (the page is reported lost), never an older value. The
// healthy nodes read the latest value throughout. Every load is counted: fresh, lost, stale;
// the tests assert zero stale loads over thousands of checked accesses.
//
// A stopped process cannot fence itself while it is stopped: its engine does so before it
// serves anything once it runs again. An application thread can be scheduled before the
// engine thread after SIGCONT, so the stopped node makes one Node call ("stats", as
// docs/ARCHITECTURE.md asks of an application that must not read past a stop of its own
// process) before it reads; the link-cut node, whose process kept running, reads at once.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "node/netns_cluster.h"
#include "node/node_test_util.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kReply{60000};
constexpr uint64_t kWord = 1 * kPage;      // Shared at the stalled node, written by node 1
constexpr uint64_t kOwned = 2 * kPage;     // Modified at the stalled node
constexpr int kStalled = 2;
constexpr int kWrites = 20;                // by node 1 while node 2 is stalled

enum class Stall { kSigstop, kLinkCut };
enum class Net { kLoopbackTcp, kNamespaces };
struct Param {
  Net net;
  Stall stall;
};

struct Tally {
  uint64_t fresh = 0, lost = 0, stale = 0;
  std::vector<std::string> stale_where;
};

// Adds a "readn" reply to `t`.
void Count(const std::string& reply, const std::string& where, Tally* t) {
  std::vector<std::string> f = absl::StrSplit(reply, ' ');
  uint64_t fresh = 0, lost = 0, stale = 0;
  ASSERT_GE(f.size(), 4u) << where << ": " << reply;
  ASSERT_EQ(f[0], "ok") << where << ": " << reply;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(f[1], "fresh="), &fresh)) << reply;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(f[2], "lost="), &lost)) << reply;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(f[3], "stale="), &stale)) << reply;
  t->fresh += fresh;
  t->lost += lost;
  t->stale += stale;
  if (stale != 0) t->stale_where.push_back(where + ": " + reply);
}

class FencingTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (GetParam().net == Net::kNamespaces) {
      if (std::string why = NetnsCluster::Unavailable(); !why.empty()) GTEST_SKIP() << why;
    }
  }

  void TearDown() override { Stop(); }

  void Start() {
    if (GetParam().net == Net::kNamespaces && !net_) {
      absl::StatusOr<std::unique_ptr<NetnsCluster>> net = NetnsCluster::Create(3);
      ASSERT_TRUE(net.ok()) << net.status();
      net_ = std::move(*net);
    }
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::vector<std::string> peers;
      if (net_) {
        // A new port per cluster: the last one's may linger in TIME_WAIT.
        for (int i = 0; i < 3; ++i) peers.push_back(absl::StrCat(net_->address(i), ":", port_));
        ++port_;
      } else {
        for (int port : PickFreePorts(3)) peers.push_back(absl::StrCat("127.0.0.1:", port));
      }
      workers_.clear();
      for (int i = 0; i < 3; ++i) {
        std::vector<std::string> argv = {
            DSM_NODE_WORKER, "--id",   std::to_string(i), "--peers", absl::StrJoin(peers, ","),
            "--region",      "fence",  "--size",          std::to_string(16 * kPage),
            "--home",        "0",      "--peer-timeout-ms", "2000", "--lease-ms", "800"};
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

  // The stalled node cannot leave cleanly (it fenced itself for the home): it is killed. The
  // others leave in order, the home last.
  void Stop() {
    if (workers_.empty()) return;
    workers_[kStalled]->Kill(SIGCONT);
    workers_[kStalled]->Kill(SIGKILL);
    (void)workers_[kStalled]->Wait(milliseconds(10000));
    for (int i : {1, 0}) {
      Subprocess* w = workers_[static_cast<size_t>(i)].get();
      (void)w->SendLine("quit");
      absl::StatusOr<std::string> bye = w->ReadLine(kReply);
      EXPECT_TRUE(bye.ok() && *bye == "bye")
          << w->label() << " did not leave cleanly: "
          << (bye.ok() ? *bye : bye.status().ToString()) << "\n" << w->transcript();
      (void)w->Wait(milliseconds(30000));
    }
    workers_.clear();
  }

  std::string Call(int i, const std::string& cmd) {
    absl::StatusOr<std::string> r = workers_[static_cast<size_t>(i)]->Call(cmd, kReply);
    EXPECT_TRUE(r.ok()) << workers_[static_cast<size_t>(i)]->label() << " '" << cmd
                        << "': " << r.status();
    return r.ok() ? *r : "";
  }

  void SetStalled(bool stalled) {
    if (GetParam().stall == Stall::kSigstop) {
      workers_[kStalled]->Kill(stalled ? SIGSTOP : SIGCONT);
    } else {
      absl::Status s = net_->SetLinkUp(kStalled, !stalled);
      ASSERT_TRUE(s.ok()) << s;
    }
  }

  // One cluster: copies at node 2, node 2 stalled, node 1 writes, node 2 back, everyone reads.
  void Cycle(Tally* healthy, Tally* stalled) {
    ASSERT_NO_FATAL_FAILURE(Start());
    ASSERT_EQ(Call(1, absl::StrCat("write64 ", kWord, " 1")), "ok");
    Count(Call(kStalled, absl::StrCat("readn ", kWord, " 200 1")), "node 2 before", healthy);
    ASSERT_EQ(Call(kStalled, absl::StrCat("write64 ", kOwned, " 5")), "ok");
    ASSERT_EQ(healthy->lost + healthy->stale, 0u) << "a healthy cluster lost or misread a load";

    SetStalled(true);
    for (int k = 2; k < 2 + kWrites; ++k) {
      // The first write waits until the home has reassigned node 2's copy (lease + margin).
      ASSERT_EQ(Call(1, absl::StrCat("write64 ", kWord, " ", k)), "ok");
      Count(Call(0, absl::StrCat("readn ", kWord, " 50 ", k)), "node 0", healthy);
      Count(Call(1, absl::StrCat("readn ", kWord, " 50 ", k)), "node 1", healthy);
    }
    const int latest = 1 + kWrites;
    // The page only node 2 had (Modified) is lost for the others, not silently zero or old.
    Tally owned;
    Count(Call(1, absl::StrCat("readn ", kOwned, " 20 5")), "node 1 owned page", &owned);
    EXPECT_EQ(owned.lost, 20u) << "the stalled node's Modified page was not reported lost";

    SetStalled(false);
    if (GetParam().stall == Stall::kSigstop) {
      ASSERT_EQ(Call(kStalled, "stats").rfind("ok", 0), 0u);
    }
    Tally after;
    Count(Call(kStalled, absl::StrCat("readn ", kWord, " 1000 ", latest)), "node 2 after",
          &after);
    Count(Call(kStalled, absl::StrCat("readn ", kWord + 8, " 200 0")), "node 2 after, word 1",
          &after);
    EXPECT_GT(after.lost, 0u) << "node 2 did not fence itself";
    stalled->fresh += after.fresh;
    stalled->lost += after.lost;
    stalled->stale += after.stale;
    for (auto& w : after.stale_where) stalled->stale_where.push_back(w);
    EXPECT_EQ(Call(kStalled, absl::StrCat("probe ", kWord, " w")), "sigbus")
        << "node 2 wrote a page after it fenced itself";
    for (int i : {0, 1}) {
      Count(Call(i, absl::StrCat("readn ", kWord, " 500 ", latest)), "healthy after", healthy);
    }
    Stop();
  }

  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::unique_ptr<NetnsCluster> net_;
  int port_ = 7100;
};

TEST_P(FencingTest, AStalledNodeNeverReadsAValueOlderThanTheLatestWrite) {
  constexpr int kCycles = 3;
  Tally healthy, stalled;
  for (int c = 0; c < kCycles; ++c) {
    SCOPED_TRACE(absl::StrCat("cycle ", c));
    ASSERT_NO_FATAL_FAILURE(Cycle(&healthy, &stalled));
  }
  const uint64_t checked = healthy.fresh + healthy.lost + healthy.stale + stalled.fresh +
                           stalled.lost + stalled.stale;
  std::printf("checked loads: %lu (healthy: fresh %lu lost %lu stale %lu; stalled node after: "
              "fresh %lu lost %lu stale %lu)\n",
              static_cast<unsigned long>(checked), static_cast<unsigned long>(healthy.fresh),
              static_cast<unsigned long>(healthy.lost), static_cast<unsigned long>(healthy.stale),
              static_cast<unsigned long>(stalled.fresh), static_cast<unsigned long>(stalled.lost),
              static_cast<unsigned long>(stalled.stale));
  EXPECT_GE(checked, 10000u);
  EXPECT_EQ(stalled.stale, 0u) << absl::StrJoin(stalled.stale_where, "\n");
  EXPECT_EQ(healthy.stale, 0u) << absl::StrJoin(healthy.stale_where, "\n");
  EXPECT_EQ(healthy.lost, 0u) << "a healthy node lost the page every node wrote through its home";
}

std::string Name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(info.param.net == Net::kLoopbackTcp ? "Tcp" : "Netns") +
         (info.param.stall == Stall::kSigstop ? "Sigstop" : "LinkCut");
}

INSTANTIATE_TEST_SUITE_P(Stalls, FencingTest,
                         ::testing::Values(Param{Net::kLoopbackTcp, Stall::kSigstop},
                                           Param{Net::kNamespaces, Stall::kSigstop},
                                           Param{Net::kNamespaces, Stall::kLinkCut}),
                         Name);

}  // namespace
}  // namespace dsm::testing
