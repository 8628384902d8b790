// The engine's application-facing extras: per-region statistics, the cluster-wide gather
// (kStatsRequest / kStatsReply), region hints (Region::Advise), and the log options.
#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/node_set.h"
#include "common/status_macros.h"
#include "node/engine.h"
#include "node/region_stats.h"

namespace dsm {

Stats RegionStats(MappedRegion& r) {
  const coherence::Cache::Counters& c = r.cache().counters();
  Stats s;
  s.read_faults = c.read_faults;
  s.write_faults = c.write_faults + c.upgrade_faults;  // stats.h: WP faults count as writes
  s.upgrade_faults = c.upgrade_faults;
  s.coalesced_faults = c.coalesced_faults;
  s.prefetches = c.prefetches;
  s.prefetch_hits = c.prefetch_hits;
  s.prefetch_runs = c.run_requests;
  s.prefetch_refused = c.prefetch_refused;
  s.prefetch_skipped = c.prefetch_skipped;
  s.lock_page_fetches = c.lock_fetches;
  s.requests_sent = c.requests_sent;
  s.invalidations_received = c.invalidations;
  s.recalls_received = c.recalls;
  s.writebacks_sent = c.writebacks;
  s.pages_shared = c.shared;
  s.pages_modified = c.modified;
  s.pages_installed = r.pages_installed();
  if (r.directory() != nullptr) {
    const coherence::Directory::Counters& d = r.directory()->counters();
    s.home_requests_served = d.requests_served;
    s.home_local_downgrades = d.local_downgrades;
    s.home_local_invalidations = d.local_invalidations;
  }
  return s;
}

absl::StatusOr<Stats> Engine::GetRegionStats(RegionId region) {
  return RunOnEngine<Stats>([this, region]() -> absl::StatusOr<Stats> {
    MappedRegion* r = regions_.Find(region);
    if (r == nullptr) return absl::FailedPreconditionError("the region is not mapped");
    return RegionStats(*r);
  });
}

// ---- hints ---------------------------------------------------------------------------------

absl::Status Engine::AdviseRegion(RegionId region, PageIndex first, uint64_t n, Advice advice) {
  return RunOnEngine([this, region, first, n, advice]() -> absl::Status {
    MappedRegion* r = regions_.Find(region);
    if (r == nullptr) return absl::FailedPreconditionError("the region is not mapped");
    coherence::Cache& cache = r->cache();
    const PageIndex end = std::min<PageIndex>(first + n, r->num_pages());
    switch (advice) {
      case Advice::kNormal:
      case Advice::kSequential:
        cache.SetReadahead(first, end - first, /*enabled=*/true);
        return absl::OkStatus();
      case Advice::kRandom:
        cache.SetReadahead(first, end - first, /*enabled=*/false);
        return absl::OkStatus();
      case Advice::kWillNeed:
        cache.Prefetch(first, end - first, absl::Now());
        return absl::OkStatus();
      case Advice::kDontNeed:
        // Release() skips what it cannot give up now (pending, lost, homed here).
        for (PageIndex q = first; q < end; ++q) {
          if (r->HomeOf(q) != options_.node_id && cache.CanRelease(q)) (void)cache.Release(q);
        }
        return absl::OkStatus();
    }
    return absl::InvalidArgumentError("unknown Advice value");
  });
}

// ---- cluster-wide statistics ---------------------------------------------------------------

// One GatherStats call, shared by the application thread (waits) and the engine thread (fills
// in the answers). Invariants: `answered` only grows; a node's entry of `result.nodes` is
// written once, before its bit is set.
struct StatsGather {
  bool Complete() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return answered == expected; }

  absl::Mutex mu;
  uint64_t expected ABSL_GUARDED_BY(mu) = 0;
  uint64_t answered ABSL_GUARDED_BY(mu) = 0;
  std::vector<Stats> nodes ABSL_GUARDED_BY(mu);
};

