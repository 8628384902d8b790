#include "lock/lock_table.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_format.h"

namespace dsm::lock {
namespace {

bool Conflict(LockMode m1, uint64_t s1, uint64_t e1, LockMode m2, uint64_t s2, uint64_t e2) {
  const bool overlap = s1 < e2 && s2 < e1;
  return overlap && (m1 == LockMode::kExclusive || m2 == LockMode::kExclusive);
}

}  // namespace

LockTable::LockTable(Config config, LockTablePort* port) : config_(config), port_(port) {}

IntervalIndex& LockTable::IndexFor(const Lock& l) {
  if (l.held) return l.mode == LockMode::kExclusive ? held_excl_ : held_shared_;
  return l.mode == LockMode::kExclusive ? wait_excl_ : wait_shared_;
}

void LockTable::Reply(NodeId node, uint64_t id, LockReplyCode code, bool died) {
  SendReply(node, id, PackLockReply(code, died));
}

void LockTable::SendReply(NodeId node, uint64_t id, uint64_t arg) {
  Message m;
  m.type = MsgType::kLockReply;
  m.src = config_.self;
  m.dst = node;
  m.region = config_.region;
  m.req_id = id;
  m.arg = arg;
  port_->Send(std::move(m));
}

void LockTable::OnMessage(const Message& m, absl::Time now) {
  (void)now;
  switch (m.type) {
    case MsgType::kLockAcquire:
      Acquire(m);
      break;
    case MsgType::kLockPassed:
      Passed(m);
      break;
    case MsgType::kLockRelease:
    case MsgType::kLockCancel: {
      auto it = owners_.find(Owner{m.src, m.req_id});
      if (it == owners_.end()) return;  // already gone (crossed a reply, or a duplicate)
      const Lock& l = locks_.at(it->second);
      (l.held ? counters_.released : counters_.cancelled)++;
      if (l.held && m.type == MsgType::kLockCancel) {
        // The grant crossed the withdrawal: no application saw it, so whoever holds these
        // bytes next must still be told of the dead holder the grant would have reported.
        for (const auto& [a, b] : l.cleared) dead_.Add(a, b);
      }
      EraseSeq(it->second, /*by_death=*/false);
      break;
    }
    default:
      break;
  }
}

void LockTable::Acquire(const Message& m) {
  ++counters_.acquires;
  if (down_.contains(m.src)) return;  // a late message from a node declared down
  const uint64_t len = AcquireLen(m.arg);
  const LockMode mode = AcquireMode(m.arg);
  const bool bad_mode = mode != LockMode::kShared && mode != LockMode::kExclusive;
  const bool bad_range = len == 0 || m.page > UINT64_MAX - len ||
                         (config_.region_size != 0 && m.page + len > config_.region_size);
  if (m.region != config_.region || bad_mode || bad_range || m.req_id == 0 ||
      owners_.contains(Owner{m.src, m.req_id})) {
    ++counters_.bad_requests;
    Reply(m.src, m.req_id, LockReplyCode::kBadRequest);
    return;
  }
  const uint64_t seq = next_seq_++;
  Lock l{m.src, m.req_id, m.page, m.page + len, mode, /*held=*/false};
  if (!Blocked(l, seq)) {
    Lock& placed = locks_.emplace(seq, l).first->second;
    owners_.emplace(Owner{l.node, l.id}, seq);
    Grant(seq, placed);
    return;
  }
  if (AcquireTry(m.arg)) {
    ++counters_.busy;
    Reply(l.node, l.id, LockReplyCode::kBusy);
    return;
  }
  locks_.emplace(seq, l);
  owners_.emplace(Owner{l.node, l.id}, seq);
  IndexFor(l).Insert(l.start, l.end, seq);
  ++counters_.queued;
  if (const std::optional<NodeId> pred = MaybeHint(seq, /*reply=*/false)) {
    SendReply(l.node, l.id, PackQueuedWithPredecessor(*pred));
    return;
  }
  Reply(l.node, l.id, LockReplyCode::kQueued);
}

void LockTable::Passed(const Message& m) {
  if (m.region != config_.region || down_.contains(m.src)) return;  // its locks go by death
  auto it = owners_.find(Owner{m.src, m.req_id});
  if (it == owners_.end()) return;  // already gone, as for a release
  const uint64_t hseq = it->second;
  const Lock& h = locks_.at(hseq);
  auto w = owners_.find(Owner{SuccessorNode(m.arg), m.page});
  if (!h.held || h.successor == 0 || w == owners_.end() || w->second != h.successor) {
    // The named successor withdrew (or was never named): a plain release; a waiting W is
    // granted by reply, and its node drops the hand-off of an id it withdrew.
    ++counters_.handoffs_refused;
    (h.held ? counters_.released : counters_.cancelled)++;
    EraseSeq(hseq, /*by_death=*/false);
    return;
  }
  const uint64_t wseq = w->second;
  ++counters_.released;
  ++counters_.handoffs;
  const Lock gone = Unlink(hseq, /*by_death=*/false);
  Lock& next = locks_.at(wseq);
  next.via_died = Grant(wseq, next, /*reply=*/false);
  next.via_set = true;
  next.via = m.src;
  GrantWaiters(gone.start, gone.end);
}

std::optional<NodeId> LockTable::MaybeHint(uint64_t seq, bool reply) {
  Lock& w = locks_.at(seq);
  if (!config_.direct_handoff || w.held || w.mode != LockMode::kExclusive || w.hinted_by != 0) {
    return std::nullopt;
  }
  // W's blockers: exactly one held exclusive lock, no held shared lock, no earlier waiter.
  uint64_t blocker = 0;
  int blockers = 0;
  held_excl_.ForEachOverlap(w.start, w.end, [&](uint64_t, uint64_t, uint64_t s) {
    blocker = s;
    return ++blockers < 2;
  });
  const auto any = [](uint64_t, uint64_t, uint64_t) { return false; };
  const auto earlier = [seq](uint64_t, uint64_t, uint64_t s) { return s >= seq; };
  if (blockers != 1 || !held_shared_.ForEachOverlap(w.start, w.end, any) ||
      !wait_excl_.ForEachOverlap(w.start, w.end, earlier) ||
      !wait_shared_.ForEachOverlap(w.start, w.end, earlier)) {
    return std::nullopt;
  }
  Lock& h = locks_.at(blocker);
  if (h.successor != 0 || down_.contains(h.node)) return std::nullopt;
  h.successor = seq;
  w.hinted_by = blocker;
  ++counters_.hints;
  Message m;
  m.type = MsgType::kLockSuccessor;
  m.src = config_.self;
  m.dst = h.node;
  m.region = config_.region;
  m.req_id = h.id;
  m.page = w.id;
  m.arg = PackSuccessorArg(w.node, dead_.Overlaps(w.start, w.end));
  port_->Send(std::move(m));
  if (reply) SendReply(w.node, w.id, PackQueuedWithPredecessor(h.node));
  return h.node;
}

bool LockTable::Blocked(const Lock& l, uint64_t seq) const {
  const auto any = [](uint64_t, uint64_t, uint64_t) { return false; };  // stop at the first
  const auto earlier = [seq](uint64_t, uint64_t, uint64_t s) { return s >= seq; };
  const bool excl = l.mode == LockMode::kExclusive;
  if (!held_excl_.ForEachOverlap(l.start, l.end, any)) return true;
  if (excl && !held_shared_.ForEachOverlap(l.start, l.end, any)) return true;
  if (!wait_excl_.ForEachOverlap(l.start, l.end, earlier)) return true;
  if (excl && !wait_shared_.ForEachOverlap(l.start, l.end, earlier)) return true;
  return false;
}

// `l` is in locks_ and owners_; if it was waiting it is in a wait index.
bool LockTable::Grant(uint64_t seq, Lock& l, bool reply) {
  if (!l.held) IndexFor(l).Erase(l.start, seq);  // no-op for a request granted on arrival
  l.held = true;
  l.hinted_by = 0;  // its holder is gone (that is why it is grantable)
  IndexFor(l).Insert(l.start, l.end, seq);
  ++held_count_;
  const bool died = dead_.Overlaps(l.start, l.end);
  if (l.mode == LockMode::kExclusive && died) {
    // Kept in case the grant is withdrawn unseen (see the kLockCancel above).
    const std::map<uint64_t, uint64_t>& marks = dead_.ranges();
    auto it = marks.upper_bound(l.start);
    if (it != marks.begin()) --it;
    l.cleared.clear();
    for (; it != marks.end() && it->first < l.end; ++it) {
      if (it->second > l.start) {
        l.cleared.emplace_back(std::max(it->first, l.start), std::min(it->second, l.end));
      }
    }
    dead_.Subtract(l.start, l.end);
  }
  ++counters_.granted;
  if (died) ++counters_.died_flags;
  if (reply) Reply(l.node, l.id, LockReplyCode::kGranted, died);
  return died;
}

void LockTable::EraseSeq(uint64_t seq, bool by_death) {
  const Lock l = Unlink(seq, by_death);
  GrantWaiters(l.start, l.end);
}

LockTable::Lock LockTable::Unlink(uint64_t seq, bool by_death) {
  auto it = locks_.find(seq);
  const Lock l = it->second;
  if (l.successor != 0) locks_.at(l.successor).hinted_by = 0;
  if (l.hinted_by != 0) locks_.at(l.hinted_by).successor = 0;
  IndexFor(l).Erase(l.start, seq);
  if (l.held) {
    --held_count_;
    if (by_death) {
      ++counters_.released_by_death;
      if (l.mode == LockMode::kExclusive) dead_.Add(l.start, l.end);
    }
  } else if (by_death) {
    ++counters_.dropped_by_death;
    if (l.hinted_by != 0) {
      // A named successor: its holder may have released already, with the kLockHandoff
      // delivered and the kLockPassed still on its way here, so the dead node may have held
      // the range and half-written it. Whoever takes these bytes next is told (a death
      // before the hand-off makes that conservative; the arbiter cannot tell the two apart).
      ++counters_.named_dead;
      dead_.Add(l.start, l.end);
    }
  }
  owners_.erase(Owner{l.node, l.id});
  locks_.erase(it);
  return l;
}

void LockTable::GrantWaiters(uint64_t a, uint64_t b) {
  std::vector<uint64_t> seqs;
  const auto collect = [&seqs](uint64_t, uint64_t, uint64_t s) {
    seqs.push_back(s);
    return true;
  };
  wait_excl_.ForEachOverlap(a, b, collect);
  wait_shared_.ForEachOverlap(a, b, collect);
  std::sort(seqs.begin(), seqs.end());
  std::vector<uint64_t> granted_excl;
  for (uint64_t s : seqs) {
    Lock& l = locks_.at(s);  // granting removes no other entry
    if (Blocked(l, s)) continue;
    Grant(s, l);
    if (l.mode == LockMode::kExclusive) granted_excl.push_back(s);
  }
  if (!config_.direct_handoff) return;
  // Waiters now blocked by one exclusive holder alone: among those examined, and those behind
  // a lock just granted (they were behind it as a waiter, and need not overlap [a, b)).
  std::vector<uint64_t> waiting;
  for (uint64_t s : seqs) {
    if (!locks_.at(s).held) waiting.push_back(s);
  }
  for (uint64_t g : granted_excl) {
    const Lock& l = locks_.at(g);
    wait_excl_.ForEachOverlap(l.start, l.end, [&waiting](uint64_t, uint64_t, uint64_t s) {
      waiting.push_back(s);
      return true;
    });
  }
  std::sort(waiting.begin(), waiting.end());
  waiting.erase(std::unique(waiting.begin(), waiting.end()), waiting.end());
  for (uint64_t s : waiting) MaybeHint(s, /*reply=*/true);
}

void LockTable::Regrant(NodeId node) {
  std::vector<uint64_t> seqs;
  for (const auto& [seq, l] : locks_) {
    if (l.held && l.via_set && l.via == node) seqs.push_back(seq);
  }
  std::sort(seqs.begin(), seqs.end());
  for (uint64_t s : seqs) {
    Lock& l = locks_.at(s);
    l.via_set = false;
    ++counters_.regrants;
    Reply(l.node, l.id, LockReplyCode::kGranted, l.via_died);
  }
}

void LockTable::OnNodeDown(NodeId node, absl::Time now) {
  if (down_.contains(node)) return;
  down_[node] = now + config_.release_grace;
  std::vector<uint64_t> waiting;
  for (const auto& [seq, l] : locks_) {
    if (l.node == node && !l.held) waiting.push_back(seq);
  }
  std::sort(waiting.begin(), waiting.end());
  for (uint64_t s : waiting) EraseSeq(s, /*by_death=*/true);
  OnTick(now);
}

void LockTable::OnTick(absl::Time now) {
  for (auto& [node, release_at] : down_) {
    if (release_at == absl::InfinitePast() || release_at > now) continue;
    release_at = absl::InfinitePast();  // done: the node's locks go now, and never come back
    std::vector<uint64_t> held;
    for (const auto& [seq, l] : locks_) {
      if (l.node == node) held.push_back(seq);
    }
    std::sort(held.begin(), held.end());
    for (uint64_t s : held) EraseSeq(s, /*by_death=*/true);
    Regrant(node);
  }
}

absl::Time LockTable::NextDeadline() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [node, release_at] : down_) {
    if (release_at != absl::InfinitePast()) next = std::min(next, release_at);
  }
  return next;
}

