#include "node/region_lifecycle.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coherence/refusal.h"
#include "common/log.h"
#include "common/node_set.h"
#include "common/status_macros.h"

namespace dsm {
namespace {

constexpr absl::Duration kRegionOpenRetry = absl::Milliseconds(20);

}  // namespace

absl::Status RegionOp::Wait(absl::Duration limit, absl::string_view what) {
  if (!done_.WaitForNotificationWithTimeout(limit)) {
    return absl::DeadlineExceededError(absl::StrCat(what, ": the engine did not answer"));
  }
  return status_;
}

RegionLifecycle::RegionLifecycle(const Options& options, RegionTable* table, RegionHost* host,
                                 Hooks hooks)
    : options_(options), table_(table), host_(host), hooks_(std::move(hooks)) {}

void RegionLifecycle::Track(const std::shared_ptr<RegionOp>& op) {
  if (op->req_id_ != 0) return;
  op->req_id_ = next_req_id_++;
  ops_[op->req_id_] = op;
}

void RegionLifecycle::Finish(const std::shared_ptr<RegionOp>& op) {
  if (op->finished_) return;
  op->finished_ = true;
  ops_.erase(op->req_id_);
  op->done_.Notify();
}

// ---- map -----------------------------------------------------------------------------------

absl::StatusOr<MappedRegion*> RegionLifecycle::StartMap(const RegionOptions& options,
                                                        std::shared_ptr<RegionOp> op) {
  const RegionId id = RegionIdFromName(options.name);
  if (table_->contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("region ", options.name, " is already mapped"));
  }
  DSM_ASSIGN_OR_RETURN(std::unique_ptr<MappedRegion> created,
                       MappedRegion::Create(options, options_.node_id, options_.peers.size(),
                                            host_));
  MappedRegion* r = table_->Insert(std::move(created));
  op->what_ = absl::StrCat("mapping region ", options.name);
  op->region_ = id;
  op->open_size_ = r->size();
  op->deadline_ = absl::Now() + options_.connect_timeout;
  Track(op);
  const std::vector<NodeId> homes = r->RemoteHomes();
  for (NodeId h : homes) op->pending_mask_ |= NodeBit(h);
  if (homes.empty()) Finish(op);
  for (NodeId h : homes) SendRegionOpen(*op, *r, h);
  return r;
}

void RegionLifecycle::SendRegionOpen(const RegionOp& op, const MappedRegion& r, NodeId home) {
  Message m;
  m.type = MsgType::kRegionOpen;
  m.dst = home;
  m.region = r.id();
  m.req_id = op.req_id_;
  m.arg = r.size();
  m.payload.assign(r.name().begin(), r.name().end());
  hooks_.send(std::move(m));
}

void RegionLifecycle::OnRegionOpen(const Message& m) {
  MappedRegion* r = table_->Find(m.region);
  const std::string name(m.payload.begin(), m.payload.end());
  ErrorCode code = ErrorCode::kOk;
  if (r == nullptr || r->name() != name) {
    code = ErrorCode::kNoSuchRegion;
  } else if (r->size() != m.arg) {
    code = ErrorCode::kSizeMismatch;
  } else if (r->directory() == nullptr) {
    code = ErrorCode::kNotHome;
  }
  hooks_.send(*coherence::Refusal(m, code));  // kRegionOpenReply; kOk is the acceptance
}

// ---- sync ----------------------------------------------------------------------------------

absl::Status RegionLifecycle::StartSync(RegionId region, std::shared_ptr<RegionOp> op) {
  MappedRegion* r = table_->Find(region);
  if (r == nullptr) return absl::NotFoundError("region is not mapped");
  std::vector<NodeId> written_to;  // counted in the cache's writebacks
  // A page this node could not write-protect stays Modified and unwritten: Sync fails.
  if (absl::StatusOr<size_t> written = r->cache().WriteBackAll(&written_to); !written.ok()) {
    return written.status();
  }
  op->what_ = absl::StrCat("syncing region ", r->name());
  op->region_ = region;
  op->deadline_ = absl::Now() + options_.peer_timeout;
  // Every home persists, including homes we wrote nothing to now: they may hold pages we
  // wrote back earlier (evictions) that are not durable yet.
  AskHomesToPersist(*r, op);
  return absl::OkStatus();
}