// The gathers in progress, by gather id (engine thread).
class StatsGathers {
 public:
  uint64_t Add(std::shared_ptr<StatsGather> g) {
    const uint64_t id = next_id_++;
    calls_.emplace(id, std::move(g));
    return id;
  }
  void Remove(uint64_t id) { calls_.erase(id); }
  std::shared_ptr<StatsGather> Find(uint64_t id) const {
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

 private:
  uint64_t next_id_ = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<StatsGather>> calls_;
};

namespace {

std::vector<uint8_t> EncodeStats(const Stats& s) {
  std::vector<uint8_t> out;
  Stats::ForEachField([&](const char*, Stats::Kind, auto field) {
    const uint64_t v = static_cast<uint64_t>(s.*field);
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  });
  return out;
}

// The fields this build knows, in order; a longer reply's extra fields are ignored.
Stats DecodeStats(const std::vector<uint8_t>& in) {
  Stats s;
  size_t at = 0;
  Stats::ForEachField([&](const char*, Stats::Kind, auto field) {
    if (at + 8 > in.size()) return;
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{in[at + i]} << (8 * i);
    at += 8;
    using T = std::remove_reference_t<decltype(s.*field)>;
    s.*field = static_cast<T>(v != 0 && std::is_same_v<T, bool> ? 1 : v);
  });
  return s;
}

size_t NumStatsFields() {
  size_t n = 0;
  Stats::ForEachField([&n](const char*, Stats::Kind, auto) { ++n; });
  return n;
}

}  // namespace

void Engine::OnStatsMessage(const Message& m) {
  if (m.type == MsgType::kStatsRequest) {
    Message reply;
    reply.type = MsgType::kStatsReply;
    reply.dst = m.src;
    reply.req_id = m.req_id;
    reply.arg = NumStatsFields();
    reply.payload = EncodeStats(CollectStats());
    SendMessage(std::move(reply));
    return;
  }
  std::shared_ptr<StatsGather> g = gathers_ ? gathers_->Find(m.req_id) : nullptr;
  if (g == nullptr) return;  // the caller stopped waiting
  absl::MutexLock l(&g->mu);
  if (!InNodeSet(g->expected, m.src) || InNodeSet(g->answered, m.src)) return;
  g->nodes[m.src] = DecodeStats(m.payload);
  g->answered |= NodeBit(m.src);
}

absl::StatusOr<ClusterStats> Engine::GatherStats(absl::Time deadline) {
  auto g = std::make_shared<StatsGather>();
  DSM_ASSIGN_OR_RETURN(
      const uint64_t id, RunOnEngine<uint64_t>([this, g]() -> absl::StatusOr<uint64_t> {
        if (!gathers_) gathers_ = std::make_shared<StatsGathers>();
        const uint64_t gid = gathers_->Add(g);
        const Stats own = CollectStats();
        absl::MutexLock l(&g->mu);
        g->nodes.assign(cluster_size(), Stats());
        g->nodes[options_.node_id] = own;
        g->answered = g->expected = NodeBit(options_.node_id);
        for (NodeId n = 0; n < cluster_size(); ++n) {
          if (n == options_.node_id || InNodeSet(down_mask_, n)) continue;
          g->expected |= NodeBit(n);
          Message req;
          req.type = MsgType::kStatsRequest;
          req.dst = n;
          req.req_id = gid;
          SendMessage(std::move(req));
        }
        return gid;
      }));
  ClusterStats out;
  {
    absl::MutexLock l(&g->mu);
    g->mu.AwaitWithDeadline(absl::Condition(g.get(), &StatsGather::Complete), deadline);
    out.nodes = g->nodes;
    for (NodeId n = 0; n < cluster_size(); ++n) {
      if (InNodeSet(g->answered, n)) {
        out.total += g->nodes[n];
      } else {
        out.missing.push_back(n);
        out.nodes[n] = Stats();
      }
    }
  }
  (void)RunOnEngine([this, id] {
    gathers_->Remove(id);
    return absl::OkStatus();
  });
  return out;
}

// ---- log options ---------------------------------------------------------------------------

void Engine::ApplyLogOptions() {
  auto severity = [](LogLevel l) {
    switch (l) {
      case LogLevel::kInfo: return LogSeverity::kInfo;
      case LogLevel::kWarning: return LogSeverity::kWarning;
      case LogLevel::kError: return LogSeverity::kError;
    }
    return LogSeverity::kWarning;
  };
  if (options_.log_level) SetLogThreshold(severity(*options_.log_level));
  if (options_.log_sink) {
    log_sink_.Reset([sink = options_.log_sink](LogSeverity s, const std::string& line) {
      sink(s == LogSeverity::kInfo      ? LogLevel::kInfo
           : s == LogSeverity::kWarning ? LogLevel::kWarning
                                        : LogLevel::kError,
           line);
    });
  }
}

}  // namespace dsm
