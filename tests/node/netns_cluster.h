// NetnsCluster: N network namespaces joined into one /24 by veth pairs on a bridge, for tests
// that need several "hosts" on one machine.
//
//   if (std::string why = NetnsCluster::Unavailable(); !why.empty()) GTEST_SKIP() << why;
//   ASSERT_OK_AND_ASSIGN(auto net, NetnsCluster::Create(3));
//   net->ns(0);        // "dsmt-<pid>-<seq>-n0": pass to Subprocess::Spawn::netns
//   net->address(0);   // "10.77.<seq>.1"
//
// Topology: a star. Namespace n<i> holds `eth0` (address 10.77.<seq>.<i+1>/24) and `lo`; the
// other end of each veth is a port of bridge `br0` in one extra namespace (`-br`). Everything is
// created with `ip` and removed by the destructor (deleting a namespace deletes the veth ends in
// it). Names carry the creating pid, so Create() first removes namespaces left behind by test
// processes that died (CleanupStale()).
//
// Thread safety: none needed; one test owns one cluster.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsm::testing {

class NetnsCluster {
 public:
  // Empty when namespaces can be made here; otherwise the reason (for GTEST_SKIP).
  static std::string Unavailable();

  static absl::StatusOr<std::unique_ptr<NetnsCluster>> Create(int n);

  // Removes namespaces named dsmt-<pid>-* whose process no longer exists.
  static void CleanupStale();

  // Moves the calling thread (only) into namespace `name`. Sockets created afterwards by this
  // thread live there.
  static absl::Status EnterOnThisThread(const std::string& name);

  ~NetnsCluster();
  NetnsCluster(const NetnsCluster&) = delete;
  NetnsCluster& operator=(const NetnsCluster&) = delete;

  int size() const { return static_cast<int>(hosts_.size()); }
  const std::string& ns(int i) const { return hosts_[static_cast<size_t>(i)]; }
  std::string address(int i) const;
  // Takes host i's interface down (cut off from every other host) or up again.
  absl::Status SetLinkUp(int i, bool up);

 private:
  NetnsCluster() = default;
  absl::Status Build(int n);
  void Destroy();

  int subnet_ = 0;                  // third octet
  std::string prefix_;              // dsmt-<pid>-<seq>
  std::string bridge_ns_;           // empty until created
  std::vector<std::string> hosts_;  // created host namespaces
};

}  // namespace dsm::testing