void RegionLifecycle::AskHomesToPersist(MappedRegion& r, const std::shared_ptr<RegionOp>& op) {
  std::vector<NodeId> homes;
  if (!op->persist_here_only_) homes = r.RemoteHomes();
  if (r.directory() != nullptr) homes.push_back(options_.node_id);
  Track(op);
  for (NodeId h : homes) op->pending_mask_ |= NodeBit(h);
  if (homes.empty()) return Finish(op);
  for (NodeId h : homes) {
    Message m;
    m.type = MsgType::kSyncReq;
    m.dst = h;
    m.region = r.id();
    m.req_id = op->req_id_;
    hooks_.send(std::move(m));
  }
}

void RegionLifecycle::OnSyncReq(const Message& m) {
  MappedRegion* r = table_->Find(m.region);
  ErrorCode code = ErrorCode::kNoSuchRegion;
  if (r != nullptr && r->storage() != nullptr) {
    // Blocking file I/O on the engine thread: Sync is rare and the home must not answer
    // before the data is durable.
    absl::Status s = r->storage()->Persist();
    if (!s.ok()) DSM_LOG(ERROR) << "persisting region " << r->name() << ": " << s;
    code = coherence::StatusToCode(s);
  } else if (r != nullptr) {
    code = ErrorCode::kNotHome;
  }
  hooks_.send(*coherence::Refusal(m, code));  // kSyncAck; kOk when persisted
}

// ---- unmap ---------------------------------------------------------------------------------

absl::Status RegionLifecycle::StartUnmap(RegionId region, std::shared_ptr<RegionOp> op,
                                         UnmapScope scope) {
  MappedRegion* r = table_->Find(region);
  if (r == nullptr) return absl::NotFoundError("region is not mapped");
  if (closing_.contains(region)) {
    return absl::FailedPreconditionError(absl::StrCat("region ", r->name(),
                                                      " is already being unmapped"));
  }
  closing_.insert(region);
  op->what_ = absl::StrCat("unmapping region ", r->name());
  op->region_ = region;
  op->persist_here_only_ = scope == UnmapScope::kFinal;
  op->deadline_ = absl::Now() + options_.peer_timeout;
  Track(op);  // from now on OnTick bounds it, the reclaim included
  coherence::Directory* dir = r->directory();
  if (dir == nullptr) {
    ReleaseAndPersist(op);
    return absl::OkStatus();
  }
  // At a home, pages other nodes hold Modified are the only current copies: they come back
  // before the home's copy is persisted and dropped.
  dir->SetClosing();
  dir->ReclaimModified(absl::Now(), [this, op] {
    // Called inside the Directory: continue after the current event.
    hooks_.after(absl::ZeroDuration(), [this, op] { ReleaseAndPersist(op); });
  });
  return absl::OkStatus();
}

void RegionLifecycle::ReleaseAndPersist(const std::shared_ptr<RegionOp>& op) {
  if (op->finished_) return;  // expired, or its region was removed
  MappedRegion* r = table_->Find(op->region_);
  if (r == nullptr) {
    op->Fail(absl::NotFoundError("region vanished while unmapping"));
    return Finish(op);
  }
  ReleaseAll(*r);
  // Homes persist what they received (file-backed regions); the mapping goes when they answer.
  AskHomesToPersist(*r, op);
}

void RegionLifecycle::ReleaseAll(MappedRegion& r) {
  // Give every copy back: Modified pages are written back, Shared ones dropped with notice.
  // Released in the region's batch mode, so the unmaps go in runs (one madvise per run, not per
  // page); flushed every kUnmapBatch releases to bound the messages held back.
  constexpr int kUnmapBatch = 1024;
  coherence::Cache& cache = r.cache();
  int in_batch = 0;
  r.BeginBatch();
  for (PageIndex p = 0; p < r.num_pages(); ++p) {
    if (cache.state(p) == coherence::PageState::kInvalid || cache.pending(p)) continue;
    if (cache.Release(p) && ++in_batch == kUnmapBatch) {
      r.EndBatch();
      r.BeginBatch();
      in_batch = 0;
    }
  }
  r.EndBatch();
}

