#include "lock/lock_client.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/node_set.h"

namespace dsm::lock {
namespace {

bool IsDown(uint64_t mask, NodeId n) { return InNodeSet(mask, n); }

}  // namespace

absl::Status LockReplyStatus(LockReplyCode code, NodeId arbiter) {
  switch (code) {
    case LockReplyCode::kGranted:
      return absl::OkStatus();
    case LockReplyCode::kQueued:
      return absl::InternalError("kQueued is not a final answer");
    case LockReplyCode::kBusy:
      return absl::AbortedError("lock: the range is held or awaited in a conflicting mode");
    case LockReplyCode::kBadRequest:
      return absl::InvalidArgumentError(absl::StrFormat(
          "lock: arbiter node %d refused the request (range outside the region?)", arbiter));
    case LockReplyCode::kNoSuchRegion:
      return absl::FailedPreconditionError(absl::StrFormat(
          "lock: the region is not mapped at its lock arbiter (node %d)", arbiter));
    case LockReplyCode::kNotArbiter:
      return absl::InternalError(
          absl::StrFormat("lock: node %d does not arbitrate this region's locks", arbiter));
    case LockReplyCode::kShuttingDown:
      return absl::UnavailableError(
          absl::StrFormat("lock: the region is being unmapped at its arbiter (node %d)", arbiter));
  }
  return absl::InternalError(absl::StrFormat("lock: unknown reply code %d", static_cast<int>(code)));
}

LockClient::LockClient(Config config, LockClientPort* port) : config_(config), port_(port) {}

void LockClient::SendSimple(MsgType type, const Request& r, uint64_t id) {
  Message m;
  m.type = type;
  m.src = config_.self;
  m.dst = r.arbiter;
  m.region = r.region;
  m.req_id = id;
  port_->Send(std::move(m));
}

uint64_t LockClient::Acquire(RegionId region, NodeId arbiter, uint64_t region_size,
                             const LockRequest& request, absl::Time now, LockCallback done,
                             uint64_t id) {
  if (id == 0) id = next_id_++;
  ++counters_.requests;
  auto fail = [&](absl::Status s) {
    ++counters_.failed;
    done(std::move(s));
    return id;
  };
  if (requests_.contains(id)) return fail(absl::InvalidArgumentError("lock: id in use"));
  const uint64_t len = request.length;
  if (len == 0 || len > kMaxLockLength || request.offset > UINT64_MAX - len ||
      (region_size != 0 && request.offset + len > region_size)) {
    return fail(absl::InvalidArgumentError(
        absl::StrFormat("lock: range [%d, +%d) is empty, too long or outside the region (%d "
                        "bytes)",
                        request.offset, len, region_size)));
  }
  if (request.mode != LockMode::kShared && request.mode != LockMode::kExclusive) {
    return fail(absl::InvalidArgumentError("lock: bad mode"));
  }
  if (IsDown(down_mask_, arbiter)) {
    return fail(absl::UnavailableError(
        absl::StrFormat("lock: the region's lock arbiter (node %d) is down", arbiter)));
  }
  if (request.deadline <= now) {
    ++counters_.deadline_expired;
    return fail(absl::DeadlineExceededError("lock: deadline already passed"));
  }
  requests_.emplace(id,
                    Request{region, arbiter, request, State::kPending, std::move(done), now});
  ++num_pending_;
  if (request.deadline != absl::InfiniteFuture()) deadlines_.emplace(request.deadline, id);
  Message m;
  m.type = MsgType::kLockAcquire;
  m.src = config_.self;
  m.dst = arbiter;
  m.region = region;
  m.page = request.offset;
  m.req_id = id;
  m.arg = PackAcquireArg(len, request.mode, request.try_lock);
  port_->Send(std::move(m));
  return id;
}

void LockClient::CollectOverdue(absl::Time now, absl::Duration timeout,
                                std::vector<NodeId>* peers) const {
  uint64_t seen = 0;
  for (const auto& [id, r] : requests_) {
    if (r.state != State::kPending || now - r.sent <= timeout || r.arbiter >= kMaxNodes ||
        ((seen >> r.arbiter) & 1) != 0) {
      continue;
    }
    seen |= uint64_t{1} << r.arbiter;
    peers->push_back(r.arbiter);
  }
}

void LockClient::FailPending(uint64_t id, absl::Status status) {
  auto it = requests_.find(id);
  Request r = std::move(it->second);
  requests_.erase(it);
  --num_pending_;
  deadlines_.erase({r.request.deadline, id});
  ++counters_.failed;
  r.done(std::move(status));
}

absl::Status LockClient::Release(uint64_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) {
    return absl::NotFoundError(absl::StrFormat("lock %d is neither held nor pending", id));
  }
  switch (it->second.state) {
    case State::kHeld:
      SendRelease(it->second, id);
      requests_.erase(it);
      ++counters_.released;
      return absl::OkStatus();
    case State::kLost: {
      const NodeId arbiter = it->second.arbiter;
      requests_.erase(it);
      return absl::UnavailableError(absl::StrFormat(
          "lock %d was lost: its arbiter (node %d) went down while it was held", id, arbiter));
    }
    case State::kPending:
    case State::kQueued:
      SendSimple(MsgType::kLockCancel, it->second, id);
      ++counters_.cancelled;
      FailPending(id, absl::CancelledError("lock request withdrawn"));
      return absl::OkStatus();
  }
  return absl::InternalError("bad lock state");
}

