#include "sim.h"

#include <algorithm>
#include <cstring>
#include <sstream>

namespace dsm::coherence::sim {
namespace {

uint64_t FirstWord(const std::vector<uint8_t>& page) {
  uint64_t v;
  std::memcpy(&v, page.data(), sizeof(v));
  return v;
}

}  // namespace

// The simulated kernel and home storage of one node, seen through both ports.
class Sim::Port final : public CachePort, public DirectoryPort, public ReplacementPort {
 public:
  Port(Sim* sim, NodeId id) : sim_(sim), id_(id) {}

  void Send(Message&& m) override;

  absl::Status Install(PageIndex page, const uint8_t* data, PageState state) override;
  absl::Status SetAccess(PageIndex page, PageState state) override;
  void ReadPage(PageIndex page, uint8_t* out) override;
  absl::Status Drop(PageIndex page) override;
  void Fail(PageIndex page, ErrorCode why) override;
  void Wake(PageIndex page) override;
  bool ReservePrefetch(PageIndex page) override;
  void CancelPrefetch(PageIndex page) override;
  absl::Status LoadPage(PageIndex page, uint8_t* out) override;
  absl::Status StorePage(PageIndex page, const uint8_t* data) override;
  absl::StatusOr<bool> DowngradeLocal(PageIndex page, uint8_t* out) override;
  absl::StatusOr<bool> InvalidateLocal(PageIndex page, PageState held, uint8_t* out) override;
  // ReplacementPort (space 0 is the one region).
  absl::Status Protect(int space, PageIndex first, uint64_t n) override;
  absl::Status Unprotect(int space, PageIndex page) override;
  void BeginBatch(int space) override;
  void EndBatch(int space) override;

  bool batching = false;
  std::vector<Message> deferred;  // sends held until EndBatch

 private:
  // An injected failure of `op` on `page` (FailNextPortCall), consumed; nothing changes then,
  // as after a failed ioctl.
  bool Injected(PortOp op, PageIndex page);

  Sim* sim_;
  NodeId id_;
};

struct Sim::Node {
  Node(Sim* sim, NodeId id, int pages, const HomeFn& home, int cluster, uint64_t readahead)
      : port(sim, id),
        cache(Cache::Config{id, 1, static_cast<uint64_t>(pages), home, readahead}, &port),
        dir(Directory::Config{id, 1, static_cast<uint64_t>(pages), static_cast<size_t>(cluster),
                              home},
            &port),
        memory(pages, std::vector<uint8_t>(kPageSize, 0)),
        storage(pages, std::vector<uint8_t>(kPageSize, 0)),
        mapped(pages, PageState::kInvalid),
        failed(pages, false),
        sampled(pages, false) {}

