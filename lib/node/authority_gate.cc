#include "node/authority_gate.h"

#include "absl/time/clock.h"
#include "common/log.h"

namespace dsm {
namespace {

constexpr absl::Duration kLogInterval = absl::Seconds(10);

}  // namespace

AuthorityGate::AuthorityGate(NodeId self, const RegionTable* regions,
                             const RegionLifecycle* lifecycle, const LockService* locks)
    : self_(self), regions_(regions), lifecycle_(lifecycle), locks_(locks), log_(kLogInterval) {}

absl::Status AuthorityGate::Check(const Message& m) {
  absl::Status s = CheckAuthority(m, *this);
  if (s.ok()) return s;
  ++violations_;
  uint64_t count = 0;
  if (log_.Note(m.src, absl::Now(), &count)) {
    DSM_LOG(WARNING) << "closing the connection to node " << m.src << " (" << count
                     << " message(s) it may not send since the last line): " << s.message();
  }
  return s;
}

std::optional<NodeId> AuthorityGate::HomeOf(RegionId region, PageIndex page) const {
  const MappedRegion* r = regions_->Find(region);
  if (r == nullptr || page >= r->num_pages()) return std::nullopt;
  return r->HomeOf(page);
}

bool AuthorityGate::RecordsHolder(RegionId region, PageIndex page, NodeId node) const {
  MappedRegion* r = regions_->Find(region);
  return r != nullptr && r->directory() != nullptr && r->directory()->RecordsHolder(page, node);
}

bool AuthorityGate::AwaitsAck(RegionId region, PageIndex page, NodeId node, MsgType ack) const {
  MappedRegion* r = regions_->Find(region);
  return r != nullptr && r->directory() != nullptr && r->directory()->AwaitsAck(page, node, ack);
}

std::optional<uint64_t> AuthorityGate::OpAwaits(uint64_t req_id) const {
  return lifecycle_->AwaitedBy(req_id);
}

std::optional<NodeId> AuthorityGate::LockArbiterOf(uint64_t lock_id) const {
  return locks_->LockArbiterOf(lock_id);
}

std::optional<NodeId> AuthorityGate::LockPredecessorOf(uint64_t lock_id) const {
  return locks_->LockPredecessorOf(lock_id);
}

std::optional<NodeId> AuthorityGate::BarrierArbiterOf(uint64_t req_id) const {
  return locks_->BarrierArbiterOf(req_id);
}

}  // namespace dsm