void LockClient::SendRelease(const Request& r, uint64_t id) {
  if (!r.has_successor || IsDown(down_mask_, r.successor_node)) {
    SendSimple(MsgType::kLockRelease, r, id);
    return;
  }
  ++counters_.handoffs_sent;
  Message h;  // the grant first: it is what the successor waits for
  h.type = MsgType::kLockHandoff;
  h.src = config_.self;
  h.dst = r.successor_node;
  h.region = r.region;
  h.req_id = r.successor_id;
  h.page = id;
  h.arg = r.successor_died ? 1 : 0;
  port_->Send(std::move(h));
  Message p;
  p.type = MsgType::kLockPassed;
  p.src = config_.self;
  p.dst = r.arbiter;
  p.region = r.region;
  p.req_id = id;
  p.page = r.successor_id;
  p.arg = PackSuccessorArg(r.successor_node, /*died=*/false);
  port_->Send(std::move(p));
}

void LockClient::OnMessage(const Message& m, absl::Time now) {
  (void)now;
  switch (m.type) {
    case MsgType::kLockReply:
      return OnReply(m);
    case MsgType::kLockSuccessor:
      return OnSuccessor(m);
    case MsgType::kLockHandoff:
      return OnHandoff(m);
    default:
      return;
  }
}

void LockClient::OnSuccessor(const Message& m) {
  auto it = requests_.find(m.req_id);
  if (it == requests_.end() || it->second.arbiter != m.src || it->second.region != m.region ||
      it->second.state == State::kLost) {
    return;  // released before the hint arrived: the arbiter grants as it always did
  }
  Request& r = it->second;
  ++counters_.hints;
  r.has_successor = true;
  r.successor_node = SuccessorNode(m.arg);
  r.successor_died = SuccessorDied(m.arg);
  r.successor_id = m.page;
}

void LockClient::OnHandoff(const Message& m) {
  auto it = requests_.find(m.req_id);
  if (it == requests_.end() || it->second.region != m.region ||
      (it->second.state != State::kPending && it->second.state != State::kQueued)) {
    ++counters_.stray_handoffs;  // withdrawn, or granted already (by the arbiter's reply)
    return;
  }
  Request& r = it->second;
  if (!r.pred_named) {  // crossed the naming: keep it until the naming arrives
    r.early |= NodeBit(m.src);
    if (m.arg != 0) r.early_died |= NodeBit(m.src);
    return;
  }
  if (r.pred != m.src) {
    ++counters_.forged_handoffs;
    return;
  }
  ++counters_.handoffs_received;
  GrantPending(it, m.arg != 0);
}

