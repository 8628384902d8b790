// Options from launcher variables (dsm/launch.h documents the table). The environment is read
// through a lookup function so tests can pass their own variables.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dsm/options.h"

namespace dsm::launch {

// Returns the variable's value, or nullopt when it is not set.
using Lookup = std::function<std::optional<std::string>(const char* name)>;
// Reads a whole file (DSM_HOSTFILE).
using ReadFile = std::function<absl::StatusOr<std::string>(const std::string& path)>;

absl::StatusOr<Options> OptionsFromLookup(const Lookup& env, const ReadFile& read_file,
                                          const Options& base);

// One node slot of a host file or a Slurm allocation, before ports are assigned.
struct Placement {
  std::string host;
  std::optional<uint16_t> port;  // explicit "host:port"
};

// A host file's lines, each repeated by its slot count. `where` names the file in errors.
absl::StatusOr<std::vector<Placement>> ParseHostFile(absl::string_view text,
                                                     absl::string_view where);

// "host:port" for each placement: explicit ports kept; the k-th placement on a host without
// one gets base_port + k.
absl::StatusOr<std::vector<std::string>> AssignPorts(const std::vector<Placement>& placements,
                                                     uint16_t base_port);

}  // namespace dsm::launch