void LockTable::FailAll(LockReplyCode code) {
  std::vector<uint64_t> waiting;
  for (const auto& [seq, l] : locks_) {
    if (!l.held) waiting.push_back(seq);
  }
  std::sort(waiting.begin(), waiting.end());
  for (uint64_t s : waiting) {
    const Lock& l = locks_.at(s);
    Reply(l.node, l.id, code);
  }
  locks_.clear();
  owners_.clear();
  held_count_ = 0;
  held_shared_ = IntervalIndex();
  held_excl_ = IntervalIndex();
  wait_shared_ = IntervalIndex();
  wait_excl_ = IntervalIndex();
}

std::vector<LockTable::LockInfo> LockTable::Dump() const {
  std::vector<LockInfo> out;
  out.reserve(locks_.size());
  for (const auto& [seq, l] : locks_) {
    out.push_back(LockInfo{l.node, l.id, l.start, l.end, l.mode, seq, l.held, l.hinted_by != 0});
  }
  std::sort(out.begin(), out.end(), [](const LockInfo& x, const LockInfo& y) {
    return x.held != y.held ? x.held : x.seq < y.seq;
  });
  return out;
}

absl::Status LockTable::CheckInvariants() const {
  const std::vector<LockInfo> all = Dump();
  auto str = [](const LockInfo& x) {
    return absl::StrFormat("#%d(node %d id %d [%d,%d) %s %s)", x.seq, x.node, x.id, x.start,
                           x.end, LockModeName(x.mode), x.held ? "held" : "waiting");
  };
  size_t held = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    const LockInfo& x = all[i];
    if (x.held) ++held;
    if (x.start >= x.end) return absl::InternalError("empty range " + str(x));
    auto o = owners_.find(Owner{x.node, x.id});
    if (o == owners_.end() || o->second != x.seq) {
      return absl::InternalError("owner map out of step for " + str(x));
    }
    auto d = down_.find(x.node);
    if (d != down_.end() && (!x.held || d->second == absl::InfinitePast())) {
      return absl::InternalError("lock of a down node survives: " + str(x));
    }
    bool blocked = false;
    for (size_t j = 0; j < all.size(); ++j) {
      const LockInfo& y = all[j];
      if (i == j || !Conflict(x.mode, x.start, x.end, y.mode, y.start, y.end)) continue;
      if (x.held && y.held) return absl::InternalError("conflicting holders " + str(x) + str(y));
      if (!x.held && (y.held || y.seq < x.seq)) blocked = true;
      if (x.held && !y.held && y.seq < x.seq) {
        return absl::InternalError("granted over an earlier conflicting waiter " + str(x) +
                                   str(y));
      }
    }
    if (!x.held && !blocked) return absl::InternalError("grantable waiter " + str(x));
  }
  // Hints: linked both ways; the named waiter conflicts with its holder alone (and with no
  // earlier waiter), so the holder's going makes it grantable.
  for (const auto& [seq, l] : locks_) {
    if (l.successor != 0) {
      auto w = locks_.find(l.successor);
      if (!l.held || l.mode != LockMode::kExclusive || w == locks_.end() || w->second.held ||
          w->second.mode != LockMode::kExclusive || w->second.hinted_by != seq) {
        return absl::InternalError(absl::StrFormat("hint of #%d to #%d out of step", seq,
                                                   l.successor));
      }
      for (const LockInfo& z : all) {
        if (z.seq == l.successor || z.seq == seq || (!z.held && z.seq > l.successor)) continue;
        if (Conflict(w->second.mode, w->second.start, w->second.end, z.mode, z.start, z.end)) {
          return absl::InternalError(absl::StrFormat(
              "successor #%d of #%d is also behind %s", l.successor, seq, str(z)));
        }
      }
    }
    if (l.hinted_by != 0) {
      auto h = locks_.find(l.hinted_by);
      if (l.held || h == locks_.end() || h->second.successor != seq) {
        return absl::InternalError(absl::StrFormat("waiter #%d names holder #%d out of step",
                                                   seq, l.hinted_by));
      }
    }
  }
  if (held != held_count_ || owners_.size() != locks_.size() ||
      held_shared_.size() + held_excl_.size() != held_count_ ||
      wait_shared_.size() + wait_excl_.size() != locks_.size() - held_count_) {
    return absl::InternalError("index sizes out of step");
  }
  return absl::OkStatus();
}

}  // namespace dsm::lock
