#include "coherence/directory.h"

#include <algorithm>
#include <bit>
#include <deque>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/page_ranges.h"
#include "common/node_set.h"
#include "coherence/refusal.h"
#include "common/payload_pool.h"

namespace dsm::coherence {
namespace {

// Per page: one 64-bit word (the sharer mask when Shared, the owner id when Modified) and one
// flag byte (bits 0-1 state, busy, lost): 9 bytes, both in LazyArrays.
constexpr uint8_t kStateMask = 0x3;
constexpr uint8_t kBusyBit = 0x4;
constexpr uint8_t kLostBit = 0x8;

using EntryState = Directory::EntryState;

}  // namespace

struct Directory::Impl {
  struct Request {
    MsgType type = MsgType::kGetS;
    NodeId src = 0;
    uint64_t req_id = 0;
    absl::Time start;
    bool reclaim = false;  // ReclaimModified's recall: src is the home, nothing is granted
  };
  // Side-table entry of a busy page: the active transaction and the requests behind it.
  struct Txn {
    bool active = false;
    Request req;
    uint64_t waiting = 0;     // nodes that owe a kInvAck
    bool recalling = false;   // recall_from owes a kRecallAck
    NodeId recall_from = 0;
    absl::Time since;         // when the current wait began (for CollectOverdue)
    std::deque<Request> queue;
    // The home's own copy taken in place for req (TakeOwnCopy), sent by Finish; else empty.
    std::vector<uint8_t> own_copy;
  };

  Impl(Config config, DirectoryPort* p)
      : cfg(std::move(config)), port(p), words(cfg.num_pages), flags(cfg.num_pages) {}

  Config cfg;
  DirectoryPort* port;
  LazyArray<uint64_t> words;
  LazyArray<uint8_t> flags;
  absl::flat_hash_map<PageIndex, Txn> txns;
  uint64_t down = 0;       // silenced or gone: requests dropped, messages ignored
  uint64_t forgotten = 0;  // gone: copies forgotten (OnPeerDown)
  bool closing = false;
  // ReclaimModified: recall transactions not yet finished, and who waits for them.
  uint64_t reclaims_outstanding = 0;
  std::vector<absl::AnyInvocable<void()>> reclaimed;
  Counters c;

  EntryState State(PageIndex p) const { return static_cast<EntryState>(flags[p] & kStateMask); }
  uint64_t Sharers(PageIndex p) const {
    return State(p) == EntryState::kShared ? words[p] : 0;
  }
  bool IsLost(PageIndex p) const { return (flags[p] & kLostBit) != 0; }

  void SetUncached(PageIndex p) {
    flags[p] = static_cast<uint8_t>(flags[p] & ~kStateMask);
    words[p] = 0;
  }
  void SetShared(PageIndex p, uint64_t sharers) {
    if (sharers == 0) return SetUncached(p);
    flags[p] = static_cast<uint8_t>((flags[p] & ~kStateMask) |
                                    static_cast<uint8_t>(EntryState::kShared));
    words[p] = sharers;
  }
  void SetModified(PageIndex p, NodeId owner) {
    flags[p] = static_cast<uint8_t>((flags[p] & ~kStateMask) |
                                    static_cast<uint8_t>(EntryState::kModified));
    words[p] = owner;
  }
  void RemoveSharer(PageIndex p, NodeId n) {
    if (State(p) == EntryState::kShared) SetShared(p, words[p] & ~NodeBit(n));
  }
  bool IsOwner(PageIndex p, NodeId n) const {
    return State(p) == EntryState::kModified && words[p] == n;
  }

  Message Make(MsgType t, NodeId dst, PageIndex page, uint64_t req_id, uint64_t arg) const {
    return Message{t, cfg.self, dst, cfg.region, page, req_id, arg, {}};
  }
  // Answers `m` (addressed here) with coherence::Refusal, if its type gets an answer.
  void Refuse(const Message& m, ErrorCode why) {
    std::optional<Message> reply = Refusal(m, why);
    if (!reply) return;
    if (reply->type == MsgType::kNack) ++c.nacks_sent;
    reply->src = cfg.self;
    port->Send(std::move(*reply));
  }
  void Nack(const Request& r, PageIndex page, ErrorCode why) {
    Refuse(Message{r.type, r.src, cfg.self, cfg.region, page, r.req_id, 0, {}}, why);
  }
  void FinishReclaim();

