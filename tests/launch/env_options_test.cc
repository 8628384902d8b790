#include "launch/env_options.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsm::launch {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct FakeEnv {
  std::map<std::string, std::string> vars;
  std::map<std::string, std::string> files;

  absl::StatusOr<Options> Get(const Options& base = Options()) const {
    return OptionsFromLookup(
        [this](const char* name) -> std::optional<std::string> {
          auto it = vars.find(name);
          if (it == vars.end()) return std::nullopt;
          return it->second;
        },
        [this](const std::string& path) -> absl::StatusOr<std::string> {
          auto it = files.find(path);
          if (it == files.end()) return absl::NotFoundError("cannot open " + path);
          return it->second;
        },
        base);
  }
};

std::string Message(const absl::StatusOr<Options>& o) {
  return std::string(o.status().message());
}

TEST(EnvOptions, ExplicitIdAndPeers) {
  FakeEnv env{{{"DSM_NODE_ID", "1"}, {"DSM_PEERS", "10.0.0.1:7000, 10.0.0.2:7000"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->node_id, 1u);
  EXPECT_THAT(o->peers, ElementsAre("10.0.0.1:7000", "10.0.0.2:7000"));
}

TEST(EnvOptions, PeersWithoutPortsGetConsecutivePortsPerHost) {
  FakeEnv env{{{"DSM_NODE_ID", "0"}, {"DSM_PEERS", "a,b,a"}, {"DSM_PORT", "9000"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->peers, ElementsAre("a:9000", "b:9000", "a:9001"));
}

TEST(EnvOptions, SlurmCompressedListsLayOutNodesInBlocks) {
  FakeEnv env{{{"SLURM_PROCID", "4"},
               {"SLURM_NTASKS", "5"},
               {"SLURM_JOB_NODELIST", "n[01-02],gpu7"},
               {"SLURM_STEP_TASKS_PER_NODE", "2(x2),1"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->node_id, 4u);
  EXPECT_THAT(o->peers, ElementsAre("n01:7470", "n01:7471", "n02:7470", "n02:7471",
                                    "gpu7:7470"));
}

TEST(EnvOptions, SlurmStepListWinsOverTheJobList) {
  FakeEnv env{{{"SLURM_PROCID", "0"},
               {"SLURM_NTASKS", "1"},
               {"SLURM_JOB_NODELIST", "n[01-09]"},
               {"SLURM_STEP_NODELIST", "n03"},
               {"SLURM_STEP_TASKS_PER_NODE", "1"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->peers, ElementsAre("n03:7470"));
}

TEST(EnvOptions, SlurmTaskCountMismatchNamesBothVariables) {
  FakeEnv env{{{"SLURM_PROCID", "0"},
               {"SLURM_NTASKS", "4"},
               {"SLURM_JOB_NODELIST", "n[1-2]"},
               {"SLURM_TASKS_PER_NODE", "1(x2)"}}};
  auto o = env.Get();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(Message(o), HasSubstr("SLURM_NTASKS=4"));
  EXPECT_THAT(Message(o), HasSubstr("lists 2 nodes"));
}

TEST(EnvOptions, OpenMpiRankWithHostFileSlots) {
  FakeEnv env{{{"OMPI_COMM_WORLD_RANK", "2"},
               {"OMPI_COMM_WORLD_SIZE", "3"},
               {"DSM_HOSTFILE", "/hosts"}},
              {{"/hosts", "# cluster\nhostA slots=2\n\nhostB slots=4  # only one used\n"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->node_id, 2u);
  EXPECT_THAT(o->peers, ElementsAre("hostA:7470", "hostA:7471", "hostB:7470"));
}

TEST(EnvOptions, PmiRankWithHostFileOfExplicitPorts) {
  FakeEnv env{{{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"DSM_HOSTFILE", "/h"}},
              {{"/h", "10.0.0.1:7000\n10.0.0.2:7100\n"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->peers, ElementsAre("10.0.0.1:7000", "10.0.0.2:7100"));
}

TEST(EnvOptions, HostFileWithTooFewSlotsIsAnError) {
  FakeEnv env{{{"PMI_RANK", "0"}, {"PMI_SIZE", "3"}, {"DSM_HOSTFILE", "/h"}},
              {{"/h", "a slots=2\n"}}};
  auto o = env.Get();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(Message(o), HasSubstr("PMI_SIZE=3"));
}

TEST(EnvOptions, BadHostFileLineNamesFileAndLine) {
  FakeEnv env{{{"DSM_NODE_ID", "0"}, {"DSM_HOSTFILE", "/h"}}, {{"/h", "a\nb slots=x\n"}}};
  auto o = env.Get();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(Message(o), HasSubstr("/h:2"));
}

TEST(EnvOptions, MissingHostFileNamesTheVariable) {
  FakeEnv env{{{"DSM_NODE_ID", "0"}, {"DSM_HOSTFILE", "/nope"}}};
  auto o = env.Get();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(Message(o), HasSubstr("DSM_HOSTFILE='/nope'"));
}

TEST(EnvOptions, DsmVariablesWinOverLauncherVariables) {
  FakeEnv env{{{"DSM_NODE_ID", "0"},
               {"DSM_PEERS", "x:1,y:1"},
               {"SLURM_PROCID", "1"},
               {"SLURM_NTASKS", "2"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->node_id, 0u);
  EXPECT_THAT(o->peers, ElementsAre("x:1", "y:1"));
}

TEST(EnvOptions, ErrorsNameTheVariableAndValue) {
  struct Case {
    std::map<std::string, std::string> vars;
    const char* expect;
  } cases[] = {
      {{}, "no node id in the environment"},
      {{{"DSM_NODE_ID", "x"}, {"DSM_PEERS", "a:1"}}, "DSM_NODE_ID='x'"},
      {{{"DSM_NODE_ID", "2"}, {"DSM_PEERS", "a:1,b:1"}}, "DSM_NODE_ID='2'"},
      {{{"DSM_NODE_ID", "0"}, {"DSM_PEERS", "a:99999"}}, "port must be"},
      {{{"DSM_NODE_ID", "0"}, {"DSM_NUM_NODES", "3"}, {"DSM_PEERS", "a:1"}}, "DSM_NUM_NODES=3"},
      {{{"DSM_NODE_ID", "0"}, {"DSM_NUM_NODES", "2"}}, "no peer list"},
      {{{"DSM_NODE_ID", "0"}, {"DSM_PEERS", "a:1"}, {"DSM_PORT", "0"}}, "DSM_PORT='0'"},
      {{{"DSM_NODE_ID", "0"}, {"DSM_PEERS", "a:1"}, {"DSM_TRANSPORT", "udp"}}, "DSM_TRANSPORT"},
      {{{"DSM_NODE_ID", "0"}, {"DSM_PEERS", "a:1"}, {"DSM_WAIT_FOR_CLUSTER", "yes"}},
       "DSM_WAIT_FOR_CLUSTER='yes'"},
      {{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}, "run the program with srun"},
      {{{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "65"}}, "OMPI_COMM_WORLD_SIZE"},
  };
  for (const Case& c : cases) {
    FakeEnv env{c.vars};
    auto o = env.Get();
    ASSERT_FALSE(o.ok()) << c.expect;
    EXPECT_THAT(Message(o), HasSubstr(c.expect));
  }
}

TEST(EnvOptions, OneNodeNeedsNoPeerList) {
  FakeEnv env{{{"DSM_NODE_ID", "0"}, {"DSM_NUM_NODES", "1"}, {"DSM_PORT", "7600"}}};
  auto o = env.Get();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->peers, ElementsAre("localhost:7600"));
}

TEST(EnvOptions, FieldsNotInTheEnvironmentKeepTheBase) {
  Options base;
  base.cache_budget_bytes = 1 << 20;
  base.listen = "0.0.0.0:1";
  FakeEnv env{{{"DSM_NODE_ID", "0"}, {"DSM_PEERS", "a:1"}, {"DSM_TRANSPORT", "RDMA"},
               {"DSM_WAIT_FOR_CLUSTER", "1"}}};
  auto o = env.Get(base);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->wait_for_cluster);
  EXPECT_FALSE(base.wait_for_cluster);
  EXPECT_EQ(o->cache_budget_bytes, size_t{1} << 20);
  EXPECT_EQ(o->listen, "0.0.0.0:1");
  EXPECT_EQ(o->transport, TransportKind::kRdma);
}

}  // namespace
}  // namespace dsm::launch
