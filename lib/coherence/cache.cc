#include "coherence/cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "common/log.h"
#include "common/node_set.h"
#include "common/payload_pool.h"

namespace dsm::coherence {
namespace {

// Per-page byte: bits 0-1 PageState, then flags. One byte per page, in a LazyArray.
constexpr uint8_t kStateMask = 0x3;
constexpr uint8_t kPendingBit = 0x4;
constexpr uint8_t kLostBit = 0x8;
constexpr uint8_t kPrefetchBit = 0x10;  // requested by readahead, not yet used by a fault
constexpr uint8_t kNoReadaheadBit = 0x20;  // Advice::kRandom: no readahead from or into it
// Readahead runs in a row whose answer refused the page (saturating at 3); a granted run page
// resets it. From kRefusalsBeforeSkip on, readahead leaves the page to demand faults.
constexpr uint8_t kRefusalShift = 6;
constexpr uint8_t kRefusalMask = 0xc0;
constexpr uint8_t kRefusalsBeforeSkip = 2;


}  // namespace

struct Cache::Impl {
  // The one outstanding request of a pending page.
  struct Request {
    uint64_t req_id = 0;
    NodeId home = 0;
    absl::Time start;
    bool write = false;       // sent as kGetM
    bool want_write = false;  // a write fault joined this kGetS: upgrade once S is installed
    bool waited = false;      // a thread waits for it (false only for readahead not yet joined)
  };

  Impl(Config config, CachePort* p)
      : cfg(std::move(config)),
        port(p),
        pages(cfg.num_pages),
        next_req_id(std::max<uint64_t>(cfg.first_req_id, 1)) {
    pending.reserve(256);  // the fault path does not grow it below this many requests
  }

  Config cfg;
  CachePort* port;
  LazyArray<uint8_t> pages;
  absl::flat_hash_map<PageIndex, Request> pending;
  uint64_t next_req_id;
  uint64_t down = 0;  // homes declared down
  Counters c;
  // Readahead stream (one per region): the last read miss, the length of the current run of
  // sequential misses, the window, and one past the last page the stream has requested.
  bool stream = false;
  PageIndex last_miss = 0;
  uint64_t run = 0;
  uint64_t window = 0;
  PageIndex ra_end = 0;

  void Readahead(PageIndex page, absl::Time now);
  // Requests the pages of [from, target) a speculative request may ask for, in runs; stops
  // early when the memory budget has no room. `readahead`: also skip pages advised kRandom
  // and pages whose home keeps refusing them. Returns where it stopped.
  PageIndex RequestRange(PageIndex from, PageIndex target, bool readahead, absl::Time now);
  void SendRun(PageIndex first, uint64_t n, NodeId home, absl::Time now);
  uint8_t Refusals(PageIndex p) const { return (pages[p] & kRefusalMask) >> kRefusalShift; }
  void SetRefusals(PageIndex p, uint8_t n) {
    pages[p] = static_cast<uint8_t>((pages[p] & ~kRefusalMask) | (n << kRefusalShift));
  }

  PageState State(PageIndex p) const { return static_cast<PageState>(pages[p] & kStateMask); }
  bool IsLost(PageIndex p) const { return (pages[p] & kLostBit) != 0; }

  void SetState(PageIndex p, PageState s) {
    PageState old = State(p);
    if (old == PageState::kShared) --c.shared;
    if (old == PageState::kModified) --c.modified;
    if (s == PageState::kShared) ++c.shared;
    if (s == PageState::kModified) ++c.modified;
    uint8_t keep = static_cast<uint8_t>(~kStateMask);
    if (s == PageState::kInvalid) keep &= static_cast<uint8_t>(~kPrefetchBit);
    pages[p] = static_cast<uint8_t>((pages[p] & keep) | static_cast<uint8_t>(s));
  }

  Message Make(MsgType t, NodeId dst, PageIndex page, uint64_t req_id, uint64_t arg) const {
    return Message{t, cfg.self, dst, cfg.region, page, req_id, arg, {}};
  }

