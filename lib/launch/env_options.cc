#include "launch/env_options.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "dsm/launch.h"
#include "launch/hostlist.h"

namespace dsm::launch {
namespace {

absl::Status BadVar(const char* name, absl::string_view value, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(name, "='", value, "': ", why));
}

absl::StatusOr<uint64_t> Number(const char* name, const std::string& value) {
  uint64_t v = 0;
  if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(value, &v)) {
    return BadVar(name, value, "not a non-negative integer");
  }
  return v;
}

// The rank/size pair of one launcher family.
struct RankSource {
  const char* rank;
  const char* size;
};
constexpr RankSource kRankSources[] = {
    {"DSM_NODE_ID", "DSM_NUM_NODES"},
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
    {"PMI_RANK", "PMI_SIZE"},
    {"SLURM_PROCID", "SLURM_NTASKS"},
};

absl::StatusOr<std::optional<uint16_t>> PortOf(absl::string_view entry, absl::string_view where,
                                               std::string* host) {
  const size_t colon = entry.rfind(':');
  *host = std::string(entry.substr(0, colon));
  if (colon == absl::string_view::npos) return std::optional<uint16_t>();
  uint32_t port = 0;
  const absl::string_view p = entry.substr(colon + 1);
  if (p.empty() || p.find_first_not_of("0123456789") != absl::string_view::npos ||
      !absl::SimpleAtoi(p, &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": '", entry, "': port must be a number in 1..65535"));
  }
  if (host->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": '", entry, "': empty host"));
  }
  return std::optional<uint16_t>(static_cast<uint16_t>(port));
}

absl::StatusOr<std::vector<Placement>> SlurmPlacements(const Lookup& env) {
  const char* list_var = "SLURM_STEP_NODELIST";
  std::optional<std::string> list = env(list_var);
  if (!list) list = env(list_var = "SLURM_JOB_NODELIST");
  const char* tasks_var = "SLURM_STEP_TASKS_PER_NODE";
  std::optional<std::string> tasks = env(tasks_var);
  if (!tasks) tasks = env(tasks_var = "SLURM_TASKS_PER_NODE");
  if (!list || !tasks) {
    return absl::InvalidArgumentError(
        "SLURM_PROCID is set but SLURM_STEP_NODELIST/SLURM_JOB_NODELIST or "
        "SLURM_STEP_TASKS_PER_NODE/SLURM_TASKS_PER_NODE is not: run the program with srun");
  }
  DSM_ASSIGN_OR_RETURN(std::vector<std::string> hosts, ExpandHostList(*list));
  DSM_ASSIGN_OR_RETURN(std::vector<uint32_t> counts, ExpandTasksPerNode(*tasks));
  if (hosts.size() != counts.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        list_var, " names ", hosts.size(), " hosts but ", tasks_var, "='", *tasks, "' gives ",
        counts.size(), " task counts"));
  }
  std::vector<Placement> out;
  for (size_t i = 0; i < hosts.size(); ++i) {
    for (uint32_t k = 0; k < counts[i]; ++k) out.push_back(Placement{hosts[i], std::nullopt});
  }
  return out;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::vector<Placement>> ParseHostFile(absl::string_view text,
                                                     absl::string_view where) {
  std::vector<Placement> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const std::string at = absl::StrCat(where, ":", line_no);
    std::vector<absl::string_view> words = absl::StrSplit(line, absl::ByAnyChar(" \t"),
                                                          absl::SkipEmpty());
    uint64_t slots = 1;
    for (size_t i = 1; i < words.size(); ++i) {
      absl::string_view w = words[i];
      if (!absl::ConsumePrefix(&w, "slots=") || w.empty() ||
          w.find_first_not_of("0123456789") != absl::string_view::npos ||
          !absl::SimpleAtoi(w, &slots) || slots == 0 || slots > kMaxNodes) {
        return absl::InvalidArgumentError(absl::StrCat(
            at, ": '", words[i], "': expected slots=N with N in 1..", kMaxNodes));
      }
    }
    Placement p;
    DSM_ASSIGN_OR_RETURN(p.port, PortOf(words[0], at, &p.host));
    if (p.port && slots > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": a host:port line holds one node; drop slots= or the port"));
    }
    for (uint64_t k = 0; k < slots; ++k) out.push_back(p);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> AssignPorts(const std::vector<Placement>& placements,
                                                     uint16_t base_port) {
  absl::flat_hash_map<std::string, uint32_t> next;  // per host: how many ports handed out
  std::vector<std::string> out;
  for (const Placement& p : placements) {
    if (p.port) {
      out.push_back(absl::StrCat(p.host, ":", *p.port));
      continue;
    }
    const uint32_t port = uint32_t{base_port} + next[p.host]++;
    if (port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("DSM_PORT ", base_port, " leaves no port for node ", out.size(),
                       " on ", p.host));
    }
    out.push_back(absl::StrCat(p.host, ":", port));
  }
  return out;
}