absl::Status RegionLifecycle::StartFlush(RegionId region, std::shared_ptr<RegionOp> op) {
  MappedRegion* r = table_->Find(region);
  if (r == nullptr) return absl::NotFoundError("region is not mapped");
  if (closing_.contains(region)) {
    return absl::FailedPreconditionError(absl::StrCat("region ", r->name(),
                                                      " is being unmapped"));
  }
  op->what_ = absl::StrCat("writing back region ", r->name());
  op->region_ = region;
  op->deadline_ = absl::Now() + options_.peer_timeout;
  ReleaseAll(*r);
  // Per-pair FIFO: each home applies the write-backs above before it answers this request.
  AskHomesToPersist(*r, op);
  return absl::OkStatus();
}

void RegionLifecycle::Remove(RegionId region) {
  std::vector<std::shared_ptr<RegionOp>> orphans;
  for (auto& [id, op] : ops_) {
    if (op->region_ == region) orphans.push_back(op);
  }
  for (auto& op : orphans) {
    op->Fail(absl::AbortedError(absl::StrCat(op->what_, ": the region was unmapped")));
    Finish(op);
  }
  table_->Erase(region);
  closing_.erase(region);
}

// ---- answers, peers, time ------------------------------------------------------------------

void RegionLifecycle::OnReply(const Message& m) {
  Complete(m.req_id, m.src, static_cast<ErrorCode>(m.arg));
}

void RegionLifecycle::Complete(uint64_t req_id, NodeId from, ErrorCode code) {
  auto it = ops_.find(req_id);
  if (it == ops_.end()) return;
  std::shared_ptr<RegionOp> op = it->second;
  if (!InNodeSet(op->pending_mask_, from)) return;
  if (code == ErrorCode::kNoSuchRegion && op->open_size_ != 0 && absl::Now() < op->deadline_ &&
      table_->contains(op->region_)) {
    // The home has not mapped the region yet: ask again shortly.
    hooks_.after(kRegionOpenRetry, [this, op, from] {
      const MappedRegion* again = table_->Find(op->region_);
      if (again != nullptr && !op->finished_) SendRegionOpen(*op, *again, from);
    });
    return;
  }
  const absl::Status down =
      code == ErrorCode::kPeerDown && hooks_.down_reason ? hooks_.down_reason(from)
                                                         : absl::OkStatus();
  if (!down.ok()) {
    op->Fail(absl::UnavailableError(absl::StrCat(op->what_, ": ", down.message())));
  } else if (code != ErrorCode::kOk) {
    op->Fail(coherence::CodeToStatus(code, absl::StrCat(op->what_, " (node ", from, ")")));
  }
  op->pending_mask_ &= ~NodeBit(from);
  if (op->pending_mask_ == 0) Finish(op);
}

void RegionLifecycle::OnPeerDown(NodeId peer, const absl::Status& why) {
  std::vector<std::shared_ptr<RegionOp>> waiting;
  for (auto& [id, op] : ops_) {
    if (InNodeSet(op->pending_mask_, peer)) waiting.push_back(op);
  }
  for (auto& op : waiting) {
    op->Fail(absl::UnavailableError(absl::StrCat(op->what_, ": ", why.message())));
    Complete(op->req_id_, peer, ErrorCode::kOk);
  }
}

void RegionLifecycle::OnTick(absl::Time now) {
  std::vector<std::shared_ptr<RegionOp>> expired;
  for (auto& [id, op] : ops_) {
    if (now >= op->deadline_) expired.push_back(op);
  }
  for (auto& op : expired) {
    op->Fail(absl::DeadlineExceededError(absl::StrCat(op->what_, ": no answer in time")));
    Finish(op);
  }
}

}  // namespace dsm
