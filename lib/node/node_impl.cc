// The public Node and Region: thin handles over the Engine, which owns all state.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "dsm/node.h"
#include "node/engine.h"
#include "node/lock_service.h"

namespace dsm {
namespace {

class RegionHandle final : public Region {
 public:
  RegionHandle(std::shared_ptr<Engine> engine, MappedRegion* r)
      : engine_(std::move(engine)), id_(r->id()), data_(r->data()), size_(r->size()),
        name_(r->name()), arbiter_(r->HomeOf(0)) {}
  ~RegionHandle() override { (void)Unmap(); }

  void* data() const override { return data_; }
  size_t size() const override { return size_; }
  const std::string& name() const override { return name_; }

  absl::Status Sync() override {
    if (data_ == nullptr) return absl::FailedPreconditionError("region is unmapped");
    return engine_->SyncRegion(id_);
  }

  absl::Status Unmap() override {
    if (data_ == nullptr) return absl::OkStatus();
    data_ = nullptr;
    absl::Status s = engine_->UnmapRegion(id_);
    // Shutdown may have unmapped it already.
    return absl::IsNotFound(s) || absl::IsFailedPrecondition(s) ? absl::OkStatus() : s;
  }

  // RegionLocks: the engine arbitrates (at home(0)) and answers on its thread.
  uint64_t RequestLock(const LockRequest& request, LockCallback done) override {
    return engine_->locks().RequestLock(id_, arbiter_, size_, request, std::move(done));
  }
  absl::Status ReleaseLock(uint64_t lock_id) override {
    return engine_->locks().ReleaseLock(lock_id);
  }

 private:
  std::shared_ptr<Engine> engine_;
  const RegionId id_;
  void* data_;
  const size_t size_;
  const std::string name_;
  const NodeId arbiter_;  // lock arbiter: home of page 0
};

class NodeImpl final : public Node {
 public:
  explicit NodeImpl(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}
  ~NodeImpl() override { (void)Shutdown(); }

  NodeId id() const override { return engine_->id(); }
  size_t cluster_size() const override { return engine_->cluster_size(); }

  absl::StatusOr<std::unique_ptr<Region>> MapRegion(const RegionOptions& options) override {
    absl::StatusOr<MappedRegion*> r = engine_->MapRegion(options);
    if (!r.ok()) return r.status();
    return std::unique_ptr<Region>(new RegionHandle(engine_, *r));
  }

  Stats GetStats() const override { return engine_->GetStats().value_or(Stats{}); }
  absl::Status Shutdown() override { return engine_->Shutdown(); }

  void BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                    absl::Time deadline, std::function<void(absl::Status)> done) override {
    engine_->locks().BarrierAsync(name, members, deadline, std::move(done));
  }

 private:
  std::shared_ptr<Engine> engine_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Node>> Node::Create(const Options& options) {
  absl::StatusOr<std::shared_ptr<Engine>> engine = Engine::Start(options);
  if (!engine.ok()) return engine.status();
  return std::unique_ptr<Node>(new NodeImpl(std::move(*engine)));
}

}  // namespace dsm