  void OnRequest(const Message& m, absl::Time now);
  void OnRunRequest(const Message& m);
  void OnPut(const Message& m);
  void ApplyWriteback(PageIndex page, PutKind kind, NodeId src, const uint8_t* data);

  // The home holds `page` Modified itself and t.req needs it: for a kGetS its copy is
  // write-protected and stored, leaving the page Shared{self} (a kRecall(kDowngrade) to
  // itself); for a kGetM it is given up (a kRecall(kInvalidate)), leaving it Uncached, and
  // not stored (the grant makes the page Modified at the requester). Either way the data is
  // kept in t.own_copy for the grant, which Finish sends instead of loading the page again.
  // False if the cache does not hold it Modified after all (nothing changed: recall as
  // usual); true also when the page was lost trying (the transaction then nacks).
  bool TakeOwnCopy(PageIndex page, Txn& t) {
    const bool read = t.req.type == MsgType::kGetS;
    t.own_copy.resize(kPageSize);
    absl::StatusOr<bool> taken =
        read ? port->DowngradeLocal(page, t.own_copy.data())
             : port->InvalidateLocal(page, PageState::kModified, t.own_copy.data());
    if (!taken.ok()) {
      t.own_copy.clear();
      Lose(page, "the home could not write-protect its copy", taken.status());
      return true;
    }
    if (!*taken) {
      t.own_copy.clear();
      return false;
    }
    if (!read) {
      SetUncached(page);
      ++c.local_invalidations;
      return true;
    }
    if (absl::Status stored = port->StorePage(page, t.own_copy.data()); !stored.ok()) {
      t.own_copy.clear();
      Lose(page, "StorePage", stored);
      return true;
    }
    SetShared(page, NodeBit(cfg.self));
    ++c.local_downgrades;
    return true;
  }
  // The home is a sharer of `page` and another node's kGetM needs its copy gone: dropped in
  // place (a kInv to itself). False if the cache does not hold it Shared after all (send the
  // kInv as usual).
  bool DropOwnSharedCopy(PageIndex page) {
    absl::StatusOr<bool> dropped = port->InvalidateLocal(page, PageState::kShared, nullptr);
    if (!dropped.ok()) {  // not in the port's contract; the copy is gone either way
      ++c.protocol_errors;
      DSM_LOG(ERROR) << "dropping the home's Shared copy of page " << page << ": "
                     << dropped.status();
    } else if (!*dropped) {
      return false;
    }
    RemoveSharer(page, cfg.self);
    ++c.local_invalidations;
    return true;
  }