  void SendRequest(PageIndex page, bool write, absl::Time now) {
    Request r;
    r.req_id = next_req_id++;
    r.home = cfg.home(page);
    r.start = now;
    r.write = write;
    r.waited = true;
    pending[page] = r;
    pages[page] |= kPendingBit;
    ++c.requests_sent;
    port->Send(Make(write ? MsgType::kGetM : MsgType::kGetS, r.home, page, r.req_id, 0));
  }

  // Ends the pending request (if any) and fails the page for good.
  void MarkLost(PageIndex page, ErrorCode why) {
    pending.erase(page);
    // Fail below zaps and poisons the page whatever this Drop achieves.
    if (State(page) != PageState::kInvalid) (void)port->Drop(page);
    SetState(page, PageState::kInvalid);
    pages[page] = static_cast<uint8_t>((pages[page] & ~kPendingBit) | kLostBit);
    ++c.lost;
    port->Fail(page, why);
  }

  void PortFailure(PageIndex page, const char* what, const absl::Status& s) {
    ++c.port_failures;
    DSM_LOG(ERROR) << "region " << cfg.region << " page " << page << ": " << what << ": " << s;
  }

  // A grant this node could not map (see the rules above CachePort): handed back to the home
  // and lost here. `data` is the granted page, or null to read it from the (S) mapping.
  void RefuseGrant(PageIndex page, NodeId home, Grant g, const uint8_t* data) {
    Message put = Make(MsgType::kPut, home, page, 0,
                       static_cast<uint64_t>(g == Grant::kModified ? PutKind::kWritebackDrop
                                                                   : PutKind::kDropClean));
    if (g == Grant::kModified) {
      port->TakePageBuffer(&put.payload);
      if (data != nullptr) {
        std::memcpy(put.payload.data(), data, kPageSize);
      } else {
        port->ReadPage(page, put.payload.data());
      }
    }
    MarkLost(page, ErrorCode::kIoError);  // unmapped and poisoned before the home hears
    port->Send(std::move(put));
  }

  // Unmaps a mapped page (-> I); if the unmap fails the copy is poisoned instead, so either
  // way no stale read survives the message the caller sends next.
  void DropOrLose(PageIndex page) {
    SetState(page, PageState::kInvalid);
    if (absl::Status s = port->Drop(page); !s.ok()) {
      PortFailure(page, "drop", s);
      MarkLost(page, ErrorCode::kIoError);
    }
  }

  // Writes back the pages [first, first + n) (write-protected, all homed at `home`) in one
  // kPut(kWritebackKeep); they stay S here.
  void WriteBackKept(PageIndex first, uint64_t n, NodeId home) {
    Message m = Make(MsgType::kPut, home, first, 0, static_cast<uint64_t>(PutKind::kWritebackKeep));
    if (n == 1) {
      port->TakePageBuffer(&m.payload);
    } else {
      m.payload = TakePayloadBufferForOverwrite(n * kPageSize);  // every page read below
    }
    for (uint64_t i = 0; i < n; ++i) {
      SetState(first + i, PageState::kShared);
      port->ReadPage(first + i, m.payload.data() + i * kPageSize);
    }
    c.writebacks += n;
    port->Send(std::move(m));
  }

