// The public handles' own logic (include/dsm/{node,region,lock}.h): Region and Node forward to
// their internal implementation (lock/api_internal.h), the blocking Lock/TryLock/Barrier are
// built on the async forms, and LockGuard releases through a weak reference to its region.
// Node::Create, which builds the engine, is the node layer's (node/node_impl.cc).
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/timeouts.h"
#include "dsm/lock.h"
#include "dsm/node.h"
#include "dsm/region.h"
#include "dsm/version.h"  // checks that the ABI namespace matches the project version
#include "lock/api_internal.h"

DSM_NAMESPACE_BEGIN
namespace {

bool ReservedBarrierName(const std::string& name) {
  return name.rfind(internal::kReservedBarrierPrefix, 0) == 0;
}

absl::Status ReservedBarrierNameError(const std::string& name) {
  return absl::InvalidArgumentError(absl::StrCat(
      "barrier '", name, "': names starting with \"", internal::kReservedBarrierPrefix,
      "\" are reserved for the library (use Barrier(deadline) for every node)"));
}

absl::Status RegionGoneError() {
  return absl::FailedPreconditionError(
      "dsm unlock: the region was unmapped, which released its locks");
}

// A blocking caller's rendezvous with the engine's callback. If the caller stops waiting (the
// engine failed to answer long after the deadline), a late grant is released by the callback,
// if the region still exists (else its unmap released the lock).
struct LockWait {
  absl::Mutex mu;
  std::optional<absl::StatusOr<LockHandle>> result ABSL_GUARDED_BY(mu);
  bool abandoned ABSL_GUARDED_BY(mu) = false;
};

// How long past its deadline a blocking call waits for the engine's answer before it gives up
// on the engine (which delivers DeadlineExceeded itself at the deadline): kEngineSlack.
absl::StatusOr<LockHandle> BlockingLock(const std::shared_ptr<internal::RegionImpl>& impl,
                                        const LockRequest& request) {
  auto wait = std::make_shared<LockWait>();
  std::weak_ptr<internal::RegionImpl> weak = impl;
  impl->RequestLock(request, [wait, weak](absl::StatusOr<LockHandle> r) {
    absl::MutexLock l(&wait->mu);
    if (wait->abandoned) {
      if (!r.ok()) return;
      if (std::shared_ptr<internal::RegionImpl> region = weak.lock()) {
        (void)region->ReleaseLock(r->id());
      }
      return;
    }
    wait->result = std::move(r);
  });
  absl::MutexLock l(&wait->mu);
  const auto ready = [&wait]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(wait->mu) {
    return wait->result.has_value();
  };
  const absl::Time give_up = request.deadline == absl::InfiniteFuture()
                                 ? absl::InfiniteFuture()
                                 : request.deadline + kEngineSlack;
  if (!wait->mu.AwaitWithDeadline(absl::Condition(&ready), give_up)) {
    wait->abandoned = true;
    return absl::DeadlineExceededError("lock: no answer from the node's engine");
  }
  return std::move(*wait->result);
}

}  // namespace

const char* LockModeName(LockMode mode) {
  switch (mode) {
    case LockMode::kShared: return "shared";
    case LockMode::kExclusive: return "exclusive";
  }
  return "unknown";
}

// ---- LockGuard ----

LockGuard::LockGuard(std::weak_ptr<internal::RegionImpl> region, LockHandle handle)
    : region_(std::move(region)), handle_(handle) {}

LockGuard::LockGuard(LockGuard&& other) noexcept
    : region_(std::exchange(other.region_, {})), handle_(std::exchange(other.handle_, {})) {}

LockGuard& LockGuard::operator=(LockGuard&& other) noexcept {
  if (this != &other) {
    (void)Unlock();
    region_ = std::exchange(other.region_, {});
    handle_ = std::exchange(other.handle_, {});
  }
  return *this;
}

LockGuard::~LockGuard() { (void)Unlock(); }

absl::Status LockGuard::Unlock() {
  if (!handle_.valid()) return absl::OkStatus();
  const LockHandle h = std::exchange(handle_, {});
  std::shared_ptr<internal::RegionImpl> region = std::exchange(region_, {}).lock();
  if (region == nullptr) return RegionGoneError();
  return region->ReleaseLock(h.id());
}

LockHandle LockGuard::Release() {
  region_.reset();
  return std::exchange(handle_, {});
}

// ---- Region ----

Region::Region(std::shared_ptr<internal::RegionImpl> impl) : impl_(std::move(impl)) {}

Region::~Region() { (void)impl_->Unmap(); }

void* Region::data() const { return impl_->data(); }
size_t Region::size() const { return impl_->size(); }
const std::string& Region::name() const { return impl_->name(); }
absl::Status Region::Sync() { return impl_->Sync(); }
absl::Status Region::Unmap() { return impl_->Unmap(); }

namespace {
constexpr uint64_t kHintPage = 4096;
}  // namespace

absl::Status Region::Advise(uint64_t offset, uint64_t length, Advice advice) {
  const uint64_t size = impl_->size();
  if (offset > size || length > size - offset) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "dsm advise: range [%d, +%d) is not inside region '%s' (%d bytes)", offset, length,
        impl_->name(), size));
  }
  switch (advice) {
    case Advice::kNormal:
    case Advice::kSequential:
    case Advice::kRandom:
    case Advice::kWillNeed:
    case Advice::kDontNeed:
      break;
    default:
      return absl::InvalidArgumentError("dsm advise: unknown Advice value");
  }
  if (length == 0) return absl::OkStatus();
  const uint64_t first = offset / kHintPage;
  const uint64_t end = (offset + length + kHintPage - 1) / kHintPage;
  return impl_->Advise(first, end - first, advice);
}

