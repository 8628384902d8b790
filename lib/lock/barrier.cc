#include "lock/barrier.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/node_set.h"

namespace dsm::lock {
namespace {

bool Has(uint64_t mask, NodeId n) { return InNodeSet(mask, n); }

}  // namespace

absl::StatusOr<uint64_t> MemberMask(const std::vector<NodeId>& members, size_t cluster_size,
                                    NodeId self) {
  if (cluster_size == 0 || cluster_size > kMaxNodes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("barrier: cluster size %d out of range 1..%d", cluster_size, kMaxNodes));
  }
  uint64_t mask = 0;
  if (members.empty()) {
    mask = cluster_size == 64 ? ~uint64_t{0} : (uint64_t{1} << cluster_size) - 1;
  }
  for (NodeId n : members) {
    if (n >= cluster_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("barrier: member %d >= cluster size %d", n, cluster_size));
    }
    mask |= uint64_t{1} << n;
  }
  if (!Has(mask, self)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("barrier: this node (%d) is not a member", self));
  }
  return mask;
}

NodeId BarrierArbiterOf(uint64_t mask) { return static_cast<NodeId>(__builtin_ctzll(mask)); }

std::string NodeList(uint64_t mask) {
  std::string out = __builtin_popcountll(mask) == 1 ? "node " : "nodes ";
  bool first = true;
  for (NodeId n = 0; n < kMaxNodes; ++n) {
    if (!Has(mask, n)) continue;
    absl::StrAppend(&out, first ? "" : ", ", n);
    first = false;
  }
  return out;
}

// ---- BarrierArbiter ----

BarrierArbiter::BarrierArbiter(Config config, BarrierPort* port) : config_(config), port_(port) {}

void BarrierArbiter::Reply(NodeId to, uint64_t req_id, uint64_t generation,
                           BarrierReplyCode code, NodeId down, uint64_t entered) {
  Message m;
  m.type = MsgType::kBarrierReply;
  m.src = config_.self;
  m.dst = to;
  m.region = code == BarrierReplyCode::kAborted ? entered : 0;
  m.page = generation;
  m.req_id = req_id;
  m.arg = PackBarrierReply(code, down);
  port_->Send(std::move(m));
}

void BarrierArbiter::FinishGeneration(Group& g, BarrierReplyCode code, NodeId down,
                                      uint64_t entered) {
  const auto waiters = std::move(g.waiters);
  const uint64_t gen = g.generation;
  g.waiters.clear();
  g.arrived = 0;
  ++g.generation;
  for (const auto& [node, req_id] : waiters) Reply(node, req_id, gen, code, down, entered);
}

void BarrierArbiter::OnMessage(const Message& m) {
  if (m.type != MsgType::kBarrierEnter && m.type != MsgType::kBarrierCancel) return;
  const uint64_t mask = m.arg;
  if (mask == 0 || !Has(mask, m.src)) return;  // the decoder rejects these
  Key key{std::string(m.payload.begin(), m.payload.end()), mask};
  if (m.type == MsgType::kBarrierCancel) {
    auto it = groups_.find(key);
    if (it == groups_.end()) return;
    Group& g = it->second;
    if (g.broken_by < 0 && m.page == g.generation && Has(g.arrived, m.src)) {
      FinishGeneration(g, BarrierReplyCode::kAborted, 0, /*entered=*/g.arrived);
    }
    return;
  }
  if (BarrierArbiterOf(mask) != config_.self) {
    Reply(m.src, m.req_id, m.page, BarrierReplyCode::kBadRequest);
    return;
  }
  Group& g = groups_[key];
  if (g.broken_by < 0 && (mask & down_mask_) != 0) {
    g.broken_by = static_cast<int>(BarrierArbiterOf(mask & down_mask_));
  }
  if (g.broken_by >= 0) {
    Reply(m.src, m.req_id, m.page, BarrierReplyCode::kNodeDown,
          static_cast<NodeId>(g.broken_by));
  } else if (m.page < g.generation) {
    Reply(m.src, m.req_id, m.page, BarrierReplyCode::kAborted);  // an abandoned generation
  } else if (m.page > g.generation || Has(g.arrived, m.src)) {
    Reply(m.src, m.req_id, m.page, BarrierReplyCode::kBadRequest);
  } else {
    g.arrived |= uint64_t{1} << m.src;
    g.waiters.emplace_back(m.src, m.req_id);
    if (g.arrived == mask) FinishGeneration(g, BarrierReplyCode::kReleased, 0);
  }
}

