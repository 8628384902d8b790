// Nodes placed by a launcher's environment (dsm/launch.h), as processes on this host: a
// Slurm-style allocation, an Open MPI rank with a host file, and dsmrun. Each cluster runs
// node_worker's self-checking counter scenario and leaves in an agreed order.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "node/subprocess.h"

namespace dsm::testing {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kReply{90000};
constexpr int kNodes = 3;

// Worker arguments shared by every test: no --id/--peers (the environment places the node).
std::vector<std::string> WorkerArgv() {
  return {DSM_NODE_WORKER, "--region", "launch", "--size", std::to_string(8 * 4096),
          "--scenario", "counter", "--threads", "2", "--iters", "3000", "--leave",
          "collective", "--peer-timeout-ms", "5000"};
}

int RandomBasePort() {
  std::random_device rd;
  return 20000 + static_cast<int>(rd() % 20000);
}

enum class Outcome { kOk, kPortInUse, kNoUffd };

// Starts one worker per environment, checks that each prints ready, its exact counter totals
// and bye, and exits 0.
Outcome RunCluster(const std::vector<std::vector<std::string>>& envs) {
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (size_t i = 0; i < envs.size(); ++i) {
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
        {.argv = WorkerArgv(), .label = absl::StrCat("node", i), .env = envs[i]});
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return Outcome::kOk;
    workers.push_back(std::move(*p));
  }
  bool in_use = false;
  for (auto& w : workers) {
    absl::StatusOr<std::string> line = w->ReadLine(kReply);
    if (line.ok() && *line == "ready") continue;
    const std::string what = line.ok() ? *line : line.status().ToString();
    if (absl::StrContains(what, "in use")) in_use = true;
    if (absl::StrContains(w->transcript(), "userfaultfd")) return Outcome::kNoUffd;
    if (!in_use) ADD_FAILURE() << w->label() << " did not start: " << what;
  }
  if (in_use) return Outcome::kPortInUse;
  const std::string totals = absl::StrCat("ok totals=", kNodes * 2 * 3000);
  for (auto& w : workers) {
    absl::StatusOr<std::string> line = w->ReadLine(kReply);
    EXPECT_TRUE(line.ok() && absl::StartsWith(*line, totals))
        << w->label() << ": " << (line.ok() ? *line : line.status().ToString());
  }
  for (auto& w : workers) {
    absl::StatusOr<std::string> line = w->ReadLine(kReply);
    EXPECT_TRUE(line.ok() && *line == "bye") << w->label() << ": "
                                             << (line.ok() ? *line : line.status().ToString());
    absl::StatusOr<int> st = w->Wait(kReply);
    EXPECT_TRUE(st.ok() && WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
        << w->label() << ": " << (st.ok() ? DescribeWaitStatus(*st) : st.status().ToString());
  }
  return Outcome::kOk;
}

// Retries with another base port when one was taken by another process.
void RunWithFreshPorts(const std::function<std::vector<std::vector<std::string>>(int)>& envs) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (userfaultfd)";
  for (int attempt = 0; attempt < 5; ++attempt) {
    switch (RunCluster(envs(RandomBasePort()))) {
      case Outcome::kOk: return;
      case Outcome::kNoUffd: GTEST_SKIP() << "userfaultfd unavailable";
      case Outcome::kPortInUse: continue;
    }
  }
  FAIL() << "ports kept colliding";
}

TEST(Launch, NodesStartFromASlurmEnvironment) {
  RunWithFreshPorts([](int base) {
    std::vector<std::vector<std::string>> envs;
    for (int i = 0; i < kNodes; ++i) {
      envs.push_back({absl::StrCat("SLURM_PROCID=", i), absl::StrCat("SLURM_NTASKS=", kNodes),
                      "SLURM_JOB_NODELIST=localhost",
                      absl::StrCat("SLURM_STEP_TASKS_PER_NODE=", kNodes),
                      absl::StrCat("DSM_PORT=", base)});
    }
    return envs;
  });
}

TEST(Launch, NodesStartFromAnOpenMpiRankAndAHostFile) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/dsm_hosts_", getpid());
  {
    std::ofstream f(path);
    // Two slots on 127.0.0.1 (as localhost) and one on 127.0.0.2: both are loopback.
    f << "# test cluster\nlocalhost slots=2\n127.0.0.2\n";
  }
  RunWithFreshPorts([&](int base) {
    std::vector<std::vector<std::string>> envs;
    for (int i = 0; i < kNodes; ++i) {
      envs.push_back({absl::StrCat("OMPI_COMM_WORLD_RANK=", i),
                      absl::StrCat("OMPI_COMM_WORLD_SIZE=", kNodes),
                      absl::StrCat("DSM_HOSTFILE=", path), absl::StrCat("DSM_PORT=", base)});
    }
    return envs;
  });
  unlink(path.c_str());
}