absl::Status Region::Prefetch(uint64_t offset, uint64_t length) {
  return Advise(offset, length, Advice::kWillNeed);
}

absl::StatusOr<Stats> Region::GetStats() const { return impl_->GetStats(); }

namespace {
LockRequest MakeLockRequest(uint64_t offset, uint64_t length, LockMode mode, bool try_lock,
                            const LockOptions& options) {
  LockRequest r;
  r.offset = offset;
  r.length = length;
  r.mode = mode;
  r.try_lock = try_lock;
  r.deadline = try_lock ? absl::InfiniteFuture() : options.deadline;
  r.with_pages = options.with_pages;
  return r;
}
LockOptions WithDeadline(absl::Time deadline) {
  LockOptions o;
  o.deadline = deadline;
  return o;
}
}  // namespace

absl::StatusOr<LockGuard> Region::Lock(uint64_t offset, uint64_t length, LockMode mode,
                                       absl::Time deadline) {
  return Lock(offset, length, mode, WithDeadline(deadline));
}

absl::StatusOr<LockGuard> Region::Lock(uint64_t offset, uint64_t length, LockMode mode,
                                       const LockOptions& options) {
  absl::StatusOr<LockHandle> h =
      BlockingLock(impl_, MakeLockRequest(offset, length, mode, /*try_lock=*/false, options));
  if (!h.ok()) return h.status();
  return LockGuard(impl_, *h);
}

absl::StatusOr<LockGuard> Region::TryLock(uint64_t offset, uint64_t length, LockMode mode) {
  return TryLock(offset, length, mode, LockOptions());
}

absl::StatusOr<LockGuard> Region::TryLock(uint64_t offset, uint64_t length, LockMode mode,
                                          const LockOptions& options) {
  absl::StatusOr<LockHandle> h =
      BlockingLock(impl_, MakeLockRequest(offset, length, mode, /*try_lock=*/true, options));
  if (!h.ok()) return h.status();
  return LockGuard(impl_, *h);
}

uint64_t Region::LockAsync(uint64_t offset, uint64_t length, LockMode mode, absl::Time deadline,
                           LockCallback done) {
  return LockAsync(offset, length, mode, WithDeadline(deadline), std::move(done));
}

uint64_t Region::LockAsync(uint64_t offset, uint64_t length, LockMode mode,
                           const LockOptions& options, LockCallback done) {
  return impl_->RequestLock(
      MakeLockRequest(offset, length, mode, /*try_lock=*/false, options), std::move(done));
}

absl::Status Region::Unlock(const LockHandle& handle) { return impl_->ReleaseLock(handle.id()); }

absl::Status Region::Cancel(uint64_t lock_id) { return impl_->ReleaseLock(lock_id); }

LockGuard Region::Adopt(const LockHandle& handle) { return LockGuard(impl_, handle); }

// ---- Node (except Create) ----

Node::Node(std::unique_ptr<internal::NodeImpl> impl) : impl_(std::move(impl)) {}

Node::~Node() { (void)impl_->Shutdown(); }

NodeId Node::id() const { return impl_->id(); }
size_t Node::cluster_size() const { return impl_->cluster_size(); }

absl::StatusOr<std::unique_ptr<Region>> Node::MapRegion(const RegionOptions& options) {
  absl::StatusOr<std::shared_ptr<internal::RegionImpl>> r = impl_->MapRegion(options);
  if (!r.ok()) return r.status();
  return internal::ApiAccess::MakeRegion(std::move(*r));
}

absl::StatusOr<Stats> Node::GetStats() const { return impl_->GetStats(); }

absl::Status Node::Shutdown() { return impl_->Shutdown(); }

void Node::BarrierAsync(const std::string& name, const std::vector<NodeId>& members,
                        absl::Time deadline, std::function<void(absl::Status)> done) {
  if (ReservedBarrierName(name)) return done(ReservedBarrierNameError(name));
  impl_->BarrierAsync(name, members, deadline, std::move(done));
}

namespace {

absl::Status BlockingBarrier(internal::NodeImpl& impl, const std::string& name,
                             const std::vector<NodeId>& members, absl::Time deadline) {
  struct Wait {
    absl::Notification done;
    absl::Status status;
  };
  auto wait = std::make_shared<Wait>();
  impl.BarrierAsync(name, members, deadline, [wait](absl::Status s) {
    wait->status = std::move(s);
    wait->done.Notify();
  });
  const absl::Time give_up =
      deadline == absl::InfiniteFuture() ? absl::InfiniteFuture() : deadline + kEngineSlack;
  if (!wait->done.WaitForNotificationWithDeadline(give_up)) {
    return absl::DeadlineExceededError("barrier: no answer from the node's engine");
  }
  return wait->status;
}

}  // namespace

absl::Status Node::Barrier(const std::string& name, const std::vector<NodeId>& members,
                           absl::Time deadline) {
  if (ReservedBarrierName(name)) return ReservedBarrierNameError(name);
  return BlockingBarrier(*impl_, name, members, deadline);
}

absl::Status Node::Barrier(absl::Time deadline) {
  return BlockingBarrier(*impl_, internal::kClusterBarrierName, {}, deadline);
}

absl::StatusOr<ClusterStats> Node::GatherStats(absl::Time deadline) {
  return impl_->GatherStats(deadline);
}

DSM_NAMESPACE_END