void BarrierArbiter::OnNodeDown(NodeId node) {
  if (node >= kMaxNodes) return;
  down_mask_ |= uint64_t{1} << node;
  for (auto& [key, g] : groups_) {
    if (g.broken_by >= 0 || !Has(key.second, node)) continue;
    g.broken_by = static_cast<int>(node);
    FinishGeneration(g, BarrierReplyCode::kNodeDown, node);
  }
}

void BarrierArbiter::FailAll() {
  for (auto& [key, g] : groups_) {
    for (const auto& [node, req_id] : g.waiters) {
      Reply(node, req_id, g.generation, BarrierReplyCode::kShuttingDown);
    }
  }
  groups_.clear();
}

size_t BarrierArbiter::num_waiting() const {
  size_t n = 0;
  for (const auto& [key, g] : groups_) n += g.waiters.size();
  return n;
}

uint64_t BarrierArbiter::generation(const std::string& name, uint64_t mask) const {
  auto it = groups_.find(Key{name, mask});
  return it == groups_.end() ? 0 : it->second.generation;
}

// ---- BarrierClient ----

BarrierClient::BarrierClient(Config config, BarrierPort* port) : config_(config), port_(port) {}

void BarrierClient::SendGroup(MsgType type, const Pending& p, uint64_t req_id) {
  Message m;
  m.type = type;
  m.src = config_.self;
  m.dst = p.arbiter;
  m.page = p.generation;
  m.req_id = req_id;
  m.arg = p.key.second;
  m.payload.assign(p.key.first.begin(), p.key.first.end());
  port_->Send(std::move(m));
}

uint64_t BarrierClient::Enter(const std::string& name, uint64_t mask, absl::Time deadline,
                              absl::Time now, Callback done) {
  const uint64_t id = next_id_++;
  auto fail = [&](absl::Status s) {
    done(std::move(s));
    return id;
  };
  if (name.empty() || name.size() > kMaxGroupName ||
      std::memchr(name.data(), 0, name.size()) != nullptr) {
    return fail(absl::InvalidArgumentError("barrier: name must be 1..255 bytes without NUL"));
  }
  if (!Has(mask, config_.self)) {
    return fail(absl::InvalidArgumentError("barrier: this node is not a member"));
  }
  Key key{name, mask};
  if (active_.contains(key)) {
    return fail(absl::FailedPreconditionError(
        absl::StrFormat("barrier '%s': this node is already waiting in it", name)));
  }
  if ((mask & down_mask_) != 0) {
    return fail(absl::UnavailableError(
        absl::StrFormat("barrier '%s': member node %d is down", name,
                        BarrierArbiterOf(mask & down_mask_))));
  }
  if (deadline <= now) return fail(absl::DeadlineExceededError("barrier: deadline passed"));
  const uint64_t gen = next_generation_[key]++;
  Pending p{key, gen, BarrierArbiterOf(mask), deadline, std::move(done)};
  SendGroup(MsgType::kBarrierEnter, p, id);
  active_.emplace(std::move(key), id);
  if (deadline != absl::InfiniteFuture()) deadlines_.emplace(deadline, id);
  pending_.emplace(id, std::move(p));
  return id;
}

void BarrierClient::Finish(uint64_t req_id, absl::Status status) {
  auto it = pending_.find(req_id);
  Pending p = std::move(it->second);
  pending_.erase(it);
  active_.erase(p.key);
  deadlines_.erase({p.deadline, req_id});
  p.done(std::move(status));
}