absl::StatusOr<Options> OptionsFromLookup(const Lookup& env, const ReadFile& read_file,
                                          const Options& base) {
  Options o = base;
  // Node id and cluster size.
  const RankSource* source = nullptr;
  std::string rank_value;
  for (const RankSource& s : kRankSources) {
    if (std::optional<std::string> v = env(s.rank)) {
      source = &s;
      rank_value = *v;
      break;
    }
  }
  if (source == nullptr) {
    return absl::InvalidArgumentError(
        "no node id in the environment: set DSM_NODE_ID and DSM_PEERS (or DSM_HOSTFILE), "
        "or start the program with srun, mpirun or dsmrun");
  }
  DSM_ASSIGN_OR_RETURN(const uint64_t rank, Number(source->rank, rank_value));
  std::optional<uint64_t> size;
  if (std::optional<std::string> v = env(source->size)) {
    DSM_ASSIGN_OR_RETURN(size, Number(source->size, *v));
    if (*size == 0 || *size > kMaxNodes) {
      return BadVar(source->size, *v, absl::StrCat("must be in 1..", kMaxNodes));
    }
  }

  uint16_t base_port = kDefaultBasePort;
  if (std::optional<std::string> v = env("DSM_PORT")) {
    DSM_ASSIGN_OR_RETURN(const uint64_t p, Number("DSM_PORT", *v));
    if (p == 0 || p > 65535) return BadVar("DSM_PORT", *v, "must be in 1..65535");
    base_port = static_cast<uint16_t>(p);
  }

  // The peer list.
  std::vector<std::string> peers;
  std::string peers_from;
  if (std::optional<std::string> v = env("DSM_PEERS")) {
    peers_from = "DSM_PEERS";
    std::vector<Placement> placements;
    for (absl::string_view e : absl::StrSplit(*v, ',', absl::SkipWhitespace())) {
      Placement p;
      DSM_ASSIGN_OR_RETURN(p.port, PortOf(absl::StripAsciiWhitespace(e), "DSM_PEERS", &p.host));
      placements.push_back(std::move(p));
    }
    if (placements.empty()) return BadVar("DSM_PEERS", *v, "lists no node");
    DSM_ASSIGN_OR_RETURN(peers, AssignPorts(placements, base_port));
  } else if (std::optional<std::string> path = env("DSM_HOSTFILE")) {
    peers_from = absl::StrCat("DSM_HOSTFILE (", *path, ")");
    absl::StatusOr<std::string> text = read_file(*path);
    if (!text.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("DSM_HOSTFILE='", *path, "': ", text.status().message()));
    }
    DSM_ASSIGN_OR_RETURN(std::vector<Placement> placements, ParseHostFile(*text, *path));
    if (size && placements.size() > *size) placements.resize(*size);  // unused slots
    DSM_ASSIGN_OR_RETURN(peers, AssignPorts(placements, base_port));
  } else if (env("SLURM_PROCID")) {
    peers_from = "the Slurm allocation";
    DSM_ASSIGN_OR_RETURN(std::vector<Placement> placements, SlurmPlacements(env));
    DSM_ASSIGN_OR_RETURN(peers, AssignPorts(placements, base_port));
  } else if (size && *size == 1) {
    peers_from = "a one-node cluster";
    peers = {absl::StrCat("localhost:", base_port)};
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        source->rank, " is set but no peer list is: set DSM_PEERS (host:port,...) or "
        "DSM_HOSTFILE (one host per line, optional slots=N)"));
  }
  if (peers.size() > kMaxNodes) {
    return absl::InvalidArgumentError(absl::StrCat(peers_from, " lists ", peers.size(),
                                                   " nodes; at most ", kMaxNodes));
  }
  if (size && *size != peers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(source->size, "=", *size, " but ",
                                                   peers_from, " lists ", peers.size(),
                                                   " nodes"));
  }
  if (rank >= peers.size()) {
    return BadVar(source->rank, rank_value,
                  absl::StrCat("not below the cluster size ", peers.size(), " (from ",
                               peers_from, ")"));
  }
  o.node_id = static_cast<NodeId>(rank);
  o.peers = std::move(peers);

  if (std::optional<std::string> v = env("DSM_LISTEN")) o.listen = *v;
  if (std::optional<std::string> v = env("DSM_TRANSPORT")) {
    const std::string t = absl::AsciiStrToLower(*v);
    if (t == "tcp") {
      o.transport = TransportKind::kTcp;
    } else if (t == "rdma") {
      o.transport = TransportKind::kRdma;
    } else {
      return BadVar("DSM_TRANSPORT", *v, "expected tcp or rdma");
    }
  }
  if (std::optional<std::string> v = env("DSM_WAIT_FOR_CLUSTER")) {
    if (*v == "1") {
      o.wait_for_cluster = true;
    } else if (*v == "0") {
      o.wait_for_cluster = false;
    } else {
      return BadVar("DSM_WAIT_FOR_CLUSTER", *v, "expected 0 or 1");
    }
  }
  return o;
}

}  // namespace dsm::launch

DSM_NAMESPACE_BEGIN

absl::StatusOr<Options> OptionsFromEnvironment(const Options& base) {
  return launch::OptionsFromLookup(
      [](const char* name) -> std::optional<std::string> {
        const char* v = std::getenv(name);
        if (v == nullptr) return std::nullopt;
        return std::string(v);
      },
      launch::ReadWholeFile, base);
}

DSM_NAMESPACE_END