void LockClient::GrantPending(absl::flat_hash_map<uint64_t, Request>::iterator it, bool died) {
  Request& r = it->second;
  const uint64_t id = it->first;
  r.state = State::kHeld;
  r.early = r.early_died = 0;
  --num_pending_;
  deadlines_.erase({r.request.deadline, id});
  ++counters_.granted;
  LockCallback done = std::move(r.done);
  r.done = nullptr;
  done(LockHandle(id, r.request.offset, r.request.length, r.request.mode, died));
}

void LockClient::OnReply(const Message& m) {
  auto it = requests_.find(m.req_id);
  if (it == requests_.end() || it->second.arbiter != m.src ||
      it->second.region != m.region ||
      (it->second.state != State::kPending && it->second.state != State::kQueued)) {
    ++counters_.stray_replies;  // withdrawn or released already, or a duplicate
    return;
  }
  Request& r = it->second;
  const LockReplyCode code = LockReplyCodeOf(m.arg);
  if (code == LockReplyCode::kQueued) {
    if (r.state == State::kPending) ++counters_.queued;
    r.state = State::kQueued;
    if (LockReplyNamesPredecessor(m.arg) && !r.pred_named) {
      r.pred_named = true;
      r.pred = LockReplyPredecessor(m.arg);
      const uint64_t bit = NodeBit(r.pred);
      const bool died = (r.early_died & bit) != 0;
      if ((r.early & ~bit) != 0) ++counters_.forged_handoffs;
      if ((r.early & bit) != 0) {
        ++counters_.handoffs_received;
        GrantPending(it, died);
        return;
      }
      r.early = r.early_died = 0;
    }
    return;
  }
  if (code != LockReplyCode::kGranted) {
    FailPending(m.req_id, LockReplyStatus(code, m.src));
    return;
  }
  GrantPending(it, LockReplyDied(m.arg));
}

void LockClient::OnPeerDown(NodeId peer) {
  down_mask_ |= NodeBit(peer);
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : requests_) {
    if (r.arbiter == peer) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;  // a callback released it
    if (it->second.state == State::kHeld) {
      it->second.state = State::kLost;
      ++counters_.lost;
    } else if (it->second.state != State::kLost) {
      FailPending(id, absl::UnavailableError(absl::StrFormat(
                          "lock: the region's lock arbiter (node %d) is down", peer)));
    }
  }
}

void LockClient::OnTick(absl::Time now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t id = deadlines_.begin()->second;
    SendSimple(MsgType::kLockCancel, requests_.at(id), id);
    ++counters_.deadline_expired;
    FailPending(id, absl::DeadlineExceededError("lock: deadline passed before the grant"));
  }
}

absl::Time LockClient::NextDeadline() const {
  return deadlines_.empty() ? absl::InfiniteFuture() : deadlines_.begin()->first;
}

void LockClient::ForgetRegion(RegionId region) {
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : requests_) {
    if (r.region == region) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;
    if (it->second.state == State::kPending || it->second.state == State::kQueued) {
      SendSimple(MsgType::kLockCancel, it->second, id);
      FailPending(id, absl::UnavailableError("lock: the region was unmapped on this node"));
    } else {
      if (it->second.state == State::kHeld) SendSimple(MsgType::kLockRelease, it->second, id);
      requests_.erase(it);
    }
  }
}

void LockClient::FailAll(const absl::Status& why) {
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : requests_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;
    if (it->second.state == State::kPending || it->second.state == State::kQueued) {
      if (!IsDown(down_mask_, it->second.arbiter)) {
        SendSimple(MsgType::kLockCancel, it->second, id);
      }
      FailPending(id, why);
    } else {
      if (it->second.state == State::kHeld) SendSimple(MsgType::kLockRelease, it->second, id);
      requests_.erase(it);
    }
  }
}

bool LockClient::is_pending(uint64_t id) const {
  auto it = requests_.find(id);
  return it != requests_.end() &&
         (it->second.state == State::kPending || it->second.state == State::kQueued);
}

bool LockClient::is_held(uint64_t id) const {
  auto it = requests_.find(id);
  return it != requests_.end() && it->second.state == State::kHeld;
}

}  // namespace dsm::lock
