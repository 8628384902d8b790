// AuthorityGate: the node's enforcement of the message authority table (protocol/authority.h).
// The engine asks it about every message a peer sends, after the transport validated it and
// before dispatch; it answers the table's questions from the node's state (the regions mapped
// here, their directories, the region operations in progress, the lock service).
//
// A violation is counted (Stats::authority_violations) and logged, one line per offending
// peer per 10 s standing for every violation since; the engine then closes the connection to
// the sender and declares it down, as for a message that fails validation.
//
// Thread safety: engine thread only.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "node/lock_service.h"
#include "node/region_lifecycle.h"
#include "node/region_table.h"
#include "protocol/authority.h"
#include "transport/admission/limits.h"

namespace dsm {

class AuthorityGate final : public AuthorityFacts {
 public:
  // The pointees outlive the gate.
  AuthorityGate(NodeId self, const RegionTable* regions, const RegionLifecycle* lifecycle,
                const LockService* locks);

  // OK: dispatch `m`. Otherwise the violation (counted and logged): drop `m` and cut its
  // sender off.
  absl::Status Check(const Message& m);
  uint64_t violations() const { return violations_; }

  // AuthorityFacts.
  NodeId self() const override { return self_; }
  std::optional<NodeId> HomeOf(RegionId region, PageIndex page) const override;
  bool RecordsHolder(RegionId region, PageIndex page, NodeId node) const override;
  bool AwaitsAck(RegionId region, PageIndex page, NodeId node, MsgType ack) const override;
  std::optional<uint64_t> OpAwaits(uint64_t req_id) const override;
  std::optional<NodeId> LockArbiterOf(uint64_t lock_id) const override;
  std::optional<NodeId> LockPredecessorOf(uint64_t lock_id) const override;
  std::optional<NodeId> BarrierArbiterOf(uint64_t req_id) const override;

 private:
  const NodeId self_;
  const RegionTable* const regions_;
  const RegionLifecycle* const lifecycle_;
  const LockService* const locks_;
  uint64_t violations_ = 0;
  admission::RateLimitedLog log_;  // keyed by the offending node's id
};

}  // namespace dsm