TEST(Launch, DsmrunRunsACounterClusterToAnExactResult) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (userfaultfd)";
  std::vector<std::string> argv = {DSMRUN, "-n", std::to_string(kNodes), "--timeout", "120",
                                   "--"};
  for (const std::string& a : WorkerArgv()) argv.push_back(a);
  absl::StatusOr<std::string> out = RunCommand(argv, milliseconds(150000));
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string totals = absl::StrCat("ok totals=", kNodes * 2 * 3000);
  size_t count = 0;
  for (size_t at = out->find(totals); at != std::string::npos; at = out->find(totals, at + 1)) {
    ++count;
  }
  EXPECT_EQ(count, size_t{kNodes}) << *out;
}

TEST(Launch, DsmrunNetnsRunsTheClusterAcrossNamespaces) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, userfaultfd)";
  if (!RunCommand({"ip", "-V"}, milliseconds(10000)).ok()) GTEST_SKIP() << "no iproute2";
  // Each node sees its own address in the peer list and a generated cluster key.
  absl::StatusOr<std::string> place = RunCommand(
      {DSMRUN, "-n", "2", "--netns", "--", "/bin/sh", "-c",
       "echo \"node=$DSM_NODE_ID peers=$DSM_PEERS keylen=${#DSM_CLUSTER_KEY}\"; "
       "ip -o -4 addr show dev eth0"},
      milliseconds(60000));
  ASSERT_TRUE(place.ok()) << place.status();
  EXPECT_TRUE(absl::StrContains(*place, "node=0 peers=10.78.")) << *place;
  EXPECT_TRUE(absl::StrContains(*place, "node=1 peers=10.78.")) << *place;
  EXPECT_TRUE(absl::StrContains(*place, "keylen=64")) << *place;
  EXPECT_FALSE(absl::StrContains(*place, "127.0.0.1")) << *place;
  // The counter cluster over the namespaces' network gives the exact total on every node.
  std::vector<std::string> argv = {DSMRUN, "-n", std::to_string(kNodes), "--netns",
                                   "--timeout", "120", "--"};
  for (const std::string& a : WorkerArgv()) argv.push_back(a);
  absl::StatusOr<std::string> out = RunCommand(argv, milliseconds(150000));
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string totals = absl::StrCat("ok totals=", kNodes * 2 * 3000);
  size_t count = 0;
  for (size_t at = out->find(totals); at != std::string::npos; at = out->find(totals, at + 1)) {
    ++count;
  }
  EXPECT_EQ(count, size_t{kNodes}) << *out;
}

TEST(Launch, DsmrunGivesEachNodeItsPlace) {
  absl::StatusOr<std::string> out = RunCommand(
      {DSMRUN, "-n", "2", "--port", "7700", "--", "/bin/sh", "-c",
       "echo \"node=$DSM_NODE_ID of $DSM_NUM_NODES peers=$DSM_PEERS\""},
      milliseconds(30000));
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string peers = "peers=127.0.0.1:7700,127.0.0.1:7701";
  EXPECT_TRUE(absl::StrContains(*out, "node=0 of 2 " + peers)) << *out;
  EXPECT_TRUE(absl::StrContains(*out, "node=1 of 2 " + peers)) << *out;
}

TEST(Launch, DsmrunStopsTheOthersWhenOneNodeFails) {
  // Node 0 fails at once; node 1 would run for 10 minutes. dsmrun must stop it and report
  // node 0's status (RunCommand's bound ends the test if it does not).
  absl::StatusOr<std::string> out = RunCommand(
      {DSMRUN, "-n", "2", "--", "/bin/sh", "-c",
       "if [ \"$DSM_NODE_ID\" = 0 ]; then exit 5; fi; exec sleep 600"},
      milliseconds(60000));
  ASSERT_FALSE(out.ok());
  EXPECT_TRUE(absl::StrContains(out.status().message(), "node 0 exited with status 5"))
      << out.status();
}

TEST(Launch, DsmrunRejectsBadArguments) {
  for (std::vector<std::string> argv :
       {std::vector<std::string>{DSMRUN, "-n", "0", "--", "/bin/true"},
        std::vector<std::string>{DSMRUN, "-n", "2"},
        std::vector<std::string>{DSMRUN, "--bogus", "1", "--", "/bin/true"}}) {
    absl::StatusOr<std::string> out = RunCommand(argv, milliseconds(30000));
    ASSERT_FALSE(out.ok()) << absl::StrJoin(argv, " ");
    EXPECT_TRUE(absl::StrContains(out.status().message(), "Usage: dsmrun"))
        << out.status();
  }
}

}  // namespace
}  // namespace dsm::testing
