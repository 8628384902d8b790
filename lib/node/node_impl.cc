// The public Node and Region over the Engine, which owns all state: the internal
// implementations behind the handles (lock/api_internal.h), and Node::Create.
#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "dsm/node.h"
#include "lock/api_internal.h"
#include "node/engine.h"
#include "node/lock_service.h"

DSM_NAMESPACE_BEGIN
namespace {

// Invariants: `unmapped_` goes false -> true once, in Unmap(), before the engine unmaps the
// region; afterwards data() is nullptr, Sync() and ReleaseLock() fail without reaching the
// engine, and RequestLock() is refused by the engine (the region is not mapped there).
class EngineRegion final : public internal::RegionImpl {
 public:
  EngineRegion(std::shared_ptr<Engine> engine, MappedRegion* r)
      : engine_(std::move(engine)), id_(r->id()), data_(r->data()), size_(r->size()),
        name_(r->name()), arbiter_(r->HomeOf(0)) {}

  void* data() const override {
    return unmapped_.load(std::memory_order_acquire) ? nullptr : data_;
  }
  size_t size() const override { return size_; }
  const std::string& name() const override { return name_; }

  absl::Status Sync() override {
    if (unmapped_.load(std::memory_order_acquire)) {
      return absl::FailedPreconditionError("region is unmapped");
    }
    return engine_->SyncRegion(id_);
  }

  absl::Status Unmap() override {
    if (unmapped_.exchange(true, std::memory_order_acq_rel)) return absl::OkStatus();
    absl::Status s = engine_->UnmapRegion(id_);
    // Shutdown may have unmapped it already.
    return absl::IsNotFound(s) || absl::IsFailedPrecondition(s) ? absl::OkStatus() : s;
  }

  // The engine arbitrates (at home(0)) and answers on its thread.
  uint64_t RequestLock(const LockRequest& request, LockCallback done) override {
    return engine_->locks().RequestLock(id_, arbiter_, size_, request, std::move(done));
  }
  absl::Status ReleaseLock(uint64_t lock_id) override {
    if (unmapped_.load(std::memory_order_acquire)) {
      return absl::FailedPreconditionError(
          "dsm unlock: the region was unmapped, which released its locks");
    }
    return engine_->locks().ReleaseLock(lock_id);
  }

  absl::Status Advise(uint64_t first_page, uint64_t num_pages, Advice advice) override {
    if (unmapped_.load(std::memory_order_acquire)) {
      return absl::FailedPreconditionError("region is unmapped");
    }
    return engine_->AdviseRegion(id_, first_page, num_pages, advice);
  }
  absl::StatusOr<Stats> GetStats() const override {
    if (unmapped_.load(std::memory_order_acquire)) {
      return absl::FailedPreconditionError("region is unmapped");
    }
    return engine_->GetRegionStats(id_);
  }

 private:
  const std::shared_ptr<Engine> engine_;
  const RegionId id_;
  void* const data_;
  const size_t size_;
  const std::string name_;
  const NodeId arbiter_;  // lock arbiter: home of page 0
  std::atomic<bool> unmapped_{false};
};

class EngineNode final : public internal::NodeImpl {
 public:
  explicit EngineNode(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}

  NodeId id() const override { return engine_->id(); }
  size_t cluster_size() const override { return engine_->cluster_size(); }

  absl::StatusOr<std::shared_ptr<internal::RegionImpl>> MapRegion(
      const RegionOptions& options) override {
    absl::StatusOr<MappedRegion*> r = engine_->MapRegion(options);
    if (!r.ok()) return r.status();
    return std::make_shared<EngineRegion>(engine_, *r);
  }

  absl::StatusOr<Stats> GetStats() const override { return engine_->GetStats(); }

  absl::Status Shutdown() override { return engine_->Shutdown(); }
  absl::Status Finalize(absl::Time deadline) override { return engine_->Finalize(deadline); }

  void BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                    absl::Time deadline, std::function<void(absl::Status)> done) override {
    engine_->locks().BarrierAsync(name, members, deadline, std::move(done));
  }

  absl::StatusOr<ClusterStats> GatherStats(absl::Time deadline) override {
    return engine_->GatherStats(deadline);
  }

 private:
  const std::shared_ptr<Engine> engine_;
};

}  // namespace

absl::Status Node::Finalize(absl::Time deadline) { return impl_->Finalize(deadline); }

absl::Status Node::Finalize(absl::Duration timeout) {
  return impl_->Finalize(absl::Now() + timeout);
}

absl::StatusOr<std::unique_ptr<Node>> Node::Create(const Options& options) {
  const absl::Time deadline = absl::Now() + options.connect_timeout;
  absl::StatusOr<std::shared_ptr<Engine>> engine = Engine::Start(options);
  if (!engine.ok()) return engine.status();
  if (options.wait_for_cluster) {
    // On failure the engine shuts down as the last reference goes.
    if (absl::Status s = (*engine)->WaitForCluster(deadline); !s.ok()) return s;
  }
  return internal::ApiAccess::MakeNode(std::make_unique<EngineNode>(std::move(*engine)));
}

DSM_NAMESPACE_END