void BarrierClient::OnMessage(const Message& m) {
  if (m.type != MsgType::kBarrierReply) return;
  auto it = pending_.find(m.req_id);
  if (it == pending_.end() || it->second.arbiter != m.src ||
      it->second.generation != m.page) {
    return;  // withdrawn already (deadline, peer down), or not ours
  }
  const Pending& p = it->second;
  const std::string what =
      absl::StrFormat("barrier '%s' generation %d", p.key.first, p.generation);
  const uint64_t members = p.key.second;
  const uint64_t entered = m.region & members;
  absl::Status s;
  switch (BarrierReplyCodeOf(m.arg)) {
    case BarrierReplyCode::kReleased:
      break;  // even when cancelling: every member had entered, so the barrier held
    case BarrierReplyCode::kNodeDown:
      s = absl::UnavailableError(
          absl::StrFormat("%s: member node %d is down", what, BarrierReplyNode(m.arg)));
      break;
    case BarrierReplyCode::kAborted:
      if (entered == 0) {
        s = absl::AbortedError(what + ": a member gave up (deadline) before this node entered; "
                                      "failed for every member");
      } else if (p.cancelling) {
        s = absl::DeadlineExceededError(absl::StrCat(
            what, ": deadline passed; not entered: ", NodeList(members & ~entered),
            " (entered: ", NodeList(entered), ")"));
      } else {
        s = absl::AbortedError(absl::StrCat(
            what, ": a member gave up (deadline); failed for every member; not entered: ",
            NodeList(members & ~entered), " (entered: ", NodeList(entered), ")"));
      }
      break;
    case BarrierReplyCode::kBadRequest:
      s = absl::InternalError(what + ": the arbiter refused the request (protocol error)");
      break;
    case BarrierReplyCode::kShuttingDown:
      s = absl::UnavailableError(what + ": the arbiter is shutting down");
      break;
    default:
      s = absl::InternalError(what + ": unknown reply code");
      break;
  }
  Finish(m.req_id, std::move(s));
}

void BarrierClient::OnPeerDown(NodeId peer) {
  if (peer >= kMaxNodes) return;
  down_mask_ |= uint64_t{1} << peer;
  std::vector<uint64_t> ids;
  for (const auto& [id, p] : pending_) {
    if (Has(p.key.second, peer)) ids.push_back(id);  // the arbiter is a member too
  }
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    auto it = pending_.find(id);
    if (it == pending_.end()) continue;
    const std::string name = it->second.key.first;
    Finish(id, absl::UnavailableError(
                   absl::StrFormat("barrier '%s': member node %d is down", name, peer)));
  }
}

void BarrierClient::OnTick(absl::Time now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t id = deadlines_.begin()->second;
    Pending& p = pending_.at(id);
    deadlines_.erase(deadlines_.begin());
    if (p.cancelling) {
      Finish(id, absl::DeadlineExceededError(absl::StrFormat(
                     "barrier '%s' generation %d: deadline passed; the arbiter (node %d) did "
                     "not say within %s which members had not entered",
                     p.key.first, p.generation, p.arbiter,
                     absl::FormatDuration(config_.cancel_grace))));
      continue;
    }
    // The arbiter answers the cancel (kAborted with the entered members, or the kReleased
    // already on its way); the caller hears of it then, or when the grace ends.
    SendGroup(MsgType::kBarrierCancel, p, id);
    p.cancelling = true;
    p.deadline = now + config_.cancel_grace;
    deadlines_.emplace(p.deadline, id);
  }
}

absl::Time BarrierClient::NextDeadline() const {
  return deadlines_.empty() ? absl::InfiniteFuture() : deadlines_.begin()->first;
}

void BarrierClient::FailAll(const absl::Status& why) {
  std::vector<uint64_t> ids;
  for (const auto& [id, p] : pending_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    auto it = pending_.find(id);
    if (it == pending_.end()) continue;
    if (!Has(down_mask_, it->second.arbiter) && !it->second.cancelling) SendGroup(MsgType::kBarrierCancel, it->second, id);
    Finish(id, why);
  }
}

}  // namespace dsm::lock
