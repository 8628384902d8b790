// Subprocess: a child process the tests drive through its stdin and stdout, optionally started
// inside a network namespace (the child setns()es into /run/netns/<name> before exec).
//
// Line protocol helpers: SendLine() writes one command, ReadLine() waits (bounded) for one line
// of the child's stdout. The child's stderr goes to the test's stderr, prefixed by nothing, so a
// failing worker's log shows up in the test output.
//
// Thread safety: one Subprocess is used by one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsm::testing {

// Runs argv[0] (searched in PATH) to completion, capturing stdout+stderr. Returns the output
// when the exit status is 0, an error with the output otherwise. Bounded by `timeout`.
absl::StatusOr<std::string> RunCommand(
    const std::vector<std::string>& argv,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));

// Processes spawned into a network namespace reach each other over non-loopback addresses,
// where a cluster refuses to start without a key: Subprocess::Start gives each of them
// DSM_CLUSTER_KEY=kNamespaceClusterKey unless Spawn::env sets DSM_CLUSTER_KEY itself. A node
// the test runs in its own process next to them sets Options::cluster_key to the same.
inline constexpr char kNamespaceClusterKey[] = "dsm-tests-namespace-cluster-key-0123456789";

class Subprocess {
 public:
  struct Spawn {
    std::vector<std::string> argv;  // argv[0] is a path
    std::string netns;              // empty: stay in the caller's network namespace
    std::string label;              // used in messages ("node1")
    std::vector<std::string> env;   // "NAME=value" added to (or replacing in) the environment
  };
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const Spawn& spawn);

  // Kills (SIGKILL) and reaps the child if it still runs.
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& label() const { return label_; }

  absl::Status SendLine(const std::string& line);
  // Closes the child's stdin (it sees EOF).
  void CloseStdin();
  // Next line of stdout without the newline; DeadlineExceeded / error at EOF. Each line the
  // child prints is also appended to transcript().
  absl::StatusOr<std::string> ReadLine(std::chrono::milliseconds timeout);
  // SendLine + ReadLine.
  absl::StatusOr<std::string> Call(const std::string& line, std::chrono::milliseconds timeout);

  void Kill(int sig);
  // Waits (bounded) for exit; returns the raw wait status. Kills with SIGKILL on timeout and
  // returns DeadlineExceeded.
  absl::StatusOr<int> Wait(std::chrono::milliseconds timeout);

  const std::string& transcript() const { return transcript_; }

 private:
  Subprocess() = default;

  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  bool reaped_ = false;
  int wait_status_ = 0;
  std::string label_;
  std::string buffer_;      // unread stdout bytes
  std::string transcript_;  // every line read so far
};

// Describes a wait status ("exit 0", "killed by SIGBUS").
std::string DescribeWaitStatus(int status);

// How a set of node_worker processes came up: each prints "ready", or an error, as its first
// line.
struct WorkersStart {
  enum Outcome { kReady, kPortsCollided, kUffdUnavailable, kFailed };
  Outcome outcome = kReady;
  std::string errors;  // "node1: ...; node2: ..." unless kReady
};

// Reads each worker's first line (each within `timeout`). With `may_collide` (loopback ports
// picked at random) a worker that found its port in use makes the start kPortsCollided, to be
// retried with other ports; otherwise a failed start is kUffdUnavailable when the first
// worker exited with 77, else kFailed.
WorkersStart AwaitWorkersReady(const std::vector<std::unique_ptr<Subprocess>>& workers,
                               std::chrono::milliseconds timeout, bool may_collide);

}  // namespace dsm::testing