  void OnReply(const Message& m, absl::Time now);
  void OnRunReply(const Message& m, absl::Time now);
  // Pages [first, first + n) pending under req_id (the pages of one run request).
  uint64_t RunLength(PageIndex first, uint64_t req_id) const {
    uint64_t n = 0;
    while (n < kMaxRunPages && first + n < cfg.num_pages) {
      auto it = pending.find(first + n);
      if (it == pending.end() || it->second.req_id != req_id) break;
      ++n;
    }
    return n;
  }
  void OnInv(const Message& m);
  void OnRecall(const Message& m);
};

Cache::Cache(Config config, CachePort* port)
    : impl_(std::make_shared<Impl>(std::move(config), port)) {}

void Cache::OnFault(PageIndex page, bool write, absl::Time now) {
  Impl& s = *impl_;
  if (page >= s.cfg.num_pages) {
    ++s.c.protocol_errors;
    DSM_LOG(ERROR) << "fault on page " << page << " beyond the region (" << s.cfg.num_pages
                   << " pages)";
    s.port->Fail(page, ErrorCode::kIoError);
    return;
  }
  if (s.IsLost(page)) {
    s.port->Fail(page, ErrorCode::kPageLost);
    return;
  }
  PageState st = s.State(page);
  if (st == PageState::kModified || (st == PageState::kShared && !write)) {
    // Another fault on this page was resolved first; the faulting thread only needs waking.
    ++s.c.stale_faults;
    if ((s.pages[page] & kPrefetchBit) != 0) {  // installed by readahead just before
      ++s.c.prefetch_hits;
      s.pages[page] &= static_cast<uint8_t>(~kPrefetchBit);
    }
    s.port->Wake(page);
    return;
  }
  if (!write) {
    ++s.c.read_faults;
  } else if (st == PageState::kShared) {
    ++s.c.upgrade_faults;
  } else {
    ++s.c.write_faults;  // includes a WP fault on a page invalidated meanwhile
  }
  auto it = s.pending.find(page);
  if (it != s.pending.end()) {
    ++s.c.coalesced_faults;
    it->second.waited = true;
    if (write && !it->second.write) it->second.want_write = true;
    if ((s.pages[page] & kPrefetchBit) != 0) {
      ++s.c.prefetch_hits;
      s.pages[page] &= static_cast<uint8_t>(~kPrefetchBit);
    }
    if (!write) s.Readahead(page, now);
    return;
  }
  if ((s.down & NodeBit(s.cfg.home(page))) != 0) {
    s.MarkLost(page, ErrorCode::kPageLost);
    return;
  }
  s.SendRequest(page, write, now);
  if (!write) s.Readahead(page, now);
}

void Cache::Impl::Readahead(PageIndex page, absl::Time now) {
  const uint64_t max = cfg.readahead_max_pages;
  if (max == 0 || (pages[page] & kNoReadaheadBit) != 0) return;
  // Sequential: the next page, or a page inside what the stream already requested (the pages
  // before it were read without a fault, having been prefetched or already mapped).
  const bool seq =
      stream && page > last_miss && page <= std::max<PageIndex>(last_miss + 1, ra_end);
  if (seq) {
    for (PageIndex q = last_miss + 1; q < page; ++q) {
      if ((pages[q] & kPrefetchBit) == 0) continue;
      if (State(q) != PageState::kInvalid) ++c.prefetch_hits;  // read with no fault
      pages[q] &= static_cast<uint8_t>(~kPrefetchBit);
    }
    ++run;
  } else {
    run = 1;
    window = 0;
    ra_end = page + 1;
  }
  stream = true;
  last_miss = page;
  if (run < kReadaheadTrigger) return;
  window = window == 0 ? std::min<uint64_t>(4, max) : std::min<uint64_t>(2 * window, max);
  PageIndex target = std::min<PageIndex>(page + 1 + window, cfg.num_pages);
  if (window >= kMaxRunPages && target < cfg.num_pages) {
    // Stop at a run boundary: later runs then start where faults land and are full length.
    target = std::max<PageIndex>(page + 1, target / kMaxRunPages * kMaxRunPages);
  }
  PageIndex from = std::max<PageIndex>(page + 1, ra_end);
  // Wait until a whole chunk is due rather than trickle out a page per fault.
  const uint64_t chunk = std::clamp<uint64_t>(window / 4, 1, kMaxRunPages);
  if (from >= target || (target - from < chunk && target < cfg.num_pages)) return;
  ra_end = std::max(ra_end, RequestRange(from, target, /*readahead=*/true, now));
}

PageIndex Cache::Impl::RequestRange(PageIndex from, PageIndex target, bool readahead,
                                    absl::Time now) {
  PageIndex first = 0;
  uint64_t n = 0;
  NodeId run_home = 0;
  for (; from < target; ++from) {
    const PageIndex q = from;
    const NodeId home = cfg.home(q);
    // Pages homed here cost no network to fetch on demand; a down home cannot answer.
    const bool wanted = (pages[q] & (kPendingBit | kLostBit)) == 0 &&
                        State(q) == PageState::kInvalid && home != cfg.self &&
                        (down & NodeBit(home)) == 0 &&
                        (!readahead || ((pages[q] & kNoReadaheadBit) == 0 &&
                                        Refusals(q) < kRefusalsBeforeSkip));
    if (n > 0 && (!wanted || home != run_home || n == kMaxRunPages || q % kMaxRunPages == 0)) {
      SendRun(first, n, run_home, now);
      n = 0;
    }
    if (!wanted) {
      if (readahead && Refusals(q) >= kRefusalsBeforeSkip) ++c.prefetch_skipped;
      continue;
    }
    if (!port->ReservePrefetch(q)) break;  // the memory budget has no room now
    if (n == 0) {
      first = q;
      run_home = home;
    }
    ++n;
  }
  if (n > 0) SendRun(first, n, run_home, now);
  return from;
}

// Speculative requests for [first, first + n), all I, not pending, homed at `home`, each
// with room reserved: one kGetSRun (a lone page: kGetS), one pending entry per page.
void Cache::Impl::SendRun(PageIndex first, uint64_t n, NodeId home, absl::Time now) {
  c.prefetches += n;
  if (n == 1) {
    SendRequest(first, /*write=*/false, now);
    pending[first].waited = false;
    pages[first] |= kPrefetchBit;
    return;
  }
  Request r;
  r.req_id = next_req_id++;
  r.home = home;
  r.start = now;
  for (PageIndex q = first; q < first + n; ++q) {
    pending[q] = r;
    pages[q] |= kPendingBit | kPrefetchBit;
  }
  ++c.requests_sent;
  ++c.run_requests;
  port->Send(Make(MsgType::kGetSRun, home, first, r.req_id, n));
}

void Cache::OnMessage(const Message& m, absl::Time now) {
  Impl& s = *impl_;
  if (m.page >= s.cfg.num_pages) {
    ++s.c.protocol_errors;
    DSM_LOG(ERROR) << "coherence message for page " << m.page << " beyond the region";
    return;
  }
  switch (m.type) {
    case MsgType::kData:
    case MsgType::kGrant:
    case MsgType::kNack:
      s.OnReply(m, now);
      return;
    case MsgType::kDataRun:
      s.OnRunReply(m, now);
      return;
    case MsgType::kInv:
      s.OnInv(m);
      return;
    case MsgType::kRecall:
      s.OnRecall(m);
      return;
    default:
      ++s.c.protocol_errors;
      DSM_LOG(ERROR) << "cache got unexpected message type " << static_cast<int>(m.type);
      return;
  }
}

void Cache::Impl::OnReply(const Message& m, absl::Time now) {
  const PageIndex page = m.page;
  auto it = pending.find(page);
  if (it == pending.end() || it->second.req_id != m.req_id) {
    ++c.protocol_errors;
    DSM_LOG(WARNING) << "ignoring reply for page " << page << " req " << m.req_id
                     << ": no such request outstanding";
    return;
  }
  const Request r = it->second;
  if (m.src != r.home) {
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "reply for page " << page << " from node " << m.src << ", not its home "
                   << r.home;
    return;
  }
  if (m.type == MsgType::kNack) {
    // A whole run if the request was one (homes answer runs with kDataRun, never kNack).
    const uint64_t n = RunLength(page, m.req_id);
    for (PageIndex q = page; q < page + n; ++q) MarkLost(q, static_cast<ErrorCode>(m.arg));
    return;
  }
  const PageState st = State(page);
  if (m.type == MsgType::kGrant) {
    if (static_cast<Grant>(m.arg) != Grant::kModified) {
      ++c.protocol_errors;
      DSM_LOG(ERROR) << "dataless grant other than M for page " << page;
      return;
    }
    if (st == PageState::kShared) {
      pending.erase(it);
      pages[page] &= static_cast<uint8_t>(~kPendingBit);
      if (absl::Status s = port->SetAccess(page, PageState::kModified); !s.ok()) {
        PortFailure(page, "upgrade", s);
        RefuseGrant(page, r.home, Grant::kModified, nullptr);
        return;
      }
      SetState(page, PageState::kModified);
      return;
    }
    // Protocol bug: the home believes we hold a valid S copy, but we do not. Ask again: the
    // home, seeing us as owner and not as sharer, answers with data (its copy is current,
    // since it granted us without data only because no one held the page M).
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "dataless M grant for page " << page << " held " << PageStateName(st)
                   << "; requesting again";
    SendRequest(page, /*write=*/true, now);
    return;
  }
  // kData.
  const Grant g = static_cast<Grant>(m.arg);
  if (m.payload.size() != kPageSize || (g != Grant::kShared && g != Grant::kModified)) {
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "malformed data grant for page " << page;
    MarkLost(page, ErrorCode::kIoError);
    return;
  }
  if (st != PageState::kInvalid) {
    // Cannot happen: data is sent only to a node the home does not list as a sharer, and we
    // left S only after telling the home. Replace the copy rather than trust the old one.
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "data grant for page " << page << " held " << PageStateName(st);
    DropOrLose(page);
    if (IsLost(page)) return;
  }
  const PageState ns = g == Grant::kModified ? PageState::kModified : PageState::kShared;
  pending.erase(it);
  pages[page] &= static_cast<uint8_t>(~kPendingBit);
  if (absl::Status s = port->Install(page, m.payload.data(), ns); !s.ok()) {
    PortFailure(page, "install", s);
    RefuseGrant(page, r.home, g, m.payload.data());
    return;
  }
  SetState(page, ns);
  if (ns == PageState::kShared && (r.write || r.want_write)) {
    // A writer is waiting: upgrade now rather than wait for its WP re-fault.
    SendRequest(page, /*write=*/true, now);
  }
}

// kDataRun: the home granted the first k pages of a run (k may be 0) and refused the rest.
void Cache::Impl::OnRunReply(const Message& m, absl::Time now) {
  const PageIndex first = m.page;
  auto it = pending.find(first);
  if (it == pending.end() || it->second.req_id != m.req_id || m.src != it->second.home) {
    ++c.protocol_errors;
    DSM_LOG(WARNING) << "ignoring run reply for page " << first << " req " << m.req_id
                     << " from node " << m.src << ": no such request outstanding";
    return;
  }
  const uint64_t n = RunLength(first, m.req_id);
  uint64_t granted = m.payload.size() / kPageSize;
  if (n != m.arg || granted > n || m.payload.size() % kPageSize != 0) {
    // Cannot happen: the wire checks the sizes and the run's pages leave pending together.
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "run reply for page " << first << ": " << granted << " of " << m.arg
                   << " pages for a run of " << n;
    granted = std::min(granted, n);
  }
  for (PageIndex q = first; q < first + granted; ++q) {
    if (State(q) != PageState::kInvalid) {  // cannot happen: runs ask only for I pages
      ++c.protocol_errors;
      DSM_LOG(ERROR) << "run grant for page " << q << " held " << PageStateName(State(q));
      SetState(q, PageState::kInvalid);
      (void)port->Drop(q);  // a failure is repaired by the install below (it overwrites)
    }
  }
  bool page_by_page = false;
  if (granted > 0) {
    if (absl::Status s = port->InstallRun(first, granted, m.payload.data()); !s.ok()) {
      PortFailure(first, "install run", s);
      page_by_page = true;
    }
  }
  for (PageIndex q = first; q < first + n; ++q) {
    auto jt = pending.find(q);
    const Request r = jt->second;
    pending.erase(jt);
    pages[q] &= static_cast<uint8_t>(~kPendingBit);
    if (q < first + granted) {
      if (page_by_page) {
        const uint8_t* data = m.payload.data() + (q - first) * kPageSize;
        if (absl::Status s = port->Install(q, data, PageState::kShared); !s.ok()) {
          PortFailure(q, "install", s);
          RefuseGrant(q, r.home, Grant::kShared, data);
          continue;
        }
      }
      SetState(q, PageState::kShared);
      SetRefusals(q, 0);
      if (r.want_write) SendRequest(q, /*write=*/true, now);  // a writer joined: upgrade
      continue;
    }
    ++c.prefetch_refused;
    if (Refusals(q) < 3) SetRefusals(q, static_cast<uint8_t>(Refusals(q) + 1));
    if (!r.waited) {
      pages[q] &= static_cast<uint8_t>(~kPrefetchBit);
      port->CancelPrefetch(q);
    } else if ((down & NodeBit(r.home)) != 0) {
      MarkLost(q, ErrorCode::kPageLost);
    } else {
      SendRequest(q, r.want_write, now);  // a thread joined: ask for this page alone
    }
  }
}

void Cache::Impl::OnInv(const Message& m) {
  ++c.invalidations;
  const PageState st = State(m.page);
  if (st == PageState::kModified) {
    // Cannot happen: the home invalidates only recorded sharers, never its M owner. Drop
    // anyway: the home will grant M elsewhere after our ack, and single-writer matters more
    // than this node's unsent stores.
    ++c.protocol_errors;
    DSM_LOG(ERROR) << "invalidation of Modified page " << m.page << "; dropping it";
  }
  if (st != PageState::kInvalid) DropOrLose(m.page);
  port->Send(Make(MsgType::kInvAck, m.src, m.page, m.req_id, 0));
}

void Cache::Impl::OnRecall(const Message& m) {
  ++c.recalls;
  const PageIndex page = m.page;
  const bool invalidate = static_cast<RecallKind>(m.arg) == RecallKind::kInvalidate;
  Message ack = Make(MsgType::kRecallAck, m.src, page, m.req_id, 0);
  PageState st = State(page);
  if (st == PageState::kModified) {
    // Write-protect before reading so no store lands after the copy is taken.
    if (absl::Status s = port->SetAccess(page, PageState::kShared); !s.ok()) {
      // This node cannot give up write access: its copy is lost, and the answer without data
      // as Invalid tells the home that the only current copy is gone.
      PortFailure(page, "recall write-protect", s);
      MarkLost(page, ErrorCode::kIoError);
      ack.arg = static_cast<uint64_t>(PageState::kInvalid);
      port->Send(std::move(ack));
      return;
    }
    SetState(page, PageState::kShared);
    port->TakePageBuffer(&ack.payload);
    port->ReadPage(page, ack.payload.data());
    st = PageState::kShared;
  }
  if (invalidate && st == PageState::kShared) {
    DropOrLose(page);
    st = PageState::kInvalid;
  }
  ack.arg = static_cast<uint64_t>(st);
  port->Send(std::move(ack));
}

void Cache::OnPeerDown(NodeId peer) {
  Impl& s = *impl_;
  if (peer >= kMaxNodes || (s.down & NodeBit(peer)) != 0) return;
  s.down |= NodeBit(peer);
  std::vector<PageIndex> failed;
  for (const auto& [page, r] : s.pending) {
    if (r.home == peer) failed.push_back(page);
  }
  // Hash-map order varies per process: sort so runs repeat exactly.
  std::sort(failed.begin(), failed.end());
  for (PageIndex page : failed) s.MarkLost(page, ErrorCode::kPageLost);
}

void Cache::FenceHome(NodeId home) {
  Impl& s = *impl_;
  OnPeerDown(home);
  // A full scan: rare, and a page without a copy costs one byte read.
  std::vector<PageIndex> fenced;
  for (PageIndex p = 0; p < s.cfg.num_pages; ++p) {
    if (s.State(p) != PageState::kInvalid && s.cfg.home(p) == home) fenced.push_back(p);
  }
  for (PageIndex page : fenced) s.MarkLost(page, ErrorCode::kPageLost);
}

void Cache::CollectOverdue(absl::Time now, absl::Duration timeout,
                           std::vector<NodeId>* peers) const {
  uint64_t seen = 0;
  for (const auto& [page, r] : impl_->pending) {
    if (now - r.start > timeout && (seen & NodeBit(r.home)) == 0) {
      seen |= NodeBit(r.home);
      peers->push_back(r.home);
    }
  }
}

bool Cache::Release(PageIndex page) {
  Impl& s = *impl_;
  if (page >= s.cfg.num_pages || (s.pages[page] & (kPendingBit | kLostBit)) != 0) return false;
  const PageState st = s.State(page);
  const NodeId home = s.cfg.home(page);
  const bool home_down = (s.down & NodeBit(home)) != 0;
  if (st == PageState::kShared) {
    s.DropOrLose(page);
    if (!home_down) s.port->Send(s.Make(MsgType::kPut, home, page, 0,
                                        static_cast<uint64_t>(PutKind::kDropClean)));
    return true;
  }
  if (st == PageState::kModified) {
    if (home_down) return false;  // the only copy: nowhere to write it
    Message m = s.Make(MsgType::kPut, home, page, 0,
                       static_cast<uint64_t>(PutKind::kWritebackDrop));
    if (absl::Status st_wp = s.port->SetAccess(page, PageState::kShared); !st_wp.ok()) {
      s.PortFailure(page, "release write-protect", st_wp);
      return false;  // still writable, still the only copy: it stays M
    }
    s.port->TakePageBuffer(&m.payload);
    s.port->ReadPage(page, m.payload.data());
    s.DropOrLose(page);
    ++s.c.writebacks;
    s.port->Send(std::move(m));
    return true;
  }
  return false;
}

absl::StatusOr<bool> Cache::DowngradeForHome(PageIndex page, uint8_t* out) {
  Impl& s = *impl_;
  if (page >= s.cfg.num_pages || s.State(page) != PageState::kModified) return false;
  // Write-protect before reading, as for a recall: no store lands after the copy.
  if (absl::Status st = s.port->SetAccess(page, PageState::kShared); !st.ok()) {
    s.PortFailure(page, "home downgrade write-protect", st);
    s.MarkLost(page, ErrorCode::kIoError);
    return st;
  }
  s.SetState(page, PageState::kShared);
  s.port->ReadPage(page, out);
  ++s.c.recalls;
  return true;
}

absl::StatusOr<bool> Cache::InvalidateForHome(PageIndex page, PageState held, uint8_t* out) {
  Impl& s = *impl_;
  if (page >= s.cfg.num_pages || held == PageState::kInvalid || s.State(page) != held) {
    return false;
  }
  if (held == PageState::kModified) {
    absl::StatusOr<bool> downgraded = DowngradeForHome(page, out);  // -> S, data in out
    if (!downgraded.ok() || !*downgraded) return downgraded;
  } else {
    ++s.c.invalidations;
  }
  s.DropOrLose(page);
  return true;
}

void Cache::LoseCopy(PageIndex page) {
  Impl& s = *impl_;
  if (page >= s.cfg.num_pages || s.IsLost(page)) return;
  s.MarkLost(page, ErrorCode::kIoError);
}

bool Cache::CanRelease(PageIndex page) const {
  const Impl& s = *impl_;
  if (page >= s.cfg.num_pages || (s.pages[page] & (kPendingBit | kLostBit)) != 0) return false;
  const PageState st = s.State(page);
  if (st == PageState::kShared) return true;
  return st == PageState::kModified && (s.down & NodeBit(s.cfg.home(page))) == 0;
}

absl::StatusOr<size_t> Cache::WriteBackAll(std::vector<NodeId>* homes) {
  Impl& s = *impl_;
  uint64_t seen = 0;
  for (NodeId h : *homes) seen |= NodeBit(h);
  size_t written = 0;
  absl::Status first_error;
  auto write_back = [&](PageIndex first, uint64_t n, NodeId home) {
    s.WriteBackKept(first, n, home);
    written += n;
    if ((seen & NodeBit(home)) == 0) {
      seen |= NodeBit(home);
      homes->push_back(home);
    }
  };
  // Scan until every M page is found (counters track how many there are); the table is one
  // byte per page, so even a 64 GiB region scans in milliseconds.
  uint64_t remaining = s.c.modified;
  auto writable = [&s](PageIndex p) {
    return s.State(p) == PageState::kModified && (s.down & NodeBit(s.cfg.home(p))) == 0;
  };
  PageIndex page = 0;
  while (page < s.cfg.num_pages && remaining > 0) {
    if (s.State(page) != PageState::kModified) {
      ++page;
      continue;
    }
    if (!writable(page)) {  // its home is down: the only copy stays here, M
      --remaining;
      ++page;
      continue;
    }
    // A run of M pages with live homes is write-protected in one port call (one ioctl and
    // one TLB flush instead of one per page), then sent in write-backs of up to
    // kMaxRunPages pages with one home each.
    PageIndex end = page + 1;
    while (end < s.cfg.num_pages && writable(end)) ++end;
    if (absl::Status st = s.port->DowngradeRun(page, end - page); !st.ok()) {
      // Page by page instead; a page whose write-protect fails stays M and unwritten.
      s.PortFailure(page, "sync write-protect", st);
      for (; page < end; ++page) {
        --remaining;
        if (absl::Status one = s.port->SetAccess(page, PageState::kShared); !one.ok()) {
          s.PortFailure(page, "sync write-protect", one);
          if (first_error.ok()) first_error = one;
          continue;
        }
        write_back(page, 1, s.cfg.home(page));
      }
      continue;
    }
    while (page < end) {
      const NodeId home = s.cfg.home(page);
      uint64_t n = 1;
      while (page + n < end && n < kMaxRunPages && s.cfg.home(page + n) == home) ++n;
      write_back(page, n, home);
      remaining -= n;
      page += n;
    }
  }
  if (!first_error.ok()) return first_error;
  return written;
}

PageState Cache::state(PageIndex page) const {
  return page < impl_->cfg.num_pages ? impl_->State(page) : PageState::kInvalid;
}
bool Cache::pending(PageIndex page) const {
  return page < impl_->cfg.num_pages && (impl_->pages[page] & kPendingBit) != 0;
}
bool Cache::lost(PageIndex page) const {
  return page < impl_->cfg.num_pages && impl_->IsLost(page);
}
uint64_t Cache::num_pages() const { return impl_->cfg.num_pages; }

void Cache::SetReadahead(PageIndex first, uint64_t n, bool enabled) {
  Impl& s = *impl_;
  const PageIndex end = std::min<PageIndex>(first + n, s.cfg.num_pages);
  for (PageIndex q = first; q < end; ++q) {
    if (enabled) {
      s.pages[q] &= static_cast<uint8_t>(~kNoReadaheadBit);
      s.SetRefusals(q, 0);
    } else {
      s.pages[q] |= kNoReadaheadBit;
    }
  }
}

uint64_t Cache::Prefetch(PageIndex first, uint64_t n, absl::Time now) {
  Impl& s = *impl_;
  const PageIndex end = std::min<PageIndex>(first + n, s.cfg.num_pages);
  if (first >= end) return 0;
  const uint64_t before = s.c.prefetches;
  s.RequestRange(first, end, /*readahead=*/false, now);
  return s.c.prefetches - before;
}
uint64_t Cache::FetchForLock(PageIndex first, uint64_t n, bool write, absl::Time now) {
  Impl& s = *impl_;
  const PageIndex end =
      std::min<PageIndex>(first + std::min(n, kMaxLockFetchPages), s.cfg.num_pages);
  uint64_t sent = 0;
  for (PageIndex q = first; q < end; ++q) {
    if (s.IsLost(q) || (s.down & NodeBit(s.cfg.home(q))) != 0) continue;
    auto it = s.pending.find(q);
    if (it != s.pending.end()) {
      // Its request is in flight already; a write lock wants M of it, as a joining writer.
      if (write && !it->second.write) it->second.want_write = true;
      continue;
    }
    const PageState st = s.State(q);
    if (st == PageState::kModified || (st == PageState::kShared && !write)) continue;
    // From I the page will take room: ask the budget first, as readahead does. An upgrade
    // of a resident S copy takes none.
    if (st == PageState::kInvalid && !s.port->ReservePrefetch(q)) break;
    s.SendRequest(q, write, now);
    s.pending[q].waited = false;
    ++s.c.lock_fetches;
    ++sent;
  }
  return sent;
}

const Cache::Counters& Cache::counters() const { return impl_->c; }

}  // namespace dsm::coherence