  Port port;
  Cache cache;
  Directory dir;
  std::vector<std::vector<uint8_t>> memory;   // the node's mapping of each page
  std::vector<std::vector<uint8_t>> storage;  // home copy (used only for pages homed here)
  std::vector<PageState> mapped;
  std::vector<bool> failed;                   // SIGBUS from now on
  std::vector<bool> sampled;                  // M but write-protected for sampling
  std::unique_ptr<Replacer> replacer;         // memory budget (SetBudget)
  std::deque<std::pair<PageIndex, bool>> faults;  // uffd events not yet read
  std::vector<std::pair<PortOp, PageIndex>> fail_next;  // injected port failures
  std::vector<int> live;                      // its threads not yet done/failed
  PortCalls calls;
};

void Sim::Port::Send(Message&& m) {
  if (batching) {
    ++sim_->nodes_[id_]->calls.batched_sends;
    deferred.push_back(std::move(m));
    return;
  }
  sim_->Enqueue(id_, std::move(m));
}

bool Sim::Port::Injected(PortOp op, PageIndex page) {
  Node& nd = *sim_->nodes_[id_];
  for (auto it = nd.fail_next.begin(); it != nd.fail_next.end(); ++it) {
    if (it->first == op && it->second == page) {
      nd.fail_next.erase(it);
      ++nd.calls.failed;
      return true;
    }
  }
  return false;
}

absl::Status Sim::Port::Protect(int space, PageIndex first, uint64_t n) {
  Node& nd = *sim_->nodes_[id_];
  ++nd.calls.protect;
  for (PageIndex p = first; p < first + n; ++p) {
    if (Injected(PortOp::kProtect, p)) return absl::InternalError("injected Protect failure");
  }
  nd.calls.protected_pages += static_cast<int>(n);
  if (space != 0) sim_->Violation("Protect on space " + std::to_string(space));
  for (PageIndex p = first; p < first + n; ++p) {
    if (nd.mapped[p] == PageState::kInvalid) {
      sim_->Violation("Protect of unmapped page " + std::to_string(p) + " on node " +
                      std::to_string(id_));
    }
    if (nd.mapped[p] == PageState::kModified) nd.sampled[p] = true;
  }
  return absl::OkStatus();
}

absl::Status Sim::Port::Unprotect(int, PageIndex page) {
  Node& nd = *sim_->nodes_[id_];
  ++nd.calls.unprotect;
  if (Injected(PortOp::kUnprotect, page)) return absl::InternalError("injected Unprotect failure");
  if (nd.mapped[page] != PageState::kModified || !nd.sampled[page]) {
    sim_->Violation("Unprotect of page " + std::to_string(page) + " on node " +
                    std::to_string(id_) + " which is not a sampled M page");
  }
  nd.sampled[page] = false;
  sim_->WakeThreads(id_, page);
  return absl::OkStatus();
}

void Sim::Port::BeginBatch(int) {
  ++sim_->nodes_[id_]->calls.batches;
  batching = true;
}

void Sim::Port::EndBatch(int) {
  batching = false;
  for (Message& m : deferred) sim_->Enqueue(id_, std::move(m));
  deferred.clear();
}

absl::Status Sim::Port::Install(PageIndex page, const uint8_t* data, PageState state) {
  Node& nd = *sim_->nodes_[id_];
  ++nd.calls.install;
  if (Injected(PortOp::kInstall, page)) return absl::InternalError("injected Install failure");
  if (nd.mapped[page] != PageState::kInvalid) {
    sim_->Violation("Install on node " + std::to_string(id_) + " page " + std::to_string(page) +
                    " which is already mapped " + PageStateName(nd.mapped[page]));
  }
  if (state == PageState::kInvalid) sim_->Violation("Install with state I");
  std::memcpy(nd.memory[page].data(), data, kPageSize);
  nd.mapped[page] = state;
  nd.sampled[page] = false;
  if (nd.replacer) nd.replacer->OnInstall(0, page);
  sim_->WakeThreads(id_, page);
  return absl::OkStatus();
}

absl::Status Sim::Port::SetAccess(PageIndex page, PageState state) {
  Node& nd = *sim_->nodes_[id_];
  ++nd.calls.set_access;
  if (Injected(state == PageState::kModified ? PortOp::kSetAccessModified
                                              : PortOp::kSetAccessShared,
               page)) {
    return absl::InternalError("injected SetAccess failure");
  }
  if (nd.mapped[page] == PageState::kInvalid || state == PageState::kInvalid) {
    sim_->Violation("SetAccess(" + std::string(PageStateName(state)) + ") on node " +
                    std::to_string(id_) + " page " + std::to_string(page) + " mapped " +
                    PageStateName(nd.mapped[page]));
    return absl::OkStatus();
  }
  nd.mapped[page] = state;
  nd.sampled[page] = false;
  if (nd.replacer) nd.replacer->OnSetAccess(0, page);
  if (state == PageState::kModified) sim_->WakeThreads(id_, page);  // WP removal wakes
  return absl::OkStatus();
}

void Sim::Port::ReadPage(PageIndex page, uint8_t* out) {
  Node& nd = *sim_->nodes_[id_];
  ++nd.calls.read_page;
  if (nd.mapped[page] != PageState::kShared) {
    // An M page must be write-protected first, or a store could land after the copy.
    sim_->Violation("ReadPage on node " + std::to_string(id_) + " page " + std::to_string(page) +
                    " mapped " + PageStateName(nd.mapped[page]));
  }
  std::memcpy(out, nd.memory[page].data(), kPageSize);
}

absl::Status Sim::Port::Drop(PageIndex page) {
  Node& nd = *sim_->nodes_[id_];
  ++nd.calls.drop;
  if (Injected(PortOp::kDrop, page)) return absl::InternalError("injected Drop failure");
  nd.mapped[page] = PageState::kInvalid;
  nd.sampled[page] = false;
  if (nd.replacer) nd.replacer->OnDrop(0, page);
  std::fill(nd.memory[page].begin(), nd.memory[page].end(), 0xEE);  // poison
  return absl::OkStatus();
}

// As MappedRegion::Fail: the page is unmapped and poisoned whatever its mapping was.
void Sim::Port::Fail(PageIndex page, ErrorCode) {
  Node& nd = *sim_->nodes_[id_];
  ++nd.calls.fail;
  nd.failed[page] = true;
  nd.mapped[page] = PageState::kInvalid;
  nd.sampled[page] = false;
  std::fill(nd.memory[page].begin(), nd.memory[page].end(), 0xEE);
  if (nd.replacer) nd.replacer->OnFail(0, page);
  sim_->WakeThreads(id_, page);
}

void Sim::Port::Wake(PageIndex page) {
  ++sim_->nodes_[id_]->calls.wake;
  sim_->WakeThreads(id_, page);
}

bool Sim::Port::ReservePrefetch(PageIndex page) {
  Node& nd = *sim_->nodes_[id_];
  if (nd.mapped[page] != PageState::kInvalid || nd.cache.pending(page)) {
    sim_->Violation("prefetch of page " + std::to_string(page) + " on node " +
                    std::to_string(id_) + " which is mapped or pending");
  }
  return nd.replacer == nullptr || nd.replacer->ReservePrefetch(0, page);
}

absl::StatusOr<bool> Sim::Port::DowngradeLocal(PageIndex page, uint8_t* out) {
  return sim_->nodes_[id_]->cache.DowngradeForHome(page, out);
}

absl::StatusOr<bool> Sim::Port::InvalidateLocal(PageIndex page, PageState held, uint8_t* out) {
  return sim_->nodes_[id_]->cache.InvalidateForHome(page, held, out);
}

void Sim::Port::CancelPrefetch(PageIndex page) {
  Node& nd = *sim_->nodes_[id_];
  if (nd.mapped[page] != PageState::kInvalid || nd.cache.pending(page)) {
    sim_->Violation("prefetch of page " + std::to_string(page) + " on node " +
                    std::to_string(id_) + " cancelled while mapped or pending");
  }
  if (nd.replacer) nd.replacer->CancelReservation(0, page);
}

absl::Status Sim::Port::LoadPage(PageIndex page, uint8_t* out) {
  Node& nd = *sim_->nodes_[id_];
  if (sim_->home_(page) != id_) sim_->Violation("LoadPage at a node that is not home");
  std::memcpy(out, nd.storage[page].data(), kPageSize);
  return absl::OkStatus();
}

absl::Status Sim::Port::StorePage(PageIndex page, const uint8_t* data) {
  Node& nd = *sim_->nodes_[id_];
  if (sim_->home_(page) != id_) sim_->Violation("StorePage at a node that is not home");
  if (Injected(PortOp::kStore, page)) return absl::InternalError("injected StorePage failure");
  std::memcpy(nd.storage[page].data(), data, kPageSize);
  return absl::OkStatus();
}

Sim::Sim(int nodes, int pages, HomeFn home, uint64_t readahead)
    : n_(nodes), pages_(pages), readahead_(readahead), last_access_(nodes, 0),
      home_(std::move(home)), alive_(nodes, true),
      chans_(static_cast<size_t>(nodes) * nodes), last_write_(pages, 0) {
  for (int i = 0; i < nodes; ++i) {
    nodes_.push_back(
        std::make_unique<Node>(this, static_cast<NodeId>(i), pages, home_, nodes, readahead));
  }
}

Sim::~Sim() = default;

void Sim::Violation(const std::string& what) {
  if (error_.empty()) error_ = "step " + std::to_string(steps_) + ": " + what;
}

void Sim::Enqueue(NodeId src, Message&& m) {
  if (m.dst >= static_cast<NodeId>(n_)) {
    Violation("message to node " + std::to_string(m.dst));
    return;
  }
  m.src = src;  // as the transport would
  if (!alive_[src] || !alive_[m.dst]) return;
  chans_[src * n_ + m.dst].push_back(std::move(m));
}

void Sim::WakeThreads(NodeId n, PageIndex p) {
  for (int tid : nodes_[n]->live) {
    Thread& t = threads_[tid];
    if (t.page == p && t.state == ThreadState::kBlocked) t.state = ThreadState::kRunnable;
  }
}

// The hardware: performs the access if the mapping allows it, else raises a fault.
bool Sim::TryAccess(int tid) {
  Thread& t = threads_[tid];
  Node& nd = *nodes_[t.node];
  bool finished = false;
  if (nd.failed[t.page]) {
    t.state = ThreadState::kFailed;
    finished = true;
  } else {
    const PageState a = nd.mapped[t.page];
    const bool wp = nd.sampled[t.page] && t.write;  // sampling protection
    if (!wp && (a == PageState::kModified || (a == PageState::kShared && !t.write))) {
      std::vector<uint8_t>& mem = nd.memory[t.page];
      if (t.write) {
        t.value = next_value_++;
        std::memcpy(mem.data(), &t.value, sizeof(t.value));
        last_write_[t.page] = t.value;
      } else {
        t.value = FirstWord(mem);
        if (t.value != last_write_[t.page]) {
          Violation("node " + std::to_string(t.node) + " read " + std::to_string(t.value) +
                    " from page " + std::to_string(t.page) + ", last write was " +
                    std::to_string(last_write_[t.page]));
        }
      }
      t.state = ThreadState::kDone;
      finished = true;
    } else {
      nd.faults.emplace_back(t.page, t.write);
      t.state = ThreadState::kBlocked;
      ++t.faults;
    }
  }
  if (finished) std::erase(nd.live, tid);
  return finished;
}

int Sim::Access(NodeId n, PageIndex p, bool write) {
  const int tid = static_cast<int>(threads_.size());
  Thread t;
  t.node = n;
  t.page = p;
  t.write = write;
  threads_.push_back(t);
  nodes_[n]->live.push_back(tid);
  TryAccess(tid);
  return tid;
}

void Sim::Run(int tid) {
  if (threads_[tid].state == ThreadState::kRunnable) TryAccess(tid);
}

int Sim::RunAll() {
  int ran = 0;
  for (int i = 0; i < n_; ++i) {
    if (!alive_[i]) continue;
    std::vector<int> live = nodes_[i]->live;  // TryAccess edits the list
    for (int tid : live) {
      if (threads_[tid].state == ThreadState::kRunnable) {
        TryAccess(tid);
        ++ran;
      }
    }
  }
  return ran;
}

bool Sim::DeliverFault(NodeId n) {
  Node& nd = *nodes_[n];
  if (!alive_[n] || nd.faults.empty()) return false;
  auto [page, write] = nd.faults.front();
  nd.faults.pop_front();
  if (nd.replacer) {
    nd.replacer->OnFault(0, page, write, now_);
    Enforce(n);
  } else {
    nd.cache.OnFault(page, write, now_);
  }
  return true;
}

int Sim::DeliverAllFaults() {
  int k = 0;
  for (int i = 0; i < n_; ++i) {
    while (DeliverFault(i)) ++k;
  }
  return k;
}

bool Sim::Deliver(NodeId src, NodeId dst) {
  std::deque<Message>& ch = chans_[src * n_ + dst];
  if (ch.empty()) return false;
  Message m = std::move(ch.front());
  ch.pop_front();
  Node& nd = *nodes_[dst];
  switch (m.type) {
    case MsgType::kGetS:
    case MsgType::kGetM:
    case MsgType::kGetSRun:
    case MsgType::kPut:
    case MsgType::kInvAck:
    case MsgType::kRecallAck:
      nd.dir.OnMessage(m, now_);
      break;
    default:
      nd.cache.OnMessage(m, now_);
      break;
  }
  return true;
}

bool Sim::Release(NodeId n, PageIndex p) { return alive_[n] && nodes_[n]->cache.Release(p); }

void Sim::SetBudget(NodeId n, uint64_t pages, bool sample_writes) {
  Node& nd = *nodes_[n];
  nd.replacer = std::make_unique<Replacer>(Replacer::Config{n, pages, sample_writes, 64},
                                           &nd.port);
  if (nd.replacer->AddSpace(&nd.cache, home_) != 0) Violation("first space is not 0");
}

Replacer* Sim::replacer(NodeId n) { return nodes_[n]->replacer.get(); }

uint64_t Sim::MappedRemote(NodeId n) const {
  uint64_t k = 0;
  for (int p = 0; p < pages_; ++p) {
    if (home_(p) != n && nodes_[n]->mapped[p] != PageState::kInvalid) ++k;
  }
  return k;
}

void Sim::Enforce(NodeId n) {
  Node& nd = *nodes_[n];
  if (!alive_[n] || !nd.replacer) return;
  nd.replacer->Enforce();
  CheckEnforced(n);
}

// After Enforce(): within the budget, or every resident page is one that cannot go.
void Sim::CheckEnforced(NodeId n) {
  Node& nd = *nodes_[n];
  Replacer& r = *nd.replacer;
  if (r.budget_pages() == 0 || r.resident() + r.reserved() <= r.budget_pages()) return;
  for (int p = 0; p < pages_; ++p) {
    const PageIndex page = static_cast<PageIndex>(p);
    if (home_(page) == n || nd.mapped[p] == PageState::kInvalid) continue;
    const bool stuck = nd.cache.pending(page) ||
                       (nd.mapped[p] == PageState::kModified && !alive_[home_(page)]);
    if (!stuck) {
      Violation("node " + std::to_string(n) + " over budget (" + std::to_string(r.resident()) +
                " resident + " + std::to_string(r.reserved()) + " reserved > " +
                std::to_string(r.budget_pages()) + ") after Enforce, yet page " +
                std::to_string(p) + " could be released");
      return;
    }
  }
}

size_t Sim::WriteBackAll(NodeId n) {
  if (!alive_[n]) return 0;
  std::vector<NodeId> homes;
  absl::StatusOr<size_t> written = nodes_[n]->cache.WriteBackAll(&homes);
  last_writeback_status_ = written.status();
  return written.ok() ? *written : 0;
}

void Sim::Kill(NodeId n) {
  if (!alive_[n]) return;
  alive_[n] = false;
  for (int i = 0; i < n_; ++i) {
    chans_[n * n_ + i].clear();
    chans_[i * n_ + n].clear();
  }
  Node& nd = *nodes_[n];
  nd.faults.clear();
  for (int tid : nd.live) threads_[tid].state = ThreadState::kDead;
  nd.live.clear();
  for (int i = 0; i < n_; ++i) {
    if (!alive_[i]) continue;
    nodes_[i]->cache.OnPeerDown(n);
    nodes_[i]->dir.OnPeerDown(n, now_);
  }
}

void Sim::Step(std::mt19937_64& rng, bool allow_new, bool maintenance) {
  ++steps_;
  now_ += absl::Microseconds(1);
  auto pick = [&rng](size_t k) { return static_cast<size_t>(rng() % k); };
  std::vector<int> nonempty, faulting, runnable, roomy;
  for (int i = 0; i < n_ * n_; ++i) {
    if (!chans_[i].empty()) nonempty.push_back(i);
  }
  for (int i = 0; i < n_; ++i) {
    if (!alive_[i]) continue;
    if (!nodes_[i]->faults.empty()) faulting.push_back(i);
    if (nodes_[i]->live.size() < 3) roomy.push_back(i);
    for (int tid : nodes_[i]->live) {
      if (threads_[tid].state == ThreadState::kRunnable) runnable.push_back(tid);
    }
  }
  const int r = static_cast<int>(rng() % 100);
  // Try the chosen kind first, then the others, so every step does something if it can.
  int order[4] = {0, 1, 2, 3};
  if (r < 45) {
    order[0] = 0;
  } else if (r < 60) {
    order[0] = 1, order[1] = 0;
  } else if (r < 75) {
    order[0] = 2, order[2] = 0;
  } else if (r < 95 || !maintenance) {
    order[0] = 3, order[3] = 0;
  } else {
    const NodeId n = static_cast<NodeId>(pick(n_));
    if (r < 98) {
      Release(n, pick(pages_));
    } else {
      WriteBackAll(n);
    }
    Check();
    return;
  }
  for (int kind : order) {
    if (kind == 0 && !nonempty.empty()) {
      const int c = nonempty[pick(nonempty.size())];
      Deliver(static_cast<NodeId>(c / n_), static_cast<NodeId>(c % n_));
      break;
    }
    if (kind == 1 && !faulting.empty()) {
      DeliverFault(static_cast<NodeId>(faulting[pick(faulting.size())]));
      break;
    }
    if (kind == 2 && !runnable.empty()) {
      Run(runnable[pick(runnable.size())]);
      break;
    }
    if (kind == 3 && allow_new && !roomy.empty()) {
      const NodeId n = static_cast<NodeId>(roomy[pick(roomy.size())]);
      if (readahead_ != 0 && rng() % 2 == 0) {
        // A sequential burst: mostly reads of the next page (a write now and then joins or
        // follows a prefetch).
        const PageIndex p = (last_access_[n] + 1) % static_cast<PageIndex>(pages_);
        last_access_[n] = p;
        Access(n, p, rng() % 5 == 0);
      } else if (readahead_ != 0) {
        const PageIndex p = pick(pages_);
        last_access_[n] = p;
        Access(n, p, rng() % 2 == 0);
      } else {
        Access(n, pick(pages_), rng() % 2 == 0);
      }
      break;
    }
  }
  Check();
}

bool Sim::Settle(std::mt19937_64* rng, int max_steps) {
  for (int i = 0; i < max_steps; ++i) {
    ++steps_;
    now_ += absl::Microseconds(1);
    bool did = RunAll() > 0;
    if (!did) {
      for (int n = 0; n < n_ && !did; ++n) did = DeliverFault(n);
    }
    if (!did) {
      std::vector<int> nonempty;
      for (int c = 0; c < n_ * n_; ++c) {
        if (!chans_[c].empty()) nonempty.push_back(c);
      }
      if (!nonempty.empty()) {
        const int c = rng ? nonempty[(*rng)() % nonempty.size()] : nonempty[0];
        did = Deliver(static_cast<NodeId>(c / n_), static_cast<NodeId>(c % n_));
      }
    }
    Check();
    if (!did) return true;
  }
  Violation("did not settle within " + std::to_string(max_steps) + " steps");
  return false;
}

bool Sim::Check() {
  for (int n = 0; n < n_; ++n) {
    Node& nd = *nodes_[n];
    if (!alive_[n] || !nd.replacer) continue;
    if (nd.port.batching) Violation("node " + std::to_string(n) + " left a batch open");
    uint64_t reserved = 0;
    for (int p = 0; p < pages_; ++p) {
      const PageIndex page = static_cast<PageIndex>(p);
      const bool remote = home_(page) != NodeId(n);
      const bool mapped = nd.mapped[p] != PageState::kInvalid;
      if (nd.replacer->is_resident(0, page) != (remote && mapped)) {
        Violation("node " + std::to_string(n) + " page " + std::to_string(p) + " mapped " +
                  PageStateName(nd.mapped[p]) + " but the replacer has it " +
                  (nd.replacer->is_resident(0, page) ? "resident" : "not resident"));
      }
      if (nd.replacer->is_armed(0, page) != nd.sampled[p]) {
        Violation("node " + std::to_string(n) + " page " + std::to_string(p) +
                  " armed/sampled mismatch");
      }
      if (nd.sampled[p] && nd.cache.state(page) != PageState::kModified) {
        Violation("node " + std::to_string(n) + " page " + std::to_string(p) +
                  " sampling-protected but not M");
      }
      if (remote && !mapped && nd.cache.pending(page)) ++reserved;
    }
    if (nd.replacer->resident() != MappedRemote(n)) {
      Violation("node " + std::to_string(n) + " replacer counts " +
                std::to_string(nd.replacer->resident()) + " resident pages, " +
                std::to_string(MappedRemote(n)) + " are mapped");
    }
    if (nd.replacer->reserved() != reserved) {
      Violation("node " + std::to_string(n) + " replacer reserves " +
                std::to_string(nd.replacer->reserved()) + " pages, " + std::to_string(reserved) +
                " requests from I are pending");
    }
  }
  for (int p = 0; p < pages_; ++p) {
    const PageIndex page = static_cast<PageIndex>(p);
    int writers = 0, mappers = 0;
    const NodeId h = home_(page);
    const bool home_alive = alive_[h];
    const Directory::EntryView e = nodes_[h]->dir.entry(page);
    auto where = [&](int n) {
      std::ostringstream os;
      os << "page " << p << " node " << n << " mapped "
         << PageStateName(nodes_[n]->mapped[p]) << " dir state " << static_cast<int>(e.state)
         << " sharers " << e.sharers << " owner " << e.owner << (e.busy ? " busy" : "")
         << (e.lost ? " lost" : "") << ": ";
      return os.str();
    };
    for (int n = 0; n < n_; ++n) {
      if (!alive_[n]) continue;
      Node& nd = *nodes_[n];
      const PageState a = nd.mapped[p];
      if (nd.cache.state(page) != a) {
        Violation(where(n) + "cache believes " + PageStateName(nd.cache.state(page)));
      }
      if (nd.cache.pending(page) && a == PageState::kModified) {
        Violation(where(n) + "pending while M");
      }
      if (a == PageState::kInvalid) continue;
      ++mappers;
      if (a == PageState::kModified) ++writers;
      if (FirstWord(nd.memory[p]) != last_write_[p]) {
        Violation(where(n) + "copy holds " + std::to_string(FirstWord(nd.memory[p])) +
                  ", last write " + std::to_string(last_write_[p]));
      }
      if (!home_alive) continue;
      const bool owner = e.state == Directory::EntryState::kModified && e.owner == NodeId(n);
      const bool sharer = (e.sharers >> n) & 1;
      if (e.lost) Violation(where(n) + "mapped but lost at home");
      if (a == PageState::kModified && !owner) Violation(where(n) + "M but not recorded owner");
      if (a == PageState::kShared && !owner && !sharer) {
        Violation(where(n) + "S but not recorded");
      }
    }
    if (writers > 1 || (writers == 1 && mappers > 1)) {
      Violation("SWMR: page " + std::to_string(p) + " has " + std::to_string(writers) +
                " writers and " + std::to_string(mappers) + " mappings");
    }
    if (!home_alive) continue;
    if (e.state == Directory::EntryState::kShared && e.sharers == 0) {
      Violation("page " + std::to_string(p) + " Shared with no sharers");
    }
    if (!e.busy && e.queued > 0) Violation("page " + std::to_string(p) + " idle with a queue");
    if (!e.lost && e.state != Directory::EntryState::kModified &&
        FirstWord(nodes_[h]->storage[p]) != last_write_[p]) {
      Violation("page " + std::to_string(p) + " home copy holds " +
                std::to_string(FirstWord(nodes_[h]->storage[p])) + " but last write is " +
                std::to_string(last_write_[p]) + " and the page is not Modified");
    }
  }
  return ok();
}

bool Sim::AllThreadsFinished() const {
  for (int n = 0; n < n_; ++n) {
    if (alive_[n] && !nodes_[n]->live.empty()) return false;
  }
  return true;
}

const std::deque<Message>& Sim::channel(NodeId src, NodeId dst) const {
  return chans_[src * n_ + dst];
}

size_t Sim::InFlight() const {
  size_t k = 0;
  for (const auto& c : chans_) k += c.size();
  return k;
}

Cache& Sim::cache(NodeId n) { return nodes_[n]->cache; }
Directory& Sim::directory(NodeId n) { return nodes_[n]->dir; }
PageState Sim::mapped(NodeId n, PageIndex p) const { return nodes_[n]->mapped[p]; }
uint64_t Sim::value(NodeId n, PageIndex p) const { return FirstWord(nodes_[n]->memory[p]); }
uint64_t Sim::home_value(PageIndex p) const { return FirstWord(nodes_[home_(p)]->storage[p]); }
const Sim::PortCalls& Sim::port_calls(NodeId n) const { return nodes_[n]->calls; }
void Sim::FailNextPortCall(NodeId n, PortOp op, PageIndex page) {
  nodes_[n]->fail_next.emplace_back(op, page);
}

}  // namespace dsm::coherence::sim
