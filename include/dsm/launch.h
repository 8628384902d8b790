// dsm/launch.h: Options from the environment that a launcher sets (srun, mpirun, dsmrun, or a
// script), so one binary runs unchanged on a laptop and on a cluster.
//
//   absl::StatusOr<dsm::Options> o = dsm::OptionsFromEnvironment();
//   if (!o.ok()) { std::cerr << o.status() << "\n"; return 1; }   // names the variable
//   auto node = dsm::Node::Create(*o);
//
// Where the node id and the cluster size come from (first match wins):
//   DSM_NODE_ID + DSM_NUM_NODES (or the length of DSM_PEERS)
//   OMPI_COMM_WORLD_RANK + OMPI_COMM_WORLD_SIZE        (Open MPI's mpirun)
//   PMI_RANK + PMI_SIZE                                (MPICH / Hydra, Intel MPI)
//   SLURM_PROCID + SLURM_NTASKS                        (srun)
// Where the peer list comes from (first match wins):
//   DSM_PEERS     "host:port,host:port,..." indexed by node id.
//   DSM_HOSTFILE  a file with one host per line, "host", "host slots=N" or "host:port";
//                 '#' starts a comment. Node ids fill each line's slots in order (mpirun's
//                 by-slot mapping); a line without slots holds one node.
//   SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST) with SLURM_STEP_TASKS_PER_NODE (or
//                 SLURM_TASKS_PER_NODE): Slurm's compressed forms ("n[01-04,07],gpu1",
//                 "2(x3),1"); node ids are laid out in blocks (srun's default distribution).
// Ports: "host:port" entries keep theirs; otherwise the k-th node on a host listens on
// DSM_PORT + k (DSM_PORT defaults to kDefaultBasePort). Other variables:
//   DSM_LISTEN     address to listen on (Options::listen), e.g. "0.0.0.0:7470".
//   DSM_TRANSPORT  tcp (default) or rdma.
//   DSM_WAIT_FOR_CLUSTER  1: Node::Create waits until every peer is connected
//                 (Options::wait_for_cluster, bounded by connect_timeout); 0: it does not.
// Host names are resolved (IPv4) when the node starts. Every error names the variable and
// the value that is wrong. Fields not set by the environment keep their values from `base`.
//
// Thread safety: reads the process environment (getenv); call it before starting threads
// that modify the environment.
//
// C++17-clean: included by applications.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "dsm/abi.h"
#include "dsm/options.h"

DSM_NAMESPACE_BEGIN

inline constexpr uint16_t kDefaultBasePort = 7470;

absl::StatusOr<Options> OptionsFromEnvironment(const Options& base = Options());

DSM_NAMESPACE_END