  // The latest data of `page` is gone (see the rules above DirectoryPort): lost for good.
  void Lose(PageIndex page, const char* what, const absl::Status& why) {
    DSM_LOG(ERROR) << "region " << cfg.region << " page " << page << " lost: " << what << ": "
                   << why;
    if (State(page) == EntryState::kModified) SetUncached(page);
    flags[page] |= kLostBit;
    ++c.lost_pages;
  }
  void OnInvAck(const Message& m);
  void OnRecallAck(const Message& m);
  void Begin(PageIndex page, Txn& t, absl::Time now);
  void Finish(PageIndex page, Txn& t);
  void Drain(PageIndex page, absl::Time now);
};

Directory::Directory(Config config, DirectoryPort* port)
    : impl_(std::make_shared<Impl>(std::move(config), port)) {}

void Directory::OnMessage(const Message& m, absl::Time now) {
  Impl& s = *impl_;
  if (m.src >= kMaxNodes || (s.down & NodeBit(m.src)) != 0) {
    DSM_LOG(WARNING) << "directory ignoring message from node " << m.src;
    return;
  }
  if (m.page >= s.cfg.num_pages || s.cfg.home(m.page) != s.cfg.self) {
    ++s.c.protocol_errors;
    DSM_LOG(ERROR) << "directory of node " << s.cfg.self << " is not home of page " << m.page
                   << " (type " << static_cast<int>(m.type) << " from node " << m.src << ")";
    s.Refuse(m, ErrorCode::kNotHome);
    return;
  }
  const bool is_request =
      m.type == MsgType::kGetS || m.type == MsgType::kGetM || m.type == MsgType::kGetSRun;
  if (is_request && s.closing && m.src != s.cfg.self) {
    // Unmapping here: no new copies are handed out (they would die with the home).
    s.Refuse(m, ErrorCode::kShuttingDown);
    return;
  }
  switch (m.type) {
    case MsgType::kGetSRun:
      s.OnRunRequest(m);
      return;
    case MsgType::kGetS:
    case MsgType::kGetM:
      s.OnRequest(m, now);
      return;
    case MsgType::kPut:
      s.OnPut(m);
      return;
    case MsgType::kInvAck:
      s.OnInvAck(m);
      s.Drain(m.page, now);
      return;
    case MsgType::kRecallAck:
      s.OnRecallAck(m);
      s.Drain(m.page, now);
      return;
    default:
      ++s.c.protocol_errors;
      DSM_LOG(ERROR) << "directory got unexpected message type " << static_cast<int>(m.type);
      return;
  }
}

void Directory::Impl::OnRequest(const Message& m, absl::Time now) {
  Request r{m.type, m.src, m.req_id, now};
  Txn& t = txns[m.page];  // creates the side-table entry only for this page
  t.queue.push_back(r);
  if (t.active) ++c.queued_requests;
  Drain(m.page, now);
}

// Readahead: grants Shared copies of the longest prefix of [m.page, m.page + m.arg) that can
// be granted at once, and answers kDataRun with their data (possibly none). A page ends the
// prefix if it is not ours, busy (a transaction active or queued: granting ahead of the queue
// would break the per-page order), Modified at some node (a recall would be needed), lost, or
// unreadable. Each grant is recorded before the reply goes out, as for kGetS. Never kNack:
// pages not granted stay Invalid at the requester, which asks for them one by one if a
// thread needs them, so a refused speculation never loses a page.
void Directory::Impl::OnRunRequest(const Message& m) {
  Message reply = Make(MsgType::kDataRun, m.src, m.page, m.req_id, m.arg);
  if (m.arg == 0 || m.arg > kMaxRunPages) {  // the wire rejects these; loopback does not
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "GetSRun of " << m.arg << " pages from node " << m.src;
    if (m.arg == 0) return;  // no page is waiting on an answer
    reply.arg = kMaxRunPages;
  }
  // Recycled after the send. Not zero-filled: each granted page is written whole below, and
  // the buffer is cut to the granted pages before it goes out.
  reply.payload = TakePayloadBufferForOverwrite(reply.arg * kPageSize);
  size_t at = 0;  // bytes granted so far
  for (uint64_t i = 0; i < reply.arg; ++i) {
    const PageIndex q = m.page + i;
    if (q >= cfg.num_pages || cfg.home(q) != cfg.self || txns.contains(q) || IsLost(q) ||
        (State(q) == EntryState::kModified && words[q] != cfg.self)) {
      break;
    }
    uint8_t* out = reply.payload.data() + at;
    if (State(q) == EntryState::kModified) {
      // This node wrote the page (the common case: a home fills its region, others read it).
      // Downgrade its own copy in place, as a recall would, without a message to itself.
      absl::StatusOr<bool> downgraded = port->DowngradeLocal(q, out);
      if (!downgraded.ok()) {
        Lose(q, "the home could not write-protect its copy", downgraded.status());
        break;
      }
      if (!*downgraded) break;
      if (absl::Status stored = port->StorePage(q, out); !stored.ok()) {
        Lose(q, "StorePage", stored);
        break;
      }
      SetShared(q, NodeBit(cfg.self));
      ++c.local_downgrades;
    } else if (absl::Status loaded = port->LoadPage(q, out); !loaded.ok()) {
      DSM_LOG(ERROR) << "LoadPage(" << q << "): " << loaded;
      break;
    }
    at += kPageSize;
    SetShared(q, Sharers(q) | NodeBit(m.src));
    ++c.requests_served;
    ++c.run_pages_granted;
  }
  reply.payload.resize(at);
  ++c.run_requests;
  port->Send(std::move(reply));
}

// Runs the page's transactions until one has to wait for an answer or the queue is empty.
void Directory::Impl::Drain(PageIndex page, absl::Time now) {
  auto it = txns.find(page);
  while (it != txns.end()) {
    Txn& t = it->second;
    if (t.active) {
      if (t.waiting != 0 || t.recalling) {
        flags[page] |= kBusyBit;
        return;
      }
      Finish(page, t);
      t.active = false;
    }
    if (t.queue.empty()) {
      txns.erase(it);
      flags[page] &= static_cast<uint8_t>(~kBusyBit);
      return;
    }
    t.req = t.queue.front();
    t.queue.pop_front();
    t.active = true;
    Begin(page, t, now);
  }
}

// Starts the transaction of t.req: sends the invalidations and recall it needs.
void Directory::Impl::Begin(PageIndex page, Txn& t, absl::Time now) {
  const Request& r = t.req;
  t.waiting = 0;
  t.recalling = false;
  t.since = now;
  if (IsLost(page) || (down & NodeBit(r.src)) != 0) return;  // Finish nacks / drops it
  const EntryState st = State(page);
  if (r.reclaim) {
    if (st == EntryState::kModified && words[page] != cfg.self) {
      t.recalling = true;
      t.recall_from = static_cast<NodeId>(words[page]);
      ++c.recalls_sent;
      port->Send(Make(MsgType::kRecall, t.recall_from, page, r.req_id,
                      static_cast<uint64_t>(RecallKind::kDowngrade)));
    }
    return;  // Modified here: the home's own cache writes it back when it releases it
  }
  if (st == EntryState::kModified) {
    const NodeId owner = static_cast<NodeId>(words[page]);
    if (owner == r.src) {
      // The owner asks for a page it holds M: it lost the copy without a write-back (a cache
      // bug; see Cache's dataless-grant defence). Our copy is the best there is.
      ++c.protocol_errors;
      DSM_LOG(ERROR) << "node " << owner << " requests page " << page << " it owns";
      SetUncached(page);
    } else if (owner == cfg.self && TakeOwnCopy(page, t)) {
      // The home wrote the page itself: its copy was downgraded (kGetS) or given up (kGetM)
      // in place, as OnRunRequest does, not by a recall to itself through the event loop.
    } else {
      const RecallKind kind =
          r.type == MsgType::kGetS ? RecallKind::kDowngrade : RecallKind::kInvalidate;
      t.recalling = true;
      t.recall_from = owner;
      ++c.recalls_sent;
      port->Send(Make(MsgType::kRecall, owner, page, r.req_id, static_cast<uint64_t>(kind)));
    }
  }
  if (r.type == MsgType::kGetM) {
    uint64_t others = Sharers(page) & ~NodeBit(r.src);
    if ((others & NodeBit(cfg.self)) != 0 && DropOwnSharedCopy(page)) {
      others &= ~NodeBit(cfg.self);  // no kInv to itself
    }
    t.waiting = others;
    for (uint64_t m = others; m != 0; m &= m - 1) {
      const NodeId n = static_cast<NodeId>(std::countr_zero(m));
      ++c.invalidations_sent;
      port->Send(Make(MsgType::kInv, n, page, r.req_id, 0));
    }
  }
}

// Completes t.req: every other copy it needed gone is gone.
void Directory::Impl::Finish(PageIndex page, Txn& t) {
  const Request& r = t.req;
  // The home's copy Begin took in place, if it did. Finish follows that Begin at once (a page
  // Modified at the home has no sharers to wait for), so the grant below always uses it.
  std::vector<uint8_t> own_copy = std::move(t.own_copy);
  t.own_copy.clear();
  if (r.reclaim) return FinishReclaim();  // the recall ack stored the data (or it is lost)
  if ((down & NodeBit(r.src)) != 0) return;  // nobody to grant to; state is already consistent
  if (IsLost(page)) {
    Nack(r, page, ErrorCode::kPageLost);
    return;
  }
  const EntryState st = State(page);
  // Both checks below cannot fail while acks are counted correctly; if they do, the grant
  // still goes out (the alternative is a hang) and the error is counted.
  if (st == EntryState::kModified) {
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "page " << page << " still Modified at node " << words[page]
                   << " when its transaction completes";
  }
  if (r.type == MsgType::kGetM && (Sharers(page) & ~NodeBit(r.src)) != 0) {
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "granting M on page " << page << " while other sharers remain";
  }
  const bool has_valid_copy = r.type == MsgType::kGetM && (Sharers(page) & NodeBit(r.src)) != 0;
  Message m;
  if (has_valid_copy) {
    m = Make(MsgType::kGrant, r.src, page, r.req_id, static_cast<uint64_t>(Grant::kModified));
  } else {
    const Grant g = r.type == MsgType::kGetM ? Grant::kModified : Grant::kShared;
    m = Make(MsgType::kData, r.src, page, r.req_id, static_cast<uint64_t>(g));
    if (own_copy.size() == kPageSize) {
      m.payload = std::move(own_copy);  // the home's own copy, taken in place by Begin
    } else {
      m.payload.resize(kPageSize);
      absl::Status st_load = port->LoadPage(page, m.payload.data());
      if (!st_load.ok()) {
        DSM_LOG(ERROR) << "LoadPage(" << page << "): " << st_load;
        Nack(r, page, ErrorCode::kIoError);
        return;
      }
    }
  }
  // Record the grant before it is sent (the superset invariant).
  if (r.type == MsgType::kGetM) {
    SetModified(page, r.src);
  } else {
    SetShared(page, Sharers(page) | NodeBit(r.src));
  }
  ++c.requests_served;
  port->Send(std::move(m));
}

void Directory::Impl::OnPut(const Message& m) {
  const auto kind = static_cast<PutKind>(m.arg);
  if (kind == PutKind::kDropClean) {
    const PageIndex page = m.page;
    if (IsLost(page)) return;
    if ((Sharers(page) & NodeBit(m.src)) != 0) {
      RemoveSharer(page, m.src);
    } else {
      ++c.protocol_errors;
      DSM_LOG(WARNING) << "stale kDropClean for page " << page << " from node " << m.src;
    }
    return;
  }
  if (kind != PutKind::kWritebackDrop && kind != PutKind::kWritebackKeep) {
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "kPut with unknown kind " << m.arg;
    return;
  }
  // A write-back carries a run of 1..kMaxRunPages pages from m.page on (Sync sends runs):
  // exactly as many single-page write-backs in page order.
  const size_t n = m.payload.size() / kPageSize;
  if (n == 0 || n > kMaxRunPages || m.payload.size() % kPageSize != 0) {
    ++c.protocol_errors;  // the wire rejects these; loopback does not
    DSM_LOG(ERROR) << "write-back of " << m.payload.size() << " bytes from node " << m.src;
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    const PageIndex page = m.page + i;
    if (page >= cfg.num_pages || cfg.home(page) != cfg.self) {
      ++c.protocol_errors;
      DSM_LOG(ERROR) << "write-back run from node " << m.src << " reaches page " << page
                     << ", not homed here";
      return;
    }
    ApplyWriteback(page, kind, m.src, m.payload.data() + i * kPageSize);
  }
}

void Directory::Impl::ApplyWriteback(PageIndex page, PutKind kind, NodeId src,
                                     const uint8_t* data) {
  if (IsLost(page)) return;
  if (!IsOwner(page, src)) {
    // See "Stale kPut" above: the payload is never newer than what the home knows of.
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "stale write-back of page " << page << " from node " << src;
    if (kind == PutKind::kWritebackKeep && State(page) != EntryState::kModified) {
      // It says it keeps a copy: record it so a later writer invalidates it.
      SetShared(page, Sharers(page) | NodeBit(src));
    }
    return;
  }
  if (absl::Status stored = port->StorePage(page, data); !stored.ok()) {
    Lose(page, "StorePage", stored);
    return;
  }
  ++c.writebacks;
  if (kind == PutKind::kWritebackKeep) {
    SetShared(page, NodeBit(src));
  } else {
    SetUncached(page);
  }
}

void Directory::Impl::OnInvAck(const Message& m) {
  auto it = txns.find(m.page);
  if (it == txns.end() || !it->second.active || (it->second.waiting & NodeBit(m.src)) == 0) {
    ++c.protocol_errors;
    DSM_LOG(WARNING) << "unexpected kInvAck for page " << m.page << " from node " << m.src;
    return;
  }
  it->second.waiting &= ~NodeBit(m.src);
  RemoveSharer(m.page, m.src);  // it dropped the copy before acking
}

void Directory::Impl::OnRecallAck(const Message& m) {
  const PageIndex page = m.page;
  auto it = txns.find(page);
  if (it == txns.end() || !it->second.active || !it->second.recalling ||
      it->second.recall_from != m.src) {
    ++c.protocol_errors;
    DSM_LOG(WARNING) << "unexpected kRecallAck for page " << page << " from node " << m.src;
    return;
  }
  it->second.recalling = false;
  const bool kept = static_cast<PageState>(m.arg) == PageState::kShared;
  if (IsOwner(page, m.src)) {
    if (m.payload.size() == kPageSize) {
      if (absl::Status stored = port->StorePage(page, m.payload.data()); !stored.ok()) {
        Lose(page, "StorePage", stored);
        return;
      }
      ++c.writebacks;
    } else {
      // The owner could not give up write access and poisoned its copy (see CachePort):
      // the latest data is gone.
      Lose(page, "the owner answered the recall without data", absl::DataLossError(
          absl::StrCat("node ", m.src, " lost its Modified copy")));
      return;
    }
    if (kept) {
      SetShared(page, NodeBit(m.src));
    } else {
      SetUncached(page);
    }
    return;
  }
  // Its kPut arrived first and was applied; only its membership may have changed since.
  if (kept) {
    SetShared(page, Sharers(page) | NodeBit(m.src));
  } else {
    RemoveSharer(page, m.src);
  }
}

void Directory::OnPeerSilenced(NodeId peer, absl::Time now) {
  Impl& s = *impl_;
  if (peer >= kMaxNodes || (s.down & NodeBit(peer)) != 0) return;
  s.down |= NodeBit(peer);
  std::vector<PageIndex> touched;
  for (auto& [page, t] : s.txns) {
    // An active request of its own ends without a grant (Begin/Finish skip a down requester).
    std::erase_if(t.queue, [peer](const Impl::Request& r) { return r.src == peer; });
    if (t.active && t.req.src == peer) touched.push_back(page);
  }
  std::sort(touched.begin(), touched.end());
  for (PageIndex page : touched) s.Drain(page, now);
}

void Directory::OnPeerDown(NodeId peer, absl::Time now) {
  Impl& s = *impl_;
  if (peer >= kMaxNodes || (s.forgotten & NodeBit(peer)) != 0) return;
  s.down |= NodeBit(peer);
  s.forgotten |= NodeBit(peer);
  // Forget its copies. A full scan: rare, and non-home entries are all zero.
  std::vector<PageRange> lost;  // logged as ranges: one line per run, not per page
  for (PageIndex p = 0; p < s.cfg.num_pages; ++p) {
    const EntryState st = s.State(p);
    if (st == EntryState::kShared && (s.words[p] & NodeBit(peer)) != 0) {
      s.RemoveSharer(p, peer);
    } else if (st == EntryState::kModified && s.words[p] == peer) {
      s.SetUncached(p);
      s.flags[p] |= kLostBit;
      ++s.c.lost_pages;
      AddPage(&lost, p);
    }
  }
  LogLostRanges(absl::StrCat("directory of region ", s.cfg.region), lost,
                absl::StrCat("the only current copy was on node ", peer, ", which is down"));
  std::vector<PageIndex> touched;
  for (auto& [page, t] : s.txns) {
    std::erase_if(t.queue, [peer](const Impl::Request& r) { return r.src == peer; });
    if (t.active) {
      t.waiting &= ~NodeBit(peer);
      if (t.recalling && t.recall_from == peer) t.recalling = false;  // page is lost now
    }
    touched.push_back(page);
  }
  // Hash-map order varies per process: sort so runs repeat exactly.
  std::sort(touched.begin(), touched.end());
  for (PageIndex page : touched) s.Drain(page, now);
}

bool Directory::RecordsHolder(PageIndex page, NodeId node) const {
  const Impl& s = *impl_;
  if (page >= s.cfg.num_pages || node >= kMaxNodes) return false;
  return s.IsLost(page) || (s.Sharers(page) & NodeBit(node)) != 0 || s.IsOwner(page, node);
}

bool Directory::AwaitsAck(PageIndex page, NodeId node, MsgType ack) const {
  const Impl& s = *impl_;
  if (node >= kMaxNodes) return false;
  auto it = s.txns.find(page);
  if (it == s.txns.end() || !it->second.active) return false;
  const Impl::Txn& t = it->second;
  if (ack == MsgType::kInvAck) return (t.waiting & NodeBit(node)) != 0;
  if (ack == MsgType::kRecallAck) return t.recalling && t.recall_from == node;
  return false;
}

void Directory::OnPeerRejoined(NodeId peer) {
  Impl& s = *impl_;
  if (peer >= kMaxNodes) return;
  // The new incarnation starts with no copies; a later failure of it is forgotten again.
  s.down &= ~NodeBit(peer);
  s.forgotten &= ~NodeBit(peer);
}

void Directory::SetClosing() { impl_->closing = true; }

bool Directory::closing() const { return impl_->closing; }

void Directory::ReclaimModified(absl::Time now, absl::AnyInvocable<void()> done) {
  Impl& s = *impl_;
  std::vector<PageIndex> pages;
  for (PageIndex p = 0; p < s.cfg.num_pages; ++p) {  // a full scan: once per unmap
    if ((s.State(p) == EntryState::kModified && s.words[p] != s.cfg.self) || s.txns.contains(p)) {
      pages.push_back(p);
    }
  }
  s.reclaimed.push_back(std::move(done));
  // One more than the pages: this call's own share, given back below, so `done` cannot run
  // before every page's reclaim is queued.
  s.reclaims_outstanding += pages.size() + 1;
  for (PageIndex p : pages) {
    s.txns[p].queue.push_back(Impl::Request{MsgType::kGetS, s.cfg.self, 0, now, true});
    s.Drain(p, now);
  }
  s.FinishReclaim();
}

void Directory::Impl::FinishReclaim() {
  if (--reclaims_outstanding != 0) return;
  std::vector<absl::AnyInvocable<void()>> waiting = std::move(reclaimed);
  reclaimed.clear();
  for (auto& fn : waiting) fn();
}

void Directory::CollectOverdue(absl::Time now, absl::Duration timeout,
                               std::vector<NodeId>* peers) const {
  uint64_t owing = 0;
  for (const auto& [page, t] : impl_->txns) {
    if (!t.active || now - t.since <= timeout) continue;
    owing |= t.waiting;
    if (t.recalling) owing |= NodeBit(t.recall_from);
  }
  for (uint64_t m = owing; m != 0; m &= m - 1) {
    peers->push_back(static_cast<NodeId>(std::countr_zero(m)));
  }
}

bool Directory::HasRemoteCopies() const {
  const Impl& s = *impl_;
  for (PageIndex p = 0; p < s.cfg.num_pages; ++p) {
    const EntryState st = s.State(p);
    if (st == EntryState::kShared && (s.words[p] & ~NodeBit(s.cfg.self)) != 0) return true;
    if (st == EntryState::kModified && s.words[p] != s.cfg.self) return true;
  }
  return false;
}

Directory::EntryView Directory::entry(PageIndex page) const {
  const Impl& s = *impl_;
  EntryView v;
  if (page >= s.cfg.num_pages) return v;
  v.state = s.State(page);
  v.sharers = s.Sharers(page);
  v.owner = v.state == EntryState::kModified ? static_cast<NodeId>(s.words[page]) : 0;
  v.busy = (s.flags[page] & kBusyBit) != 0;
  v.lost = s.IsLost(page);
  auto it = s.txns.find(page);
  if (it != s.txns.end()) v.queued = it->second.queue.size();
  return v;
}

const Directory::Counters& Directory::counters() const { return impl_->c; }

}  // namespace dsm::coherence
